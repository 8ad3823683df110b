/*
 * mlsn_aead.h - the cipher suite's AEAD (RFC 9420 §5.1): AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305.
 *
 * Ciphertexts are the encrypted bytes followed by the 16-byte tag (as `cryptography`'s AESGCM returns
 * them). Key and nonce lengths must be the AEAD's Nk and Nn (12 for all three).
 *
 * The *_many functions take n items packed into flat buffers: keys is n*Nk bytes, nonces n*Nn bytes;
 * aads and pts (or cts) are the concatenation of the items, with one length per item in aad_lens and
 * pt_lens (ct_lens). aad_lens == NULL means one AAD for every item: all aads_len bytes of aads (as for a
 * sender's messages in one epoch, whose PrivateContentAAD is the same, RFC 9420 §6.3.1). Every length
 * is checked against the buffer sizes before any work starts. One cipher context serves the whole batch.
 */
#ifndef MLSN_AEAD_H
#define MLSN_AEAD_H

#include <stddef.h>
#include <stdint.h>

/* out_len must be pt_len + 16. */
int mlsn_aead_seal(int aead, const uint8_t *key, size_t key_len, const uint8_t *nonce, size_t nonce_len,
                   const uint8_t *aad, size_t aad_len, const uint8_t *pt, size_t pt_len, uint8_t *out,
                   size_t out_len);

/* out_len must be ct_len - 16. MLSN_ERR_AUTH (and a zeroed out) when the tag does not verify. */
int mlsn_aead_open(int aead, const uint8_t *key, size_t key_len, const uint8_t *nonce, size_t nonce_len,
                   const uint8_t *aad, size_t aad_len, const uint8_t *ct, size_t ct_len, uint8_t *out,
                   size_t out_len);

/* out receives the n ciphertexts back to back: out_len must be pts_len + 16*n. */
int mlsn_aead_seal_many(int aead, size_t n, const uint8_t *keys, size_t keys_len, const uint8_t *nonces,
                        size_t nonces_len, const uint8_t *aads, size_t aads_len, const size_t *aad_lens,
                        const uint8_t *pts, size_t pts_len, const size_t *pt_lens, uint8_t *out,
                        size_t out_len);

/*
 * out receives the n plaintexts back to back, item i taking max(ct_lens[i] - 16, 0) bytes; out_len
 * must be their sum. status[i] is MLSN_OK, MLSN_ERR_AUTH (tag mismatch; its plaintext bytes are
 * zeroed) or MLSN_ERR_LENGTH (shorter than a tag). The return value reports batch-level errors only.
 */
int mlsn_aead_open_many(int aead, size_t n, const uint8_t *keys, size_t keys_len, const uint8_t *nonces,
                        size_t nonces_len, const uint8_t *aads, size_t aads_len, const size_t *aad_lens,
                        const uint8_t *cts, size_t cts_len, const size_t *ct_lens, uint8_t *out,
                        size_t out_len, int8_t *status);

#endif /* MLSN_AEAD_H */
