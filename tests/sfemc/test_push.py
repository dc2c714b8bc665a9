"""Issue 13 item 5: tenants push their own SF images through the orchestrator's API.

A real orchestrator on a loopback port (`orchestrator.harness`) with an image repository: the
push route's size limit, digest check, per-tenant quota, ownership (list, delete, use) and the
admission of templates that name another tenant's image.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from flame.common.errors import UserError
from flame.sfemc.images import ImageRepository, build_image, digest_of
from flame.sfemc.images.push import PushLimits, upload
from flame.sfemc.registrar import InProcessRegistrar
from orchestrator.harness import VOD, Platform, running_platform
from sfemc.fakes import FakeVim

pytestmark = pytest.mark.asyncio

CLUSTERS = ("edge-bristol", "edge-bath", "metro-london")
MAX = 64_000
QUOTA_BYTES = 90_000
QUOTA_IMAGES = 3


def sf_dir(tmp: Path, name: str, *, random_bytes: int = 0, version: str = "1.0") -> Path:
    src = tmp / "src" / f"{name}-{version}-{random_bytes}"
    src.mkdir(parents=True)
    (src / "server.py").write_text(f"print({name!r})\n")
    if random_bytes:  # incompressible: the archive is about this large
        (src / "data.bin").write_bytes(os.urandom(random_bytes))
    (src / "flame-sf.yaml").write_text(
        f"name: {name}\nversion: '{version}'\nentrypoint: [python3, server.py]\n"
    )
    return src


@pytest.fixture
def limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLAME_IMAGE_MAX_BYTES", str(MAX))
    monkeypatch.setenv("FLAME_IMAGE_QUOTA_BYTES", str(QUOTA_BYTES))
    monkeypatch.setenv("FLAME_IMAGE_QUOTA_IMAGES", str(QUOTA_IMAGES))


@pytest_asyncio.fixture
async def platform(tmp_path: Path, limits: None) -> AsyncIterator[tuple[Platform, ImageRepository]]:
    repo = ImageRepository(tmp_path / "images")
    registrar = InProcessRegistrar({"vod.flame.example": "acme", "globex.example": "globex"})
    vims = dict.fromkeys(CLUSTERS, FakeVim())
    async with running_platform(tmp_path, vims, registrar, images=repo) as p:
        yield p, repo


async def push(p: Platform, token: str, src: Path, *tags: str) -> dict[str, object]:
    """`flame push`'s client (`upload`), off the event loop that serves the orchestrator."""
    blob = build_image(src)[0]
    return await asyncio.to_thread(upload, p.url, token, blob, tags=tags)


def raw(p: Platform, token: str) -> httpx.AsyncClient:
    return p.client(token)


async def test_a_tenant_pushes_lists_and_deletes_only_its_own_images(
    tmp_path: Path, platform: tuple[Platform, ImageRepository]
) -> None:
    p, repo = platform
    pushed = await push(p, p.acme, sf_dir(tmp_path, "vod-origin"), "1.0")
    digest = str(pushed["digest"])
    assert pushed["name"] == "vod-origin"
    assert pushed["owners"] == ["acme"]
    assert repo.get(digest).owners == ("acme",)
    assert not repo.get(digest).public
    # The operator's image (`flame package` on the orchestrator's host) is public.
    public = repo.put(build_image(sf_dir(tmp_path, "edge-cache"))[0], tags=["1.0"])
    async with raw(p, p.acme) as acme, raw(p, p.globex) as globex, raw(p, p.operator) as ops:
        assert [i["digest"] for i in (await acme.get("/v1/images")).json()] == [digest]
        assert (await globex.get("/v1/images")).json() == []
        assert {i["digest"] for i in (await ops.get("/v1/images")).json()} == {
            digest,
            public.digest,
        }
        # B cannot delete A's image, nor the operator's: not found, like a missing one.
        for d in (digest, public.digest):
            r = await globex.delete(f"/v1/images/{d}")
            assert r.status_code == 404
            assert r.json()["error"] == "image_not_found"
        assert (await acme.delete(f"/v1/images/{public.digest}")).status_code == 404
        # Pushing the same bytes again changes nothing (200, not 201), not counted twice.
        again = await acme.post(
            "/v1/images",
            params={"digest": digest},
            content=repo.read(digest),
        )
        assert again.status_code == 200, again.text
        r = await acme.delete(f"/v1/images/{digest}")
        assert r.status_code == 200
        assert r.json()["deleted"] == digest
    assert [i.digest for i in repo.list()] == [public.digest]


