/*
 * mlsn_tree_hash.c - tree hashes (RFC 9420 §7.8) for a whole tree or along one direct path.
 *
 * Tree math is that of Appendix C for a perfect tree of 2^d leaves: the level-k parents are the nodes
 * x = j * 2^(k+1) + 2^k - 1, with children x -/+ 2^(k-1). A whole tree is hashed level by level
 * (leaves, then each parent level).
 *
 * Node inputs are tiny (tens to hundreds of bytes) and a tree has tens of thousands of them, so the
 * per-digest set-up cost decides the speed. OpenSSL 3.0's EVP_DigestInit frees and re-creates the
 * provider context on every init; its SHA-2 functions (SHA256_Init & co., deprecated in favour of EVP
 * but still libcrypto's own implementation) start a digest in a plain struct. This file uses them.
 */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>

#include "mlsn_internal.h"
#include "mlsn_tree_hash.h"

/* Longest data buffer accepted: every message's bit length then fits SHA-2's 64-bit length field. */
#define MAX_DATA_LEN (SIZE_MAX >> 4)

/* One SHA-2 digest in progress (SHA-384 runs on the SHA-512 state). */
struct sha2 {
    int alg;
    union {
        SHA256_CTX s256;
        SHA512_CTX s512;
    } u;
};

static int sha2_init(struct sha2 *d)
{
    switch (d->alg) {
    case MLSN_HASH_SHA256:
        return SHA256_Init(&d->u.s256);
    case MLSN_HASH_SHA384:
        return SHA384_Init(&d->u.s512);
    case MLSN_HASH_SHA512:
        return SHA512_Init(&d->u.s512);
    default:
        return 0;
    }
}

static int sha2_update(struct sha2 *d, const void *data, size_t len)
{
    if (len == 0)
        return 1;
    if (d->alg == MLSN_HASH_SHA256)
        return SHA256_Update(&d->u.s256, data, len);
    return d->alg == MLSN_HASH_SHA384 ? SHA384_Update(&d->u.s512, data, len) : SHA512_Update(&d->u.s512, data, len);
}

static int sha2_final(struct sha2 *d, uint8_t *out)
{
    if (d->alg == MLSN_HASH_SHA256)
        return SHA256_Final(out, &d->u.s256);
    return d->alg == MLSN_HASH_SHA384 ? SHA384_Final(out, &d->u.s512) : SHA512_Final(out, &d->u.s512);
}

enum { NODE_LEAF = 1, NODE_PARENT = 2 };
#define MAX_DEPTH 32 /* leaf indices are uint32 */

size_t mlsn_tree_full_width(size_t n_nodes)
{
    if (n_nodes == 0 || n_nodes % 2 == 0)
        return 0;
    size_t n_leaves = n_nodes / 2 + 1, full = 1;
    for (unsigned d = 0; full < n_leaves; d++) {
        if (d >= MAX_DEPTH)
            return 0;
        full <<= 1;
    }
    if (full > SIZE_MAX / 2)
        return 0;
    return 2 * full - 1;
}

/* Inputs up to this size are assembled in one buffer and fed to the digest in one update. */
#define ONE_UPDATE_MAX 512

/*
 * Digest head | value | tail, as one buffer in one update when it is small (every LeafNode and ParentNode
 * of an ordinary tree: fewer calls and partial-block copies), else piece by piece. value == NULL (blank)
 * contributes nothing.
 */
static int digest3(struct sha2 *d, const uint8_t *head, size_t head_len, const uint8_t *value, size_t len,
                   const uint8_t *tail, size_t tail_len, uint8_t *out)
{
    uint8_t buf[ONE_UPDATE_MAX];
    int ok;

    if (value == NULL)
        len = 0;
    if (sha2_init(d) != 1)
        return mlsn_ossl_error();
    if (len <= ONE_UPDATE_MAX - head_len - tail_len) {
        memcpy(buf, head, head_len);
        if (len > 0)
            memcpy(buf + head_len, value, len);
        if (tail_len > 0)
            memcpy(buf + head_len + len, tail, tail_len);
        ok = sha2_update(d, buf, head_len + len + tail_len);
    } else {
        ok = sha2_update(d, head, head_len) && sha2_update(d, value, len) && sha2_update(d, tail, tail_len);
    }
    return ok == 1 && sha2_final(d, out) == 1 ? MLSN_OK : mlsn_ossl_error();
}

/* Hash of a leaf: node_type 1, uint32 leaf_index, optional<LeafNode>. data == NULL means blank. */
static int hash_leaf(struct sha2 *d, uint32_t leaf_index, const uint8_t *data, size_t len, uint8_t *out)
{
    uint8_t head[6];

    head[0] = NODE_LEAF;
    mlsn_put_u32(head + 1, leaf_index);
    head[5] = data != NULL ? 1 : 0;
    return digest3(d, head, sizeof(head), data, len, NULL, 0, out);
}

