"""One graph per command and every answer computed from it: reachability, reports, checks, diffs."""
