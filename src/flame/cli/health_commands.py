"""`flame health URL`: is a component up? For service managers and probes (systemd's
`ExecStartPost=`, a container's exec probe, a script), where no curl may be installed and an
https:// URL needs the platform CA of the config (`ca_file`).

Exit codes: 0 healthy, 1 not healthy (or not answering) when the wait ends. No token is sent:
every component's health route is public, and a token must not go where it is not needed.
"""

from __future__ import annotations

import json
import time

import click
import httpx

from flame.cli._state import CliState
from flame.common.tls import client_verify

__all__ = ["COMMANDS", "probe"]

_POLL_S = 0.2
_MAX_BODY = 4096  # what is echoed of an answer: a health body is small; never a flood


def probe(
    url: str, *, host: str | None, verify: object, timeout_s: float, any_answer: bool
) -> tuple[bool, str]:
    """One GET: (healthy, what was seen). `any_answer`: any HTTP status counts (the server
    is listening and answering; an SR without its first table answers 503)."""
    headers = {"Host": host} if host else {}
    try:
        with httpx.stream(
            "GET",
            url,
            headers=headers,
            timeout=timeout_s,
            trust_env=False,  # a proxy from the environment must not stand in for the component
            verify=verify,  # type: ignore[arg-type]
            follow_redirects=False,
        ) as response:
            body = b""
            for chunk in response.iter_bytes():  # a health body is small: read no more than shown
                body += chunk
                if len(body) >= _MAX_BODY:
                    break
    except httpx.HTTPError as exc:
        return False, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = body[:_MAX_BODY].decode("utf-8", "replace").strip()
    return any_answer or response.is_success, f"HTTP {response.status_code} {text}".strip()


@click.command("health")
@click.argument("url")
@click.option(
    "--wait",
    "wait_s",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 3600),
    help="Keep asking for up to this many seconds until healthy (0: ask once).",
)
@click.option(
    "--timeout",
    "timeout_s",
    default=2.0,
    show_default=True,
    type=click.FloatRange(0.05, 60),
    help="Seconds for one request.",
)
@click.option(
    "--host-header",
    "host",
    metavar="NAME",
    help="Host header to send (an SR answers its health for '_flame': /.flame/health).",
)
@click.option(
    "--any-answer",
    is_flag=True,
    help="Any HTTP answer counts as up, not only 2xx (an SR with no table yet answers 503).",
)
@click.pass_obj
def health_cmd(
    state: CliState, url: str, wait_s: float, timeout_s: float, host: str | None, any_answer: bool
) -> None:
    """Check a component's health URL (e.g. https://10.0.0.1:7070/health); exit 0 when it
    answers 2xx, 1 otherwise. https:// is verified with the config's ca_file."""
    if not url.startswith(("http://", "https://")):
        raise click.BadParameter("give an http:// or https:// URL", param_hint="URL")
    verify = client_verify(state.config().ca_file) if url.startswith("https://") else True
    deadline = time.monotonic() + wait_s
    attempts = 0
    while True:
        attempts += 1
        healthy, seen = probe(
            url, host=host, verify=verify, timeout_s=timeout_s, any_answer=any_answer
        )
        if healthy or time.monotonic() + _POLL_S > deadline:
            break
        time.sleep(_POLL_S)
    if state.json:
        click.echo(json.dumps({"url": url, "healthy": healthy, "attempts": attempts, "seen": seen}))
    else:
        click.echo(f"{url}: {'healthy' if healthy else 'NOT healthy'} ({seen})", err=not healthy)
    if not healthy:
        raise SystemExit(1)


COMMANDS = (health_cmd,)
