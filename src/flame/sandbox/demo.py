"""The demo media service of FLAME-in-a-box: package its SF images, delegate its FQDN to the
demo tenant, submit its template as that tenant, wait until its endpoints settle.

Everything goes through the platform's own interfaces (the image repository a `flame package`
would write to, the PCE and orchestrator HTTP APIs), exactly as a provider would do it.
"""

from __future__ import annotations

import ssl
import time
from importlib import resources
from pathlib import Path
from typing import Any

import httpx

from flame.common.errors import FlameError
from flame.sfemc.images import ImageRepository, build_image, digest_of

__all__ = ["DEMO_FQDN", "DEMO_SFC", "demo_template", "deploy_demo", "package_demo_images"]

DEMO_FQDN = "vod.flame.example"
DEMO_SFC = "vod"
IMAGES = ("vod-origin", "vod-cache")


def _demo_path(name: str) -> Path:
    ref = resources.files("flame.sandbox") / "demo" / name
    with resources.as_file(ref) as path:
        return Path(path)


def demo_template() -> str:
    """The demo service's FLAME-TOSCA template (package data)."""
    return _demo_path("service.yaml").read_text(encoding="utf-8")


def package_demo_images(images_dir: Path) -> dict[str, str]:
    """Build the demo's SF images into the repository (same content: same digest, no-op)."""
    repository = ImageRepository(images_dir)
    digests = {}
    for name in IMAGES:
        blob, manifest = build_image(_demo_path(name))
        digest = digest_of(blob)
        repository.put(blob, digest=digest, tags=[manifest.version] if manifest.version else [])
        digests[name] = digest
    return digests


def deploy_demo(
    orchestrator_url: str,
    pce_url: str,
    operator_token: str,
    tenant_token: str,
    tenant: str,
    *,
    timeout_s: float = 90.0,
    verify: ssl.SSLContext | bool = True,  # the platform CA when the URLs are https
) -> dict[str, Any]:
    """Deploy (or re-submit, a no-op when unchanged) the demo; returns its status once settled."""
    with httpx.Client(timeout=30.0, trust_env=False, verify=verify) as http:
        delegated = http.put(
            f"{pce_url}/v1/delegations/{DEMO_FQDN}",
            json={"tenant": tenant},
            headers={"Authorization": f"Bearer {operator_token}"},
        )
        _check(delegated, f"delegating {DEMO_FQDN} to {tenant}")
        template = demo_template()
        as_tenant = {"Authorization": f"Bearer {tenant_token}"}
        submitted = http.post(
            f"{orchestrator_url}/v1/services",
            json={"template": template, "name": "service.yaml"},
            headers=as_tenant,
        )
        _check(submitted, "submitting the demo service")
        deadline = time.monotonic() + timeout_s
        while True:
            status = http.get(f"{orchestrator_url}/v1/services/{DEMO_SFC}", headers=as_tenant)
            _check(status, "reading the demo's status")
            body: dict[str, Any] = status.json()
            if body.get("settled"):
                return body
            failed = [e for e in body.get("endpoints", []) if e.get("state") == "failed"]
            if failed:
                reasons = "; ".join(f"{e['sfe']}: {e.get('reason')}" for e in failed)
                raise FlameError(f"the demo service failed to deploy: {reasons}")
            if time.monotonic() > deadline:
                states = ", ".join(f"{e['sfe']} {e['state']}" for e in body.get("endpoints", []))
                raise FlameError(f"the demo service did not settle in {timeout_s:g}s ({states})")
            time.sleep(0.2)


def _check(response: httpx.Response, doing: str) -> None:
    if response.status_code >= 300:
        raise FlameError(f"{doing} failed: HTTP {response.status_code} {response.text[:500]}")
