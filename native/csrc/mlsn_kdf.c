/*
 * mlsn_kdf.c - Hash, HMAC and HKDF through libcrypto's EVP_MD and EVP_MAC.
 *
 * HKDF-Expand is RFC 5869's loop over EVP_MAC("HMAC"): the HMAC key is set once and re-used for every
 * output block (and, in the secret-tree ratchet, for the three labels of one generation). OpenSSL 3.0's
 * EVP_KDF("HKDF") computes the same bytes but allocates and frees an HMAC context on every derive,
 * which costs about twice as much per call.
 */
#include <string.h>

#include <openssl/crypto.h>

#include "mlsn_internal.h"
#include "mlsn_kdf.h"

static const uint8_t empty_key[1] = {0};

int mlsn_hkdf_expand_mac(EVP_MAC_CTX *mac, size_t nh, const uint8_t *prk, size_t prk_len,
                         const uint8_t *info, size_t info_len, uint8_t *out, size_t out_len)
{
    uint8_t block[MLSN_MAX_HASH_LEN];
    size_t done = 0, block_len = 0;
    int rc = MLSN_OK;

    if (nh == 0 || nh > MLSN_MAX_HASH_LEN || out_len == 0 || out_len > 255 * nh)
        return MLSN_ERR_LENGTH;
    if (!mlsn_buf_ok(info, info_len) || out == NULL || (prk != NULL && !mlsn_buf_ok(prk, prk_len)))
        return MLSN_ERR_LENGTH;
    if (prk != NULL && prk_len == 0)
        prk = empty_key; /* a non-NULL pointer: NULL would mean "keep the previous key" */

    for (unsigned counter = 1; done < out_len; counter++) {
        const uint8_t ctr = (uint8_t)counter;
        size_t got = 0;
        /* The first block sets the key (unless the caller kept one); later blocks re-initialise. */
        const uint8_t *key = (counter == 1) ? prk : NULL;
        if (EVP_MAC_init(mac, key, key != NULL ? prk_len : 0, NULL) != 1
            || (block_len > 0 && EVP_MAC_update(mac, block, block_len) != 1)
            || (info_len > 0 && EVP_MAC_update(mac, info, info_len) != 1)
            || EVP_MAC_update(mac, &ctr, 1) != 1
            || EVP_MAC_final(mac, block, &got, sizeof(block)) != 1 || got != nh) {
            rc = mlsn_ossl_error();
            break;
        }
        block_len = nh;
        size_t take = out_len - done < nh ? out_len - done : nh;
        memcpy(out + done, block, take);
        done += take;
    }
    OPENSSL_cleanse(block, sizeof(block));
    if (rc != MLSN_OK)
        OPENSSL_cleanse(out, out_len);
    return rc;
}

int mlsn_expand_with_label(EVP_MAC_CTX *mac, size_t nh, const uint8_t *secret, size_t secret_len,
                           const char *label, const uint8_t *context, size_t context_len,
                           uint8_t *out, size_t out_len)
{
    static const char prefix[] = "MLS 1.0 ";
    const size_t prefix_len = sizeof(prefix) - 1;
    uint8_t info[2 + 4 + 8 + 32 + 4 + MLSN_MAX_LABEL_CONTEXT];
    size_t label_len = strlen(label), pos = 0;

    if (out_len > 0xFFFF || label_len > 32 || context_len > MLSN_MAX_LABEL_CONTEXT
        || !mlsn_buf_ok(context, context_len))
        return MLSN_ERR_LENGTH;
    /* struct { uint16 length; opaque label<V>; opaque context<V>; } KDFLabel; */
    info[pos++] = (uint8_t)(out_len >> 8);
    info[pos++] = (uint8_t)out_len;
    pos += mlsn_put_varint(info + pos, prefix_len + label_len);
    memcpy(info + pos, prefix, prefix_len);
    pos += prefix_len;
    memcpy(info + pos, label, label_len);
    pos += label_len;
    pos += mlsn_put_varint(info + pos, context_len);
    if (context_len > 0) {
        memcpy(info + pos, context, context_len);
        pos += context_len;
    }
    return mlsn_hkdf_expand_mac(mac, nh, secret, secret_len, info, pos, out, out_len);
}

