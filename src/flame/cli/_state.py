"""What every `flame` command gets from the root group (`click.pass_obj`): the `--json` and
`--config` choices, and the config they name. One Protocol for every command module."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import click

if TYPE_CHECKING:
    from flame.common.config import Config

__all__ = ["CliState", "State", "emit"]


class CliState(Protocol):
    json: bool  # --json: machine-readable output
    config_path: Path | None  # --config FILE, when given

    def config(self) -> Config: ...


class State:
    """The root group's `CliState`: the config is read when a command asks for it."""

    def __init__(self, json_output: bool, config_path: Path | None) -> None:
        self.json = json_output
        self.config_path = config_path

    def config(self) -> Config:
        from flame.common.config import load_config  # noqa: PLC0415 - only commands that need it

        return load_config(self.config_path)


def emit(data: Any) -> None:
    """`--json` output: indented, in the data's own key order; anything else as its str()."""
    click.echo(json.dumps(data, indent=2, default=str))
