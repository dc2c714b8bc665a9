"""Alert rules evaluated as data streams in (CLMC-19..22): windows, comparisons, KPI events."""
