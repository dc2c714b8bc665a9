"""The one small interface every VIM driver implements (SFEMC-5, ORCH-6).

The reconciler calls these; drivers never call back into the SFEMC. Every call is idempotent:
placing a placed SFE, stopping a stopped one or removing a removed one succeeds and changes
nothing, because a crash-restarted reconciler repeats whatever it was doing.
"""

from __future__ import annotations

import builtins
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class PortSpec:
    name: str  # the SF template's port name, or "http" for the first unnamed one
    container_port: int  # what the template asks for; the process VIM allocates a host port
    protocol: str = "http"


@dataclass(frozen=True, slots=True)
class HealthSpec:
    path: str = "/health"
    port: str | None = None  # a PortSpec name; None = the first port
    interval_s: float = 2.0
    timeout_s: float = 1.0
    retries: int = 3


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """Everything a driver needs to run one SFE of one SF on one cluster."""

    sfe: str  # unique id, e.g. "<sfci>.<sf>.<cluster>"; names processes, dirs, k8s objects
    tenant: str
    sfc: str
    sfci: str
    sf: str
    cluster: str
    fqdn: str
    image: str  # "sha256:<hex>" for an image in the repository, else a container image reference
    ports: tuple[PortSpec, ...] = ()
    environment: Mapping[str, str] = field(default_factory=dict)
    health: HealthSpec | None = None
    cpus: float | None = None
    memory_bytes: int | None = None
    disk_bytes: int | None = None


class VimState(enum.StrEnum):
    ABSENT = "absent"  # nothing known on the VIM
    PLACED = "placed"  # image unpacked / objects created, not running
    STARTING = "starting"  # running, health check not yet passed
    RUNNING = "running"  # running and healthy
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class VimStatus:
    sfe: str
    state: VimState
    host: str | None = None  # where the SR forwards to, once running
    ports: Mapping[str, int] = field(default_factory=dict)  # port name -> host port
    pid: int | None = None
    restarts: int = 0
    reason: str | None = None  # why FAILED, or the last crash
    # Which resource limits the VIM could enforce, e.g. "cgroup2 memory.max=268435456 cpu.max=50000
    # 100000" or "rlimit RLIMIT_DATA=268435456" or "none": the kernel may not allow every kind.
    limits: str | None = None
    # The running process serves TLS with a platform endpoint certificate (hop-by-hop TLS):
    # the SR must reach it over mutual TLS (registered with `tls`).
    tls: bool = False


class VimError(Exception):
    """A driver operation failed; `reason` is shown to the provider as the failure reason.

    `permanent` means retrying the same call cannot succeed (a corrupted or unknown image, a
    bad spec): the reconciler should mark the endpoint failed rather than back off and retry.
    `logs` holds the SFE's last output lines when there are any (a failed health check).
    """

    def __init__(
        self, sfe: str, reason: str, *, permanent: bool = False, logs: Sequence[str] = ()
    ) -> None:
        super().__init__(f"{sfe}: {reason}")
        self.sfe = sfe
        self.reason = reason
        self.permanent = permanent
        self.logs = tuple(logs)


class VimUnreachable(VimError):
    """The VIM could not be asked at all (a cluster agent down, restarting or cut off): nothing
    is known about the SFE, so nothing may be concluded either. The reconciler keeps the
    endpoint's state and asks again (never `failed`, never a second SFE: level-triggered)."""

    def __init__(self, sfe: str, reason: str) -> None:
        super().__init__(sfe, reason, permanent=False)


class VimDriver(Protocol):
    kind: str  # "process" | "kubernetes"

    async def place(self, spec: EndpointSpec) -> VimStatus:
        """Fetch and verify the image (integrity on every placement), allocate ports."""
        ...

    async def boot(self, sfe: str) -> VimStatus:
        """Start it; returns once running and healthy, or raises VimError."""
        ...

    async def stop(self, sfe: str) -> VimStatus: ...
    async def remove(self, sfe: str) -> None: ...
    async def status(self, sfe: str) -> VimStatus: ...
    async def list(self) -> builtins.list[VimStatus]:
        """Everything this driver runs (the reconciler's view for orphan clean-up)."""
        ...

    async def logs(self, sfe: str, tail: int = 100) -> builtins.list[str]: ...
    async def close(self) -> None: ...
