"""Fixtures shared by the SFEMC tests (add fixtures here; helpers live in their own modules)."""

from .pg import postgres_server, postgres_url

__all__ = ["postgres_server", "postgres_url"]
