"""Benchmark: the SFEMC's endpoint lifecycle with real processes (issue 3; SFEMC-3..5).

1. a fired policy to an already booted surrogate `connected` (target < 50 ms): the SFEMC takes a
   CLMC alert event, the reconciler connects the endpoint, which registers its FQDN at the PCE;
   timed from `handle_alert` to the `connected` configuration event;
2. `unplaced` to `connected` for a small process SF, the echo SF of examples/sf/echo (target
   < 2 s): place (verified image, ports), boot (process, HTTP health check), connect.

In one process: the SFEMC (its store in SQLite, WAL), the process VIM and the registrar, which is
either a real PCE (`flame serve pce` on loopback, registrations over HTTP; the default) or the
in-process registry (`--in-process`). No peer runs side by side; the anchors for the note are
Kubernetes' HPA (15 s sync period) and Knative cold starts (2-10 s).

    .venv/bin/python bench/lifecycle.py            # 50 runs each
    .venv/bin/python bench/lifecycle.py --quick    # 5 runs each

The last line printed is one JSON object; exit status 0 when every run completed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from flame.common.auth import Role, TokenStore  # noqa: E402
from flame.common.ports import free_port  # noqa: E402
from flame.sfemc.control import Sfemc  # noqa: E402
from flame.sfemc.events import CONFIG_TOPIC, AlertEvent, ConfigEvent, InProcessBus  # noqa: E402
from flame.sfemc.images import ImageRepository, build_image  # noqa: E402
from flame.sfemc.registrar import HttpRegistrar, InProcessRegistrar, Registrar  # noqa: E402
from flame.sfemc.runtime import port_ranges  # noqa: E402
from flame.sfemc.store import open_store  # noqa: E402
from flame.sfemc.vim.process import ProcessVim  # noqa: E402
from flame.topology.loader import load_topology  # noqa: E402
from flame.tosca import validate_texts  # noqa: E402

TOPOLOGY = """\
flame_topology: 1
name: bench
service_routers:
  sr-a: {address: 127.0.0.1}
clusters:
  edge-a: {sr: sr-a, capacity: {cpus: 64, memory: 64 GB, disk: 100 GB}, vim: process}
"""

TEMPLATE = """\
tosca_definitions_version: tosca_simple_yaml_1_3
metadata:
  servicefunctionchain: echo
  sfc_instance: echo-1
topology_template:
  node_templates:
{nodes}
  policies:
    - initial:
        type: eu.ict-flame.policies.InitialPolicy
        targets: [{targets}]
        properties:
          clusters:
            edge-a: {{{states}}}
    - surge:
        type: eu.ict-flame.policies.StateChange
        targets: [surrogate]
        triggers:
          slow:
            event_type: threshold
            metric: sr_fqdn.response_time
            condition: {{threshold: 100, granularity: 3, comparison_operator: gt}}
            action: {{implementation: [flame_sfemc], states: {{edge-a: {{surrogate: connected}}}}}}
          calm:
            event_type: deadman
            metric: sr_fqdn.requests
            condition: {{threshold: 1, granularity: 30}}
            action: {{implementation: [flame_sfemc], states: {{edge-a: {{surrogate: booted}}}}}}
"""

NODE = """\
    {name}:
      type: eu.ict-flame.nodes.ServiceFunction
      properties:
        image: echo:1.0
        fqdn: {name}.echo.example
        ports: [{{name: http, port: 8080}}]
        health_check: {{path: /health, port: http, interval: 0.05 s}}
      capabilities:
        host:
          properties: {{num_cpus: 1, mem_size: 128 MB, disk_size: 10 MB}}
