"""The orchestrator's fixtures (a real API over an in-memory VIM) for the matrix tests."""

from orchestrator.conftest import fake_vim, platform, registrar

__all__ = ["fake_vim", "platform", "registrar"]
