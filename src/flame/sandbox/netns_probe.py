"""Measuring a link failure in a running `flame up --netns` (shared by tests and bench/).

`link_failure(instance, a, b, ...)`: a load generator in the UE's namespace
(`flame.sandbox.netns_load`: open loop, every request counted from the moment it was due) sends
requests through its SR to an FQDN served behind another SR; after `down_after_s` the veth of
link a-b is set down with `ip link` inside the namespace of `a` (not through the platform);
we time

* failover: until the kernel of `a` forwards the far SR's address over another link (the
  backup route `flame.sandbox.netns_routes` keeps there takes over as the device goes down);
* detection: until a liveness prober at either end declares the link dead (the first
  "link ... down" line of their logs, wall clock in ms);
* confirmed: until the PCE's topology says the link is down (polled from this host through the
  forwarder, so it includes an HTTPS round trip of the poll);
* reroute: until the platform has moved the primary route of `a` to the far SR off the link
  (the PCE's new path, programmed by the route programmer);

and return the load generator's report (requests, failed, each failure's due time relative to
the link-down). The link is set up again before returning.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from flame.sandbox.netns import NetnsPlan
from flame.sandbox.netns_load import STARTED

__all__ = ["LinkFailure", "link_failure", "load_run", "ue_run"]


@dataclass(frozen=True, slots=True)
class LinkFailure:
    detection_ms: float | None
    confirmed_ms: float | None
    reroute_ms: float | None
    ue: dict[str, Any]
    failover_ms: float | None = None


def _plan(instance: dict[str, Any], run_dir: str) -> NetnsPlan:
    with open(os.path.join(run_dir, "netns.json"), encoding="utf-8") as f:
        return NetnsPlan.from_json(f.read())


def ue_command(
    instance: dict[str, Any], ue: str, sr: str, fqdn: str, paths: list[str], rps: float, secs: float
) -> list[str]:
    netns = instance["netns"]
    argv = ["ip", "netns", "exec", netns["namespaces"][ue], sys.executable, "-m", "flame"]
    argv += ["--json", "ue", "run", "--sr", instance["sr_urls"][sr], "--fqdn", fqdn]
    argv += [a for p in paths for a in ("--path", p)]
    return [*argv, "--rps", str(rps), "--duration", str(secs)]


def ue_run(
    instance: dict[str, Any],
    env: dict[str, str],
    ue: str,
    sr: str,
    fqdn: str,
    paths: list[str],
    rps: float,
    secs: float,
    *extra: str,
) -> dict[str, Any]:
    return _run_report([*ue_command(instance, ue, sr, fqdn, paths, rps, secs), *extra], env, secs)


def _run_report(argv: list[str], env: dict[str, str], secs: float) -> dict[str, Any]:
    """Run a `secs`-long load in the UE's namespace; its JSON report."""
    done = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=secs + 120, check=False
    )
    return _report(done.stdout, done.stderr)


def _report(stdout: str, stderr: str) -> dict[str, Any]:
    """The UE's JSON report (the first object printed; an error object may follow)."""
    try:
        report, _ = json.JSONDecoder().raw_decode(stdout.lstrip())
    except ValueError:
        raise RuntimeError(f"no UE report:\n{stdout[-2000:]}\n{stderr[-2000:]}") from None
    return dict(report)


def load_command(
    instance: dict[str, Any], ue: str, sr: str, fqdn: str, paths: list[str], rps: float, secs: float
) -> list[str]:
    """`flame.sandbox.netns_load` in the UE's namespace, towards `sr`."""
    argv = ["ip", "netns", "exec", instance["netns"]["namespaces"][ue], sys.executable, "-m"]
    argv += ["flame.sandbox.netns_load", "--url", instance["sr_urls"][sr], "--fqdn", fqdn]
    argv += [a for p in paths for a in ("--path", p)]
    return [*argv, "--rps", str(rps), "--duration", str(secs)]


def load_run(
    instance: dict[str, Any],
    env: dict[str, str],
    ue: str,
    sr: str,
    fqdn: str,
    paths: list[str],
    rps: float,
    secs: float,
) -> dict[str, Any]:
    """The load generator's report of `secs` at `rps` with nothing failing (a baseline)."""
    return _run_report(load_command(instance, ue, sr, fqdn, paths, rps, secs), env, secs)


