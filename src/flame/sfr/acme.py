"""Content certificates from an ACME directory (SFR-23's second source), HTTP-01 at the SRs.

When the operator configures a directory (`flame serve pce --acme-directory URL`), the PCE's
`CertManager` asks an `AcmeIssuer` for the certificates it would otherwise issue from the
platform CA. The ACME protocol itself is the certbot team's `acme` library; this module only
drives it:

* **One worker thread** (the library is blocking) takes FQDNs from a queue, one order at a
  time: a fresh ECDSA P-256 key and CSR, `new_order`, for each pending authorization the
  HTTP-01 challenge, then `poll_and_finalize`. A finished certificate waits in `results` until
  the manager's next `sync` installs it (the manager is told at once through `notify`).
* **HTTP-01 at every SR.** A challenge's token and key authorization are published through the
  manager's certificate bundles (the channel that already carries certificates to the SRs that
  route the FQDN); the SR answers `GET /.well-known/acme-challenge/<token>` for that host on
  both listeners, before routing or redirecting. The issuer answers the challenge only once
  every SR routing the name has fetched the bundle (`delivered`), or after
  `delivery_timeout`.
* **Account key** (ECDSA P-256, ES256): made once, sealed with the PCE's `SecretBox` (the same
  AES-256-GCM key as content keys) in `<state_dir>/acme/account.json` (0600) with the account
  URL; the directory URL is the associated data, so a key is never replayed to another CA.
* **Failures back off** per FQDN: `retry_base` doubling to `retry_max`; a `rateLimited` error
  waits at least `rate_limit_wait`. New orders are also capped per hour (`orders_per_hour`)
  across all names, so a burst of new FQDNs never trips the CA's limits.

Not done: TLS-ALPN-01 and DNS-01 (HTTP-01 only, so no wildcard names); External Account
Binding; revoking a replaced certificate (it expires).
"""

from __future__ import annotations

import base64
import collections
import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from acme import challenges, client, crypto_util, errors, messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.jwa import ES256
from josepy.jwk import JWKEC

from flame.common.atomicfile import atomic_write_private
from flame.common.backoff import backoff_delay
from flame.common.errors import UserError
from flame.common.pki import SecretBox

__all__ = ["AcmeConfig", "AcmeIssuer", "Issued"]

log = logging.getLogger("flame.sfr.acme")

_RATE_LIMITED = "urn:ietf:params:acme:error:rateLimited"


