"""Issue 13 item 1: SRs and cluster hosts have routable addresses (loopback stays the default on
one machine); every address is checked to be one host's IP address."""

from __future__ import annotations

from pathlib import Path

import pytest

from flame.common.diagnostics import ValidationFailed
from flame.topology.loader import address_problem, load_topology

TOPOLOGY = """\
flame_topology: 1
name: three-hosts
service_routers:
  sr-control: {address: 10.77.0.1}
  sr-metro: {address: 10.77.0.2}
  sr-edge: {address: "2001:db8::3"}
clusters:
  metro: {sr: sr-metro, address: 10.77.0.2, capacity: {cpus: 4, memory: 4 GB, disk: 10 GB}}
  edge: {sr: sr-edge, address: "2001:db8::3", capacity: {cpus: 4, memory: 4 GB, disk: 10 GB}}
  local: {sr: sr-control, capacity: {cpus: 4, memory: 4 GB, disk: 10 GB}}
links:
  - {between: [sr-control, sr-metro], latency: 5 ms}
  - {between: [sr-metro, sr-edge], latency: 5 ms}
registrations:
  - {fqdn: www.example.org, cluster: metro, host: 10.77.0.2, port: 8080}
"""


def test_routable_addresses_for_srs_clusters_and_registrations(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(TOPOLOGY)
    topology = load_topology(path)
    assert topology.service_routers["sr-metro"].address == "10.77.0.2"
    assert topology.service_routers["sr-edge"].address == "2001:db8::3"
    assert topology.clusters["metro"].address == "10.77.0.2"
    assert topology.clusters["edge"].address == "2001:db8::3"
    assert topology.clusters["local"].address is None  # one machine: 127.0.0.1
    assert topology.registrations[0].host == "10.77.0.2"


def test_a_bad_cluster_address_is_located(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(
        TOPOLOGY.replace("address: 10.77.0.2, capacity", "address: edge-host, capacity")
    )
    with pytest.raises(ValidationFailed) as info:
        load_topology(path)
    (error,) = info.value.diagnostics
    assert error.code == "T104"
    assert "cluster 'metro': address must be an IP address" in error.message
    assert error.position.line == 8


def test_a_bad_registration_host_is_located(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(TOPOLOGY.replace("host: 10.77.0.2", "host: 0.0.0.0"))
    with pytest.raises(ValidationFailed) as info:
        load_topology(path)
    (error,) = info.value.diagnostics
    assert error.code == "T104"
    assert "registration #1: host must be one host's address" in error.message


@pytest.mark.parametrize(
    ("address", "ok"),
    [
        ("127.0.0.1", True),
        ("127.0.1.7", True),
        ("::1", True),
        ("10.77.0.3", True),
        ("192.0.2.1", True),
        ("fe80::1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("239.1.1.1", False),
        ("ff02::1", False),
        ("255.255.255.255", False),
        ("host.example", False),
        ("", False),
        (3, False),
    ],
)
def test_address_problem(address: object, ok: bool) -> None:
    assert (address_problem(address) is None) is ok