def link_failure(
    instance: dict[str, Any],
    run_dir: str,
    env: dict[str, str],
    *,
    a: str,
    b: str,
    ue: str,
    sr: str,
    target: str,
    fqdn: str,
    path: str,
    rps: float,
    secs: float,
    down_after_s: float,
) -> LinkFailure:
    plan = _plan(instance, run_dir)
    link = plan.link(a, b)
    if link is None:
        raise ValueError(f"no link {a}-{b}")
    ns, dev = plan.nodes[a].ns, (link.a_if if link.a == a else link.b_if)
    far = plan.nodes[target].address
    with open(os.path.join(run_dir, "tokens.json"), encoding="utf-8") as f:
        token = json.load(f)["flame-up-operator"]
    verify = ssl.create_default_context(cafile=instance["netns"]["ca_file"])
    load = subprocess.Popen(
        load_command(instance, ue, sr, fqdn, [path], rps, secs),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    times: dict[str, float] = {}
    downed_wall = time.time()
    http = httpx.Client(
        verify=verify, headers={"Authorization": f"Bearer {token}"}, trust_env=False
    )
    try:
        assert load.stderr is not None
        if STARTED not in load.stderr.readline():  # it died before sending: say why
            raise RuntimeError(f"the load generator did not start: {load.communicate()}")
        _pce_says_down(http, instance["pce_url"], a, b)  # a warm connection for the polls
        time.sleep(down_after_s)
        downed_wall = time.time()
        downed = time.monotonic()
        subprocess.run(["ip", "-n", ns, "link", "set", dev, "down"], check=True, timeout=10)
        # First and alone, so that nothing else delays it: a kernel failover is immediate.
        _poll("failover", lambda: _forwarded_around(ns, far, dev), downed, times)
        checks: dict[str, Callable[[], bool]] = {
            "reroute": lambda: _primary_moved(ns, far, dev),
            "confirmed": lambda: _pce_says_down(http, instance["pce_url"], a, b),
        }
        # One poller per figure: a slow HTTPS poll must not delay the route check.
        pollers = [
            threading.Thread(target=_poll, args=(name, check, downed, times))
            for name, check in checks.items()
        ]
        for poller in pollers:
            poller.start()
        for poller in pollers:
            poller.join()
        stdout, stderr = load.communicate(timeout=secs + 120)
    finally:
        http.close()
        if load.poll() is None:
            load.kill()
        subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=False, timeout=10)
    detected = _first_down_logged(run_dir, a, b, downed_wall)
    detection = None if detected is None else (detected - downed_wall) * 1000
    report = _report(stdout, stderr)
    # Each failure placed against the link-down (s; negative: before it).
    offset = downed_wall - float(report.get("started_at", downed_wall))
    report["failures"] = [
        {**f, "after_down_s": round(f["due_s"] - offset, 3)} for f in report.get("failures", [])
    ]
    report["down_at_s"] = round(offset, 3)
    return LinkFailure(
        detection,
        times.get("confirmed"),
        times.get("reroute"),
        report,
        failover_ms=times.get("failover"),
    )


def _poll(name: str, check: Callable[[], bool], since: float, times: dict[str, float]) -> None:
    """Record in `times[name]` the ms from `since` until `check()` first holds (up to 5 s).
    Each figure is an upper bound: it includes the check itself (an `ip` process, or an HTTPS
    round trip)."""
    while time.monotonic() - since < 5:
        if check():
            times[name] = (time.monotonic() - since) * 1000
            return
        time.sleep(0.005)


def _first_down_logged(run_dir: str, a: str, b: str, since: float) -> float | None:
    """When a prober at either end of a-b first logged it down after `since` (epoch s)."""
    times: list[float] = []
    for node, peer in ((a, b), (b, a)):
        path = os.path.join(run_dir, "logs", f"liveness-{node}.log")
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            if f"link {node}-{peer} down" not in line:
                continue
            try:
                stamp, _, millis = line[:23].partition(",")
                at = time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000
            except ValueError:
                continue
            if at >= since - 0.001:
                times.append(at)
    return min(times, default=None)


def _pce_says_down(http: httpx.Client, pce: str, a: str, b: str) -> bool:
    try:
        links = http.get(f"{pce}/v1/topology", timeout=2).json()["links"]
    except (httpx.HTTPError, ValueError, KeyError):
        return False
    return any({k["a"], k["b"]} == {a, b} and k["state"] == "down" for k in links)


def _forwarded_around(ns: str, address: str, dead_dev: str) -> bool:
    """Does the kernel of `ns` forward to `address` over another device than `dead_dev`?"""
    done = subprocess.run(
        ["ip", "-n", ns, "-j", "route", "get", address],
        check=False,
        capture_output=True,
        text=True,
        timeout=10,
    )
    try:
        route = json.loads(done.stdout)[0]
    except (ValueError, IndexError):
        return False
    return bool(route.get("dev")) and route["dev"] != dead_dev


def _primary_moved(ns: str, address: str, dead_dev: str) -> bool:
    """Has the platform programmed the primary (metric 0) route to `address` in `ns` over
    another device than `dead_dev` (the PCE's new path, not the kernel's backup)?"""
    done = subprocess.run(
        ["ip", "-n", ns, "-j", "route", "show", f"{address}/32"],
        check=False,
        capture_output=True,
        text=True,
        timeout=10,
    )
    try:
        routes = json.loads(done.stdout)
    except ValueError:
        return False
    return any(not r.get("metric") and r.get("dev") not in (None, dead_dev) for r in routes)
