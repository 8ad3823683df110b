"""Secrets of an epoch (RFC 9420 §8, §9): the key schedule, PSKs, transcript hashes and the secret tree."""
