"""The content SF's tus 1.0.0 server over real HTTP: the protocol's own examples (core,
creation, creation-with-upload, termination, checksum, expiration), then hostile clients."""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from eventually import eventually

from .contentkit import (
    KEY_A,
    KEY_A2,
    KEY_B,
    Running,
    content_server,
    create,
    metadata,
    patch,
    raw,
    read_response,
    rss_kb,
    sha256,
    tus_headers,
)

DATA = bytes(range(256)) * 400  # 102400 bytes


@pytest.fixture
def sf(tmp_path: Path):
    with content_server(tmp_path, MEDIA_BODY_IDLE_S="1", MEDIA_UPLOAD_TTL="3600") as running:
        yield running


def receiving(sf: Running, location: str) -> None:
    """Wait until a PATCH to `location` holds its upload (the SF is reading its body)."""
    lock_of = sf.service.uploads.locks.get
    upload_id = location.rsplit("/", 1)[1]
    eventually(lambda: (lock := lock_of(upload_id)) is not None and lock.locked(), every=0.01,
               what=f"a PATCH to hold upload {upload_id}")  # fmt: skip


def test_options_advertises_version_extensions_limits_and_checksums(sf) -> None:
    with sf.client() as http:
        r = http.options("/v1/uploads")
    assert r.status_code == 204
    assert r.headers["tus-version"] == "1.0.0"
    assert r.headers["tus-resumable"] == "1.0.0"
    assert set(r.headers["tus-extension"].split(",")) == {
        "creation", "creation-with-upload", "termination", "checksum", "expiration",
    }  # fmt: skip
    assert int(r.headers["tus-max-size"]) > 0
    assert "sha1" in r.headers["tus-checksum-algorithm"].split(",")


def test_the_spec_example_create_head_patch_resume_and_retrieve(sf) -> None:
    """tus 1.0.0 core protocol example: 100 bytes, then a resume after the first 70."""
    body = DATA[:100]
    with sf.client() as http:
        r = http.post(
            "/v1/uploads",
            headers=tus_headers(**{
                "Upload-Length": "100",
                "Upload-Metadata": metadata(filename="world_domination_plan.pdf", is_confidential=None),
            }),
        )  # fmt: skip
        assert r.status_code == 201
        assert r.headers["tus-resumable"] == "1.0.0"
        location = r.headers["location"]
        assert location.startswith("/v1/uploads/")
        assert "upload-expires" in r.headers
        head = http.head(location, headers=tus_headers())
        assert head.status_code == 200
        assert head.headers["upload-offset"] == "0"
        assert head.headers["upload-length"] == "100"
        assert head.headers["cache-control"] == "no-store"
        assert "is_confidential" in head.headers["upload-metadata"]
        r = patch(http, location, 0, body[:70])
        assert r.status_code == 204
        assert r.headers["upload-offset"] == "70"
        assert r.headers["tus-resumable"] == "1.0.0"
        # the connection broke here: the client asks where to resume
        assert http.head(location, headers=tus_headers()).headers["upload-offset"] == "70"
        r = patch(http, location, 70, body[70:])
        assert r.status_code == 204
        assert r.headers["upload-offset"] == "100"
        asset_id = r.headers["flame-asset"]
        asset = http.get(f"/v1/assets/{asset_id}").json()
        assert asset["sha256"] == sha256(body)
        assert asset["size"] == 100
        assert asset["name"] == "world_domination_plan.pdf"
        assert asset["content_type"] == "application/pdf"
        assert http.get(f"/v1/assets/{asset_id}/content").content == body
        done = http.head(location, headers=tus_headers())
        assert done.headers["upload-offset"] == "100"
        assert done.headers["flame-asset"] == asset_id


def test_version_is_required_and_checked(sf) -> None:
    with sf.client() as http:
        r = http.post("/v1/uploads", headers={"Upload-Length": "5"})
        assert r.status_code == 412
        assert r.headers["tus-version"] == "1.0.0"
        assert r.json()["error"] == "unsupported_tus_version"
        r = http.post("/v1/uploads", headers={"Upload-Length": "5", "Tus-Resumable": "0.2.2"})
        assert r.status_code == 412


