"""A stand-in control process for the sandbox crash test: like `_controller.py`, but its VIM
requires the sandbox and takes its uids from the range given. Idles until SIGKILL."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from pathlib import Path

from flame.sfemc.images import ImageRepository
from flame.sfemc.vim.base import EndpointSpec
from flame.sfemc.vim.process import ProcessVim


async def main(
    root: str, images: str, first_port: int, first_uid: int, digest: str, sfes: list[str]
) -> None:
    vim = ProcessVim(
        Path(root),
        {"c1": range(first_port, first_port + 30)},
        ImageRepository(Path(images)),
        sandbox="required",
        sandbox_uids=range(first_uid, first_uid + 64),
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
    args = sys.argv
    asyncio.run(main(args[1], args[2], int(args[3]), int(args[4]), args[5], args[6:]))
