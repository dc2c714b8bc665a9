"""The remote VIM driver: a cluster's process VIM on another host, through its agent (issue 13).

`flame serve vim --cluster NAME` runs the process VIM (sandboxed, as on one machine) on the
cluster's host behind an authenticated HTTP API (`flame.sfemc.agent`); `RemoteVim` is the
`VimDriver` the SFEMC uses for such clusters. Every call is one request, every request is
idempotent on the agent's side (the process VIM's own calls are), so a request repeated after
a lost answer changes nothing.

Failures:

* the agent cannot be asked (connection refused or reset, time-out, a proxy's 502/503/504, or it
  refuses this SFEMC's token): `VimUnreachable`. Nothing is known of the SFE then, so the
  reconciler keeps the endpoint's state and asks again; it never concludes the SFE is gone
  (an agent restarting or cut off leaves its SFEs running) and never places a second one;
* the agent answered with the process VIM's own `VimError`: the same error here (its reason,
  `permanent` and the SFE's last output lines travel in the JSON body);
* anything else it refuses (4xx): a permanent `VimError` saying what it said.

Images: a spec naming an image by `name` or `name:tag` is sent with the digest this SFEMC's
repository resolves it to, so the agent pulls exactly the bytes the orchestrator admitted.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import logging
import ssl
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import httpx

from flame.common.tls import require_private_url
from flame.sfemc.images import ImageError, ImageRepository
from flame.sfemc.vim.base import EndpointSpec, VimError, VimStatus, VimUnreachable
from flame.sfemc.vim.wire import WireError, spec_to_json, status_from_json

__all__ = ["RemoteVim", "VimUnreachable"]

log = logging.getLogger(__name__)

_UNREACHABLE_STATUSES = {502, 503, 504}


class RemoteVim:
    """The process VIM of `clusters`, run by the agent at `url` (`flame serve vim`)."""

    kind = "agent"

    def __init__(
        self,
        url: str,
        token: str | None,
        clusters: Sequence[str],
        *,
        repository: ImageRepository | None = None,
        timeout_s: float = 10.0,
        place_timeout_s: float = 300.0,
        boot_timeout_s: float = 120.0,
        verify: ssl.SSLContext | bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`timeout_s` bounds status, list, logs, stop and remove; placing (which may pull an
        image) and booting (which waits for the health check) get their own, longer ones.
        `verify`: httpx's (`flame.common.tls.client_verify(config.ca_file)` for an agent
        serving HTTPS with a platform certificate). The token never goes in clear off this
        host: an `http://` URL must be loopback (`ClearTextToken` otherwise)."""
        require_private_url(url, token, what="the VIM agent")
        self.url = url.rstrip("/")
        self.clusters = tuple(clusters)
        self.repository = repository
        self.timeout_s = timeout_s
        self.place_timeout_s = place_timeout_s
        self.boot_timeout_s = boot_timeout_s
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=headers,
            timeout=timeout_s,
            trust_env=False,
            verify=verify,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"RemoteVim({self.url!r}, clusters={list(self.clusters)!r})"

    # -- the VimDriver interface -------------------------------------------------------------

    async def place(self, spec: EndpointSpec) -> VimStatus:
        if spec.cluster not in self.clusters:
            raise VimError(
                spec.sfe,
                f"cluster {spec.cluster!r} is not served by the VIM agent at {self.url} "
                f"(it serves: {', '.join(self.clusters) or 'none'})",
                permanent=True,
            )
        wire = spec
        if self.repository is not None:
            try:
                digest = await asyncio.to_thread(self.repository.resolve, spec.image, spec.tenant)
            except ImageError as exc:
                raise VimError(spec.sfe, exc.message, permanent=True) from exc
            wire = dataclasses.replace(spec, image=digest)
        body = await self._call(
            spec.sfe,
            "PUT",
            _path(spec.sfe),
            json={"spec": spec_to_json(wire)},
            timeout=self.place_timeout_s,
        )
        return self._status(spec.sfe, body)

    async def boot(self, sfe: str) -> VimStatus:
        body = await self._call(sfe, "POST", _path(sfe, "boot"), timeout=self.boot_timeout_s)
        return self._status(sfe, body)

    async def stop(self, sfe: str) -> VimStatus:
        body = await self._call(sfe, "POST", _path(sfe, "stop"), timeout=self.boot_timeout_s)
        return self._status(sfe, body)

    async def remove(self, sfe: str) -> None:
        await self._call(sfe, "DELETE", _path(sfe), timeout=self.boot_timeout_s)

    async def status(self, sfe: str) -> VimStatus:
        return self._status(sfe, await self._call(sfe, "GET", _path(sfe)))

    async def list(self) -> builtins.list[VimStatus]:
        body = await self._call("*", "GET", "/v1/sfes")
        if not isinstance(body, builtins.list):
            raise VimError("*", f"the VIM agent at {self.url} answered a list that is not one")
        return [self._status("*", item) for item in body]

    async def logs(self, sfe: str, tail: int = 100) -> builtins.list[str]:
        body = await self._call(sfe, "GET", _path(sfe, "logs"), params={"tail": str(tail)})
        lines = body.get("lines") if isinstance(body, dict) else None
        return [str(line) for line in lines] if isinstance(lines, builtins.list) else []

    async def close(self) -> None:
        await self._http.aclose()

    # -- beyond the interface ----------------------------------------------------------------

    async def available(self) -> bool:
        """Whether the agent answers at all (its public health check)."""
        try:
            response = await self._http.get("/health", timeout=min(self.timeout_s, 2.0))
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def describe(self) -> dict[str, Any]:
        """What the agent says of itself: clusters, addresses, port ranges, sandbox."""
        body = await self._call("*", "GET", "/v1/vim")
        return body if isinstance(body, dict) else {}

    # -- helpers -----------------------------------------------------------------------------

    def _status(self, sfe: str, body: Any) -> VimStatus:
        try:
            return status_from_json(body)
        except WireError as exc:
            raise VimError(sfe, f"the VIM agent at {self.url} answered nonsense: {exc}") from None

    async def _call(
        self,
        sfe: str,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        try:
            response = await self._http.request(
                method,
                path,
                json=json,
                params=params,
                timeout=self.timeout_s if timeout is None else timeout,
            )
        except httpx.HTTPError as exc:
            raise VimUnreachable(
                sfe,
                f"the VIM agent at {self.url} did not answer "
                f"({type(exc).__name__}{': ' + str(exc) if str(exc) else ''}); asking again",
            ) from None
        if response.status_code < 300:
            return response.json() if response.content else None
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        message = str(body.get("message") or response.text[:200] or response.reason_phrase)
        if body.get("error") == "vim_error":
            raise VimError(
                sfe,
                str(body.get("reason") or message),
                permanent=bool(body.get("permanent")),
                logs=[str(line) for line in body.get("logs") or ()],
            )
        if response.status_code in (401, 403):
            raise VimUnreachable(
                sfe,
                f"the VIM agent at {self.url} refused this SFEMC's token "
                f"({response.status_code}: {message}); give the orchestrator an operator token "
                "the agent's token store knows (--vim-token or the config's token)",
            )
        if response.status_code in _UNREACHABLE_STATUSES:
            raise VimUnreachable(
                sfe, f"the VIM agent at {self.url} is unavailable ({response.status_code})"
            )
        permanent = 400 <= response.status_code < 500 and response.status_code not in (408, 429)
        raise VimError(
            sfe,
            f"the VIM agent at {self.url} refused {method} {path} "
            f"({response.status_code}): {message}",
            permanent=permanent,
        )


def _path(sfe: str, action: str | None = None) -> str:
    base = f"/v1/sfes/{quote(sfe, safe='')}"
    return f"{base}/{action}" if action else base
