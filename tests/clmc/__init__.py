"""CLMC tests: ingest, stores, API, compatibility with InfluxDB 1.6 (influxql/ and alerts/ have their own)."""
