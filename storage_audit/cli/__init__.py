"""The command line: parse arguments, call the operations, render, map failures to exit codes."""
