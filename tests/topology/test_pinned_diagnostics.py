"""Issue 18 item 2: the topology checks became field tables without changing one diagnostic.

`pinned_diagnostics.json` holds what the hand-written loader reported (code, file:line:col,
message, hint, value) for seeded random edits of a full topology: unknown keys, nulls, wrong
shapes, bad units, dangling references, duplicates. The declarative loader must report exactly
the same, in the order the CLI prints them (by position, then code).
"""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from flame.common.diagnostics import DiagnosticSink
from flame.topology.loader import parse_topology

PINNED = Path(__file__).with_name("pinned_diagnostics.json")

BASE: dict[str, Any] = {
    "flame_topology": 1,
    "name": "tiny",
    "locations": {
        "bristol": {"latitude": 51.45, "longitude": -2.59},
        "bath": {"latitude": 51.3, "longitude": -2.3},
    },
    "service_routers": {
        "sr-a": {"location": "bristol", "address": "127.0.1.1"},
        "sr-b": {"address": "::1"},
    },
    "switches": {"sw-1": {}},
    "clusters": {
        "edge-1": {
            "sr": "sr-a",
            "location": "bristol",
            "capacity": {"cpus": 4, "memory": "8 GB", "disk": "50 GB"},
            "reserved": {"cpus": 0.5, "memory": "512 MB", "disk": "1 GiB"},
            "vim": "kubernetes",
            "address": "127.0.0.2",
        },
        "edge-2": {
            "sr": "sr-b",
            "location": {"latitude": 1, "longitude": 2},
            "capacity": {"cpus": 2, "memory": "2 GB", "disk": "5 GB"},
        },
    },
    "user_equipment": {"ue-1": {"sr": "sr-a"}},
    "links": [
        {
            "between": ["sr-a", "sw-1"],
            "latency": "2 ms",
            "bandwidth": "1 Gbps",
            "loss": "0.5 %",
            "cost": 2,
            "state": "down",
            "class": "core",
        },
        {"between": ["sw-1", "sr-b"], "latency": 3},
    ],
    "registrations": [
        {"fqdn": "www.example.org", "cluster": "edge-1", "host": "127.0.0.1", "port": 8080},
        {
            "fqdn": "www.example.org",
            "cluster": "edge-1",
            "host": "127.0.0.1",
            "port": 8081,
            "sfe": "x@y",
        },
    ],
}
VALUES: list[Any] = [
    None, True, False, 0, -1, 1, 2.5, float("inf"), 65536, "", "x", "UE_1", "sr-a", "sr-b",
    "sw-1", "edge-1", "ue-1", "bristol", "brstol", "2 ms", "-2 ms", "2 parsecs", "1 Gbps",
    "-1 Gbps", "0 GB", "8 GB", "1 GHz", "0.0.0.0", "10.0.0.1", "localhost", "up", "sideways",
    "kubernets", "www.example.org", "a/b", "101 %", "50 %", [], ["sr-a"], ["sr-a", "sr-a"],
    ["sr-a", "sw-9"], ["sr-a", 5], {}, {"latitude": 91, "longitude": 0},
    {"cpus": 0, "memory": "1 GB", "disk": "1 GB"}, {"cpus": 8, "memory": "16 GB", "disk": "9 GB"},
    {"a": 1}, "sfe id",
]  # fmt: skip
KEYS = [
    "capacty", "sr", "address", "location", "latency", "bandwidth", "cost", "state", "class",
    "loss", "vim", "reserved", "capacity", "between", "fqdn", "cluster", "host", "port", "sfe",
    "description", "latitude", "longitude", "cpus", "memory", "disk", "name", "bogus",
]  # fmt: skip
STYLES: list[bool | None] = [None, False, True]  # yaml.safe_dump's default_flow_style
CASES = 160


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    items = (
        obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    )
    for key, value in items:
        found += _paths(value, (*prefix, key))
    return found


def _mutate(rng: random.Random, doc: dict[str, Any]) -> None:
    """One edit: replace a value, delete it, add a key or item, or rename a key."""
    path = rng.choice([p for p in _paths(doc) if p])
    parent: Any = doc
    for step in path[:-1]:
        parent = parent[step]
    last, op, value = path[-1], rng.random(), copy.deepcopy(rng.choice(VALUES))
    target = parent[last]
    if op < 0.5:
        parent[last] = value
    elif op < 0.7:
        del parent[last]
    elif op < 0.85 and isinstance(target, dict):
        target[rng.choice(KEYS)] = value
    elif op < 0.85 and isinstance(target, list):
        target.append(value)
    elif isinstance(parent, dict):
        parent[rng.choice(["sr-a", "sw-1", "edge-1", "X", "new-node"])] = parent.pop(last)


def case_text(seed: int) -> str:
    rng = random.Random(seed)
    doc = copy.deepcopy(BASE)
    for _ in range(rng.randint(0, 3)):
        _mutate(rng, doc)
    return yaml.safe_dump(doc, default_flow_style=rng.choice(STYLES), sort_keys=False)


def diagnostics(text: str) -> list[list[Any]]:
    sink = DiagnosticSink()
    parse_topology(text, "t.yaml", sink)
    return [
        [d.code, d.position.line, d.position.column, d.message, d.hint, _json(d.as_dict()["value"])]
        for d in sorted(sink.items, key=lambda d: (d.position, d.code))
    ]


def _json(value: Any) -> Any:
    """The value as JSON keeps it (infinity has no JSON number)."""
    return repr(value) if isinstance(value, float) and not math.isfinite(value) else value


def test_the_corpus_covers_every_topology_code() -> None:
    pinned = json.loads(PINNED.read_text(encoding="utf-8"))
    codes = {d[0] for expected in pinned.values() for d in expected}
    assert {"E200", "E201", "E202", "T103", "T104", "T105"} <= codes
    assert sum(1 for expected in pinned.values() if not expected) >= 10  # valid files too


@pytest.mark.parametrize("seed", range(CASES))
def test_diagnostics_are_exactly_the_pinned_ones(seed: int) -> None:
    pinned = json.loads(PINNED.read_text(encoding="utf-8"))
    assert diagnostics(case_text(seed)) == pinned[str(seed)]
