"""The environment a process SFE starts with: a few of the controller's variables (never its
tokens), the image's and the template's, then the platform's own FLAME_* (which win). Kept
apart from process.py, which drives the lifecycle."""

from __future__ import annotations

import os
import re
from pathlib import Path

from flame.sfemc.images import ImageManifest
from flame.sfemc.vim.base import EndpointSpec
from flame.sfemc.vim.sandbox import HOME_DIR, Sandbox

__all__ = ["sfe_environment"]

# Passed from the controller's environment; nothing else is (it may hold tokens).
_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "PYENV_ROOT", "PYENV_VERSION")


def sfe_environment(
    spec: EndpointSpec,
    manifest: ImageManifest,
    *,
    digest: str,
    host: str,
    ports: dict[str, int],
    home: Path,
    sandbox: Sandbox | None,
    sr_url: str | None,
) -> dict[str, str]:
    """Without FLAME_TLS_*: only the certificate the platform hands the SFE at this start
    (`SfeCerts.install`) may set those."""
    env = {k: os.environ[k] for k in _INHERITED if k in os.environ}
    if sandbox is not None:
        env.pop("PYENV_ROOT", None)  # the host's pyenv is not in the sandbox
        env.pop("PYENV_VERSION", None)
        env["PATH"] = sandbox.search_path(env.get("PATH"))
        env["HOME"] = HOME_DIR
    else:
        env["HOME"] = str(home)  # never the platform's own (its config and tokens)
    env.update(manifest.environment)
    env.update(spec.environment)
    env.update(
        {
            "FLAME_SFE": spec.sfe,
            "FLAME_SF": spec.sf,
            "FLAME_SFC": spec.sfc,
            "FLAME_SFCI": spec.sfci,
            "FLAME_TENANT": spec.tenant,
            "FLAME_CLUSTER": spec.cluster,
            "FLAME_FQDN": spec.fqdn,
            "FLAME_HOST": host,
            "FLAME_IMAGE": digest,
        }
    )
    if sr_url is not None:
        env["FLAME_SR_URL"] = sr_url
    if ports:
        env["FLAME_PORT"] = str(next(iter(ports.values())))
    for name, port in ports.items():
        env[f"FLAME_PORT_{re.sub(r'[^A-Z0-9]', '_', name.upper())}"] = str(port)
    return {k: v for k, v in env.items() if not k.startswith("FLAME_TLS_")}
