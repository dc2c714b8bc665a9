"""SF image commands (SFEMC-6).

    flame package DIR [--name N] [--tag T] [-o FILE]     build an SF image, print its digest
    flame push DIR|ARCHIVE [--tag T] [--api URL]         build and upload it with your token
    flame images [list]                                  what the repository holds
    flame images rm REF [--force]                        delete (refused while endpoints use it)
    flame images verify [REF...]                         re-hash stored images
    flame serve vim --cluster NAME --topology FILE       a cluster's VIM agent on its own host
                                                         (built by `flame.sfemc.build`)

The repository is ``<state_dir>/images`` (``state_dir`` from the config or $FLAME_STATE_DIR).
Commands raise; `flame.cli.main.main` prints errors and picks the exit code.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from flame.cli._serve import run_server, tls_files, tls_options
from flame.cli._state import CliState, emit
from flame.common.errors import UserError
from flame.common.logging import setup_logging
from flame.common.tls import client_verify
from flame.sfemc.images import ImageInfo, ImageRepository, build_image, digest_of

__all__ = ["COMMANDS", "serve_vim"]


def _repository(state: CliState) -> ImageRepository:
    return ImageRepository(state.config().state_dir / "images")


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


def _pairs(values: tuple[str, ...], what: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"{what} expects NAME=VALUE, got {item!r}")
        result[key] = value
    return result


def _ports(values: tuple[str, ...]) -> list[dict[str, Any]]:
    ports: list[dict[str, Any]] = []
    for item in values:
        name, sep, number = item.rpartition("=")
        try:
            port = int(number)
        except ValueError:
            raise UserError(
                f"--port expects PORT or NAME=PORT, got {item!r}", hint="e.g. --port http=8080"
            ) from None
        ports.append({"port": port, **({"name": name} if sep else {})})
    return ports


@click.command("package")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--name", help="Image name (default: the manifest's, else the directory's name).")
@click.option(
    "--tag",
    "tags",
    multiple=True,
    help="Tag to give the image (repeatable; default: the manifest's version).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the archive to this file instead of storing it in the repository.",
)
@click.option("--entrypoint", help="Command line to run (overrides the manifest's).")
@click.option("--env", "env", multiple=True, metavar="NAME=VALUE", help="Environment variable.")
@click.option("--port", "ports", multiple=True, metavar="[NAME=]PORT", help="A port it listens on.")
@click.option("--health", help="Health check path, e.g. /health.")
@click.option("--cpus", type=float, help="CPUs it needs.")
@click.option("--memory", help="Memory it needs, e.g. '256 MB'.")
@click.option("--gzip", "use_gzip", is_flag=True, help="gzip instead of zstd.")
@click.pass_obj
def package_cmd(
    state: CliState,
    directory: Path,
    name: str | None,
    tags: tuple[str, ...],
    output: Path | None,
    entrypoint: str | None,
    env: tuple[str, ...],
    ports: tuple[str, ...],
    health: str | None,
    cpus: float | None,
    memory: str | None,
    use_gzip: bool,
) -> None:
    """Build an SF image from DIRECTORY (with its flame-sf.yaml) and print its digest.

    The same directory always gives the same digest. Flags override the manifest's keys.
    Without --tag the image is tagged with the manifest's version.
    """
    overrides: dict[str, Any] = {}
    if entrypoint is not None:
        overrides["entrypoint"] = entrypoint
    if env:
        overrides["environment"] = _pairs(env, "--env")
    if ports:
        overrides["ports"] = _ports(ports)
    if health is not None:
        overrides["health"] = {"path": health}
    resources = {k: v for k, v in (("cpus", cpus), ("memory", memory)) if v is not None}
    if resources:
        overrides["resources"] = resources
    t0 = time.perf_counter()
    blob, manifest = build_image(
        directory, name=name, overrides=overrides, compression="gzip" if use_gzip else None
    )
    digest = digest_of(blob)
    if not tags and manifest.version:  # `image: NAME:VERSION` in a template finds it as packaged
        tags = (manifest.version,)
    if output is not None:
        output.write_bytes(blob)
        where = str(output)
    else:
        _repository(state).put(blob, digest=digest, tags=tags)
        where = "repository"
    seconds = time.perf_counter() - t0
    if state.json:
        emit(
            {
                "digest": digest,
                "name": manifest.name,
                "tags": list(tags),
                "size": len(blob),
                "stored": where,
                "seconds": round(seconds, 4),
                "manifest": manifest.to_json(),
            }
        )
        return
    click.echo(digest)
    click.echo(
        f"packaged '{manifest.name}' ({_size(len(blob))}) in {seconds * 1000:.0f} ms -> {where}",
        err=True,
    )


@click.command("push")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--tag", "tags", multiple=True, help="Tag (repeatable; default: the version).")
@click.option("--api", metavar="URL", help="Orchestrator URL (default: api_url from the config).")
@click.pass_obj
def push_cmd(state: CliState, source: Path, tags: tuple[str, ...], api: str | None) -> None:
    """Build an SF image from SOURCE (a directory, or an archive from `flame package -o`) and
    upload it to the orchestrator with this config's token: a tenant's image is its own.

    The orchestrator checks the digest, the size limit and the tenant's quota.
    """
    from flame.sfemc.images.push import load_image, upload  # noqa: PLC0415

    config = state.config()
    t0 = time.perf_counter()
    blob = load_image(source)
    if not tags and (version := ImageRepository.manifest_of(blob).version):
        tags = (version,)
    answer = upload(
        api or config.api_url, config.token, blob, tags=tags, verify=client_verify(config.ca_file)
    )
    if state.json:
        emit({**answer, "seconds": round(time.perf_counter() - t0, 4)})
        return
    click.echo(str(answer.get("digest")))
    click.echo(
        f"pushed '{answer.get('name')}' ({_size(len(blob))}) to {api or config.api_url}",
        err=True,
    )


@click.group("images", invoke_without_command=True)
@click.pass_context
def images_group(ctx: click.Context) -> None:
    """SF images in the repository (list by default)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(images_list)


