"""flame-platform: open media-service delivery on edge infrastructure (FLAME)."""

__version__ = "0.1.0"
