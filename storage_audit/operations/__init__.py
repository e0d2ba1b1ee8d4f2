"""What each command does, as a library call on a resolved ROOT: it returns data, prints nothing, raises AuditErrors."""
