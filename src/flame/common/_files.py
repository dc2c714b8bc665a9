"""Kept for the modules that still import it: the helper lives in `flame.common.atomicfile`."""

from __future__ import annotations

from flame.common.atomicfile import atomic_write_private

__all__ = ["atomic_write_private"]
