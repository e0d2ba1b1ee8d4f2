"""Output formats behind one interface: tables, CSV, JSON, Parquet, Prometheus, the HTML page."""
