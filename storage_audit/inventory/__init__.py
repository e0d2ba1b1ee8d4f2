"""The tables a scan reads, their text held as codes, and their Parquet snapshots."""
