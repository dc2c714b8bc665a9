"""Content certificate commands (SFR-22, SFR-23).

    flame cert put FQDN --cert F --key F     upload an FQDN's certificate (SFR-22)
    flame cert list | show | delete | renew | redirect | ca | issue-server

They talk to the PCE (`--pce URL`, default: `pce_url` from the config) with the config's token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from flame.cli._state import CliState as _CliState
from flame.cli.sfr_commands import _client, _columns, _emit, _pce_option
from flame.common.errors import UserError

__all__ = ["cert_group"]


@click.group("cert")
def cert_group() -> None:
    """Content certificates of FQDNs, served by the SRs over TLS (SFR-22, SFR-23).

    A tenant uploads its own chain and key for an FQDN delegated to it; every other routed,
    delegated FQDN gets one from the platform CA, renewed before it expires. The key is never
    shown again.
    """


def _read_pem(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the {what} {path}: {exc}") from None


def _print_cert(doc: dict[str, Any]) -> None:
    click.echo(
        f"{doc['fqdn']}: {doc['source']} certificate for {', '.join(doc['names'])}; valid "
        f"{doc['not_before']} to {doc['not_after']}; issuer {doc['issuer']}; sha256 "
        f"{doc['fingerprint_sha256']}; plain HTTP "
        + ("redirected to https" if doc.get("redirect_http") else "served")
    )


@cert_group.command("put")
@click.argument("fqdn")
@click.option(
    "--cert",
    "cert_file",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Certificate chain (PEM): the FQDN's certificate first, then its intermediates.",
)
@click.option(
    "--key",
    "key_file",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Its private key (PEM, unencrypted); stored encrypted, never shown again.",
)
@click.option(
    "--redirect/--no-redirect",
    default=None,
    help="Redirect plain HTTP for the FQDN to https at every SR (default: leave as it is).",
)
@_pce_option
@click.pass_obj
def cert_put(
    state: _CliState,
    fqdn: str,
    cert_file: Path,
    key_file: Path,
    redirect: bool | None,
    pce: str | None,
) -> None:
    """Upload FQDN's certificate chain and key (an FQDN delegated to you; SFR-22).

    The PCE checks that the chain covers FQDN, the key matches and it has not expired; every
    SR that routes FQDN serves it to new connections within a second.
    """
    chain = _read_pem(cert_file, "certificate chain")
    key = _read_pem(key_file, "private key")
    with _client(state, pce) as client:
        doc = client.put_cert(fqdn, chain, key, redirect)
    if state.json:
        _emit(doc)
    else:
        _print_cert(doc)


@cert_group.command("list")
@_pce_option
@click.pass_obj
def cert_list(state: _CliState, pce: str | None) -> None:
    """Certificates of the FQDNs you manage (an operator: all)."""
    with _client(state, pce) as client:
        docs = client.certs()
    if state.json:
        _emit(docs)
        return
    if not docs:
        click.echo("no certificates")
        return
    rows = [("FQDN", "SOURCE", "NAMES", "NOT AFTER", "REDIRECT", "SHA256")]
    for d in docs:
        rows.append(
            (
                d["fqdn"],
                d["source"],
                ",".join(d["names"]),
                d["not_after"],
                "yes" if d["redirect_http"] else "no",
                d["fingerprint_sha256"][:16],
            )
        )
    for line in _columns(rows):
        click.echo(line)


@cert_group.command("show")
@click.argument("fqdn")
@click.option("--pem", is_flag=True, help="Print the certificate chain (PEM) only.")
@_pce_option
@click.pass_obj
def cert_show(state: _CliState, fqdn: str, pem: bool, pce: str | None) -> None:
    """FQDN's certificate: metadata, or its chain with --pem (never the key)."""
    with _client(state, pce) as client:
        doc = client.cert(fqdn)
    if pem:
        click.echo(doc["chain"], nl=False)
    elif state.json:
        _emit(doc)
    else:
        _print_cert(doc)


@cert_group.command("delete")
@click.argument("fqdn")
@_pce_option
@click.pass_obj
def cert_delete(state: _CliState, fqdn: str, pce: str | None) -> None:
    """Remove FQDN's uploaded certificate (the platform issues one again if it applies)."""
    with _client(state, pce) as client:
        doc = client.delete_cert(fqdn)
    if state.json:
        _emit(doc)
    else:
        click.echo(f"deleted the uploaded certificate of {fqdn}")


@cert_group.command("renew")
@click.argument("fqdn")
@_pce_option
@click.pass_obj
def cert_renew(state: _CliState, fqdn: str, pce: str | None) -> None:
    """Have the platform CA issue FQDN's certificate again now (SFR-23)."""
    with _client(state, pce) as client:
        doc = client.renew_cert(fqdn)
    if state.json:
        _emit(doc)
    else:
        _print_cert(doc)


@cert_group.command("redirect")
@click.argument("fqdn")
@click.option("--on/--off", default=True, show_default=True)
@_pce_option
@click.pass_obj
def cert_redirect(state: _CliState, fqdn: str, on: bool, pce: str | None) -> None:
    """Redirect plain HTTP for FQDN to https at every SR (308), or stop (--off)."""
    with _client(state, pce) as client:
        doc = client.set_cert_options(fqdn, redirect_http=on)
    if state.json:
        _emit(doc)
    else:
        click.echo(f"{fqdn}: plain HTTP " + ("redirected to https" if on else "served"))


@cert_group.command("ca")
@click.option(
    "--local", is_flag=True, help="Read the CA from this host's state directory, not the PCE."
)
@_pce_option
@click.pass_obj
def cert_ca(state: _CliState, local: bool, pce: str | None) -> None:
    """Print the platform CA certificate (PEM): what clients trust."""
    if local:
        path = state.config().state_dir / "ca" / "ca.crt"
        click.echo(_read_pem(path, "CA certificate"), nl=False)
        return
    with _client(state, pce) as client:
        click.echo(client.ca_certificate(), nl=False)


@cert_group.command("issue-server")
@click.argument("names", nargs=-1, required=True)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for server.crt and server.key (0600).",
)
@click.option("--days", default=365.0, show_default=True, type=click.FloatRange(min=0.001))
@click.pass_obj
def cert_issue_server(state: _CliState, names: tuple[str, ...], out_dir: Path, days: float) -> None:
    """Issue a server certificate from this host's platform CA (operator, on the PCE's host)
    for the control plane's `--tls-cert/--tls-key`: NAMES are DNS names or IP addresses."""
    import ipaddress  # noqa: PLC0415

    from flame.common.atomicfile import atomic_write_private  # noqa: PLC0415
    from flame.common.pki import PlatformCA  # noqa: PLC0415 - cryptography

    dns: list[str] = []
    ips: list[str] = []
    for name in names:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            dns.append(name)
        else:
            ips.append(name)
    ca = PlatformCA.open(state.config().state_dir / "ca")
    issued = ca.issue(dns, ip_addresses=ips, days=days)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "server.crt").write_text(issued.chain_pem, encoding="ascii")
    atomic_write_private(out_dir / "server.key", issued.key_pem.encode())
    if state.json:
        _emit({"cert": str(out_dir / "server.crt"), "key": str(out_dir / "server.key")})
    else:
        click.echo(
            f"{out_dir / 'server.crt'} and {out_dir / 'server.key'} for {', '.join(names)}; "
            f"clients trust {ca.cert_path}"
        )
