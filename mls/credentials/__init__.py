"""Credentials (RFC 9420 §5.3): the credential struct and X.509 chain validation (§5.3.1)."""