@dataclass(frozen=True, slots=True)
class AcmeConfig:
    """The operator's ACME settings (`flame serve pce --acme-*`)."""

    directory: str
    email: str | None = None
    ca_file: Path | None = None  # to verify the directory's own TLS certificate (else system)
    orders_per_hour: int = 50
    retry_base: float = 60.0
    retry_max: float = 6 * 3600.0
    rate_limit_wait: float = 3600.0
    delivery_timeout: float = 10.0
    order_timeout: float = 90.0

    def __post_init__(self) -> None:
        if not self.directory.startswith("https://"):
            raise UserError(
                f"the ACME directory must be an https:// URL (RFC 8555), got {self.directory!r}"
            )
        if self.orders_per_hour < 1 or self.retry_base <= 0 or self.retry_max < self.retry_base:
            raise UserError("ACME limits must be positive (and retry_max >= retry_base)")


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate the CA issued: the chain as it sent it and the key made for it."""

    fqdn: str
    owner: str | None
    chain_pem: str
    key_pem: str

    def __repr__(self) -> str:
        return f"Issued({self.fqdn!r})"


@dataclass(slots=True)
class _Backoff:
    failures: int
    next_at: float
    last_error: str


class AcmeFailure(Exception):
    """An order that did not end with a certificate (the message says why)."""


class AcmeIssuer:
    """Orders certificates for FQDNs from one ACME directory, one at a time, in a thread."""

    def __init__(
        self,
        config: AcmeConfig,
        box: SecretBox,
        state_dir: Path,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._box = box
        self._account_file = Path(state_dir) / "account.json"
        self._clock = clock
        self._lock = threading.Condition()
        self._queue: collections.deque[tuple[str, str | None]] = collections.deque()
        self._busy: str | None = None
        self._results: list[Issued] = []
        self._challenges: dict[str, dict[str, str]] = {}  # fqdn -> token -> key authorization
        self._backoff: dict[str, _Backoff] = {}
        self._orders: collections.deque[float] = collections.deque()  # times of new orders
        self._client: client.ClientV2 | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.notify: Callable[[], None] = lambda: None
        self.delivered: Callable[[str], bool] = lambda fqdn: True
        self.issued = 0
        self.failed = 0

    # -- what the manager asks (its thread) ---------------------------------------------------

    def want(self, fqdn: str, owner: str | None, *, force: bool = False) -> bool:
        """Queue an order for `fqdn` unless one is queued or running, or it is backing off
        (`force`: the owner asked, forget the back-off). True if queued."""
        with self._lock:
            if fqdn == self._busy or any(f == fqdn for f, _ in self._queue):
                return False
            backoff = self._backoff.get(fqdn)
            if backoff is not None:
                if force and backoff.last_error != _RATE_LIMITED:
                    del self._backoff[fqdn]
                elif self._clock() < backoff.next_at:
                    return False
            self._queue.append((fqdn, owner))
            self._lock.notify_all()
        self._ensure_thread()
        return True

    def take_results(self) -> list[Issued]:
        with self._lock:
            results, self._results = self._results, []
        return results

    def has_results(self) -> bool:
        return bool(self._results)

    def challenges(self) -> dict[str, dict[str, str]]:
        with self._lock:
            return {fqdn: dict(tokens) for fqdn, tokens in self._challenges.items()}

    def summary(self) -> dict[str, int]:
        """Counts only (for the PCE's open `/health`: no names, no errors)."""
        with self._lock:
            return {
                "issued": self.issued,
                "failed": self.failed,
                "queued": len(self._queue) + (self._busy is not None),
                "backing_off": len(self._backoff),
            }

    def status(self) -> dict[str, Any]:
        """Details, names and errors included (logs and tests; not on an open route)."""
        now = self._clock()
        with self._lock:
            return {
                "directory": self.config.directory,
                "issued": self.issued,
                "failed": self.failed,
                "queued": [f for f, _ in self._queue],
                "ordering": self._busy,
                "backing_off": {
                    fqdn: {
                        "failures": b.failures,
                        "retry_in_s": round(max(0.0, b.next_at - now), 1),
                        "error": b.last_error,
                    }
                    for fqdn, b in sorted(self._backoff.items())
                },
            }

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=5)

    # -- the worker ---------------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="acme", daemon=True)
                self._thread.start()

    def _next_job(self) -> tuple[str, str | None] | None:
        """The next FQDN to order, once the per-hour budget allows; None when stopping."""
        with self._lock:
            while not self._stopping:
                now = self._clock()
                while self._orders and now - self._orders[0] > 3600.0:
                    self._orders.popleft()
                if self._queue and len(self._orders) < self.config.orders_per_hour:
                    fqdn, owner = self._queue.popleft()
                    self._busy = fqdn
                    self._orders.append(now)
                    return fqdn, owner
                wait = 3600.0 - (now - self._orders[0]) if self._queue else None
                self._lock.wait(timeout=wait)
        return None

    def _run(self) -> None:
        while (job := self._next_job()) is not None:
            fqdn, owner = job
            try:
                chain, key = self._order(fqdn)
            except Exception as exc:  # every failure backs off; none ends the worker
                self._failed(fqdn, exc)
            else:
                with self._lock:
                    self._results.append(Issued(fqdn, owner, chain, key))
                    self._backoff.pop(fqdn, None)
                    self.issued += 1
                log.info("ACME certificate obtained for %s from %s", fqdn, self.config.directory)
            finally:
                with self._lock:
                    self._busy = None
                    self._challenges.pop(fqdn, None)
            self.notify()

    def _failed(self, fqdn: str, exc: Exception) -> None:
        code = exc.typ if isinstance(exc, messages.Error) else ""
        text = str(exc) or type(exc).__name__
        with self._lock:
            previous = self._backoff.get(fqdn)
            failures = previous.failures + 1 if previous else 1
            wait = backoff_delay(failures, self.config.retry_base, self.config.retry_max)
            if code == _RATE_LIMITED:
                wait = max(wait, self.config.rate_limit_wait)
            self._backoff[fqdn] = _Backoff(failures, self._clock() + wait, code or text[:200])
            self.failed += 1
        log.warning(
            "ACME order for %s failed (%s); retrying in %.0fs (failure %d)",
            fqdn,
            text[:300],
            wait,
            failures,
        )

    # -- one order ----------------------------------------------------------------------------

    def _order(self, fqdn: str) -> tuple[str, str]:
        acme = self._connect()
        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        order = acme.new_order(crypto_util.make_csr(key_pem, [fqdn]))
        for authz in order.authorizations:
            if authz.body.status == messages.STATUS_VALID:
                continue  # the CA remembers an earlier validation
            self._answer(acme, fqdn, authz)
        deadline = dt.datetime.now() + dt.timedelta(seconds=self.config.order_timeout)
        try:
            done = acme.poll_and_finalize(order, deadline)
        except errors.ValidationError as exc:
            details = "; ".join(
                str(c.error) for a in exc.failed_authzrs for c in a.body.challenges if c.error
            )
            raise AcmeFailure(f"validation failed: {details or 'no detail'}") from None
        if not done.fullchain_pem:
            raise AcmeFailure("the order finished without a certificate")
        return done.fullchain_pem, key_pem.decode()

    def _answer(
        self, acme: client.ClientV2, fqdn: str, authz: messages.AuthorizationResource
    ) -> None:
        chall = next(
            (c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01)), None
        )
        if chall is None:
            raise AcmeFailure("the CA offers no http-01 challenge (the only one answered)")
        response, validation = chall.response_and_validation(acme.net.key)
        token = chall.chall.encode("token")
        with self._lock:
            self._challenges.setdefault(fqdn, {})[token] = validation
        self.notify()
        deadline = time.monotonic() + self.config.delivery_timeout
        while not self.delivered(fqdn) and time.monotonic() < deadline:
            time.sleep(0.02)
        acme.answer_challenge(chall, response)

    def _connect(self) -> client.ClientV2:
        if self._client is not None:
            return self._client
        key, uri = self._load_account()
        # `verify_ssl` goes to requests' `verify`, which also takes a CA bundle's path.
        verify = str(self.config.ca_file) if self.config.ca_file else True
        net = client.ClientNetwork(
            key, alg=ES256, verify_ssl=cast(bool, verify), user_agent="flame-platform"
        )
        directory = client.ClientV2.get_directory(self.config.directory, net)
        acme = client.ClientV2(directory, net)
        if uri is not None:
            acme.query_registration(
                messages.RegistrationResource(uri=uri, body=messages.Registration())
            )
        else:
            registration = messages.NewRegistration.from_data(
                email=self.config.email, terms_of_service_agreed=True
            )
            try:
                uri = acme.new_account(registration).uri
            except errors.ConflictError as exc:  # the CA knows this key already
                uri = exc.location
                acme.query_registration(
                    messages.RegistrationResource(uri=uri, body=messages.Registration())
                )
            self._save_account(key, uri)
            log.info("ACME account registered at %s", self.config.directory)
        self._client = acme
        return acme

    def _load_account(self) -> tuple[JWKEC, str | None]:
        aad = self.config.directory.encode()
        if self._account_file.exists():
            doc = json.loads(self._account_file.read_text(encoding="utf-8"))
            if doc.get("directory") == self.config.directory:
                pem = self._box.unseal(base64.b64decode(doc["key"]), aad=aad)
                loaded = serialization.load_pem_private_key(pem, password=None)
                return JWKEC(key=loaded), doc.get("account")
        key = ec.generate_private_key(ec.SECP256R1())
        return JWKEC(key=key), None

    def _save_account(self, key: JWKEC, uri: str | None) -> None:
        pem = cast(ec.EllipticCurvePrivateKey, key.key).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        sealed = self._box.seal(pem, aad=self.config.directory.encode())
        doc = {
            "directory": self.config.directory,
            "account": uri,
            "key": base64.b64encode(sealed).decode(),
        }
        self._account_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_private(self._account_file, json.dumps(doc).encode())
