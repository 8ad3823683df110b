/*
 * mlsn_secret_tree.h - secret-tree derivations (RFC 9420 §9, §9.1, §6.3.2).
 *
 * ratchet_steps runs a sender ratchet forward `count` generations in one call. For each generation
 * g = start_generation .. start_generation+count-1, with secret_g the ratchet secret:
 *     key_g     = DeriveTreeSecret(secret_g, "key",    g, Nk)   -> keys   + (g - start) * Nk
 *     nonce_g   = DeriveTreeSecret(secret_g, "nonce",  g, Nn)   -> nonces + (g - start) * Nn
 *     secret_g+1 = DeriveTreeSecret(secret_g, "secret", g, Nh)
 * and next_secret receives secret_{start+count}. secret_len must be Nh; 1 <= Nk, Nn <= 255*Nh;
 * count <= MLSN_MAX_RATCHET_STEPS and start_generation + count <= 2^32 (generations are uint32).
 */
#ifndef MLSN_SECRET_TREE_H
#define MLSN_SECRET_TREE_H

#include <stddef.h>
#include <stdint.h>

int mlsn_ratchet_steps(int hash_alg, const uint8_t *secret, size_t secret_len, uint32_t start_generation,
                       uint32_t count, size_t nk, size_t nn, uint8_t *keys, size_t keys_len, uint8_t *nonces,
                       size_t nonces_len, uint8_t *next_secret, size_t next_secret_len);

/*
 * Sender-data key and nonce (§6.3.2): with sample = the first Nh bytes of the ciphertext (all of it when
 * shorter), key = ExpandWithLabel(sender_data_secret, "key", sample, Nk) and
 * nonce = ExpandWithLabel(sender_data_secret, "nonce", sample, Nn). secret_len must be Nh.
 */
int mlsn_sender_data_key_nonce(int hash_alg, const uint8_t *secret, size_t secret_len,
                               const uint8_t *ciphertext, size_t ciphertext_len, uint8_t *key, size_t key_len,
                               uint8_t *nonce, size_t nonce_len);

#endif /* MLSN_SECRET_TREE_H */
