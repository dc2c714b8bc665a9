"""Free ports for servers started later lie below the ephemeral range, where no outgoing
connection can take them between the choice and the server's listen()."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from flame.common import ports
from flame.common.ports import free_port, free_port_on_all


def _ephemeral_start() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def test_a_free_port_is_below_the_ephemeral_range_and_bindable() -> None:
    start = _ephemeral_start()
    ports = {free_port() for _ in range(50)}
    assert all(10_000 <= p < start for p in ports), sorted(ports)
    assert len(ports) > 1  # random, so instances side by side rarely pick the same one
    for port in list(ports)[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # raises if it was not free


def test_a_port_held_by_a_listener_is_never_chosen() -> None:
    held = []
    try:
        start = _ephemeral_start()
        # Fill a small range with listeners so the chooser must skip them.
        for _ in range(20):
            s = socket.socket()
            s.bind(("127.0.0.1", free_port()))
            s.listen()
            held.append(s)
        taken = {s.getsockname()[1] for s in held}
        for _ in range(200):
            port = free_port()
            assert port not in taken
            assert port < start
    finally:
        for s in held:
            s.close()


def test_free_on_all_addresses_of_the_srs() -> None:
    hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    port = free_port_on_all(hosts)
    socks = []
    try:
        for host in hosts:
            s = socket.socket()
            socks.append(s)
            s.bind((host, port))
    finally:
        for s in socks:
            s.close()


def test_a_process_never_hands_out_a_port_twice_before_it_is_bound() -> None:
    """Callers pick several ports before starting any server: without memory, two picks
    could name the same port, nothing being bound to it yet, and the second server would fail
    (or a health check would reach the first one)."""
    ports = [free_port() for _ in range(2000)]
    assert len(set(ports)) == len(ports)


def test_flame_port_range_narrows_the_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ports.RANGE_VARIABLE, "20000-21000")
    picked = [free_port() for _ in range(300)]
    assert all(20000 <= p < 21000 for p in picked), picked
    assert len(set(picked)) == len(picked)  # still never twice while most of it is unused


def test_a_small_range_repeats_rather_than_runs_dry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ports.RANGE_VARIABLE, "20000-20010")
    assert {free_port() for _ in range(100)} <= set(range(20000, 20010))


@pytest.mark.parametrize("bad", ["20000", "a-b", "21000-20000", "80-90", "1-2-3"])
def test_a_bad_port_range_says_what_to_write(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv(ports.RANGE_VARIABLE, bad)
    with pytest.raises(ValueError, match="FLAME_PORT_RANGE"):
        free_port()
