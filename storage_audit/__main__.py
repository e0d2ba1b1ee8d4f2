"""The command line's entry point: `python -m storage_audit` and the `storage-audit` script."""


def main() -> None:
    # Imported here, not at the top: scan workers are spawned processes that import the main
    # module again, and they need none of the command line's pandas, typer and rich.
    from storage_audit.cli.app import main as run

    run()


if __name__ == "__main__":
    main()
