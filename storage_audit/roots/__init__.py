"""What ROOT designates (a local tree, a bucket, a snapshot), resolved once at the edge."""
