"""How the operator's choice about unconfined SFEs reaches the process VIM (issue 11): the
`flame up` plan hands `--allow-unconfined-sfes` to the orchestrator, which builds its VIM with
it; without the flag, nothing may run unconfined."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from flame.sandbox.up import UpOptions, plan, resolve_topology
from flame.sfemc.build import SfemcSettings, build_sfemc
from flame.sfemc.events import InProcessBus
from flame.sfemc.vim.process import ProcessVim
from flame.topology.loader import load_topology


@pytest.mark.parametrize("allow", [False, True])
def test_flame_up_passes_the_choice_to_the_orchestrator(tmp_path: Path, allow: bool) -> None:
    options = UpOptions(run_dir=tmp_path, free_ports=True, allow_unconfined_sfes=allow)
    the_plan = plan(options, {}, "router-token")
    orchestrator = next(c for stage in the_plan.stages for c in stage if c.name == "orchestrator")
    assert ("--allow-unconfined-sfes" in orchestrator.argv) is allow


@pytest.mark.parametrize("allow", [False, True])
def test_the_orchestrator_builds_its_vim_with_the_choice(tmp_path: Path, allow: bool) -> None:
    runtime = build_sfemc(
        SfemcSettings(state_dir=tmp_path, allow_unconfined_sfes=allow),
        load_topology(resolve_topology("sandbucket")),
        InProcessBus(),
    )
    try:
        vims = {id(v): v for v in runtime.vims.values()}.values()
        assert vims
        for vim in vims:
            assert isinstance(vim, ProcessVim)
            assert vim.allow_unconfined is allow
            assert vim.sandbox_mode == "auto"  # sandboxed whenever the host can
            assert vim.sandbox is not None
    finally:
        asyncio.run(runtime.close())
