"""The certificate manager with an ACME issuer (SFR-23), without a CA that answers: what it
asks for and what it keeps serving meanwhile. (Orders against a real ACME server: test_acme.)

The directory here is a closed loopback port, so every order really fails (connection
refused) and backs off; that is what renewal before expiry looks like when the CA is down.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventually import eventually
from flame.common.pki import PlatformCA
from flame.common.ports import free_port
from flame.sfr.acme import AcmeConfig, Issued
from flame.sfr.certs import ACME, PLATFORM, CertManager, open_cert_manager

FQDN = "live.acme.test"


def _closed_port() -> int:
    # free_port: a released bind(0) port may be handed to another xdist worker's server.
    return free_port()


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[CertManager]:
    config = AcmeConfig(f"https://127.0.0.1:{_closed_port()}/dir", retry_base=60.0)
    certs = open_cert_manager(tmp_path, acme=config)
    yield certs
    assert certs.acme is not None
    certs.acme.stop()
    certs.store.close()


def _settled(certs: CertManager, fqdn: str) -> dict:
    acme = certs.acme
    assert acme is not None
    return eventually(
        acme.status,
        until=lambda status: fqdn in status["backing_off"],
        every=0.02,
        what=f"an ACME attempt for {fqdn}",
    )


def test_sfr23_acme_configured_replaces_nothing_until_the_ca_answers(
    manager: CertManager,
) -> None:
    owner = {FQDN: "acme"}.get
    changed = manager.sync({"sr-a": [FQDN]}, owner)
    assert FQDN not in manager.records  # no platform certificate meanwhile
    assert changed == {"sr-a": 1}  # an (empty) first bundle
    status = _settled(manager, FQDN)
    assert status["backing_off"][FQDN]["failures"] == 1
    assert status["failed"] == 1
    # Backing off: further syncs do not hammer the CA.
    manager.sync({"sr-a": [FQDN]}, owner)
    assert manager.acme is not None
    assert manager.acme.status()["queued"] == []


def test_sfr23_due_acme_certificate_is_renewed_and_kept_until_then(
    manager: CertManager, tmp_path: Path
) -> None:
    """A certificate with less than a third of its life left asks the CA for a new one, and
    the current one stays in the SR's bundle while the CA does not answer."""
    assert manager.acme is not None
    ca = PlatformCA.open(tmp_path / "other-ca")
    issued = ca.issue([FQDN], days=3)  # stands for a certificate an ACME CA issued earlier
    owner = {FQDN: "acme"}.get
    # Installed as the worker would: through the manager's next sync.
    manager.acme._results.append(Issued(FQDN, "acme", issued.chain_pem, issued.key_pem))
    assert manager.due()
    manager.sync({"sr-a": [FQDN]}, owner)
    record = manager.records[FQDN]
    assert record.source == ACME
    assert [r.fqdn for r, _, _ in manager.bundle("sr-a").records] == [FQDN]
    assert not manager.due()  # three days left of three: not due
    # Two days later (a third left): due, an order is made, the certificate stays meanwhile.
    later = time.time() + 2.1 * 86400
    manager._clock = lambda: later
    assert manager.due()
    manager.sync({"sr-a": [FQDN]}, owner)
    _settled(manager, FQDN)
    assert manager.records[FQDN].info.fingerprint == record.info.fingerprint
    assert [r.fqdn for r, _, _ in manager.bundle("sr-a").records] == [FQDN]
    assert b"PRIVATE KEY" in manager.body(manager.bundle("sr-a"))  # the SR's bundle only


def test_sfr23_a_platform_certificate_is_replaced_by_acme_once_configured(
    tmp_path: Path,
) -> None:
    owner = {FQDN: "acme"}.get
    plain = open_cert_manager(tmp_path)
    plain.sync({"sr-a": [FQDN]}, owner)
    assert plain.records[FQDN].source == PLATFORM
    plain.store.close()
    config = AcmeConfig(f"https://127.0.0.1:{_closed_port()}/dir")
    certs = open_cert_manager(tmp_path, acme=config)
    try:
        certs.sync({"sr-a": [FQDN]}, owner)
        _settled(certs, FQDN)  # asked for, even though the platform's is not due
        assert certs.records[FQDN].source == PLATFORM  # served until ACME's arrives
    finally:
        assert certs.acme is not None
        certs.acme.stop()
        certs.store.close()


def test_sfr23_acme_result_for_a_name_that_changed_hands_is_dropped(
    manager: CertManager, tmp_path: Path
) -> None:
    assert manager.acme is not None
    issued = PlatformCA.open(tmp_path / "x").issue([FQDN], days=3)
    manager.acme._results.append(Issued(FQDN, "acme", issued.chain_pem, issued.key_pem))
    manager.sync({"sr-a": [FQDN]}, {FQDN: "globex"}.get)  # delegated to another tenant since
    assert FQDN not in manager.records