/* Hash of a parent: node_type 2, optional<ParentNode>, left_hash<V>, right_hash<V>. */
static int hash_parent(struct sha2 *d, size_t nh, const uint8_t *data, size_t len, const uint8_t *left,
                       const uint8_t *right, uint8_t *out)
{
    uint8_t head[2], tail[2 * (4 + MLSN_MAX_HASH_LEN)];
    size_t pos = 0;

    head[0] = NODE_PARENT;
    head[1] = data != NULL ? 1 : 0;
    pos += mlsn_put_varint(tail + pos, nh);
    memcpy(tail + pos, left, nh);
    pos += nh;
    pos += mlsn_put_varint(tail + pos, nh);
    memcpy(tail + pos, right, nh);
    pos += nh;
    return digest3(d, head, sizeof(head), data, len, tail, pos, out);
}

/* Where a node's value lies in data; off == SIZE_MAX for a blank node. */
struct span {
    size_t off;
    size_t len;
};

/* Check present/lens/data against each other and locate every node's value. */
static int index_nodes(size_t n_nodes, const uint8_t *present, const size_t *lens, size_t n_present,
                       size_t data_len, struct span *spans)
{
    size_t used = 0, pos = 0;

    for (size_t x = 0; x < n_nodes; x++) {
        if (present[x] > 1)
            return MLSN_ERR_LENGTH;
        if (!present[x]) {
            spans[x].off = SIZE_MAX;
            spans[x].len = 0;
            continue;
        }
        if (used >= n_present || lens[used] > data_len - pos)
            return MLSN_ERR_LENGTH;
        spans[x].off = pos;
        spans[x].len = lens[used];
        pos += lens[used++];
    }
    return (used == n_present && pos == data_len) ? MLSN_OK : MLSN_ERR_LENGTH;
}

/* Check lens against data (one length per node slot, 0 for a blank node) and locate every node's value. */
static int index_packed(size_t n_nodes, const size_t *lens, size_t data_len, struct span *spans)
{
    size_t pos = 0;

    for (size_t x = 0; x < n_nodes; x++) {
        if (lens[x] > data_len - pos)
            return MLSN_ERR_LENGTH;
        spans[x].off = lens[x] > 0 ? pos : SIZE_MAX;
        spans[x].len = lens[x];
        pos += lens[x];
    }
    return pos == data_len ? MLSN_OK : MLSN_ERR_LENGTH;
}

/* Check explicit spans: node x's value is lens[x] bytes at data + starts[x] (0 for a blank node). */
static int index_spans(size_t n_nodes, const size_t *starts, const size_t *lens, size_t data_len,
                       struct span *spans)
{
    for (size_t x = 0; x < n_nodes; x++) {
        if (starts[x] > data_len || lens[x] > data_len - starts[x])
            return MLSN_ERR_LENGTH;
        spans[x].off = lens[x] > 0 ? starts[x] : SIZE_MAX;
        spans[x].len = lens[x];
    }
    return MLSN_OK;
}

/* The value of node x (NULL when blank or beyond the given slots). */
static const uint8_t *node_value(const struct span *spans, size_t n_nodes, const uint8_t *data, size_t x,
                                 size_t *len)
{
    static const uint8_t empty[1] = {0};
    *len = 0;
    if (x >= n_nodes || spans[x].off == SIZE_MAX)
        return NULL;
    *len = spans[x].len;
    return spans[x].len > 0 ? data + spans[x].off : empty;
}

/* A full tree being hashed: where its node values lie, and the output (Nh bytes per node slot). */
struct tree {
    const struct span *spans;
    size_t n_nodes, width, nh;
    const uint8_t *data;
    uint8_t *out;
};

/* Every node's hash, one libcrypto digest at a time: the leaves, then each parent level. */
static int hash_tree(int hash_alg, const struct tree *t)
{
    struct sha2 d = {.alg = hash_alg};
    size_t nh = t->nh, n_leaves = (t->width + 1) / 2, len;
    uint8_t *out = t->out;
    int rc = MLSN_OK;

    for (size_t i = 0; i < n_leaves && rc == MLSN_OK; i++) {
        const uint8_t *value = node_value(t->spans, t->n_nodes, t->data, 2 * i, &len);
        rc = hash_leaf(&d, (uint32_t)i, value, len, out + 2 * i * nh);
    }
    /* Level k >= 1: x = j * 2^(k+1) + 2^k - 1 for j < n_leaves / 2^k; children x -/+ 2^(k-1). */
    for (size_t half = 1; 2 * half <= n_leaves && rc == MLSN_OK; half *= 2) {
        for (size_t x = 2 * half - 1; x < t->width && rc == MLSN_OK; x += 4 * half) {
            const uint8_t *value = node_value(t->spans, t->n_nodes, t->data, x, &len);
            rc = hash_parent(&d, nh, value, len, out + (x - half) * nh, out + (x + half) * nh, out + x * nh);
        }
    }
    return rc;
}