"""


def template(extra: bool) -> str:
    names = ["surrogate", *(["fresh"] if extra else [])]
    states = ", ".join(["surrogate: booted", *(["fresh: connected"] if extra else [])])
    return TEMPLATE.format(
        nodes="".join(NODE.format(name=n) for n in names), targets=", ".join(names), states=states
    )


@contextlib.contextmanager
def pce(tmp: Path, topology: Path) -> Iterator[tuple[str, str]]:
    tokens = TokenStore(tmp / "state" / "tokens.json")
    operator = tokens.issue("bench", Role.OPERATOR)
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FLAME_")},
        "FLAME_STATE_DIR": str(tmp / "state"),
        "FLAME_CONFIG": str(tmp / "config.toml"),
    }
    (tmp / "config.toml").touch()
    with (tmp / "pce.log").open("wb") as log:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "flame", "serve", "pce", "--topology", str(topology)),
                *("--db", str(tmp / "pce.sqlite3"), "--port", str(port)),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=1).json().get("role") == "active":
                    break
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit(f"the PCE did not start:\n{(tmp / 'pce.log').read_text()}")
            time.sleep(0.05)
        httpx.put(
            f"{url}/v1/delegations/echo.example",
            json={"tenant": "acme"},
            headers={"Authorization": f"Bearer {operator}"},
        ).raise_for_status()
        yield url, operator
    finally:
        process.terminate()
        process.wait(15)


class Transitions:
    """`connected` (and other) configuration events, awaited by endpoint and state."""

    def __init__(self, bus: InProcessBus) -> None:
        self.loop = asyncio.get_running_loop()
        self.waiting: dict[tuple[str, str], asyncio.Future[float]] = {}
        bus.subscribe(CONFIG_TOPIC, self._on_event)

    def expect(self, sfe: str, state: str) -> asyncio.Future[float]:
        future: asyncio.Future[float] = self.loop.create_future()
        self.waiting[(sfe, state)] = future
        return future

    def _on_event(self, event: ConfigEvent) -> None:
        now = time.perf_counter()  # when the transition was published, on its own thread
        future = self.waiting.pop((event.sfe, event.to_state), None)
        if future is not None:
            self.loop.call_soon_threadsafe(lambda: future.done() or future.set_result(now))


async def run(runs: int, in_process: bool, tmp: Path) -> dict[str, Any]:
    topology_path = tmp / "topology.yaml"
    topology_path.write_text(TOPOLOGY)
    topology = load_topology(topology_path)
    repo = ImageRepository(tmp / "images")
    repo.put(build_image(REPO / "examples" / "sf" / "echo")[0], tags=["1.0"])
    vim = ProcessVim(tmp / "vim", port_ranges(topology, 40000 + os.getpid() % 50 * 400), repo)
    bus = InProcessBus()
    transitions = Transitions(bus)
    with contextlib.ExitStack() as stack:
        registrar: Registrar
        if in_process:
            registrar = InProcessRegistrar({"echo.example": "acme"})
        else:
            url, token = stack.enter_context(pce(tmp, topology_path))
            registrar = HttpRegistrar([url], token)
        sfemc = Sfemc(
            open_store(str(tmp / "sfemc.sqlite3")),
            bus,
            topology,
            {"edge-a": vim},
            registrar,
            drain_s=0.0,
            resync_s=0,
        )
        await sfemc.start()
        try:
            return await measure(sfemc, transitions, runs)
        finally:
            sfemc.apply("acme", model(template(False)), {})  # drop `fresh` if it is there
            await sfemc.reconciler.wait_idle(30)
            await sfemc.stop()
            for status in await vim.list():
                await vim.remove(status.sfe)
            await vim.close()


def model(text: str) -> Any:
    result = validate_texts({"echo.yaml": text})
    if result.model is None:
        raise SystemExit("\n".join(str(d) for d in result.diagnostics))
    return result.model


async def measure(sfemc: Sfemc, transitions: Transitions, runs: int) -> dict[str, Any]:
    surrogate, fresh = "echo-1.surrogate.edge-a", "echo-1.fresh.edge-a"
    booted = transitions.expect(surrogate, "booted")
    sfemc.apply("acme", model(template(False)), {})
    await asyncio.wait_for(booted, 60)

    def alert(name: str) -> AlertEvent:
        return AlertEvent(str(uuid.uuid4()), name, "echo", "echo-1", "critical", time.time())

    fired: list[float] = []
    for _ in range(runs):
        connected = transitions.expect(surrogate, "connected")
        t0 = time.perf_counter()
        sfemc.handle_alert(alert("slow"))
        fired.append((await asyncio.wait_for(connected, 30)) - t0)
        back = transitions.expect(surrogate, "booted")
        sfemc.handle_alert(alert("calm"))
        await asyncio.wait_for(back, 30)

    cold: list[float] = []
    for _ in range(runs):
        connected = transitions.expect(fresh, "connected")
        t0 = time.perf_counter()
        sfemc.apply("acme", model(template(True)), {})
        cold.append((await asyncio.wait_for(connected, 60)) - t0)
        gone = transitions.expect(fresh, "unplaced")
        sfemc.apply("acme", model(template(False)), {})
        await asyncio.wait_for(gone, 60)
    return {"fired": fired, "cold": cold}


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * len(ordered)) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 runs each")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--in-process", action="store_true", help="no PCE: in-process registry")
    args = parser.parse_args()
    runs = args.runs or (5 if args.quick else 50)
    with tempfile.TemporaryDirectory(prefix="flame-lifecycle-") as tmp:
        results = asyncio.run(run(runs, args.in_process, Path(tmp)))
    registrar = "in-process registry" if args.in_process else "PCE over HTTP"
    fired, cold = results["fired"], results["cold"]
    print(f"# SFEMC + process VIM + {registrar}; {runs} runs each; echo SF (Python stdlib server)")
    print(
        f"policy fired -> booted surrogate connected: p50 {statistics.median(fired) * 1000:7.1f} ms"
        f"  p95 {pct(fired, 95) * 1000:7.1f} ms   (target < 50 ms)"
    )
    print(
        f"unplaced -> connected:                      p50 {statistics.median(cold) * 1000:7.1f} ms"
        f"  p95 {pct(cold, 95) * 1000:7.1f} ms   (target < 2000 ms)"
    )
    figures = {
        "bench": "lifecycle",
        "runs": runs,
        "registrar": registrar,
        "fired_p50_ms": round(statistics.median(fired) * 1000, 1),
        "fired_p95_ms": round(pct(fired, 95) * 1000, 1),
        "cold_p50_ms": round(statistics.median(cold) * 1000, 1),
        "cold_p95_ms": round(pct(cold, 95) * 1000, 1),
    }
    figures["targets_met"] = figures["fired_p50_ms"] < 50 and figures["cold_p50_ms"] < 2000
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
