"""CLMC: cross-layer monitoring and control (CLMC-1..22).

InfluxDB 1.x compatible ingest and query over a columnar store, alert rules evaluated as data
arrives, KPI and lifecycle events for the SFEMC.
"""