/* ---- whole trees ------------------------------------------------------------------------------- */

/* Checks common to both whole-tree entry points; sets up t but for its spans. */
static int tree_args(int hash_alg, size_t n_nodes, const uint8_t *data, size_t data_len, uint8_t *out,
                     size_t out_len, struct tree *t)
{
    size_t need;

    *t = (struct tree){.n_nodes = n_nodes, .width = mlsn_tree_full_width(n_nodes),
                       .nh = mlsn_hash_len(hash_alg), .data = data, .out = out};
    if (t->nh == 0)
        return MLSN_ERR_UNSUPPORTED;
    if (t->width == 0 || !mlsn_buf_ok(data, data_len) || data_len > MAX_DATA_LEN || out == NULL
        || !mlsn_mul_size(t->width, t->nh, &need) || out_len != need)
        return MLSN_ERR_LENGTH;
    return MLSN_OK;
}

static struct span *new_spans(size_t n_nodes)
{
    return n_nodes > SIZE_MAX / sizeof(struct span) ? NULL : malloc(n_nodes * sizeof(struct span));
}

int mlsn_tree_hashes(int hash_alg, size_t n_nodes, const uint8_t *present, const uint8_t *data,
                     size_t data_len, const size_t *lens, size_t n_present, uint8_t *out, size_t out_len)
{
    struct tree t;
    struct span *spans;
    int rc = tree_args(hash_alg, n_nodes, data, data_len, out, out_len, &t);

    if (rc != MLSN_OK)
        return rc;
    if (present == NULL || !mlsn_buf_ok(lens, n_present) || n_present > n_nodes)
        return MLSN_ERR_LENGTH;
    if ((spans = new_spans(n_nodes)) == NULL)
        return MLSN_ERR_NOMEM;
    rc = index_nodes(n_nodes, present, lens, n_present, data_len, spans);
    t.spans = spans;
    if (rc == MLSN_OK)
        rc = hash_tree(hash_alg, &t);
    free(spans);
    return rc;
}

int mlsn_tree_hashes_spans(int hash_alg, size_t n_nodes, const uint8_t *data, size_t data_len,
                           const size_t *starts, const size_t *lens, uint8_t *out, size_t out_len)
{
    struct tree t;
    struct span *spans;
    int rc = tree_args(hash_alg, n_nodes, data, data_len, out, out_len, &t);

    if (rc != MLSN_OK)
        return rc;
    if (lens == NULL)
        return MLSN_ERR_LENGTH;
    if ((spans = new_spans(n_nodes)) == NULL)
        return MLSN_ERR_NOMEM;
    rc = starts == NULL ? index_packed(n_nodes, lens, data_len, spans)
                        : index_spans(n_nodes, starts, lens, data_len, spans);
    t.spans = spans;
    if (rc == MLSN_OK)
        rc = hash_tree(hash_alg, &t);
    free(spans);
    return rc;
}

int mlsn_tree_hash_path(int hash_alg, uint32_t leaf_index, size_t depth, const uint8_t *present,
                        const uint8_t *data, size_t data_len, const size_t *lens, size_t n_present,
                        const uint8_t *copath, size_t copath_len, uint8_t *out, size_t out_len)
{
    size_t nh = mlsn_hash_len(hash_alg), len;
    struct span spans[MAX_DEPTH + 1];
    struct sha2 d = {.alg = hash_alg};
    int rc;

    if (nh == 0)
        return MLSN_ERR_UNSUPPORTED;
    if (depth > MAX_DEPTH || (depth < MAX_DEPTH && leaf_index >= ((uint64_t)1 << depth)))
        return MLSN_ERR_RANGE;
    if (present == NULL || !mlsn_buf_ok(data, data_len) || !mlsn_buf_ok(lens, n_present)
        || n_present > depth + 1 || copath == NULL || copath_len != depth * nh || out == NULL
        || out_len != (depth + 1) * nh)
        return MLSN_ERR_LENGTH;
    rc = index_nodes(depth + 1, present, lens, n_present, data_len, spans);
    if (rc != MLSN_OK)
        return rc;

    const uint8_t *value = node_value(spans, depth + 1, data, 0, &len);
    rc = hash_leaf(&d, leaf_index, value, len, out);
    for (size_t k = 1; k <= depth && rc == MLSN_OK; k++) {
        /* The path's level-(k-1) node is the left child when bit k-1 of the leaf index is 0. */
        const uint8_t *below = out + (k - 1) * nh, *sibling = copath + (k - 1) * nh;
        int path_is_left = ((leaf_index >> (k - 1)) & 1u) == 0;
        const uint8_t *left = path_is_left ? below : sibling, *right = path_is_left ? sibling : below;
        value = node_value(spans, depth + 1, data, k, &len);
        rc = hash_parent(&d, nh, value, len, left, right, out + k * nh);
    }
    return rc;
}
