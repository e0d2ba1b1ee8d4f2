"""Talking to a running registry over its HTTP API: credentials, authentication, TLS, retries and a rate limit."""
