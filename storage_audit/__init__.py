"""storage-audit: audit a Docker/OCI registry's storage offline."""

__version__ = "0.1.0"
