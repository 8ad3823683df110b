/*
 * mlsn_aead.c - AEAD seal and open, one at a time or in batches.
 *
 * Every call, one-shot or batch, uses this thread's cached provider context for the AEAD
 * (mlsn_borrow_aead, see mlsn_common.c): each item only re-keys it (einit/dinit with key and nonce),
 * and releasing it re-keys it with a public key. The provider functions take size_t lengths, so no
 * input is split; the AEAD's own limits are left to libcrypto.
 */
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/params.h>

#include "mlsn_aead.h"
#include "mlsn_internal.h"

/* Feed AAD (out == NULL) or data through the provider's update; both report len (a stream AEAD). */
static int feed(const struct mlsn_aead_impl *a, void *ctx, uint8_t *out, const uint8_t *in, size_t len)
{
    size_t got = 0;
    if (len == 0)
        return 1;
    return a->update(ctx, out, &got, len, in, len) == 1 && got == len;
}

/* The 16-byte tag as a provider parameter (read after sealing, set before opening). */
static void tag_param(OSSL_PARAM params[2], uint8_t *tag)
{
    params[0] = OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, tag, MLSN_TAG_LEN);
    params[1] = OSSL_PARAM_construct_end();
}

int mlsn_provider_seal(const struct mlsn_aead_impl *a, void *ctx, size_t nk, const uint8_t *key,
                       const uint8_t *nonce, const uint8_t *aad, size_t aad_len, const uint8_t *pt, size_t pt_len,
                       uint8_t *out)
{
    size_t got = 0;
    OSSL_PARAM params[2];

    tag_param(params, out + pt_len);
    if (a->einit(ctx, key, nk, nonce, MLSN_NONCE_LEN, NULL) != 1 || !feed(a, ctx, NULL, aad, aad_len)
        || !feed(a, ctx, out, pt, pt_len) || a->final(ctx, out + pt_len, &got, 0) != 1 || got != 0
        || a->get_ctx_params(ctx, params) != 1)
        return mlsn_ossl_error();
    return MLSN_OK;
}

/* Open one item (ct_len >= 16); out has ct_len - 16 bytes and is zeroed unless the tag verifies. */
static int open_one(const struct mlsn_aead_impl *a, void *ctx, size_t nk, const uint8_t *key,
                    const uint8_t *nonce, const uint8_t *aad, size_t aad_len, const uint8_t *ct, size_t ct_len,
                    uint8_t *out)
{
    uint8_t tag[MLSN_TAG_LEN], final_block[32];
    size_t body_len = ct_len - MLSN_TAG_LEN, got = 0;
    OSSL_PARAM params[2];

    memcpy(tag, ct + body_len, MLSN_TAG_LEN);
    tag_param(params, tag);
    if (a->dinit(ctx, key, nk, nonce, MLSN_NONCE_LEN, NULL) != 1 || !feed(a, ctx, NULL, aad, aad_len)
        || !feed(a, ctx, out, ct, body_len) || a->set_ctx_params(ctx, params) != 1) {
        if (body_len > 0)
            OPENSSL_cleanse(out, body_len);
        return mlsn_ossl_error();
    }
    if (a->final(ctx, final_block, &got, sizeof(final_block)) != 1 || got != 0) {
        /* Unauthenticated plaintext never reaches the caller. */
        if (body_len > 0)
            OPENSSL_cleanse(out, body_len);
        ERR_clear_error();
        return MLSN_ERR_AUTH;
    }
    return MLSN_OK;
}

static int check_key_nonce(int aead, size_t key_len, size_t nonce_len)
{
    size_t nk = 0, nn = 0;
    if (mlsn_aead_sizes(aead, &nk, &nn) != MLSN_OK)
        return MLSN_ERR_UNSUPPORTED;
    return (key_len == nk && nonce_len == nn) ? MLSN_OK : MLSN_ERR_LENGTH;
}

