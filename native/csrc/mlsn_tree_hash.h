/*
 * mlsn_tree_hash.h - tree hashes of a ratchet tree (RFC 9420 §7.8) over the array representation of
 * Appendix C (leaf i at node 2i, parents at odd indices).
 *
 * A tree is given as n_nodes node slots (n_nodes odd): present[x] is 1 when node x holds a value and
 * 0 when it is blank; the values of the present nodes - the encoded LeafNode for an even x, the encoded
 * ParentNode for an odd x - are concatenated in data, with their lengths in lens (n_present of them).
 *
 * RFC 9420 trees are perfect (2^d leaves; §4.1, §7.7): when (n_nodes + 1) / 2 is not a power of two the
 * tree is taken as extended to the right with blank nodes to the next power of two, the way a receiver
 * extends a truncated ratchet_tree extension (§12.4.3.3). `out` receives the tree hash of every node of
 * that full tree, Nh bytes each, in node order: out_len must be (2 * 2^d - 1) * Nh.
 *
 * Each node's TreeHashInput is built in C and fed to the digest:
 *   leaf:   uint8 1 | uint32 leaf_index | optional<LeafNode>
 *   parent: uint8 2 | optional<ParentNode> | opaque left_hash<V> | opaque right_hash<V>
 */
#ifndef MLSN_TREE_HASH_H
#define MLSN_TREE_HASH_H

#include <stddef.h>
#include <stdint.h>

/* Number of node slots of the full tree for n_nodes given slots, or 0 if n_nodes is not a valid width. */
size_t mlsn_tree_full_width(size_t n_nodes);

int mlsn_tree_hashes(int hash_alg, size_t n_nodes, const uint8_t *present, const uint8_t *data,
                     size_t data_len, const size_t *lens, size_t n_present, uint8_t *out, size_t out_len);

/*
 * mlsn_tree_hashes with the tree given the way a ratchet tree holds it: lens has one entry per node slot
 * (n_nodes of them), 0 for a blank node - an encoded LeafNode or ParentNode is never empty. With
 * starts == NULL, data holds the present nodes' values back to back (sum of lens == data_len); else node
 * x's value is the lens[x] bytes at data + starts[x] (each span inside data), e.g. in the message a tree
 * was decoded from. Same output.
 */
int mlsn_tree_hashes_spans(int hash_alg, size_t n_nodes, const uint8_t *data, size_t data_len,
                           const size_t *starts, const size_t *lens, uint8_t *out, size_t out_len);

/*
 * Recompute the tree hashes on one leaf's direct path in a full tree of 2^depth leaves, the rest of
 * the tree unchanged. The path has depth + 1 nodes, leaf first, root last: present/data/lens describe
 * them as above. copath holds the depth sibling hashes from the leaf's sibling up to the root's child
 * on the other side (depth * Nh bytes). out receives the depth + 1 new hashes, leaf first.
 */
int mlsn_tree_hash_path(int hash_alg, uint32_t leaf_index, size_t depth, const uint8_t *present,
                        const uint8_t *data, size_t data_len, const size_t *lens, size_t n_present,
                        const uint8_t *copath, size_t copath_len, uint8_t *out, size_t out_len);

#endif /* MLSN_TREE_HASH_H */
