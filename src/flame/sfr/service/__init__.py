"""The PCE service: topology, registry, policies and versioned forwarding tables (SFR-4..20).

`PceService` is what `flame serve pce` runs behind the HTTP API (`flame.sfr.api`). It owns the
run-time topology and a path engine (`PathComputer`), the FQDN registry, the routing policies
and the `Store`, and keeps one `ForwardingTable` per service router:

* **Versions only grow, and only with content.** After every change the service recomputes just
  the tables the change can touch (the SRs whose trees a link change altered; every SR for the
  one FQDN a registration or policy names) and gives a table a new version only if its routes
  differ. Versions are persisted with a digest of the content, so a restarted or standby PCE
  keeps the versions of unchanged tables and continues above the others: an SR never sees a
  version go back, and never applies an older table over a newer one (SFR-11).
* **Persist, then publish.** A change is written (with the new table versions) in one SQLite
  transaction before any SR can see a table that depends on it; if the write fails, the
  in-memory state is thrown away and rebuilt from the database.
* **Long-poll distribution.** `wait_table(sr, since, timeout)` returns as soon as the SR's
  table is newer than `since`; per-SR events wake only the waiters of tables that changed.
* **One active PCE (SFR-20).** The service is ACTIVE while it holds the store's lease, which a
  background task renews; a STANDBY polls for the lease and, when the active PCE's lease
  expires, rebuilds the state from the database (topology file + replayed changes) and takes
  over. Every operation on a standby raises `NotActive` (HTTP 503): SRs keep forwarding on their
  last tables and try the next PCE.

Everything except the lease task runs on the event loop's thread: the API's handlers are
`async`, and the operations here are synchronous and short, so they never interleave.

* **Content certificates (SFR-22, SFR-23).** With a `CertManager` (`flame.sfr.certs`), the
  service keeps each routed FQDN's certificate (uploaded, or issued by the platform CA) and
  a versioned bundle per SR of the certificates of the FQDNs its table routes, brought in
  line after every table change, delegation change and, for renewals, lease tick; SRs
  long-poll it (`wait_certs`) like their tables. A certificate failure is logged and never
  stops routing.

Exceptions raised (all carry structured context; see `registry` and `store` for the tree)::

    UserError            400  a malformed change, endpoint, policy or name
    PermissionDenied     403  a tenant acting on names it does not own, or on operator routes
    NotFound             404  unknown SR, node, link, registration, delegation or policy
    Conflict             409  a node that exists, an SR that clusters still attach to, ...
    NotActive            503  this PCE is a standby

The class is put together from one module per concern: `core` (the state and the change path:
recompute, persist, publish), `lease` (HA: the lease task and rebuilding from the database),
`changes` (topology), `endpoints` (registrations, delegations), `policies`, `distribution`
(tables and the long poll), `certificates`, and `published` (tables as published, their digest
and JSON).
"""

from __future__ import annotations

from flame.sfr.service.certificates import _Certificates
from flame.sfr.service.changes import _Changes
from flame.sfr.service.core import MAX_WAIT_S, CertsDisabled, ChangeResult, PathEngine, PceRole
from flame.sfr.service.distribution import _Distribution
from flame.sfr.service.endpoints import _Endpoints
from flame.sfr.service.lease import _Lease
from flame.sfr.service.policies import _Policies
from flame.sfr.service.published import PublishedTable

__all__ = [
    "MAX_WAIT_S",
    "CertsDisabled",
    "ChangeResult",
    "PathEngine",
    "PceRole",
    "PceService",
    "PublishedTable",
]


class PceService(_Lease, _Changes, _Endpoints, _Policies, _Distribution, _Certificates):
    """The active (or standby) PCE: see the module docstring."""
