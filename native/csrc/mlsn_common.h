/*
 * mlsn_common.h - status codes, algorithm identifiers and set-up of the native MLS crypto layer.
 *
 * Every function of the layer returns one of the MLSN_* status codes below; the Python wrapper
 * (native/backend.py) maps them to the project's exceptions. Nothing here allocates Python objects.
 *
 * This header is read by the C compiler and, with its preprocessor lines removed, by cffi's cdef
 * (native/build.py), so it holds plain declarations only.
 */
#ifndef MLSN_COMMON_H
#define MLSN_COMMON_H

#include <stddef.h>
#include <stdint.h>

enum {
    MLSN_OK = 0,
    MLSN_ERR_UNSUPPORTED = -1,     /* unknown hash or AEAD identifier */
    MLSN_ERR_LENGTH = -2,          /* a length is wrong, inconsistent or too large */
    MLSN_ERR_AUTH = -3,            /* AEAD authentication failed */
    MLSN_ERR_OPENSSL = -4,         /* libcrypto reported an internal failure */
    MLSN_ERR_NOMEM = -5,           /* an allocation failed */
    MLSN_ERR_RANGE = -6,           /* a count or generation is out of its RFC range */
    MLSN_ERR_NOT_INITIALISED = -7  /* libcrypto algorithms could not be fetched */
};

/* Hash functions of the MLS cipher suites (RFC 9420 §17.1). */
enum { MLSN_HASH_SHA256 = 1, MLSN_HASH_SHA384 = 2, MLSN_HASH_SHA512 = 3 };

/* AEAD identifiers: HPKE's (RFC 9180 §7.3), as MLS cipher suites use them. */
enum { MLSN_AEAD_AES128GCM = 1, MLSN_AEAD_AES256GCM = 2, MLSN_AEAD_CHACHA20POLY1305 = 3 };

enum {
    MLSN_TAG_LEN = 16,                   /* every supported AEAD appends a 16-byte tag */
    MLSN_NONCE_LEN = 12,                 /* and takes a 12-byte nonce */
    MLSN_MAX_HASH_LEN = 64,              /* SHA-512 */
    MLSN_MAX_RATCHET_STEPS = 1048576     /* generations one ratchet_steps call may derive */
};

/* Fetch the libcrypto algorithms once (thread-safe, idempotent). MLSN_OK or MLSN_ERR_NOT_INITIALISED. */
int mlsn_init(void);

/* Output length of a hash (KDF.Nh), 0 for an unknown identifier. */
size_t mlsn_hash_len(int hash_alg);

/* Key and nonce length of an AEAD (Nk, Nn); MLSN_ERR_UNSUPPORTED for an unknown identifier. */
int mlsn_aead_sizes(int aead, size_t *key_len, size_t *nonce_len);

/* The libcrypto version string in use at run time. */
const char *mlsn_openssl_version(void);

/* Overwrite a buffer with zeros in a way the compiler cannot elide (OPENSSL_cleanse). */
void mlsn_cleanse(uint8_t *buf, size_t len);

#endif /* MLSN_COMMON_H */
