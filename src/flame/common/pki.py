"""Certificates and keys for the platform (issue 15): the platform CA, certificates it issues,
checks of uploaded chains, and keys sealed at rest. Uses `cryptography`.

    ca = PlatformCA.open(state_dir / "ca")         # created once: ca.crt (0644), ca.key (0600)
    issued = ca.issue(["vod.example"], days=30)     # leaf + key, PEM; ECDSA P-256
    info = inspect_chain(chain_pem, key_pem)         # UserError unless it parses, matches, is valid
    info.covers("vod.example")                       # SAN DNS names, one-label wildcards
    box = SecretBox.open(state_dir / "certs.key")   # AES-256-GCM, key file 0600
    sealed = box.seal(key_pem, aad=b"vod.example")   # bound to its name

Nothing here logs a key or puts one in an exception message.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import ipaddress
import itertools
import os
import secrets
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from flame.common.atomicfile import atomic_write_private
from flame.common.errors import FlameError, UserError

__all__ = [
    "ChainInfo",
    "IssuedCert",
    "PlatformCA",
    "SecretBox",
    "inspect_chain",
    "name_covers",
]

_UTC = dt.UTC


def _now() -> dt.datetime:
    return dt.datetime.now(_UTC)


@dataclass(frozen=True, slots=True)
class IssuedCert:
    chain_pem: str  # the leaf (the CA is the root: clients trust it from ca.crt)
    key_pem: str = ""
    not_after: float = 0.0


@dataclass(frozen=True, slots=True)
class ChainInfo:
    """What a chain says about itself (never the key)."""

    names: tuple[str, ...]  # DNS subject alternative names, lower case
    not_before: float
    not_after: float
    fingerprint: str  # SHA-256 of the leaf, hex
    serial: str
    subject: str
    issuer: str
    certificates: int

    def covers(self, fqdn: str) -> bool:
        return any(name_covers(n, fqdn) for n in self.names)

    def to_dict(self) -> dict[str, object]:
        return {
            "names": list(self.names),
            "not_before": _iso(self.not_before),
            "not_after": _iso(self.not_after),
            "fingerprint_sha256": self.fingerprint,
            "serial": self.serial,
            "subject": self.subject,
            "issuer": self.issuer,
            "certificates": self.certificates,
        }


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, _UTC).isoformat().replace("+00:00", "Z")


def name_covers(pattern: str, fqdn: str) -> bool:
    """A SAN DNS name covers `fqdn`: equal, or `*.parent` and `fqdn` one label under parent."""
    pattern, fqdn = pattern.lower().rstrip("."), fqdn.lower().rstrip(".")
    if pattern == fqdn:
        return True
    if pattern.startswith("*."):
        head, _, rest = fqdn.partition(".")
        return bool(head) and rest == pattern[2:]
    return False


def _load_chain(chain_pem: str | bytes) -> list[x509.Certificate]:
    data = chain_pem.encode() if isinstance(chain_pem, str) else chain_pem
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise UserError(
            "the certificate chain is not PEM (expected '-----BEGIN CERTIFICATE-----' blocks, "
            "the server's certificate first, then its intermediates)"
        ) from None
    if not certs:
        raise UserError("the certificate chain holds no certificate")
    return certs


def _load_key(key_pem: str | bytes) -> object:
    data = key_pem.encode() if isinstance(key_pem, str) else key_pem
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # Never echo the key, not even part of it.
        raise UserError(
            "the private key cannot be read: give an unencrypted PEM key (PKCS#8 "
            "'BEGIN PRIVATE KEY', or 'BEGIN EC/RSA PRIVATE KEY')"
        ) from None


def _public_bytes(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _dns_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(
        dict.fromkeys(n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName))
    )


def _describe(name: x509.Name) -> str:
    return name.rfc4514_string()


def inspect_chain(
    chain_pem: str | bytes,
    key_pem: str | bytes | None = None,
    *,
    now: dt.datetime | None = None,
) -> ChainInfo:
    """Check a chain (leaf first) and, if given, its key; UserError naming the problem.

    Checked: PEM parses; the key is the leaf's; each certificate is signed by the next one;
    the leaf is valid now (not before its start, not after its end) and names DNS names in
    its subject alternative names. Trust up to a root is the client's to judge, not ours:
    a tenant may use any CA its users trust.
    """
    certs = _load_chain(chain_pem)
    leaf = certs[0]
    for child, parent in itertools.pairwise(certs):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            raise UserError(
                f"the chain is out of order or broken: '{_describe(child.subject)}' is not "
                f"issued by the next certificate, '{_describe(parent.subject)}'; give the "
                "server's certificate first, then each issuer"
            ) from None
    if key_pem is not None:
        key = _load_key(key_pem)
        if not isinstance(
            key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
        ) and not isinstance(key, ed448.Ed448PrivateKey):
            raise UserError("the private key is of a kind TLS servers do not use")
        if _public_bytes(key.public_key()) != _public_bytes(leaf.public_key()):
            raise UserError(
                "the private key does not match the certificate (the first certificate of the "
                "chain must be the server's own)"
            )
    moment = now or _now()
    if leaf.not_valid_after_utc <= moment:
        raise UserError(
            f"the certificate expired on {leaf.not_valid_after_utc.isoformat()}; renew it first"
        )
    if leaf.not_valid_before_utc > moment + dt.timedelta(minutes=5):
        raise UserError(
            f"the certificate is not valid before {leaf.not_valid_before_utc.isoformat()}"
        )
    names = _dns_names(leaf)
    if not names:
        raise UserError(
            "the certificate names no DNS name in its subject alternative names; clients "
            "ignore the common name, so it would match no FQDN"
        )
    return ChainInfo(
        names=names,
        not_before=leaf.not_valid_before_utc.timestamp(),
        not_after=leaf.not_valid_after_utc.timestamp(),
        fingerprint=leaf.fingerprint(hashes.SHA256()).hex(),
        serial=format(leaf.serial_number, "x"),
        subject=_describe(leaf.subject),
        issuer=_describe(leaf.issuer),
        certificates=len(certs),
    )


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (two components creating the CA at once)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class PlatformCA:
    """The platform's own certificate authority: made once, kept in a directory.

    `ca.crt` is public (clients trust it); `ca.key` is 0600 and never leaves the directory.
    """

    CERT = "ca.crt"
    KEY = "ca.key"

    def __init__(
        self, directory: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
    ) -> None:
        self.directory = directory
        self._cert = cert
        self._key = key

    @property
    def cert_path(self) -> Path:
        return self.directory / self.CERT

    @property
    def cert_pem(self) -> str:
        return self._cert.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def fingerprint(self) -> str:
        return self._cert.fingerprint(hashes.SHA256()).hex()

    @classmethod
    def open(cls, directory: Path, *, name: str = "FLAME platform CA") -> PlatformCA:
        """Load the CA in `directory`, creating it (10 years) if there is none."""
        directory = Path(directory)
        with _locked(directory / ".ca.lock"):
            cert_path, key_path = directory / cls.CERT, directory / cls.KEY
            if cert_path.exists() and key_path.exists():
                try:
                    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
                    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
                except (ValueError, TypeError) as exc:
                    raise FlameError(
                        f"the platform CA in {directory} cannot be read ({type(exc).__name__}); "
                        "restore ca.crt and ca.key, or remove both to make a new CA (every "
                        "certificate it issued must then be trusted again)"
                    ) from None
                if not isinstance(key, ec.EllipticCurvePrivateKey):
                    raise FlameError(f"the platform CA key in {directory} is not an EC key")
                return cls(directory, cert, key)
            key = _new_key()
            subject = x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, f"{name} {secrets.token_hex(4)}"),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "FLAME platform"),
                ]
            )
            now = _now()
            cert = (
                x509.CertificateBuilder()
                .subject_name(subject)
                .issuer_name(subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(
                    x509.KeyUsage(
                        digital_signature=True,
                        content_commitment=False,
                        key_encipherment=False,
                        data_encipherment=False,
                        key_agreement=False,
                        key_cert_sign=True,
                        crl_sign=True,
                        encipher_only=False,
                        decipher_only=False,
                    ),
                    critical=True,
                )
                .add_extension(
                    x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
                )
                .sign(key, hashes.SHA256())
            )
            atomic_write_private(key_path, _key_pem(key).encode())
            cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            cert_path.chmod(0o644)
            return cls(directory, cert, key)

    def issue(
        self,
        names: Sequence[str],
        *,
        days: float = 30.0,
        ip_addresses: Iterable[str] = (),
        client: bool = False,
        uris: Iterable[str] = (),
    ) -> IssuedCert:
        """A server certificate (ECDSA P-256) for DNS `names` (and IP addresses), and its key."""
        if not names and not ip_addresses:
            raise UserError("a certificate needs at least one DNS name or IP address")
        key = _new_key()
        now = _now()
        not_after = now + dt.timedelta(days=days)
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        sans += [x509.UniformResourceIdentifier(u) for u in uris]  # SR identities (docs/tls.md)
        usages = [ExtendedKeyUsageOID.SERVER_AUTH]
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        first = names[0] if names else str(next(iter(ip_addresses)))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, first[:64])]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        return IssuedCert(
            chain_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
            key_pem=_key_pem(key),
            not_after=not_after.timestamp(),
        )


class SecretBox:
    """AES-256-GCM with a key kept in its own 0600 file (outside any database)."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    @classmethod
    def open(cls, path: Path) -> SecretBox:
        """The box whose key is in `path`; a new random key is written there if there is none."""
        path = Path(path)
        with _locked(path.with_name(f".{path.name}.lock")):
            if not path.exists():
                atomic_write_private(path, secrets.token_bytes(32).hex().encode())
            if path.stat().st_mode & 0o077:
                path.chmod(0o600)
            try:
                key = bytes.fromhex(path.read_text(encoding="ascii").strip())
            except (ValueError, UnicodeDecodeError):
                key = b""
            if len(key) != 32:
                raise FlameError(
                    f"{path} does not hold a 256-bit key (64 hex digits); restore it from a "
                    "backup (without it the stored private keys cannot be read)"
                )
        return cls(key)

    def seal(self, plaintext: bytes, *, aad: bytes) -> bytes:
        nonce = secrets.token_bytes(12)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def unseal(self, sealed: bytes, *, aad: bytes) -> bytes:
        try:
            return self._aead.decrypt(sealed[:12], sealed[12:], aad)
        except (InvalidTag, ValueError):
            raise FlameError(
                "a stored private key cannot be decrypted: the key file is not the one it was "
                "sealed with, or the database was altered"
            ) from None


def fingerprint_of(pem: str | bytes) -> str:
    """SHA-256 of the first certificate of a PEM chain (hex)."""
    return _load_chain(pem)[0].fingerprint(hashes.SHA256()).hex()


def digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()
