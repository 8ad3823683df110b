/*
 * mlsn_secret_tree.c - the sender ratchet (RFC 9420 §9.1) and sender-data keys (§6.3.2).
 *
 * One HMAC context (this thread's, mlsn_borrow_hmac) serves a whole call. Within one generation the
 * three labels share the ratchet secret as HKDF PRK, so its HMAC key is set once ("key") and kept for
 * "nonce" and "secret".
 */
#include <string.h>

#include <openssl/crypto.h>

#include "mlsn_internal.h"
#include "mlsn_secret_tree.h"

int mlsn_ratchet_steps(int hash_alg, const uint8_t *secret, size_t secret_len, uint32_t start_generation,
                       uint32_t count, size_t nk, size_t nn, uint8_t *keys, size_t keys_len, uint8_t *nonces,
                       size_t nonces_len, uint8_t *next_secret, size_t next_secret_len)
{
    uint8_t current[MLSN_MAX_HASH_LEN], following[MLSN_MAX_HASH_LEN];
    size_t nh = mlsn_hash_len(hash_alg), need;
    int rc = MLSN_OK;

    if (nh == 0)
        return MLSN_ERR_UNSUPPORTED;
    if (secret == NULL || secret_len != nh || next_secret == NULL || next_secret_len != nh)
        return MLSN_ERR_LENGTH;
    if (nk == 0 || nk > 255 * nh || nn == 0 || nn > 255 * nh)
        return MLSN_ERR_LENGTH;
    if (count > MLSN_MAX_RATCHET_STEPS || (uint64_t)start_generation + count > ((uint64_t)1 << 32))
        return MLSN_ERR_RANGE;
    if (!mlsn_mul_size(count, nk, &need) || keys_len != need || !mlsn_buf_ok(keys, keys_len))
        return MLSN_ERR_LENGTH;
    if (!mlsn_mul_size(count, nn, &need) || nonces_len != need || !mlsn_buf_ok(nonces, nonces_len))
        return MLSN_ERR_LENGTH;

    memcpy(current, secret, nh);
    if (count > 0) {
        EVP_MAC_CTX *mac = mlsn_borrow_hmac(hash_alg, &rc);
        if (mac == NULL) {
            OPENSSL_cleanse(current, sizeof(current));
            return rc;
        }
        for (uint32_t i = 0; i < count; i++) {
            uint8_t generation[4];
            uint8_t *key = keys + (size_t)i * nk, *nonce = nonces + (size_t)i * nn;
            mlsn_put_u32(generation, start_generation + i);
            rc = mlsn_expand_with_label(mac, nh, current, nh, "key", generation, 4, key, nk);
            if (rc == MLSN_OK) /* same PRK: keep the HMAC key */
                rc = mlsn_expand_with_label(mac, nh, NULL, 0, "nonce", generation, 4, nonce, nn);
            if (rc == MLSN_OK)
                rc = mlsn_expand_with_label(mac, nh, NULL, 0, "secret", generation, 4, following, nh);
            if (rc != MLSN_OK)
                break;
            memcpy(current, following, nh);
        }
        mlsn_release_hmac(mac, hash_alg);
    }
    if (rc == MLSN_OK) {
        memcpy(next_secret, current, nh);
    } else {
        mlsn_cleanse(keys, keys_len);
        mlsn_cleanse(nonces, nonces_len);
    }
    OPENSSL_cleanse(current, sizeof(current));
    OPENSSL_cleanse(following, sizeof(following));
    return rc;
}

int mlsn_sender_data_key_nonce(int hash_alg, const uint8_t *secret, size_t secret_len,
                               const uint8_t *ciphertext, size_t ciphertext_len, uint8_t *key, size_t key_len,
                               uint8_t *nonce, size_t nonce_len)
{
    size_t nh = mlsn_hash_len(hash_alg);
    int rc;

    if (nh == 0)
        return MLSN_ERR_UNSUPPORTED;
    if (secret == NULL || secret_len != nh || !mlsn_buf_ok(ciphertext, ciphertext_len) || key == NULL
        || nonce == NULL || key_len == 0 || key_len > 255 * nh || nonce_len == 0 || nonce_len > 255 * nh)
        return MLSN_ERR_LENGTH;
    size_t sample_len = ciphertext_len < nh ? ciphertext_len : nh;
    EVP_MAC_CTX *mac = mlsn_borrow_hmac(hash_alg, &rc);
    if (mac == NULL)
        return rc;
    rc = mlsn_expand_with_label(mac, nh, secret, secret_len, "key", ciphertext, sample_len, key, key_len);
    if (rc == MLSN_OK)
        rc = mlsn_expand_with_label(mac, nh, NULL, 0, "nonce", ciphertext, sample_len, nonce, nonce_len);
    mlsn_release_hmac(mac, hash_alg);
    if (rc != MLSN_OK) {
        mlsn_cleanse(key, key_len);
        mlsn_cleanse(nonce, nonce_len);
    }
    return rc;
}
