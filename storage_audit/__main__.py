"""Run the command line as `python -m storage_audit`."""

from .cli import main

# Guarded: scan workers are spawned processes that import the main module again.
if __name__ == "__main__":
    main()
