"""The vocabulary every layer shares: errors and exit codes, storage paths, findings, manifests, words."""
