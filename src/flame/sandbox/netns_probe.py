"""Measuring a link failure in a running `flame up --netns` (shared by tests and bench/).

`link_failure(instance, a, b, ...)`: a UE in its namespace sends requests through its SR to an
FQDN served behind another SR; after `down_after_s` the veth of link a-b is set down with
`ip link` inside the namespace of `a` (not through the platform); we time

* detection: from the `ip link set down` until a liveness prober at either end declares the
  link dead (the first "link ... down" line of their logs, wall clock in ms);
* confirmed: until the PCE's topology says the link is down (polled from this host through the
  forwarder, so it includes an HTTPS round trip of the poll);
* reroute: until the kernel of `a` routes the far SR's address over another link;

and return the UE's report (requests, failed). The link is set up again before returning.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import httpx

from flame.sandbox.netns import NetnsPlan

__all__ = ["LinkFailure", "link_failure", "ue_run"]


@dataclass(frozen=True, slots=True)
class LinkFailure:
    detection_ms: float | None
    confirmed_ms: float | None
    reroute_ms: float | None
    ue: dict[str, Any]


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
    done = subprocess.run(
        [*ue_command(instance, ue, sr, fqdn, paths, rps, secs), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=secs + 120,
        check=False,
    )
    return _report(done.stdout, done.stderr)


def _report(stdout: str, stderr: str) -> dict[str, Any]:
    """The UE's JSON report (the first object printed; an error object may follow)."""
    try:
        report, _ = json.JSONDecoder().raw_decode(stdout.lstrip())
    except ValueError:
        raise RuntimeError(f"no UE report:\n{stdout[-2000:]}\n{stderr[-2000:]}") from None
    return dict(report)


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
    ns, dev = (plan.nodes[a].ns, link.a_if) if link.a == a else (plan.nodes[a].ns, link.b_if)
    far = plan.nodes[target].address
    with open(os.path.join(run_dir, "tokens.json"), encoding="utf-8") as f:
        token = json.load(f)["flame-up-operator"]
    verify = ssl.create_default_context(cafile=instance["netns"]["ca_file"])
    load = subprocess.Popen(
        ue_command(instance, ue, sr, fqdn, [path], rps, secs),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    confirmed = reroute = None
    try:
        time.sleep(down_after_s)
        downed_wall = time.time()
        downed = time.monotonic()
        subprocess.run(["ip", "-n", ns, "link", "set", dev, "down"], check=True, timeout=10)
        with httpx.Client(
            verify=verify, headers={"Authorization": f"Bearer {token}"}, trust_env=False
        ) as http:
            while time.monotonic() - downed < 5 and (confirmed is None or reroute is None):
                if confirmed is None and _pce_says_down(http, instance["pce_url"], a, b):
                    confirmed = (time.monotonic() - downed) * 1000
                if reroute is None and _routed_around(ns, far, dev):
                    reroute = (time.monotonic() - downed) * 1000
                time.sleep(0.01)
        stdout, stderr = load.communicate(timeout=secs + 120)
    finally:
        if load.poll() is None:
            load.kill()
        subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=False, timeout=10)
    detected = _first_down_logged(run_dir, a, b, downed_wall)
    detection = None if detected is None else (detected - downed_wall) * 1000
    return LinkFailure(detection, confirmed, reroute, _report(stdout, stderr))


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


def _routed_around(ns: str, address: str, dead_dev: str) -> bool:
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