int mlsn_hash(int hash_alg, const uint8_t *data, size_t data_len, uint8_t *out, size_t out_len)
{
    const EVP_MD *md = NULL;
    unsigned int got = 0;
    int rc;

    if (mlsn_hash_len(hash_alg) == 0)
        return MLSN_ERR_UNSUPPORTED;
    if (!mlsn_buf_ok(data, data_len) || out == NULL || out_len != mlsn_hash_len(hash_alg))
        return MLSN_ERR_LENGTH;
    EVP_MD_CTX *ctx = mlsn_borrow_md(hash_alg, &md, &rc);
    if (ctx == NULL)
        return rc;
    int ok = EVP_DigestInit_ex2(ctx, md, NULL) == 1 && EVP_DigestUpdate(ctx, data, data_len) == 1
             && EVP_DigestFinal_ex(ctx, out, &got) == 1 && got == out_len;
    mlsn_release_md(ctx);
    return ok ? MLSN_OK : mlsn_ossl_error();
}

int mlsn_hmac(int hash_alg, const uint8_t *key, size_t key_len, const uint8_t *data, size_t data_len,
              uint8_t *out, size_t out_len)
{
    size_t nh = mlsn_hash_len(hash_alg), got = 0;
    int rc;

    if (nh == 0)
        return MLSN_ERR_UNSUPPORTED;
    if (!mlsn_buf_ok(key, key_len) || !mlsn_buf_ok(data, data_len) || out == NULL || out_len != nh)
        return MLSN_ERR_LENGTH;
    EVP_MAC_CTX *mac = mlsn_borrow_hmac(hash_alg, &rc);
    if (mac == NULL)
        return rc;
    int ok = EVP_MAC_init(mac, key_len > 0 ? key : empty_key, key_len, NULL) == 1
             && EVP_MAC_update(mac, data, data_len) == 1 && EVP_MAC_final(mac, out, &got, out_len) == 1
             && got == nh;
    mlsn_release_hmac(mac, hash_alg);
    return ok ? MLSN_OK : mlsn_ossl_error();
}

int mlsn_hkdf_extract(int hash_alg, const uint8_t *salt, size_t salt_len, const uint8_t *ikm,
                      size_t ikm_len, uint8_t *out, size_t out_len)
{
    static const uint8_t zero_salt[MLSN_MAX_HASH_LEN] = {0};
    size_t nh = mlsn_hash_len(hash_alg);

    if (nh == 0)
        return MLSN_ERR_UNSUPPORTED;
    if (!mlsn_buf_ok(salt, salt_len))
        return MLSN_ERR_LENGTH;
    if (salt_len == 0) {
        salt = zero_salt;
        salt_len = nh;
    }
    return mlsn_hmac(hash_alg, salt, salt_len, ikm, ikm_len, out, out_len);
}

int mlsn_hkdf_expand(int hash_alg, const uint8_t *prk, size_t prk_len, const uint8_t *info,
                     size_t info_len, uint8_t *out, size_t out_len)
{
    size_t nh = mlsn_hash_len(hash_alg);

    if (nh == 0)
        return MLSN_ERR_UNSUPPORTED;
    if (prk == NULL && prk_len == 0)
        prk = empty_key; /* NULL means "keep the key" internally; the public API always sets one */
    if (!mlsn_buf_ok(prk, prk_len) || !mlsn_buf_ok(info, info_len) || out == NULL || out_len == 0
        || out_len > 255 * nh)
        return MLSN_ERR_LENGTH;
    int rc;
    EVP_MAC_CTX *mac = mlsn_borrow_hmac(hash_alg, &rc);
    if (mac == NULL)
        return rc;
    rc = mlsn_hkdf_expand_mac(mac, nh, prk, prk_len, info, info_len, out, out_len);
    mlsn_release_hmac(mac, hash_alg);
    return rc;
}
