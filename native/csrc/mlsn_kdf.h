/*
 * mlsn_kdf.h - the cipher suite's Hash, MAC and KDF (RFC 9420 §5.1): SHA-2, HMAC, HKDF (RFC 5869).
 *
 * Output buffers are exactly sized by the caller: out_len must equal the hash length for hash, hmac
 * and hkdf_extract; for hkdf_expand it is the requested length L (1 <= L <= 255 * Nh).
 */
#ifndef MLSN_KDF_H
#define MLSN_KDF_H

#include <stddef.h>
#include <stdint.h>

int mlsn_hash(int hash_alg, const uint8_t *data, size_t data_len, uint8_t *out, size_t out_len);

int mlsn_hmac(int hash_alg, const uint8_t *key, size_t key_len, const uint8_t *data, size_t data_len,
              uint8_t *out, size_t out_len);

/* HKDF-Extract: HMAC-Hash(salt, ikm); an empty salt means Nh zero bytes (RFC 5869 §2.2). */
int mlsn_hkdf_extract(int hash_alg, const uint8_t *salt, size_t salt_len, const uint8_t *ikm,
                      size_t ikm_len, uint8_t *out, size_t out_len);

int mlsn_hkdf_expand(int hash_alg, const uint8_t *prk, size_t prk_len, const uint8_t *info,
                     size_t info_len, uint8_t *out, size_t out_len);

#endif /* MLSN_KDF_H */
