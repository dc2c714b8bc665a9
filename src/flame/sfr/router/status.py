"""The SR's own small status endpoint on its data port.

Requests whose Host is the SR id or `_flame` are answered here instead of being routed:

    GET /.flame/health   200 {"status": "ok", ...}, 503 while the SR has no table yet
    GET /.flame/status   table version, per-FQDN and per-endpoint counters (this worker),
                         ejected endpoints, pools, multicast, CLMC batches
    GET /.flame/table    the forwarding table in use (as the PCE sent it)

Each worker answers for itself (`worker` and `pid` say which).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from flame.sfr.router.request import RequestHead
from flame.sfr.router.response import local_response

if TYPE_CHECKING:
    from flame.sfr.router.context import RouterContext

__all__ = ["status_answer", "status_document"]


def status_answer(ctx: RouterContext, req: RequestHead) -> tuple[int, bytes]:
    """(status, complete response bytes) for a request to the status endpoint."""
    path = req.target.split(b"?", 1)[0]
    head_request = req.method == b"HEAD"
    keep_alive = req.keep_alive and not ctx.closing
    status: int
    body: dict[str, Any]
    if req.method not in (b"GET", b"HEAD"):
        status, body = (
            405,
            {"error": "method_not_allowed", "message": "the status endpoint is read-only; use GET"},
        )
    elif path == b"/.flame/health":
        version = ctx.routing.version
        status = 200 if version is not None else 503
        body = {
            "status": "ok" if version is not None else "no_table",
            "sr": ctx.config.sr_id,
            "table_version": version,
        }
    elif path == b"/.flame/status":
        status, body = 200, status_document(ctx)
    elif path == b"/.flame/table":
        table = ctx.routing.table
        if table is None:
            status, body = 404, {"error": "no_table", "message": "no forwarding table received yet"}
        else:
            status, body = 200, table.to_dict()
    else:
        status, body = (
            404,
            {
                "error": "not_found",
                "message": "the SR status endpoint has /.flame/health, /.flame/status and /.flame/table",
            },
        )
    data = local_response(
        status, body, keep_alive=keep_alive, http11=req.http11, head_request=head_request
    )
    return status, data


def status_document(ctx: RouterContext) -> dict[str, Any]:
    routing = ctx.routing
    routes: dict[str, Any] = {}
    for fqdn in routing.fqdns():
        compiled = routing.lookup(fqdn)
        if compiled is None:
            continue
        routes[fqdn] = [
            [
                {
                    "sfe": e.sfe,
                    "cluster": e.cluster,
                    "address": f"{e.host}:{e.port}",
                    "weight": e.weight,
                }
                for e in tier.endpoints
            ]
            for tier in compiled.tiers
        ]
    coalescer = ctx.coalescer
    return {
        "sr": ctx.config.sr_id,
        "worker": ctx.worker,
        "pid": os.getpid(),
        "table_version": routing.version,
        "routes": routes,
        "ejected": ctx.outliers.ejected(),
        "ejections": ctx.outliers.ejections,
        "connections": len(ctx.connections),
        "upstream_pools": ctx.pool.stats(),
        "upstream_connects": ctx.pool.connects,
        "multicast": {
            "enabled": coalescer is not None,
            "in_flight": len(coalescer.inflight) if coalescer else 0,
            "fetches": coalescer.fetches if coalescer else 0,
            "coalesced": coalescer.coalesced if coalescer else 0,
            "relayed_to_siblings": ctx.siblings.relayed if ctx.siblings else 0,
            "relay_fallbacks": ctx.siblings.fallbacks if ctx.siblings else 0,
        },
        **ctx.metrics.snapshot(),
    }
