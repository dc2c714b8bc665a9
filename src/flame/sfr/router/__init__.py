"""The service router data plane (SFR-1, SFR-14)."""
