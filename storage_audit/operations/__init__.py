"""What each command does, as library calls: resolve ROOT, load or scan, report, check, plan, apply, diff."""
