/*
 * mlsn_common.c - one-time fetch of the libcrypto algorithms and shared helpers.
 *
 * Algorithms are fetched once (EVP_MD_fetch, EVP_CIPHER_fetch, EVP_MAC_fetch) and then only read, so
 * every entry point may run concurrently on several threads with the GIL released.
 */
#include <pthread.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/params.h>

#include "mlsn_internal.h"

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static int init_status = MLSN_ERR_NOT_INITIALISED;
static pthread_key_t tls_key;

/* One thread's cached contexts; busy marks a context lent out. */
struct tls_contexts {
    EVP_CIPHER_CTX *cipher[4][2];
    int cipher_busy[4][2];
    EVP_MAC_CTX *hmac[4];
    int hmac_busy[4];
    EVP_MD_CTX *md;
    int md_busy;
};

static const uint8_t public_key[32]; /* all zero: what released contexts are keyed with */
static const uint8_t public_nonce[12];

static EVP_MD *digests[4];
static EVP_CIPHER *ciphers[4];
static EVP_MAC *hmac_alg;
static EVP_MAC_CTX *hmac_templates[4];

static const char *const digest_names[4] = {NULL, "SHA2-256", "SHA2-384", "SHA2-512"};
static const size_t digest_lens[4] = {0, 32, 48, 64};
static const char *const cipher_names[4] = {NULL, "AES-128-GCM", "AES-256-GCM", "ChaCha20-Poly1305"};
static const size_t cipher_key_lens[4] = {0, 16, 32, 32};

static void free_tls(void *p)
{
    struct tls_contexts *t = p;
    for (int i = 0; i < 4; i++) {
        EVP_CIPHER_CTX_free(t->cipher[i][0]);
        EVP_CIPHER_CTX_free(t->cipher[i][1]);
        EVP_MAC_CTX_free(t->hmac[i]);
    }
    EVP_MD_CTX_free(t->md);
    OPENSSL_free(t);
}

static struct tls_contexts *get_tls(void)
{
    struct tls_contexts *t = pthread_getspecific(tls_key);
    if (t == NULL) {
        t = OPENSSL_zalloc(sizeof(*t));
        if (t != NULL && pthread_setspecific(tls_key, t) != 0) {
            OPENSSL_free(t);
            t = NULL;
        }
    }
    return t;
}

static void do_init(void)
{
    if (pthread_key_create(&tls_key, free_tls) != 0)
        return;
    hmac_alg = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (hmac_alg == NULL)
        return;
    for (int i = 1; i <= 3; i++) {
        digests[i] = EVP_MD_fetch(NULL, digest_names[i], NULL);
        ciphers[i] = EVP_CIPHER_fetch(NULL, cipher_names[i], NULL);
        if (digests[i] == NULL || ciphers[i] == NULL)
            return;
        if ((size_t)EVP_MD_get_size(digests[i]) != digest_lens[i])
            return;
        if ((size_t)EVP_CIPHER_get_key_length(ciphers[i]) != cipher_key_lens[i]
            || EVP_CIPHER_get_iv_length(ciphers[i]) != 12)
            return;
        hmac_templates[i] = EVP_MAC_CTX_new(hmac_alg);
        if (hmac_templates[i] == NULL)
            return;
        OSSL_PARAM params[2];
        params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)digest_names[i], 0);
        params[1] = OSSL_PARAM_construct_end();
        if (EVP_MAC_CTX_set_params(hmac_templates[i], params) != 1)
            return;
    }
    init_status = MLSN_OK;
}

int mlsn_init(void)
{
    if (pthread_once(&init_once, do_init) != 0)
        return MLSN_ERR_NOT_INITIALISED;
    return init_status;
}

size_t mlsn_hash_len(int hash_alg)
{
    if (hash_alg < 1 || hash_alg > 3)
        return 0;
    return digest_lens[hash_alg];
}

int mlsn_aead_sizes(int aead, size_t *key_len, size_t *nonce_len)
{
    if (aead < 1 || aead > 3)
        return MLSN_ERR_UNSUPPORTED;
    if (key_len != NULL)
        *key_len = cipher_key_lens[aead];
    if (nonce_len != NULL)
        *nonce_len = 12;
    return MLSN_OK;
}

const char *mlsn_openssl_version(void)
{
    return OpenSSL_version(OPENSSL_VERSION);
}

void mlsn_cleanse(uint8_t *buf, size_t len)
{
    if (buf != NULL && len > 0)
        OPENSSL_cleanse(buf, len);
}

const EVP_MD *mlsn_md(int hash_alg)
{
    if (mlsn_init() != MLSN_OK || hash_alg < 1 || hash_alg > 3)
        return NULL;
    return digests[hash_alg];
}

const EVP_CIPHER *mlsn_cipher(int aead)
{
    if (mlsn_init() != MLSN_OK || aead < 1 || aead > 3)
        return NULL;
    return ciphers[aead];
}

static int missing(void)
{
    return mlsn_init() == MLSN_OK ? MLSN_ERR_UNSUPPORTED : MLSN_ERR_NOT_INITIALISED;
}