def test_wrong_offsets_are_409_with_the_offset_to_resume_from(sf) -> None:
    with sf.client() as http:
        loc = create(http, 1000)
        assert patch(http, loc, 0, DATA[:300]).status_code == 204
        for wrong in (0, 299, 301, 5000):
            r = patch(http, loc, wrong, DATA[:10])
            assert r.status_code == 409, wrong
            assert r.json()["error"] == "offset_mismatch"
            assert r.json()["offset"] == 300
            assert r.headers["tus-resumable"] == "1.0.0"
        assert patch(http, loc, 0, b"x", **{"Upload-Offset": "-1"}).status_code == 400
        assert http.head(loc, headers=tus_headers()).headers["upload-offset"] == "300"


def test_patch_needs_the_offset_octet_stream_type(sf) -> None:
    with sf.client() as http:
        loc = create(http, 10)
        r = http.patch(loc, content=b"0123456789",
                       headers=tus_headers(**{"Upload-Offset": "0", "Content-Type": "text/plain"}))  # fmt: skip
        assert r.status_code == 415
        assert http.head(loc, headers=tus_headers()).headers["upload-offset"] == "0"


def test_checksum_extension(sf) -> None:
    chunk = DATA[:500]
    good = base64.b64encode(hashlib.sha1(chunk).digest()).decode()
    bad = base64.b64encode(hashlib.sha1(b"other").digest()).decode()
    with sf.client() as http:
        loc = create(http, 1000)
        r = patch(http, loc, 0, chunk, **{"Upload-Checksum": f"sha1 {bad}"})
        assert r.status_code == 460
        assert r.json()["error"] == "checksum_mismatch"
        assert http.head(loc, headers=tus_headers()).headers["upload-offset"] == "0"
        r = patch(http, loc, 0, chunk, **{"Upload-Checksum": f"sha1 {good}"})
        assert r.status_code == 204
        assert r.headers["upload-offset"] == "500"
        r = patch(http, loc, 500, DATA[500:1000], **{"Upload-Checksum": "crc32 AAAAAA=="})
        assert r.status_code == 400
        assert r.json()["error"] == "unsupported_checksum"
        rest = DATA[500:1000]
        s256 = base64.b64encode(hashlib.sha256(rest).digest()).decode()
        r = patch(http, loc, 500, rest, **{"Upload-Checksum": f"sha256 {s256}"})
        assert r.status_code == 204
        asset = http.get(f"/v1/assets/{r.headers['flame-asset']}").json()
        # the whole file's SHA-256 survives a discarded chunk (the hash state is rolled back)
        assert asset["sha256"] == sha256(DATA[:1000])


def test_whole_content_sha256_announced_in_metadata_is_verified(sf) -> None:
    with sf.client() as http:
        loc = create(http, 100, sha256="0" * 64)
        r = patch(http, loc, 0, DATA[:100])
        assert r.status_code == 460
        assert r.json()["sha256"] == sha256(DATA[:100])
        assert http.head(loc, headers=tus_headers()).status_code == 404
        loc = create(http, 100, sha256=sha256(DATA[:100]))
        assert patch(http, loc, 0, DATA[:100]).status_code == 204


def test_huge_bad_or_missing_upload_length(sf) -> None:
    with sf.client() as http:
        for value, status in (("9" * 30, 400), (str(10**15), 413), ("-5", 400), ("1e9", 400)):
            r = http.post("/v1/uploads", headers=tus_headers(**{
                "Upload-Length": value, "Upload-Metadata": metadata(filename="x")}))  # fmt: skip
            assert r.status_code == status, (value, r.text)
            assert r.headers["tus-resumable"] == "1.0.0"
        r = http.post(
            "/v1/uploads", headers=tus_headers(**{"Upload-Metadata": metadata(filename="x")})
        )
        assert r.status_code == 400
        assert r.json()["error"] == "missing_upload_length"
        assert http.get("/v1/usage").json()["uploads"] == 0


