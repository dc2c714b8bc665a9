"""The SR's own small status endpoint on its data port.

Requests whose Host is the SR id or `_flame` are answered here instead of being routed:

    GET /.flame/health   200 {"status": "ok", ...}; 503 while the SR has no table yet
                         ("no_table") or while an essential background task (table source,
                         time-out sweeper) is failing ("failing", naming it); a failing
                         non-essential one (the CLMC reporter) is 200 "degraded"
    GET /.flame/status   table version, per-FQDN and per-endpoint counters (this worker),
                         ejected endpoints, egress SRs bypassed, pools, client connections
                         (open, cap, refused), multicast, CLMC batches, background tasks
                         (state, restarts, last error), the table source (PCE
                         followed, polls, failed polls)
    GET /.flame/table    the forwarding table in use (as the PCE sent it)

The data port faces the public: health is open (load balancers probe it), but the status and
the table name every tenant's endpoints, so when the SR has a token (its router token, the
same it reads its table with) they need `Authorization: Bearer <that token>`; 401 otherwise.
Each worker answers for itself (`worker` and `pid` say which).
"""

from __future__ import annotations

import hmac
import os
from typing import TYPE_CHECKING, Any

from flame.sfr.router.request import RequestHead
from flame.sfr.router.response import local_response

if TYPE_CHECKING:
    from flame.sfr.router.context import RouterContext

__all__ = ["status_answer", "status_document"]


def _authorized(ctx: RouterContext, req: RequestHead) -> bool:
    expected = ctx.config.token
    if not expected:
        return True  # an SR without a token (tests, a laptop) has nothing to compare with
    for line in req.lines:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and hmac.compare_digest(
                token.strip(), expected.encode("ascii", "replace")
            ):
                return True
    return False


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
        failing = ctx.tasks.failing()
        essential = ctx.tasks.failing(essential_only=True)
        if version is None:
            status, state = 503, "no_table"
        elif essential:
            status, state = 503, "failing"
        elif failing:
            status, state = 200, "degraded"
        else:
            status, state = 200, "ok"
        body = {"status": state, "sr": ctx.config.sr_id, "table_version": version}
        if failing:
            body["failing_tasks"] = {
                name: ctx.tasks.supervised[name].describe() for name in failing
            }
    elif path in (b"/.flame/status", b"/.flame/table") and not _authorized(ctx, req):
        status, body = (
            401,
            {
                "error": "unauthorized",
                "message": "the SR's status and table need its router token: "
                "send 'Authorization: Bearer <token>'",
            },
        )
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
        "network_refusals": ctx.forwarder.network_refusals,  # no route: nothing ejected
        "egress_hops": {
            "bypassed": ctx.forwarder.hops.ejected(),  # "address:port" -> seconds left
            "failures": ctx.forwarder.hop_failures,
            "fallbacks": ctx.forwarder.hop_fallbacks,
        },
        "connections": len(ctx.connections),
        "connection_limit": ctx.max_connections,
        "connections_per_ip_limit": ctx.max_per_ip,
        "connections_refused": ctx.refused,
        "websockets": {
            "open": len(ctx.tunnels),
            "limit": ctx.tunnel_cap,
            "idle_timeout_s": ctx.tunnel_idle,
            "opened": ctx.tunnels_opened,
            "refused": ctx.tunnels_refused,
            "failed": ctx.tunnels_failed,
            "idle_closed": ctx.tunnels_idle_closed,
            "bytes": ctx.tunnel_bytes,
        },
        "tasks": ctx.tasks.states(),
        "table_source": ctx.source_status() if ctx.source_status is not None else None,
        # Names, fingerprints and expiry of the certificates served; never a key.
        "tls": ctx.tls_status() if ctx.tls_status is not None else None,
        "hop_tls": _hop_tls(ctx),
        "upstream_pools": ctx.pool.stats(),
        "upstream_connects": ctx.pool.connects,
        "multicast": {
            "enabled": coalescer is not None,
            "in_flight": len(coalescer.inflight) if coalescer else 0,
            "fetches": coalescer.fetches if coalescer else 0,
            "coalesced": coalescer.coalesced if coalescer else 0,
            # joiners sent to fetch again because the response was another variant (Vary)
            "regrouped": coalescer.regrouped if coalescer else 0,
            "vary_learnt": len(coalescer.vary) if coalescer else 0,
            "relayed_to_siblings": ctx.siblings.relayed if ctx.siblings else 0,
            "relay_fallbacks": ctx.siblings.fallbacks if ctx.siblings else 0,
        },
        **ctx.metrics.snapshot(),
    }


def _hop_tls(ctx: RouterContext) -> dict[str, Any] | None:
    """The SR's platform identity (fingerprint, never the key) and hop-TLS counters."""
    hop = ctx.pool.tls
    if hop is None:
        return None
    return {
        **hop.describe(),
        "connects": ctx.pool.tls_connects,
        "egress_tls": ctx.routing.egress_tls,
        "pins_need_sr": ctx.pin_needs_sr,
        "pins_ignored": ctx.pins_ignored,
    }
