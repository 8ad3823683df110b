/*
 * mlsn_internal.h - helpers shared by the C sources of the native layer. Not part of the cffi API.
 */
#ifndef MLSN_INTERNAL_H
#define MLSN_INTERNAL_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/core_dispatch.h>
#include <openssl/err.h>
#include <openssl/evp.h>

#include "mlsn_common.h"

/* Overflow-checked size arithmetic: 1 on success, 0 when the result would not fit a size_t. */
static inline int mlsn_add_size(size_t a, size_t b, size_t *r)
{
    if (a > SIZE_MAX - b)
        return 0;
    *r = a + b;
    return 1;
}

static inline int mlsn_mul_size(size_t a, size_t b, size_t *r)
{
    if (b != 0 && a > SIZE_MAX / b)
        return 0;
    *r = a * b;
    return 1;
}

/* A buffer argument is usable when it is non-NULL or empty. */
static inline int mlsn_buf_ok(const void *p, size_t len)
{
    return p != NULL || len == 0;
}

/*
 * A libcrypto call failed: drop what it left on this thread's error queue (so later, unrelated OpenSSL
 * users on the thread do not see it) and report MLSN_ERR_OPENSSL.
 */
static inline int mlsn_ossl_error(void)
{
    ERR_clear_error();
    return MLSN_ERR_OPENSSL;
}

/* Fetched algorithms (NULL for an unknown identifier or before mlsn_init succeeded). */
const EVP_MD *mlsn_md(int hash_alg);

/*
 * An AEAD's implementation in its provider (the functions behind EVP_CIPHER, see provider-cipher(7)):
 * called directly, they skip EVP's per-call parameter look-ups. A context from newctx belongs to one
 * thread at a time; einit/dinit take the key and nonce, update with out == NULL takes AAD.
 */
struct mlsn_aead_impl {
    void *provctx;
    OSSL_FUNC_cipher_newctx_fn *newctx;
    OSSL_FUNC_cipher_freectx_fn *freectx;
    OSSL_FUNC_cipher_encrypt_init_fn *einit;
    OSSL_FUNC_cipher_decrypt_init_fn *dinit;
    OSSL_FUNC_cipher_update_fn *update;
    OSSL_FUNC_cipher_final_fn *final;
    OSSL_FUNC_cipher_get_ctx_params_fn *get_ctx_params;
    OSSL_FUNC_cipher_set_ctx_params_fn *set_ctx_params;
};

const struct mlsn_aead_impl *mlsn_aead_impl(int aead);

/* Seal one message with a provider context of `a` (key nk bytes, 12-byte nonce); out has pt_len + 16 bytes. */
int mlsn_provider_seal(const struct mlsn_aead_impl *a, void *ctx, size_t nk, const uint8_t *key,
                       const uint8_t *nonce, const uint8_t *aad, size_t aad_len, const uint8_t *pt, size_t pt_len,
                       uint8_t *out);

/*
 * Per-thread contexts. Each OS thread keeps one provider AEAD context per AEAD, one HMAC context
 * per hash and one digest context, made on first use and freed when the thread exits, so a call pays
 * for re-keying only. An entry point borrows a context and releases it before it returns (calls on one
 * thread never overlap; a nested borrow gets a fresh context). Releasing re-keys cipher and HMAC
 * contexts with a fixed public key: no message key or PRK outlives the call inside them (RFC 9420 §9.2,
 * deletion schedule). On failure the borrow functions return NULL and set *rc.
 */
void *mlsn_borrow_aead(int aead, const struct mlsn_aead_impl **impl, int *rc);
void mlsn_release_aead(void *ctx, int aead);
EVP_MAC_CTX *mlsn_borrow_hmac(int hash_alg, int *rc);
void mlsn_release_hmac(EVP_MAC_CTX *ctx, int hash_alg);
EVP_MD_CTX *mlsn_borrow_md(int hash_alg, const EVP_MD **md, int *rc);
void mlsn_release_md(EVP_MD_CTX *ctx);

/*
 * HKDF-Expand (RFC 5869 §2.3) over the HMAC context `mac` (for a hash of output length nh):
 * T(i) = HMAC(PRK, T(i-1) | info | i), out = first out_len bytes of T(1) | T(2) | ...
 * prk == NULL keeps the key already set on `mac` (the caller set it with an earlier call).
 * out_len must be 1..255*nh.
 */
int mlsn_hkdf_expand_mac(EVP_MAC_CTX *mac, size_t nh, const uint8_t *prk, size_t prk_len,
                         const uint8_t *info, size_t info_len, uint8_t *out, size_t out_len);

/*
 * ExpandWithLabel (RFC 9420 §5.1.3): HKDF-Expand(secret, KDFLabel, length) with
 * KDFLabel = struct { uint16 length; opaque label<V> = "MLS 1.0 " + label; opaque context<V>; }.
 * secret == NULL keeps the key already set on `mac`. Contexts up to MLSN_MAX_LABEL_CONTEXT bytes.
 */
enum { MLSN_MAX_LABEL_CONTEXT = 128 };
int mlsn_expand_with_label(EVP_MAC_CTX *mac, size_t nh, const uint8_t *secret, size_t secret_len,
                           const char *label, const uint8_t *context, size_t context_len,
                           uint8_t *out, size_t out_len);

/* MLS varint (RFC 9420 §2.1.2) into p (room for 4 bytes); returns its length, 0 if v >= 2^30. */
size_t mlsn_put_varint(uint8_t *p, size_t v);

static inline void mlsn_put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

#endif /* MLSN_INTERNAL_H */