EVP_CIPHER_CTX *mlsn_borrow_cipher(int aead, int enc, int *rc)
{
    const EVP_CIPHER *cipher = mlsn_cipher(aead);
    struct tls_contexts *t;
    EVP_CIPHER_CTX *ctx;

    enc = enc ? 1 : 0;
    if (cipher == NULL) {
        *rc = missing();
        return NULL;
    }
    t = get_tls();
    if (t != NULL && t->cipher[aead][enc] != NULL && !t->cipher_busy[aead][enc]) {
        t->cipher_busy[aead][enc] = 1;
        *rc = MLSN_OK;
        return t->cipher[aead][enc];
    }
    ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL) {
        *rc = MLSN_ERR_NOMEM;
        return NULL;
    }
    if (EVP_CipherInit_ex2(ctx, cipher, NULL, NULL, enc, NULL) != 1) {
        EVP_CIPHER_CTX_free(ctx);
        *rc = mlsn_ossl_error();
        return NULL;
    }
    if (t != NULL && t->cipher[aead][enc] == NULL) {
        t->cipher[aead][enc] = ctx;
        t->cipher_busy[aead][enc] = 1;
    }
    *rc = MLSN_OK;
    return ctx;
}

void mlsn_release_cipher(EVP_CIPHER_CTX *ctx, int aead, int enc)
{
    struct tls_contexts *t = pthread_getspecific(tls_key);

    enc = enc ? 1 : 0;
    if (ctx == NULL)
        return;
    if (t == NULL || aead < 1 || aead > 3 || t->cipher[aead][enc] != ctx) {
        EVP_CIPHER_CTX_free(ctx); /* not cached: freeing cleanses it */
        return;
    }
    t->cipher_busy[aead][enc] = 0;
    if (EVP_CipherInit_ex2(ctx, NULL, public_key, public_nonce, enc, NULL) != 1) {
        ERR_clear_error();
        EVP_CIPHER_CTX_free(ctx);
        t->cipher[aead][enc] = NULL;
    }
}

EVP_MAC_CTX *mlsn_borrow_hmac(int hash_alg, int *rc)
{
    struct tls_contexts *t;
    EVP_MAC_CTX *ctx;

    if (mlsn_init() != MLSN_OK || hash_alg < 1 || hash_alg > 3) {
        *rc = missing();
        return NULL;
    }
    t = get_tls();
    if (t != NULL && t->hmac[hash_alg] != NULL && !t->hmac_busy[hash_alg]) {
        t->hmac_busy[hash_alg] = 1;
        *rc = MLSN_OK;
        return t->hmac[hash_alg];
    }
    ctx = EVP_MAC_CTX_dup(hmac_templates[hash_alg]);
    if (ctx == NULL) {
        *rc = MLSN_ERR_NOMEM;
        return NULL;
    }
    if (t != NULL && t->hmac[hash_alg] == NULL) {
        t->hmac[hash_alg] = ctx;
        t->hmac_busy[hash_alg] = 1;
    }
    *rc = MLSN_OK;
    return ctx;
}

void mlsn_release_hmac(EVP_MAC_CTX *ctx, int hash_alg)
{
    struct tls_contexts *t = pthread_getspecific(tls_key);

    if (ctx == NULL)
        return;
    if (t == NULL || hash_alg < 1 || hash_alg > 3 || t->hmac[hash_alg] != ctx) {
        EVP_MAC_CTX_free(ctx);
        return;
    }
    t->hmac_busy[hash_alg] = 0;
    if (EVP_MAC_init(ctx, public_key, sizeof(public_key), NULL) != 1) {
        ERR_clear_error();
        EVP_MAC_CTX_free(ctx);
        t->hmac[hash_alg] = NULL;
    }
}

EVP_MD_CTX *mlsn_borrow_md(int hash_alg, const EVP_MD **md, int *rc)
{
    struct tls_contexts *t;
    EVP_MD_CTX *ctx;

    *md = mlsn_md(hash_alg);
    if (*md == NULL) {
        *rc = missing();
        return NULL;
    }
    t = get_tls();
    if (t != NULL && t->md != NULL && !t->md_busy) {
        t->md_busy = 1;
        *rc = MLSN_OK;
        return t->md;
    }
    ctx = EVP_MD_CTX_new();
    if (ctx == NULL) {
        *rc = MLSN_ERR_NOMEM;
        return NULL;
    }
    if (t != NULL && t->md == NULL) {
        t->md = ctx;
        t->md_busy = 1;
    }
    *rc = MLSN_OK;
    return ctx;
}

void mlsn_release_md(EVP_MD_CTX *ctx)
{
    /* A digest context holds nothing secret once finalised (the input block is cleansed). */
    struct tls_contexts *t = pthread_getspecific(tls_key);

    if (ctx == NULL)
        return;
    if (t == NULL || t->md != ctx) {
        EVP_MD_CTX_free(ctx);
        return;
    }
    t->md_busy = 0;
}

size_t mlsn_put_varint(uint8_t *p, size_t v)
{
    if (v < 0x40) {
        p[0] = (uint8_t)v;
        return 1;
    }
    if (v < 0x4000) {
        p[0] = (uint8_t)(0x40 | (v >> 8));
        p[1] = (uint8_t)v;
        return 2;
    }
    if (v < 0x40000000) {
        mlsn_put_u32(p, (uint32_t)(v | 0x80000000u));
        return 4;
    }
    return 0;
}
