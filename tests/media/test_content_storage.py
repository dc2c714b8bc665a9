"""Storage behind one interface, tested the same way on the filesystem and on a real S3 API
server (moto's ThreadedMotoServer: an HTTP S3 endpoint on loopback, spoken to by boto3 exactly
as AWS or MinIO would be); then the whole SF on S3."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path

import boto3  # type: ignore[import-untyped]
import httpx
import pytest

from flame.media.content.errors import StorageUnavailable
from flame.media.content.storage import FileStore, S3Store, check_key

from .contentkit import base_env, content_server, create, patch, tus_headers

pytest.importorskip("moto.server")


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    from flame.common.ports import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)


def _bucket(endpoint: str, name: str) -> None:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=name)
    s3.close()


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "file":
        yield FileStore(tmp_path / "objects")
        return
    endpoint = request.getfixturevalue("s3_endpoint")
    request.getfixturevalue("aws_env")
    name = f"b-{hashlib.sha1(request.node.name.encode()).hexdigest()[:12]}"
    _bucket(endpoint, name)
    s3 = S3Store(name, endpoint_url=endpoint, prefix="media/")
    yield s3
    asyncio.run(s3.close())


def test_keys_are_generated_never_paths() -> None:
    assert check_key("acme/0123abcdef") == "acme/0123abcdef"
    for bad in ("../x/y", "acme/../y", "acme/a/b", "/abs/x", "acme/", "Acme/x", "acme/x\x00"):
        with pytest.raises(ValueError, match="invalid storage key"):
            check_key(bad)


def test_the_store_contract(store, tmp_path: Path) -> None:
    data = bytes(range(256)) * 1200  # 307200 bytes: more than one read chunk

    async def run() -> None:
        await store.check()
        src = tmp_path / "up.part"
        src.write_bytes(data)
        info = await store.put_file("acme/abc123", src, content_type="video/mp4", sha256="0" * 64)
        assert info.size == len(data)
        assert not src.exists()  # consumed
        stat = await store.stat("acme/abc123")
        assert stat is not None
        assert stat.size == len(data)
        assert await store.stat("acme/missing") is None

        async def read(start: int, end: int) -> bytes:
            return b"".join([c async for c in store.read("acme/abc123", start, end)])

        assert await read(0, len(data) - 1) == data
        assert await read(1000, 1999) == data[1000:2000]
        assert await read(len(data) - 1, len(data) - 1) == data[-1:]
        source = await store.source("acme/abc123")
        if source.startswith("http"):  # a presigned URL ffmpeg/PyAV can read: ranges work
            r = httpx.get(source, headers={"Range": "bytes=10-19"}, trust_env=False)
            assert r.status_code == 206
            assert r.content == data[10:20]
        else:
            assert Path(source).read_bytes() == data
        await store.delete("acme/abc123")
        await store.delete("acme/abc123")  # idempotent
        assert await store.stat("acme/abc123") is None

    asyncio.run(run())


def test_a_missing_bucket_is_a_clear_503_unless_created(s3_endpoint: str, aws_env: None) -> None:
    async def run() -> None:
        missing = S3Store("no-such-bucket", endpoint_url=s3_endpoint)
        with pytest.raises(StorageUnavailable, match="does not exist"):
            await missing.check()
        await missing.close()
        made = S3Store("made-on-demand", endpoint_url=s3_endpoint, create_bucket=True)
        await made.check()
        await made.close()

    asyncio.run(run())


def test_an_unreachable_s3_is_503_not_a_hang(aws_env: None, tmp_path: Path) -> None:
    from flame.common.ports import free_port

    async def run() -> None:
        down = S3Store("b", endpoint_url=f"http://127.0.0.1:{free_port()}")
        down.client.meta.config.retries = {"max_attempts": 1}
        with pytest.raises(StorageUnavailable):
            await down.check()
        await down.close()

    asyncio.run(run())


def test_the_sf_on_s3_stores_multipart_objects_and_serves_ranges(
    s3_endpoint: str, aws_env: None, tmp_path: Path
) -> None:
    _bucket(s3_endpoint, "media")
    size = 9 * 1024 * 1024 + 123  # past the 8 MiB multipart threshold: a real S3 multipart upload
    data = (bytes(range(256)) * (size // 256 + 1))[:size]
    env = base_env(tmp_path, MEDIA_STORAGE="s3://media/tenants", MEDIA_S3_ENDPOINT=s3_endpoint)
    with content_server(tmp_path, env) as sf, sf.client(timeout=60) as http:
        loc = create(http, size, filename="big.bin")
        half = size // 2
        assert patch(http, loc, 0, data[:half]).status_code == 204
        r = patch(http, loc, half, data[half:])
        assert r.status_code == 204, r.text
        asset_id = r.headers["flame-asset"]
        r = http.get(f"/v1/assets/{asset_id}/content", headers={"Range": "bytes=8388600-8388699"})
        assert r.status_code == 206
        assert r.content == data[8388600:8388700]
        assert http.get(f"/v1/assets/{asset_id}/content").content == data
        assert http.get("/v1/status").json()["storage"] == "s3"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    head = s3.head_object(Bucket="media", Key=f"tenants/acme/{asset_id}")
    s3.close()
    assert head["ContentLength"] == size
    assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert "-" in head["ETag"]  # S3's ETag of a multipart object: "<md5 of md5s>-<parts>"
    # staging holds nothing once the object is in S3
    assert not any((tmp_path / "content" / "staging").iterdir())


def test_the_sf_answers_503_when_s3_is_down_and_the_upload_can_be_finished_later(
    s3_endpoint: str, aws_env: None, tmp_path: Path
) -> None:
    env = base_env(tmp_path, MEDIA_STORAGE="s3://later", MEDIA_S3_ENDPOINT=s3_endpoint)
    with content_server(tmp_path, env) as sf, sf.client() as http:
        loc = create(http, 10, filename="x.bin")
        r = patch(http, loc, 0, b"0123456789")  # the bucket does not exist yet
        assert r.status_code == 503
        assert r.json()["error"] == "storage_unavailable"
        assert r.headers["tus-resumable"] == "1.0.0"
        _bucket(s3_endpoint, "later")
        sf.service.store._checked = False  # type: ignore[attr-defined]
        head = http.head(loc, headers=tus_headers())  # retries the storage step
        assert head.status_code == 200
        assert head.headers["upload-offset"] == "10"
        asset_id = head.headers["flame-asset"]
        assert http.get(f"/v1/assets/{asset_id}/content").content == b"0123456789"


def test_analysis_reads_s3_objects_through_presigned_urls(
    s3_endpoint: str, aws_env: None, tmp_path: Path
) -> None:
    from eventually import eventually

    from .contentkit import make_clip

    _bucket(s3_endpoint, "analysed")
    clip = make_clip(tmp_path / "clip.mp4", size="320x240", seconds=2).read_bytes()
    env = base_env(tmp_path, MEDIA_STORAGE="s3://analysed", MEDIA_S3_ENDPOINT=s3_endpoint,
                   MEDIA_ANALYSIS="on")  # fmt: skip
    with content_server(tmp_path, env) as sf, sf.client() as http:
        loc = create(http, len(clip), filename="clip.mp4")
        asset_id = patch(http, loc, 0, clip).headers["flame-asset"]
        asset = eventually(
            lambda: http.get(f"/v1/assets/{asset_id}").json(),
            until=lambda a: a["status"] in ("accepted", "analysis_failed"),
            what="the asset's analysis",
        )
        assert asset["status"] == "accepted", asset["reason"]
        assert (asset["width"], asset["height"], asset["video_codec"]) == (320, 240, "h264")
        assert asset["quality"]["no_reference"]["frames"] == 50
    assert not (tmp_path / "content" / "objects").exists()  # nothing stored locally