async def test_push_limits_and_digest(
    tmp_path: Path, platform: tuple[Platform, ImageRepository]
) -> None:
    """Over the size limit: 413 from Content-Length, and while streaming without one; a
    digest that does not match the body: 409; a body that is no image: 400; nothing stored."""
    p, repo = platform
    big = build_image(sf_dir(tmp_path, "big", random_bytes=MAX + 1000))[0]
    assert len(big) > MAX
    async with raw(p, p.acme) as acme:
        r = await acme.post("/v1/images", params={"digest": digest_of(big)}, content=big)
        assert r.status_code == 413, r.text
        assert r.json()["error"] == "image_too_large", r.text

        async def chunks() -> AsyncIterator[bytes]:  # chunked: no Content-Length to trust
            for i in range(0, len(big), 8192):
                yield big[i : i + 8192]

        r = await acme.post("/v1/images", params={"digest": digest_of(big)}, content=chunks())
        assert r.status_code == 413, r.text
        assert r.json()["error"] == "image_too_large", r.text

        small = build_image(sf_dir(tmp_path, "small"))[0]
        r = await acme.post("/v1/images", params={"digest": "sha256:" + "0" * 64}, content=small)
        assert r.status_code == 409, r.text
        assert r.json()["error"] == "image_integrity", r.text
        assert digest_of(small) in r.json()["message"]
        r = await acme.post("/v1/images", params={"digest": "sha256:zz"}, content=small)
        assert r.status_code == 400, r.text
        junk = b"\x1f\x8b not really gzip"
        r = await acme.post("/v1/images", params={"digest": digest_of(junk)}, content=junk)
        assert 400 <= r.status_code < 500, r.text
        assert r.json()["error"], r.text
        r = await acme.post("/v1/images", content=small)  # no digest at all
        assert r.status_code == 422, r.text
        r = await acme.post(
            "/v1/images", params={"digest": digest_of(small), "tag": "a/b"}, content=small
        )
        assert r.status_code == 400, r.text
        assert "tag" in r.json()["message"], r.text
    assert repo.list() == []


async def test_the_quota_per_tenant(
    tmp_path: Path, platform: tuple[Platform, ImageRepository]
) -> None:
    """Bytes over the quota: 413; images over the count: 429; each with what to do; another
    tenant's quota is its own."""
    p, repo = platform
    await push(p, p.acme, sf_dir(tmp_path, "a", random_bytes=50_000))
    with pytest.raises(UserError) as caught:
        await push(p, p.acme, sf_dir(tmp_path, "b", random_bytes=50_000))
    assert caught.value.context["status"] == 413
    assert "quota of 90000 bytes" in caught.value.message
    await push(p, p.acme, sf_dir(tmp_path, "c"))
    await push(p, p.acme, sf_dir(tmp_path, "d"))
    with pytest.raises(UserError) as caught:
        await push(p, p.acme, sf_dir(tmp_path, "e"))
    assert caught.value.context["status"] == 429
    assert "its quota is 3" in caught.value.message
    await push(p, p.globex, sf_dir(tmp_path, "f", random_bytes=50_000))  # B's own quota
    assert len([i for i in repo.list() if "acme" in i.owners]) == 3


async def test_a_template_cannot_use_another_tenants_image(
    tmp_path: Path, platform: tuple[Platform, ImageRepository]
) -> None:
    """B's image named like the one A's template asks for is invisible to A: A's plan is
    refused (unknown_image), by name and by digest; the operator's image serves A."""
    p, repo = platform
    b_origin = await push(p, p.globex, sf_dir(tmp_path, "vod-origin"), "1.0")
    template = {"template": VOD.read_text(), "name": "service.yaml"}
    async with raw(p, p.acme) as acme:
        plan = (await acme.post("/v1/services/vod/plan", json=template)).json()
        refused = {e["sf"]: e["message"] for e in plan["errors"] if e["code"] == "unknown_image"}
        assert "origin" in refused, plan
        assert "tenant 'acme' may use" in refused["origin"]
        by_digest = template["template"].replace("vod-origin:1.0", str(b_origin["digest"]))
        plan = (
            await acme.post("/v1/services/vod/plan", json={**template, "template": by_digest})
        ).json()
        assert any(e["code"] == "unknown_image" for e in plan["errors"]), plan
        # The operator packages both images: A's plan now has no image problem.
        for name in ("vod-origin", "edge-cache"):
            repo.put(build_image(sf_dir(tmp_path, name, version="op"))[0], tags=["1.0"])
        plan = (await acme.post("/v1/services/vod/plan", json=template)).json()
        assert not [e for e in plan["errors"] if e["code"] == "unknown_image"], plan
    # B's own image shadows the operator's of the same name, for B alone.
    assert repo.resolve("vod-origin:1.0", "globex") == b_origin["digest"]
    assert repo.resolve("vod-origin:1.0", "acme") != b_origin["digest"]


async def test_limits_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLAME_IMAGE_QUOTA_IMAGES", "7")
    assert PushLimits.from_env().quota_images == 7
    monkeypatch.setenv("FLAME_IMAGE_MAX_BYTES", "lots")
    with pytest.raises(ValueError, match="FLAME_IMAGE_MAX_BYTES"):
        PushLimits.from_env()


async def test_an_image_in_use_is_not_deleted(
    tmp_path: Path, platform: tuple[Platform, ImageRepository]
) -> None:
    """A tenant's own images, pushed and deployed: deleting one an endpoint uses is refused
    with the endpoints named; after the undeploy it goes."""
    p, repo = platform
    pushed = [
        await push(p, p.acme, sf_dir(tmp_path, n), "1.0") for n in ("vod-origin", "edge-cache")
    ]
    template = {"template": VOD.read_text(), "name": "service.yaml"}
    async with raw(p, p.acme) as acme:
        r = await acme.post("/v1/services", json=template)
        assert r.status_code == 202, r.text
        await p.settle()
        r = await acme.delete(f"/v1/images/{pushed[0]['digest']}")
        assert r.status_code == 400, r.text
        assert r.json()["in_use"], r.text
        assert (await acme.delete("/v1/services/vod")).status_code == 202
        await p.settle()
        r = await acme.delete(f"/v1/images/{pushed[0]['digest']}")
        assert r.status_code == 200, r.text
    assert [i.name for i in repo.list()] == ["edge-cache"]
