/*
 * mlsn_common.c - one-time fetch of the libcrypto algorithms and shared helpers.
 *
 * Algorithms are fetched once (EVP_MD_fetch, EVP_CIPHER_fetch, EVP_MAC_fetch) and then only read, so
 * every entry point may run concurrently on several threads with the GIL released.
 *
 * AEADs are called through the implementing provider's own cipher functions (OSSL_PROVIDER_query_operation,
 * a public libcrypto API; see provider-cipher(7)) rather than EVP_CIPHER_CTX. MLS re-keys for every message,
 * and OpenSSL 3.0's EVP layer spends more time on each re-key (key and IV lengths looked up through
 * OSSL_PARAM name matching, the tag fetched the same way) than AES-GCM spends on a 100-byte message.
 * The provider functions are the ones EVP itself would call, so the bytes are the same.
 */
#include <pthread.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/params.h>
#include <openssl/provider.h>
#include <strings.h>

#include "mlsn_internal.h"

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static int init_status = MLSN_ERR_NOT_INITIALISED;
static pthread_key_t tls_key;

/* One thread's cached contexts; busy marks a context lent out. */
struct tls_contexts {
    void *aead[4];
    int aead_busy[4];
    EVP_MAC_CTX *hmac[4];
    int hmac_busy[4];
    EVP_MD_CTX *md;
    int md_busy;
};

static const uint8_t public_key[32]; /* all zero: what released contexts are keyed with */
static const uint8_t public_nonce[12];

static EVP_MD *digests[4];
static EVP_CIPHER *ciphers[4];
static struct mlsn_aead_impl aead_impls[4];
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
        if (t->aead[i] != NULL)
            aead_impls[i].freectx(t->aead[i]);
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

/* Whether `name` is one of the colon-separated names of a provider algorithm. */
static int has_name(const char *names, const char *name)
{
    size_t len = strlen(name);
    for (const char *p = names; p != NULL; p = strchr(p, ':')) {
        if (*p == ':')
            p++;
        if (strncasecmp(p, name, len) == 0 && (p[len] == ':' || p[len] == '\0'))
            return 1;
    }
    return 0;
}

/* Copy the cipher functions of `cipher` (fetched, so its provider stays loaded) from its provider. */
static int load_aead_impl(const EVP_CIPHER *cipher, const char *name, struct mlsn_aead_impl *impl)
{
    const OSSL_PROVIDER *prov = EVP_CIPHER_get0_provider(cipher);
    int no_store = 0, found = 0;
    const OSSL_ALGORITHM *algs = prov != NULL ? OSSL_PROVIDER_query_operation(prov, OSSL_OP_CIPHER, &no_store) : NULL;

    for (const OSSL_ALGORITHM *a = algs; a != NULL && a->algorithm_names != NULL && !found; a++) {
        if (!has_name(a->algorithm_names, name))
            continue;
        found = 1;
        for (const OSSL_DISPATCH *d = a->implementation; d->function_id != 0; d++) {
            switch (d->function_id) {
            case OSSL_FUNC_CIPHER_NEWCTX: impl->newctx = OSSL_FUNC_cipher_newctx(d); break;
            case OSSL_FUNC_CIPHER_FREECTX: impl->freectx = OSSL_FUNC_cipher_freectx(d); break;
            case OSSL_FUNC_CIPHER_ENCRYPT_INIT: impl->einit = OSSL_FUNC_cipher_encrypt_init(d); break;
            case OSSL_FUNC_CIPHER_DECRYPT_INIT: impl->dinit = OSSL_FUNC_cipher_decrypt_init(d); break;
            case OSSL_FUNC_CIPHER_UPDATE: impl->update = OSSL_FUNC_cipher_update(d); break;
            case OSSL_FUNC_CIPHER_FINAL: impl->final = OSSL_FUNC_cipher_final(d); break;
            case OSSL_FUNC_CIPHER_GET_CTX_PARAMS: impl->get_ctx_params = OSSL_FUNC_cipher_get_ctx_params(d); break;
            case OSSL_FUNC_CIPHER_SET_CTX_PARAMS: impl->set_ctx_params = OSSL_FUNC_cipher_set_ctx_params(d); break;
            default: break;
            }
        }
    }
    if (algs != NULL)
        OSSL_PROVIDER_unquery_operation(prov, OSSL_OP_CIPHER, algs);
    impl->provctx = prov != NULL ? OSSL_PROVIDER_get0_provider_ctx(prov) : NULL;
    return found && impl->newctx != NULL && impl->freectx != NULL && impl->einit != NULL && impl->dinit != NULL
           && impl->update != NULL && impl->final != NULL && impl->get_ctx_params != NULL
           && impl->set_ctx_params != NULL;
}

