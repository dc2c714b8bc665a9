"""The replica planner: push popular assets to the edge caches ahead of demand (MC-10's
proactive half), driven by what the CLMC knows.

    python -m flame.media.vcdn.planner --clmc URL --db DB --edge [CLUSTER=]URL ... [--top N]
                                       [--window 1h] [--interval 30] [--once]

Each round it asks the CLMC, over its InfluxQL HTTP API (``GET /query``), for the demand per
path in the last `window`:

- observed: ``SELECT sum("requests") FROM "media_cache_requests" ... GROUP BY "path",
  "cluster"``, what every cache of the tenant reported (see `flame.media.vcdn.service`);
- predicted: ``SELECT last("requests") FROM "media_demand_forecast" ... GROUP BY "path",
  "cluster"``, written by whatever forecasts demand (a provider's model, a schedule of
  premieres); a forecast point counts as that many requests.

For every edge it ranks the paths by the demand of its own cluster (when the edge names one
and the CLMC has demand tagged with it) plus the demand seen everywhere, and posts the top N
to the edge's ``POST /_cache/v1/prefetch`` (the tenant's key in ``CACHE_TOKEN``). Paths the
edge already holds fresh cost it one lookup. The CLMC token is ``CLMC_TOKEN``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx

__all__ = ["Edge", "ReplicaPlanner", "main"]

log = logging.getLogger(__name__)

OBSERVED = "media_cache_requests"
FORECAST = "media_demand_forecast"
_MAX_TOP = 256  # the caches' prefetch API takes at most this many paths per call


@dataclass(frozen=True)
class Edge:
    url: str
    cluster: str | None = None

    @classmethod
    def parse(cls, spec: str) -> Edge:
        cluster, eq, url = spec.partition("=")
        if eq and not cluster.startswith(("http://", "https://")):
            return cls(url.rstrip("/"), cluster or None)
        return cls(spec.rstrip("/"))


class ReplicaPlanner:
    def __init__(
        self,
        clmc_url: str,
        database: str,
        edges: list[Edge],
        *,
        clmc_token: str | None = None,
        cache_token: str | None = None,
        top_n: int = 20,
        window: str = "1h",
        timeout_s: float = 30.0,
    ) -> None:
        if not 1 <= top_n <= _MAX_TOP:
            raise ValueError(f"top_n must be 1..{_MAX_TOP}")
        if not window[:-1].isdigit() or window[-1] not in "smhd":
            raise ValueError(f"window {window!r} is not a duration such as 90s, 30m, 1h or 2d")
        self.clmc_url = clmc_url.rstrip("/")
        self.database = database
        self.edges = edges
        self.clmc_token = clmc_token
        self.cache_token = cache_token
        self.top_n = top_n
        self.window = window
        self.client = httpx.AsyncClient(timeout=timeout_s, trust_env=False)
        self.rounds = 0
        self.failures = 0
        self.last_plan: dict[str, Any] = {}

    async def close(self) -> None:
        await self.client.aclose()

    async def demand(self) -> dict[str | None, Counter[str]]:
        """Requests per path, per cluster (None: untagged), observed plus predicted."""
        out: dict[str | None, Counter[str]] = {}
        for measurement, fn in ((OBSERVED, "sum"), (FORECAST, "last")):
            q = (
                f'SELECT {fn}("requests") FROM "{measurement}" WHERE time > now() - '
                f'{self.window} GROUP BY "path", "cluster"'
            )
            for tags, value in await self._series(q):
                path = tags.get("path") or ""
                if path.startswith("/") and not path.startswith("/_cache/") and value > 0:
                    out.setdefault(tags.get("cluster") or None, Counter())[path] += int(value)
        return out

    async def _series(self, q: str) -> list[tuple[dict[str, str], float]]:
        headers = {"Authorization": f"Bearer {self.clmc_token}"} if self.clmc_token else {}
        r = await self.client.get(
            f"{self.clmc_url}/query", params={"db": self.database, "q": q}, headers=headers
        )
        if r.status_code != 200:
            raise RuntimeError(f"the CLMC answered {r.status_code}: {r.text[:200]}")
        found: list[tuple[dict[str, str], float]] = []
        for result in r.json().get("results", []):
            if "error" in result:
                # An unknown measurement is no demand; anything else is worth saying.
                if "not found" not in str(result["error"]):
                    raise RuntimeError(f"the CLMC refused {q!r}: {result['error']}")
                continue
            for series in result.get("series", []):
                tags = {str(k): str(v) for k, v in (series.get("tags") or {}).items()}
                for row in series.get("values", []):
                    if len(row) > 1 and isinstance(row[1], int | float):
                        found.append((tags, float(row[1])))
        return found

    def rank(self, demand: dict[str | None, Counter[str]], edge: Edge) -> list[str]:
        """The edge's top N: its own cluster's demand counts twice, the total once."""
        score: Counter[str] = Counter()
        for counts in demand.values():
            score.update(counts)
        if edge.cluster is not None:
            score.update(demand.get(edge.cluster, Counter()))
        return [path for path, _ in score.most_common(self.top_n)]

    async def plan_once(self) -> dict[str, Any]:
        """One round: query the CLMC, prefetch to every edge. Returns what each edge said."""
        demand = await self.demand()
        plan: dict[str, Any] = {}
        for edge in self.edges:
            paths = self.rank(demand, edge)
            if not paths:
                plan[edge.url] = {"paths": [], "skipped": "no demand known"}
                continue
            plan[edge.url] = {"paths": paths, **await self._prefetch(edge, paths)}
        self.rounds += 1
        self.last_plan = plan
        return plan

    async def _prefetch(self, edge: Edge, paths: list[str]) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.cache_token}"} if self.cache_token else {}
        try:
            r = await self.client.post(
                f"{edge.url}/_cache/v1/prefetch", json={"paths": paths}, headers=headers
            )
        except httpx.HTTPError as exc:
            return {"error": f"cannot reach the edge: {exc!r}"}
        if r.status_code != 200:
            return {"error": f"the edge answered {r.status_code}: {r.text[:200]}"}
        doc = r.json()
        return {k: doc.get(k) for k in ("fetched", "fresh", "errors")}

    async def run(self, stop: asyncio.Event, interval_s: float) -> None:
        """Plan every `interval_s` until `stop`; a failed round is logged and retried."""
        while not stop.is_set():
            try:
                plan = await self.plan_once()
                log.info("replica plan: %s", {u: p.get("fetched") for u, p in plan.items()})
            except Exception as exc:  # the CLMC or an edge away: try again next round
                self.failures += 1
                log.warning("the replica planner's round failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flame.media.vcdn.planner", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--clmc", default=os.environ.get("CLMC_URL"), help="default: $CLMC_URL")
    p.add_argument("--db", default=os.environ.get("CLMC_DB") or os.environ.get("FLAME_TENANT"))
    p.add_argument("--edge", action="append", default=[], help="[CLUSTER=]URL of an edge cache")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--window", default="1h")
    p.add_argument("--interval", type=float, default=30.0)
    p.add_argument("--once", action="store_true", help="one round, print the plan as JSON")
    args = p.parse_args(argv)
    if not (args.clmc and args.db and args.edge):
        p.error("--clmc, --db and at least one --edge are needed")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        planner = ReplicaPlanner(
            args.clmc, args.db, [Edge.parse(e) for e in args.edge],
            clmc_token=os.environ.get("CLMC_TOKEN"), cache_token=os.environ.get("CACHE_TOKEN"),
            top_n=args.top, window=args.window,
        )  # fmt: skip
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    async def go() -> None:
        import json  # noqa: PLC0415
        import signal  # noqa: PLC0415

        try:
            if args.once:
                print(json.dumps(await planner.plan_once(), indent=2))
                return
            stop = asyncio.Event()
            for signum in (signal.SIGTERM, signal.SIGINT):
                asyncio.get_running_loop().add_signal_handler(signum, stop.set)
            await planner.run(stop, args.interval)
        finally:
            await planner.close()

    try:
        asyncio.run(go())
    except (RuntimeError, httpx.HTTPError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
