"""What each command does, as library calls on a resolved ROOT: load, survey (scan), untagged, orphans, report,
check, plan, apply, diff; each returns data, prints nothing and raises AuditErrors."""