/*
 * Check that `impl` is the implementation EVP uses for `cipher`: one message sealed both ways must give the
 * same bytes. Guards the name matching in load_aead_impl against a provider listing several algorithms
 * under one name; a mismatch leaves the native backend unavailable (the Python one takes over).
 */
static int impl_matches_evp(const EVP_CIPHER *cipher, const struct mlsn_aead_impl *impl, size_t key_len)
{
    static const uint8_t key[32] = {0x4d, 0x4c, 0x53}, nonce[MLSN_NONCE_LEN] = {1}, aad[13] = {2}, pt[37] = {3};
    uint8_t by_evp[sizeof(pt) + MLSN_TAG_LEN], by_impl[sizeof(pt) + MLSN_TAG_LEN];
    EVP_CIPHER_CTX *evp = EVP_CIPHER_CTX_new();
    void *ctx = impl->newctx(impl->provctx);
    int got = 0, ok = evp != NULL && ctx != NULL
        && EVP_CipherInit_ex2(evp, cipher, key, nonce, 1, NULL) == 1
        && EVP_CipherUpdate(evp, NULL, &got, aad, sizeof(aad)) == 1
        && EVP_CipherUpdate(evp, by_evp, &got, pt, sizeof(pt)) == 1 && got == (int)sizeof(pt)
        && EVP_CipherFinal_ex(evp, by_evp + sizeof(pt), &got) == 1
        && EVP_CIPHER_CTX_ctrl(evp, EVP_CTRL_AEAD_GET_TAG, MLSN_TAG_LEN, by_evp + sizeof(pt)) == 1
        && mlsn_provider_seal(impl, ctx, key_len, key, nonce, aad, sizeof(aad), pt, sizeof(pt), by_impl) == MLSN_OK
        && memcmp(by_evp, by_impl, sizeof(by_evp)) == 0;

    EVP_CIPHER_CTX_free(evp);
    if (ctx != NULL)
        impl->freectx(ctx);
    ERR_clear_error();
    return ok;
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
            || EVP_CIPHER_get_iv_length(ciphers[i]) != MLSN_NONCE_LEN)
            return;
        if (!load_aead_impl(ciphers[i], cipher_names[i], &aead_impls[i])
            || !impl_matches_evp(ciphers[i], &aead_impls[i], cipher_key_lens[i]))
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
        *nonce_len = MLSN_NONCE_LEN;
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

const struct mlsn_aead_impl *mlsn_aead_impl(int aead)
{
    if (mlsn_init() != MLSN_OK || aead < 1 || aead > 3)
        return NULL;
    return &aead_impls[aead];
}

static int missing(void)
{
    return mlsn_init() == MLSN_OK ? MLSN_ERR_UNSUPPORTED : MLSN_ERR_NOT_INITIALISED;
}

void *mlsn_borrow_aead(int aead, const struct mlsn_aead_impl **impl, int *rc)
{
    struct tls_contexts *t;
    void *ctx;

    *impl = mlsn_aead_impl(aead);
    if (*impl == NULL) {
        *rc = missing();
        return NULL;
    }
    t = get_tls();
    if (t != NULL && t->aead[aead] != NULL && !t->aead_busy[aead]) {
        t->aead_busy[aead] = 1;
        *rc = MLSN_OK;
        return t->aead[aead];
    }
    ctx = (*impl)->newctx((*impl)->provctx);
    if (ctx == NULL) {
        *rc = MLSN_ERR_NOMEM;
        return NULL;
    }
    if (t != NULL && t->aead[aead] == NULL) {
        t->aead[aead] = ctx;
        t->aead_busy[aead] = 1;
    }
    *rc = MLSN_OK;
    return ctx;
}

void mlsn_release_aead(void *ctx, int aead)
{
    struct tls_contexts *t = pthread_getspecific(tls_key);
    const struct mlsn_aead_impl *impl = mlsn_aead_impl(aead);

    if (ctx == NULL || impl == NULL)
        return;
    if (t == NULL || t->aead[aead] != ctx) {
        impl->freectx(ctx); /* not cached: the provider cleanses it */
        return;
    }
    t->aead_busy[aead] = 0;
    /*
     * Re-key with the public key and finish an empty message under it: nothing of the last message (key,
     * ChaCha20 keystream, Poly1305 one-time key or GHASH state) stays in the context.
     */
    uint8_t scratch[MLSN_TAG_LEN];
    size_t got = 0;
    if (impl->einit(ctx, public_key, cipher_key_lens[aead], public_nonce, sizeof(public_nonce), NULL) != 1
        || impl->final(ctx, scratch, &got, 0) != 1) {
        ERR_clear_error();
        impl->freectx(ctx);
        t->aead[aead] = NULL;
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
