"""Test doubles for the reconciler's unit tests: an in-memory VIM (no processes).

End-to-end tests use the real ProcessVim instead; this one exists so the reconciler's logic can
be driven through failures (`fail`) and crashes (`crash`) deterministically.
"""

from __future__ import annotations

import builtins

from flame.sfemc.vim.base import EndpointSpec, VimError, VimState, VimStatus


class FakeVim:
    kind = "fake"

    def __init__(self) -> None:
        self.specs: dict[str, EndpointSpec] = {}
        self.states: dict[str, VimState] = {}
        self.calls: list[tuple[str, str]] = []
        self.failures: dict[tuple[str, str], str] = {}  # (op, sfe) -> reason, raised once
        self.always_fail: dict[tuple[str, str], str] = {}
        self.temporary: set[tuple[str, str]] = set()  # failures raised as not permanent
        self.next_port = 20000
        self.ports: dict[str, int] = {}
        self.tls: set[str] = set()  # SFEs serving hop-by-hop TLS (VimStatus.tls)

    def fail(
        self, op: str, sfe: str, reason: str, *, always: bool = False, permanent: bool = True
    ) -> None:
        (self.always_fail if always else self.failures)[(op, sfe)] = reason
        if not permanent:
            self.temporary.add((op, sfe))

    def crash(self, sfe: str) -> None:
        self.states[sfe] = VimState.FAILED

    def _check(self, op: str, sfe: str) -> None:
        self.calls.append((op, sfe))
        reason = self.failures.pop((op, sfe), None) or self.always_fail.get((op, sfe))
        if reason is not None:
            raise VimError(sfe, reason, permanent=(op, sfe) not in self.temporary)

    def _status(self, sfe: str) -> VimStatus:
        state = self.states.get(sfe, VimState.ABSENT)
        running = state in (VimState.RUNNING, VimState.STARTING)
        return VimStatus(
            sfe,
            state,
            host="127.0.0.1" if running else None,
            ports={"http": self.ports[sfe]} if running and sfe in self.ports else {},
            tls=running and sfe in self.tls,
        )

    async def place(self, spec: EndpointSpec) -> VimStatus:
        self._check("place", spec.sfe)
        self.specs[spec.sfe] = spec
        if self.states.get(spec.sfe, VimState.ABSENT) is VimState.ABSENT:
            self.states[spec.sfe] = VimState.PLACED
        return self._status(spec.sfe)

    async def boot(self, sfe: str) -> VimStatus:
        self._check("boot", sfe)
        if sfe not in self.specs:
            raise VimError(sfe, "not placed", permanent=True)
        if sfe not in self.ports:
            self.ports[sfe] = self.next_port
            self.next_port += 1
        self.states[sfe] = VimState.RUNNING
        return self._status(sfe)

    async def stop(self, sfe: str) -> VimStatus:
        self._check("stop", sfe)
        if sfe in self.states:
            self.states[sfe] = VimState.PLACED
        self.ports.pop(sfe, None)
        return self._status(sfe)

    async def remove(self, sfe: str) -> None:
        self._check("remove", sfe)
        self.states.pop(sfe, None)
        self.specs.pop(sfe, None)
        self.ports.pop(sfe, None)

    async def status(self, sfe: str) -> VimStatus:
        return self._status(sfe)

    async def list(self) -> builtins.list[VimStatus]:
        return [self._status(sfe) for sfe in self.states]

    async def logs(self, sfe: str, tail: int = 100) -> builtins.list[str]:
        return [f"{op} {s}" for op, s in self.calls if s == sfe][-tail:]

    async def close(self) -> None:
        return None