def _row(info: ImageInfo) -> tuple[str, ...]:
    return (
        info.digest[:19],
        info.name,
        ",".join(info.tags) or "-",
        _size(info.size),
        info.created,
    )


@images_group.command("list")
@click.pass_obj
def images_list(state: CliState) -> None:
    """List images: digest, name, tags, size, created."""
    infos = _repository(state).list()
    if state.json:
        emit([i.as_dict() for i in infos])
        return
    if not infos:
        click.echo("no images; build one with `flame package DIR`", err=True)
        return
    rows = [("DIGEST", "NAME", "TAGS", "SIZE", "CREATED"), *map(_row, infos)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@images_group.command("rm")
@click.argument("ref")
@click.option("--force", is_flag=True, help="Delete even if endpoints were placed from it.")
@click.pass_obj
def images_rm(state: CliState, ref: str, force: bool) -> None:
    """Delete an image by digest, NAME or NAME:TAG."""
    from flame.sfemc.vim.process import DEFAULT_ROOT, placed_images  # noqa: PLC0415 - heavy

    repo = _repository(state)
    digest = repo.resolve(ref)
    users = [] if force else placed_images(state.config().state_dir / DEFAULT_ROOT).get(digest, [])
    info = repo.delete(digest, in_use=users)
    if state.json:
        emit({"deleted": info.digest, "name": info.name})
    else:
        click.echo(f"deleted {info.digest} ({info.name})")


@images_group.command("verify")
@click.argument("refs", nargs=-1)
@click.pass_obj
def images_verify(state: CliState, refs: tuple[str, ...]) -> None:
    """Re-hash images (all without REF); exit 1 if any is corrupted."""
    repo = _repository(state)
    digests = [repo.resolve(r) for r in refs] or [i.digest for i in repo.list()]
    bad: list[dict[str, str]] = []
    for digest in digests:
        try:
            repo.verify(digest)
        except UserError as exc:
            bad.append({"digest": digest, "error": exc.message})
    if state.json:
        emit({"ok": not bad, "verified": len(digests) - len(bad), "corrupted": bad})
    else:
        for item in bad:
            click.echo(f"CORRUPTED {item['error']}", err=True)
        click.echo(f"{len(digests) - len(bad)} of {len(digests)} image(s) intact")
    if bad:
        raise SystemExit(1)


@click.command("vim")
@click.option(
    "--cluster",
    "clusters",
    multiple=True,
    required=True,
    metavar="NAME",
    help="A process cluster of the topology whose SFEs run on this host (repeatable).",
)
@click.option(
    "--topology",
    "topology_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Topology file (the cluster's address and port range come from it).",
)
@click.option(
    "--host",
    help="Address the agent's API listens on (default: the first cluster's address, else "
    "127.0.0.1).",
)
@click.option("--port", default=7090, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--images",
    "images_url",
    metavar="URL",
    help="Pull SF images from this orchestrator's repository (default: api_url from the config).",
)
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    help="The agent's SFEs and image cache (default: <state_dir>/vim-agent).",
)
@click.option(
    "--port-base",
    default=20000,
    show_default=True,
    type=click.IntRange(1024, 65000),
    help="First port of the SFE port ranges (the orchestrator's --port-base).",
)
@click.option(
    "--sr",
    "sr_pairs",
    multiple=True,
    metavar="SR=URL",
    help="Where a service router listens; SFEs of its clusters get it as FLAME_SR_URL.",
)
@click.option(
    "--allow-unconfined-sfes",
    is_flag=True,
    envvar="FLAME_ALLOW_UNCONFINED_SFES",
    help="Where SFEs cannot be sandboxed (no bubblewrap), run tenant code unconfined as this "
    "user instead of refusing it.",
)
@click.option(
    "--clmc",
    "clmc_url",
    metavar="URL",
    help="Send this host's and its SFEs' resource metrics to this CLMC (default: clmc_url "
    "from the config; none without one).",
)
@click.option(
    "--pce",
    "pce_urls",
    multiple=True,
    metavar="URL",
    help="PCE that issues endpoint certificates to SFEs whose image opts in to hop-by-hop TLS "
    "(docs/tls.md); repeat for standbys (default: pce_url from the config; none: such SFEs "
    "run plain and say so in their log).",
)
@click.option(
    "--metrics-interval",
    "metrics_interval_s",
    default=2.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds between resource samples (0: none).",
)
@tls_options
@click.pass_obj
def serve_vim(
    state: CliState,
    clusters: tuple[str, ...],
    topology_path: Path,
    host: str | None,
    port: int,
    images_url: str | None,
    root: Path | None,
    port_base: int,
    sr_pairs: tuple[str, ...],
    allow_unconfined_sfes: bool,
    clmc_url: str | None,
    pce_urls: tuple[str, ...],
    metrics_interval_s: float,
    tls_cert: Path | None,
    tls_key: Path | None,
) -> None:
    """Run a cluster's VIM agent: the process VIM (sandboxed SFEs) on this host, for the SFEMC.

    The orchestrator names it with --vim CLUSTER=URL. Every call needs an operator token of
    this host's token store (<state_dir>/tokens.json). SFEs outlive the agent on purpose: a
    restarted agent adopts them.
    """
    # FastAPI and the process VIM are heavy: imported when serving, so `flame --help` is fast.
    from flame.sfemc.build import VimAgentSettings, build_vim_agent  # noqa: PLC0415

    config = state.config()
    setup_logging(config.log_level, config.log_format)
    tls = tls_files(tls_cert, tls_key)
    settings = VimAgentSettings(
        clusters=clusters,
        topology_path=topology_path,
        state_dir=config.state_dir,
        token=config.token,
        images_url=images_url or config.api_url,
        root=root,
        host=host,
        port_base=port_base,
        sr_urls=_pairs(sr_pairs, "--sr"),
        allow_unconfined_sfes=allow_unconfined_sfes,
        clmc_url=clmc_url or config.clmc_url,
        pce_urls=pce_urls or ((config.pce_url,) if config.pce_url else ()),
        metrics_interval_s=metrics_interval_s,
        verify=client_verify(config.ca_file),
    )
    agent = build_vim_agent(settings, warn=lambda m: click.echo(f"warning: {m}", err=True))
    click.echo(
        f"VIM agent for {', '.join(clusters)} on {'https' if tls else 'http'}://{agent.host}:"
        f"{port} ({agent.describe(settings)})",
        err=True,
    )
    run_server(agent.app, agent.host, port, "the VIM agent", tls=tls)


# `flame serve vim` is `serve_vim`.
COMMANDS = (package_cmd, push_cmd, images_group)
