"""Benchmark: `flame up` to ready, and `flame down` to nothing left (issue 6, target < 10 s).

Each round starts FLAME-in-a-box detached (`flame up -d --free-ports`) in a fresh temporary
state directory, which returns once every component answers its health check, then stops it
with `flame down`. There is no peer to run side by side on this machine; the anchor is the
seed's FLAME-in-a-box, an OVA of seven VMs needing 4 cores and 8 GB.

    .venv/bin/python bench/startup.py            # 5 rounds per topology
    .venv/bin/python bench/startup.py --quick    # 1 round, sandbucket only
    .venv/bin/python bench/startup.py --netns    # also `flame up --netns` (root; target < 15 s)

With `--netns` (issue 13) each topology is also started as network namespaces (`flame up -d
--netns`: namespaces, veths, the control plane over HTTPS, a VIM agent per cluster), and the
ratio netns/loopback is printed; without root that mode is skipped, saying why.

The last line printed is one JSON object with the figures; exit status 0 when every round
completed, whether or not the target was met.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 10.0
NETNS_TARGET_S = 15.0


def one_round(topology: str, netns: bool = False) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="flame-startup-") as tmp:
        config = Path(tmp) / "config.toml"
        config.touch()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FLAME_")},
            "FLAME_CONFIG": str(config),
            "FLAME_STATE_DIR": str(Path(tmp) / "state"),
        }
        flame = [sys.executable, "-m", "flame"]
        t0 = time.perf_counter()
        up = subprocess.run(
            [*flame, "up", "-d", "--free-ports", "--topology", topology]
            + (["--netns"] if netns else []),
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        t1 = time.perf_counter()
        down = subprocess.run(
            [*flame, "down"], env=env, capture_output=True, text=True, check=False
        )
        t2 = time.perf_counter()
        if up.returncode != 0 or down.returncode != 0:
            raise SystemExit(f"flame up/down failed:\n{up.stderr}\n{down.stderr}")
        return t1 - t0, t2 - t1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round, sandbucket only")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--netns", action="store_true", help="also flame up --netns (root)")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 5)
    topologies = ("sandbucket",) if args.quick else ("sandbucket", "sandpit")
    figures: dict[str, object] = {"bench": "startup", "rounds": rounds, "target_s": TARGET_S}
    print(f"# flame up -d then flame down, {rounds} round(s), on {os.cpu_count()} CPUs")
    modes = [("", False)]
    if args.netns:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
        from flame.sandbox.netns import available

        why = available()
        if why is None:
            modes.append(("netns_", True))
        else:
            print(f"# --netns skipped: {why}")
            figures["netns_skipped"] = why
    for topology in topologies:
        for prefix, netns in modes:
            ups, downs = [], []
            label = f"{topology}{' netns' if netns else ''}"
            for i in range(rounds):
                up_s, down_s = one_round(topology, netns)
                ups.append(up_s)
                downs.append(down_s)
                print(f"{label:<17} round {i + 1}: up {up_s:6.2f} s   down {down_s:5.2f} s")
            figures[f"{prefix}{topology}_up_s"] = round(statistics.median(ups), 2)
            figures[f"{prefix}{topology}_down_s"] = round(statistics.median(downs), 2)
        if f"netns_{topology}_up_s" in figures:
            ratio = figures[f"netns_{topology}_up_s"] / figures[f"{topology}_up_s"]  # type: ignore[operator]
            figures[f"netns_{topology}_vs_loopback"] = round(ratio, 2)
            print(f"{topology}: netns start-up is {ratio:.2f}x the loopback mode's")
    figures["target_met"] = all(
        v < TARGET_S
        for k, v in figures.items()
        if k.endswith("_up_s") and not k.startswith("netns_") and isinstance(v, float)
    )
    if args.netns and "netns_skipped" not in figures:
        figures["netns_target_s"] = NETNS_TARGET_S
        figures["netns_target_met"] = all(
            v < NETNS_TARGET_S
            for k, v in figures.items()
            if k.startswith("netns_") and k.endswith("_up_s") and isinstance(v, float)
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