def test_a_body_past_upload_length_is_refused_and_not_kept(sf) -> None:
    with sf.client() as http:
        loc = create(http, 100)
        r = patch(http, loc, 0, DATA[:150])
        assert r.status_code == 413
        assert http.head(loc, headers=tus_headers()).headers["upload-offset"] == "0"

        def chunks():
            yield DATA[:80]
            yield DATA[80:160]

        r = http.patch(loc, content=chunks(), headers=tus_headers(**{
            "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}))  # fmt: skip
        assert r.status_code == 413
        assert http.head(loc, headers=tus_headers()).headers["upload-offset"] == "0"


def test_termination(sf) -> None:
    with sf.client() as http:
        loc = create(http, 100)
        patch(http, loc, 0, DATA[:10])
        assert http.delete(loc, headers=tus_headers()).status_code == 204
        assert http.head(loc, headers=tus_headers()).status_code == 404
        r = patch(http, loc, 10, DATA[10:20])
        assert r.status_code == 404
        assert r.json()["error"] == "upload_not_found"
        assert http.get("/v1/usage").json()["reserved_bytes"] == 0


def test_creation_with_upload(sf) -> None:
    with sf.client() as http:
        r = http.post("/v1/uploads", content=DATA[:40], headers=tus_headers(**{
            "Upload-Length": "100", "Upload-Metadata": metadata(filename="a.bin"),
            "Content-Type": "application/offset+octet-stream"}))  # fmt: skip
        assert r.status_code == 201
        assert r.headers["upload-offset"] == "40"
        r = patch(http, r.headers["location"], 40, DATA[40:100])
        assert r.headers["upload-offset"] == "100"
        assert http.get(f"/v1/assets/{r.headers['flame-asset']}/content").content == DATA[:100]


def test_method_override_for_clients_without_patch(sf) -> None:
    with sf.client() as http:
        loc = create(http, 10)
        r = http.post(loc, content=b"0123456789", headers=tus_headers(**{
            "X-HTTP-Method-Override": "PATCH", "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream"}))  # fmt: skip
        assert r.status_code == 204
        assert r.headers["upload-offset"] == "10"


def test_names_are_labels_never_paths(sf, tmp_path: Path) -> None:
    with sf.client() as http:
        for name in ("../../etc/passwd", "a/b.mp4", "..\\x", "..", "bad\x00name", "tab\tname"):
            r = http.post("/v1/uploads", headers=tus_headers(**{
                "Upload-Length": "5", "Upload-Metadata": metadata(filename=name)}))  # fmt: skip
            assert r.status_code == 400, name
            assert r.json()["error"] == "invalid_name"
        r = http.post("/v1/uploads", headers=tus_headers(**{
            "Upload-Length": "5", "Upload-Metadata": "filename not-base64!"}))  # fmt: skip
        assert r.status_code == 400
        assert r.json()["error"] == "invalid_metadata"
    assert not (tmp_path.parent / "etc").exists()
    stored = {p.name for p in (tmp_path / "content").rglob("*") if p.is_file()}
    assert stored <= {"content.sqlite3", "content.sqlite3-wal", "content.sqlite3-shm"}


def test_authentication_and_tenant_isolation(sf) -> None:
    with httpx.Client(base_url=sf.url, trust_env=False) as anon:
        r = anon.post("/v1/uploads", headers=tus_headers(**{"Upload-Length": "5"}))
        assert r.status_code == 401
        assert r.headers["tus-resumable"] == "1.0.0"
        assert r.json()["error"] == "authentication_error"
        r = anon.get("/v1/assets", headers={"Authorization": "Bearer not-a-key"})
        assert r.status_code == 401
    with sf.client(KEY_A) as a, sf.client(KEY_A2) as a2, sf.client(KEY_B) as b:
        loc = create(a, 10)
        # another key of the same tenant may resume it; another tenant's key cannot see it
        assert a2.head(loc, headers=tus_headers()).status_code == 200
        assert b.head(loc, headers=tus_headers()).status_code == 404
        assert patch(b, loc, 0, DATA[:10]).status_code == 404
        r = patch(a2, loc, 0, DATA[:10])
        asset_id = r.headers["flame-asset"]
        assert b.get(f"/v1/assets/{asset_id}").status_code == 404
        assert b.get(f"/v1/assets/{asset_id}/content").status_code == 404
        assert b.get("/v1/assets").json()["total"] == 0
        assert a.get("/v1/assets").json()["total"] == 1
        assert a.get(f"/v1/assets/{asset_id}").json()["owner"] == "editor"  # who created it


def test_quota_counts_open_uploads_whole(tmp_path: Path) -> None:
    with (
        content_server(tmp_path, MEDIA_QUOTA="1000", MEDIA_MAX_UPLOAD="800") as sf,
        sf.client() as http,
    ):
        first = create(http, 600)
        r = http.post("/v1/uploads", headers=tus_headers(**{
            "Upload-Length": "600", "Upload-Metadata": metadata(filename="b")}))  # fmt: skip
        assert r.status_code == 413
        assert r.json()["error"] == "quota_exceeded"
        assert r.json()["quota"] == 1000
        r = http.post("/v1/uploads", headers=tus_headers(**{
            "Upload-Length": "900", "Upload-Metadata": metadata(filename="c")}))  # fmt: skip
        assert r.json()["error"] == "upload_too_large"
        assert http.delete(first, headers=tus_headers()).status_code == 204
        create(http, 600)
        assert http.get("/v1/usage").json() | {"quota": 1000} == {
            "assets": 0, "stored_bytes": 0, "uploads": 1, "reserved_bytes": 600,
            "quota": 1000, "max_upload": 800, "max_multipart": 64 * 1024**2,
        }  # fmt: skip


def test_expired_uploads_answer_410_and_free_their_reservation(tmp_path: Path) -> None:
    with content_server(tmp_path, MEDIA_UPLOAD_TTL="0.3") as sf, sf.client() as http:
        loc = create(http, 100)
        time.sleep(0.5)
        r = patch(http, loc, 0, DATA[:10])
        assert r.status_code == 410
        assert r.json()["error"] == "upload_expired"
        assert http.get("/v1/usage").json()["reserved_bytes"] == 0


def test_a_stalled_body_is_cut_with_408_and_what_arrived_is_kept(sf) -> None:
    with sf.client() as http:
        loc = create(http, 1000)
    sock = raw(sf.port)
    started = time.monotonic()
    sock.sendall(
        f"PATCH {loc} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY_A}\r\n"
        "Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
        "Content-Type: application/offset+octet-stream\r\nContent-Length: 1000\r\n\r\n".encode()
        + DATA[:100]
    )
    status, _, body = read_response(sock)
    sock.close()
    assert status == 408
    assert b"body_timeout" in body
    # MEDIA_BODY_IDLE_S=1: cut after the idle time, not before; the upper bound only says "not
    # never" (~1.0 s measured, 15x headroom for a loaded machine).
    assert 0.9 < time.monotonic() - started < 15
    with sf.client() as http:
        assert http.head(loc, headers=tus_headers()).headers["upload-offset"] == "100"
        assert patch(http, loc, 100, DATA[100:1000]).status_code == 204


def test_a_trickling_body_is_cut_by_the_minimum_rate(tmp_path: Path) -> None:
    env = {"MEDIA_BODY_IDLE_S": "5", "MEDIA_BODY_MIN_RATE": "1000", "MEDIA_BODY_GRACE_S": "0.5"}
    with content_server(tmp_path, **env) as sf:
        with sf.client() as http:
            loc = create(http, 1000)
        sock = raw(sf.port)
        sock.sendall(
            f"PATCH {loc} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY_A}\r\n"
            "Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
            "Content-Type: application/offset+octet-stream\r\nContent-Length: 1000\r\n\r\n".encode()
        )
        for _ in range(8):  # one byte every 0.2 s: far under 1000 B/s
            try:
                sock.sendall(b"x")
            except OSError:  # already cut (a stalled test process sends late)
                break
            time.sleep(0.2)
        status, _, body = read_response(sock)
        sock.close()
        assert status == 408
        assert b"body_too_slow" in body


def test_concurrent_patch_on_one_upload_is_423_and_changes_nothing(sf) -> None:
    with sf.client() as http:
        loc = create(http, 1000)
    sock = raw(sf.port)
    sock.sendall(
        f"PATCH {loc} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY_A}\r\n"
        "Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
        "Content-Type: application/offset+octet-stream\r\nContent-Length: 1000\r\n\r\n".encode()
        + DATA[:200]
    )
    receiving(sf, loc)  # the first PATCH holds the upload, waiting for the rest of its body
    with sf.client() as http:
        r = patch(http, loc, 0, DATA[:1000])
        assert r.status_code == 423
        assert r.json()["error"] == "upload_locked"
        assert http.delete(loc, headers=tus_headers()).status_code == 423
    sock.sendall(DATA[200:1000])
    status, headers, _ = read_response(sock)
    sock.close()
    assert status == 204
    assert headers["upload-offset"] == "1000"


def test_a_client_that_goes_away_keeps_what_it_sent_and_resumes(sf) -> None:
    big = DATA * 10  # 1 MB
    with sf.client() as http:
        loc = create(http, len(big))
    sock = raw(sf.port)
    sock.sendall(
        f"PATCH {loc} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY_A}\r\n"
        "Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
        f"Content-Type: application/offset+octet-stream\r\nContent-Length: {len(big)}\r\n\r\n".encode()
        + big[:300_000]
    )
    receiving(sf, loc)
    sock.close()  # interrupted
    with sf.client() as http:

        def offset() -> int:
            return int(http.head(loc, headers=tus_headers()).headers["upload-offset"])

        got = eventually(offset, until=lambda n: n == 300_000, what="what was sent to be kept")
        r = patch(http, loc, got, big[got:])
        assert r.status_code == 204
        asset = http.get(f"/v1/assets/{r.headers['flame-asset']}").json()
        assert asset["sha256"] == sha256(big)


def test_a_large_patch_is_streamed_in_bounded_memory(sf) -> None:
    total = 96 * 1024 * 1024
    block = bytes(range(256)) * 4096  # 1 MiB

    def chunks() -> Iterator[bytes]:
        for _ in range(total // len(block)):
            yield block

    peak = [0]
    done = threading.Event()

    def sample() -> None:  # the resident size of this process (client and server) as it goes
        while not done.is_set():
            peak[0] = max(peak[0], rss_kb())
            time.sleep(0.01)

    with sf.client(timeout=120) as http:
        loc = create(http, total)
        before = rss_kb()
        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            r = patch(http, loc, 0, chunks())
        finally:
            done.set()
            sampler.join()
        assert r.status_code == 204
        assert r.headers["upload-offset"] == str(total)
        expected = hashlib.sha256()
        for c in chunks():
            expected.update(c)
        assert (
            http.get(f"/v1/assets/{r.headers['flame-asset']}").json()["sha256"]
            == expected.hexdigest()
        )
    grown_mb = (peak[0] - before) / 1024
    assert grown_mb < 32, f"the resident size grew {grown_mb:.0f} MiB during a 96 MiB upload"


def test_the_tus_io_python_client_uploads_and_resumes(sf, tmp_path: Path) -> None:
    """Interoperability with tuspy (tus.io's Python client), chunked, with a resume."""
    from tusclient import client as tus_client

    payload = DATA * 3
    src = tmp_path / "clip.bin"
    src.write_bytes(payload)
    tc = tus_client.TusClient(f"{sf.url}/v1/uploads", headers={"Authorization": f"Bearer {KEY_A}"})
    with src.open("rb") as fh:  # given a path, tuspy leaves its file handles open
        uploader = tc.uploader(file_stream=fh, chunk_size=50_000, metadata={"filename": "clip.bin"})
        uploader.upload_chunk()
        url = uploader.url
        assert url is not None
        assert uploader.offset == 50_000
    with src.open("rb") as fh:  # a new client resumes from where the server says (HEAD)
        again = tc.uploader(file_stream=fh, chunk_size=50_000, url=url)
        assert again.offset == 50_000
        again.upload()
    asset_id = url.rsplit("/", 1)[1]
    with sf.client() as http:
        assert http.get(f"/v1/assets/{asset_id}").json()["sha256"] == sha256(payload)


def test_parallel_uploads_do_not_mix(sf) -> None:
    payloads = [bytes([i]) * (50_000 + i) for i in range(6)]
    results: dict[int, str] = {}

    def upload(i: int) -> None:
        with sf.client() as http:
            loc = create(http, len(payloads[i]), filename=f"p{i}.bin")
            half = len(payloads[i]) // 2
            patch(http, loc, 0, payloads[i][:half])
            r = patch(http, loc, half, payloads[i][half:])
            results[i] = r.headers["flame-asset"]

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    with sf.client() as http:
        for i, asset_id in results.items():
            assert http.get(f"/v1/assets/{asset_id}/content").content == payloads[i]
    assert len(results) == 6
