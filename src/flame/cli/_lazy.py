"""Command groups whose subcommands are imported when they run (issue 18).

A `flame` command imports only its own module: `flame token list` does not pay for httpx, the
TOSCA validator or the PCE store, and `flame --help` imports no command module at all. A group
declares each subcommand as `Lazy("module:attribute", help)`; the declared help is what the
group's `--help` lists until the command is loaded (tests/cli/test_lazy_cli.py keeps it equal
to the command's own).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from gettext import gettext as _
from typing import Any

import click

__all__ = ["Lazy", "LazyCommands", "LazyGroup"]


@dataclass(frozen=True)
class Lazy:
    """A subcommand not imported yet: where it lives and its help (the first paragraph is enough:
    `--help` lists only a shortened first paragraph)."""

    target: str  # "flame.cli.sfr_commands:routes_cmd"
    help: str

    def load(self) -> click.Command:
        module, _sep, attribute = self.target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.target} is not a click command")
        return command


class LazyCommands(MutableMapping[str, click.Command]):
    """A group's `commands`: name -> command, importing a `Lazy` one on first access."""

    def __init__(self, entries: Mapping[str, click.Command | Lazy]) -> None:
        self._entries = dict(entries)

    def __getitem__(self, name: str) -> click.Command:
        entry = self._entries[name]
        if isinstance(entry, Lazy):
            entry = self._entries[name] = entry.load()
        return entry

    def __setitem__(self, name: str, command: click.Command) -> None:
        self._entries[name] = command

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def declared(self, name: str) -> click.Command | Lazy:
        """The entry as it stands: the command if loaded (or given), else its `Lazy`."""
        return self._entries[name]

    def for_listing(self, name: str) -> click.Command:
        """What `--help` lists: the command if loaded, else a stand-in with its declared help."""
        entry = self._entries[name]
        return click.Command(name, help=entry.help) if isinstance(entry, Lazy) else entry


class LazyGroup(click.Group):
    """A `click.Group` whose `commands` may hold `Lazy` entries."""

    def __init__(
        self,
        name: str | None = None,
        commands: Mapping[str, click.Command | Lazy] | None = None,
        **kwargs: Any,
    ) -> None:
        self.lazy_commands = LazyCommands(commands or {})
        super().__init__(name, commands=self.lazy_commands, **kwargs)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # click.Group's own listing, from the declared help instead of importing every command.
        rows = [
            (name, command)
            for name in self.list_commands(ctx)
            if not (command := self.lazy_commands.for_listing(name)).hidden
        ]
        if not rows:
            return
        limit = formatter.width - 6 - max(len(name) for name, _cmd in rows)
        with formatter.section(_("Commands")):
            formatter.write_dl([(name, cmd.get_short_help_str(limit)) for name, cmd in rows])
