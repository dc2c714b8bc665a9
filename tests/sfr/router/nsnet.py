"""Two network namespaces joined by a veth pair, for data-plane tests that need a real route to
take away (the SR's connect then fails with ENETUNREACH or EHOSTUNREACH from the kernel).

`near` holds the SR (and anything on its loopback); `far` holds what the SR reaches over the
link, at `FAR_IP`. The test's own namespace is never touched: code runs "in" a namespace on a
thread that switched its own network namespace (setns affects only the calling thread), and a
socket stays in the namespace it was created in wherever it is used afterwards.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

import uvloop

from .helpers import close_loop

__all__ = ["FAR_IP", "NEAR_IP", "NsPair", "unavailable"]

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
NEAR_IP = "10.77.9.1"
FAR_IP = "10.77.9.2"


def unavailable() -> str | None:
    """Why these tests cannot run here (None if they can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    return None


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], check=False, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _enter(ns: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {ns}: {os.strerror(err)}")
    finally:
        os.close(fd)


def _on_thread(ns: str, fn: Callable[[], T], name: str) -> T:
    """fn() on a new thread inside `ns`; its result or exception."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            _enter(ns)
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


class NsPair:
    """`near` and `far` namespaces; `near` reaches `FAR_IP` by one /32 route it can drop."""

    def __init__(self, tag: str) -> None:
        self.near = f"fsr-{tag}-n"
        self.far = f"fsr-{tag}-f"
        self._near_if = f"fsr{tag}n"[:15]
        self._far_if = f"fsr{tag}f"[:15]

    def create(self) -> NsPair:
        for ns in (self.near, self.far):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        n, f = self._near_if, self._far_if
        ip("-n", self.near, "link", "add", n, "type", "veth", "peer", "name", f, "netns", self.far)
        # /32 addresses: the only way between them is the explicit routes below.
        ip("-n", self.near, "addr", "add", f"{NEAR_IP}/32", "dev", n)
        ip("-n", self.far, "addr", "add", f"{FAR_IP}/32", "dev", f)
        ip("-n", self.near, "link", "set", n, "up")
        ip("-n", self.far, "link", "set", f, "up")
        ip("-n", self.far, "route", "add", f"{NEAR_IP}/32", "dev", f)
        self.restore_route()
        return self

    def close(self) -> None:
        for ns in (self.near, self.far):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)

    # The gap: "none" (no route: ENETUNREACH) or "unreachable" (EHOSTUNREACH).
    def drop_route(self, kind: str = "none") -> None:
        if kind == "none":
            ip("-n", self.near, "route", "del", f"{FAR_IP}/32")
        else:
            ip("-n", self.near, "route", "replace", "unreachable", f"{FAR_IP}/32")

    def restore_route(self) -> None:
        ip("-n", self.near, "route", "replace", f"{FAR_IP}/32", "dev", self._near_if)

    def far_socket(self, port: int = 0) -> socket.socket:
        """A bound (not listening) TCP socket at FAR_IP:`port` in `far`."""

        def make() -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((FAR_IP, port))
            sock.setblocking(False)
            return sock

        return _on_thread(self.far, make, "ns-far-socket")

    def run_near(self, scenario: Callable[[], Awaitable[T]]) -> T:
        """Run the coroutine on a uvloop loop of its own, on a thread inside `near`."""

        def run() -> T:
            loop = uvloop.new_event_loop()
            try:
                return loop.run_until_complete(scenario())
            finally:
                close_loop(loop)  # what the scenario left pending ends now, not in a later test

        return _on_thread(self.near, run, "ns-near-loop")
