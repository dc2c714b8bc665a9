"""The FLAME dashboard (CLMC): topology with endpoint states, KPIs with alert thresholds, and
alerts and state changes on one timeline. A static page plus one snapshot endpoint that gathers
what the PCE, the CLMC and the orchestrator say, with the caller's own token (so a tenant sees
only what those APIs show a tenant)."""