int mlsn_aead_seal(int aead, const uint8_t *key, size_t key_len, const uint8_t *nonce, size_t nonce_len,
                   const uint8_t *aad, size_t aad_len, const uint8_t *pt, size_t pt_len, uint8_t *out,
                   size_t out_len)
{
    int rc = check_key_nonce(aead, key_len, nonce_len);
    size_t need;

    if (rc != MLSN_OK)
        return rc;
    if (key == NULL || nonce == NULL || !mlsn_buf_ok(aad, aad_len) || !mlsn_buf_ok(pt, pt_len) || out == NULL
        || !mlsn_add_size(pt_len, MLSN_TAG_LEN, &need) || out_len != need)
        return MLSN_ERR_LENGTH;
    const struct mlsn_aead_impl *a;
    void *ctx = mlsn_borrow_aead(aead, &a, &rc);
    if (ctx == NULL)
        return rc;
    rc = mlsn_provider_seal(a, ctx, key_len, key, nonce, aad, aad_len, pt, pt_len, out);
    mlsn_release_aead(ctx, aead);
    return rc;
}

int mlsn_aead_open(int aead, const uint8_t *key, size_t key_len, const uint8_t *nonce, size_t nonce_len,
                   const uint8_t *aad, size_t aad_len, const uint8_t *ct, size_t ct_len, uint8_t *out,
                   size_t out_len)
{
    int rc = check_key_nonce(aead, key_len, nonce_len);

    if (rc != MLSN_OK)
        return rc;
    if (key == NULL || nonce == NULL || !mlsn_buf_ok(aad, aad_len) || ct == NULL)
        return MLSN_ERR_LENGTH;
    if (ct_len < MLSN_TAG_LEN)
        return MLSN_ERR_AUTH; /* too short to carry a tag: it cannot authenticate */
    if (out_len != ct_len - MLSN_TAG_LEN || (out == NULL && out_len > 0))
        return MLSN_ERR_LENGTH;
    const struct mlsn_aead_impl *a;
    void *ctx = mlsn_borrow_aead(aead, &a, &rc);
    if (ctx == NULL)
        return rc;
    rc = open_one(a, ctx, key_len, key, nonce, aad, aad_len, ct, ct_len, out);
    mlsn_release_aead(ctx, aead);
    return rc;
}

/*
 * Validate a batch's shape: keys/nonces sizes, that aad_lens sums to aads_len (or is NULL: every item
 * uses all of aads) and data_lens to data_len, and the exact output size. Everything overflow-checked.
 */
static int check_batch(int aead, size_t n, const uint8_t *keys, size_t keys_len, const uint8_t *nonces,
                       size_t nonces_len, const uint8_t *aads, size_t aads_len, const size_t *aad_lens,
                       const uint8_t *data, size_t data_len, const size_t *data_lens, int sealing,
                       const uint8_t *out, size_t out_len)
{
    size_t nk = 0, nn = 0, need, total_aad = 0, total_data = 0, total_out = 0;

    if (mlsn_aead_sizes(aead, &nk, &nn) != MLSN_OK)
        return MLSN_ERR_UNSUPPORTED;
    if (!mlsn_mul_size(n, nk, &need) || keys_len != need || !mlsn_buf_ok(keys, keys_len))
        return MLSN_ERR_LENGTH;
    if (!mlsn_mul_size(n, nn, &need) || nonces_len != need || !mlsn_buf_ok(nonces, nonces_len))
        return MLSN_ERR_LENGTH;
    if (!mlsn_buf_ok(aads, aads_len) || !mlsn_buf_ok(data, data_len) || !mlsn_buf_ok(out, out_len))
        return MLSN_ERR_LENGTH;
    if (n > 0 && data_lens == NULL)
        return MLSN_ERR_LENGTH;
    for (size_t i = 0; i < n; i++) {
        size_t item_out;
        if ((aad_lens != NULL && !mlsn_add_size(total_aad, aad_lens[i], &total_aad))
            || !mlsn_add_size(total_data, data_lens[i], &total_data))
            return MLSN_ERR_LENGTH;
        if (sealing) {
            if (!mlsn_add_size(data_lens[i], MLSN_TAG_LEN, &item_out))
                return MLSN_ERR_LENGTH;
        } else {
            item_out = data_lens[i] >= MLSN_TAG_LEN ? data_lens[i] - MLSN_TAG_LEN : 0;
        }
        if (!mlsn_add_size(total_out, item_out, &total_out))
            return MLSN_ERR_LENGTH;
    }
    if ((aad_lens != NULL && total_aad != aads_len) || total_data != data_len || total_out != out_len)
        return MLSN_ERR_LENGTH;
    return MLSN_OK;
}

