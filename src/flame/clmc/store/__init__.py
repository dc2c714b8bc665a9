"""Storage behind the CLMC: one interface (`base.Store`), DuckDB by default, ClickHouse to scale."""
