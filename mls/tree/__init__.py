"""The ratchet tree (RFC 9420 §4.1, §7, Appendix C): tree math, nodes and leaf nodes, the public tree
with its hashes, TreeKEM, and the validation of leaves and whole trees."""
