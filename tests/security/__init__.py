"""Security tests: PKI and mutual TLS, organization keys, at-rest encryption."""
