"""Fixtures of the orchestrator tests: the API served for real, over an in-memory VIM."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from flame.sfemc.registrar import InProcessRegistrar
from sfemc.fakes import FakeVim

from .harness import Platform, running_platform

CLUSTERS = ("edge-bristol", "edge-bath", "metro-london")


@pytest_asyncio.fixture
async def fake_vim() -> FakeVim:
    return FakeVim()


@pytest_asyncio.fixture
async def registrar() -> InProcessRegistrar:
    return InProcessRegistrar(
        {"vod.flame.example": "acme", "media.flame.test": "acme", "globex.example": "globex"}
    )


@pytest_asyncio.fixture
async def platform(
    tmp_path: Path, fake_vim: FakeVim, registrar: InProcessRegistrar
) -> AsyncIterator[Platform]:
    async with running_platform(tmp_path, dict.fromkeys(CLUSTERS, fake_vim), registrar) as p:
        yield p
