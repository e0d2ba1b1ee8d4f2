"""Run the command line as `python -m storage_audit`."""

from .cli import main

main()
