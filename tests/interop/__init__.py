"""Live interop tests against ts-mls (a Node peer driven over a JSON line protocol)."""
