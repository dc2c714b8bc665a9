"""A stand-in control process for the crash tests: it places and boots SFEs through a
ProcessVim, prints their status as JSON lines and then idles until it is killed (SIGKILL)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from pathlib import Path

from flame.sfemc.images import ImageRepository
from flame.sfemc.vim.base import EndpointSpec
from flame.sfemc.vim.process import ProcessVim


async def main(root: str, images: str, first_port: int, digest: str, sfes: list[str]) -> None:
    vim = ProcessVim(
        Path(root), {"c1": range(first_port, first_port + 40)}, ImageRepository(Path(images))
    )
    for sfe in sfes:
        spec = EndpointSpec(
            sfe=sfe,
            tenant="acme",
            sfc="svc",
            sfci="i1",
            sf="echo",
            cluster="c1",
            fqdn="echo.example",
            image=digest,
        )
        await vim.place(spec)
        status = await vim.boot(sfe)
        doc = dataclasses.asdict(status)
        print(json.dumps({**doc, "state": status.state.value}), flush=True)
    print("ready", flush=True)
    await asyncio.Event().wait()  # until SIGKILL


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5:]))
