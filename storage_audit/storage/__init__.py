"""Storage backends behind one interface: a local tree, or a bucket in object storage."""