/* Item i's AAD: the next aad_lens[i] bytes of *aads, or all of aads when aad_lens is NULL. */
static size_t next_aad(const size_t *aad_lens, size_t aads_len, size_t i)
{
    return aad_lens != NULL ? aad_lens[i] : aads_len;
}

/* After item i: past its AAD (when each item has its own). */
static const uint8_t *skip_aad(const uint8_t *aads, const size_t *aad_lens, size_t i)
{
    return aad_lens != NULL ? aads + aad_lens[i] : aads;
}

int mlsn_aead_seal_many(int aead, size_t n, const uint8_t *keys, size_t keys_len, const uint8_t *nonces,
                        size_t nonces_len, const uint8_t *aads, size_t aads_len, const size_t *aad_lens,
                        const uint8_t *pts, size_t pts_len, const size_t *pt_lens, uint8_t *out,
                        size_t out_len)
{
    size_t nk = 0, nn = 0;
    int rc = check_batch(aead, n, keys, keys_len, nonces, nonces_len, aads, aads_len, aad_lens, pts, pts_len,
                         pt_lens, 1, out, out_len);

    if (rc != MLSN_OK || n == 0)
        return rc;
    mlsn_aead_sizes(aead, &nk, &nn);
    const struct mlsn_aead_impl *a;
    void *ctx = mlsn_borrow_aead(aead, &a, &rc);
    if (ctx == NULL)
        return rc;
    for (size_t i = 0; i < n && rc == MLSN_OK; i++) {
        rc = mlsn_provider_seal(a, ctx, nk, keys + i * nk, nonces + i * nn, aads, next_aad(aad_lens, aads_len, i), pts,
                      pt_lens[i], out);
        aads = skip_aad(aads, aad_lens, i);
        pts += pt_lens[i];
        out += pt_lens[i] + MLSN_TAG_LEN;
    }
    mlsn_release_aead(ctx, aead);
    return rc;
}

int mlsn_aead_open_many(int aead, size_t n, const uint8_t *keys, size_t keys_len, const uint8_t *nonces,
                        size_t nonces_len, const uint8_t *aads, size_t aads_len, const size_t *aad_lens,
                        const uint8_t *cts, size_t cts_len, const size_t *ct_lens, uint8_t *out,
                        size_t out_len, int8_t *status)
{
    size_t nk = 0, nn = 0;
    int rc = check_batch(aead, n, keys, keys_len, nonces, nonces_len, aads, aads_len, aad_lens, cts, cts_len,
                         ct_lens, 0, out, out_len);

    if (rc != MLSN_OK || n == 0)
        return rc;
    if (status == NULL)
        return MLSN_ERR_LENGTH;
    mlsn_aead_sizes(aead, &nk, &nn);
    const struct mlsn_aead_impl *a;
    void *ctx = mlsn_borrow_aead(aead, &a, &rc);
    if (ctx == NULL)
        return rc;
    for (size_t i = 0; i < n; i++) {
        if (ct_lens[i] < MLSN_TAG_LEN) {
            status[i] = (int8_t)MLSN_ERR_LENGTH;
        } else {
            int item = open_one(a, ctx, nk, keys + i * nk, nonces + i * nn, aads, next_aad(aad_lens, aads_len, i),
                                cts, ct_lens[i], out);
            if (item == MLSN_ERR_OPENSSL) {
                rc = item;
                break;
            }
            status[i] = (int8_t)item;
            out += ct_lens[i] - MLSN_TAG_LEN;
        }
        aads = skip_aad(aads, aad_lens, i);
        cts += ct_lens[i];
    }
    mlsn_release_aead(ctx, aead);
    return rc;
}
