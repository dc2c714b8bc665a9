"""`flame up --hop-tls` plans the switch into the component command lines (docs/tls.md): the
PCE gets the mode, every SR `--hop-tls` unless off, and with `all` one hop port on every SR.
(Here because this session's brief owns `flame up`'s hop-TLS option; the e2e of the feature is
tests/orchestrator/test_hop_tls_sfe.py.)"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from flame.cli.main import cli
from flame.sandbox.supervisor import Component
from flame.sandbox.up import UpOptions, plan


def _argvs(tmp_path: Path, mode: str | None) -> dict[str, list[str]]:
    options = UpOptions(run_dir=tmp_path, topology="sandpit", free_ports=True)
    if mode is not None:
        options = replace(options, hop_tls=mode)
    the_plan = plan(options, {}, "router-token")
    components: list[Component] = [c for stage in the_plan.stages for c in stage]
    return {c.name: list(c.argv) for c in components}


@pytest.mark.parametrize("mode", [None, "off", "endpoints", "all"])
def test_flame_up_passes_the_hop_tls_mode(tmp_path: Path, mode: str | None) -> None:
    argvs = _argvs(tmp_path, mode)
    pce = argvs["pce"]
    assert pce[pce.index("--hop-tls") + 1] == (mode or "off")  # default off
    routers = [argv for name, argv in argvs.items() if name.startswith("sr-")]
    assert len(routers) >= 2
    for argv in routers:
        assert ("--hop-tls" in argv) is (mode in ("endpoints", "all"))
        assert ("--hop-tls-port" in argv) is (mode == "all")
    if mode == "all":  # one port on every SR: egress hops go to the same port everywhere
        ports = {argv[argv.index("--hop-tls-port") + 1] for argv in routers}
        assert len(ports) == 1


def test_flame_up_refuses_an_unknown_hop_tls_mode() -> None:
    result = CliRunner().invoke(cli, ["up", "--hop-tls", "sometimes"])
    assert result.exit_code == 2
    assert "'sometimes' is not one of 'off', 'endpoints', 'all'" in result.output
