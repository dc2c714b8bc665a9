"""Differential tests against the real InfluxDB 1.6 (Debian's influxd): the same write bodies
get the same status codes and the same `error` texts, and the data written reads back the same.

Intentional differences (documented in flame.clmc.api): an unknown retention policy is 404 (not
500); unsigned integers are accepted (1.6 says "invalid number"); InfluxDB's in-batch conflict
between points sharing one timestamp ("field type conflict" with no partial write) is answered
like any other in-batch conflict. Those cases are not in this corpus.
"""

from __future__ import annotations

import gzip
import itertools
import shutil
import subprocess
from collections.abc import Iterator

import httpx
import pytest

_ids = itertools.count()

GOOD = [
    b'cpu,host=a,dc=x value=1.5,n=3i,ok=true,s="hi" 1000',
    b'we\\ ird\\,m,t\\ k\\=1=v\\,a\\ l f\\=k\\ 1="q\\"uo\\\\te",x=1 1',
    b"m b1=t,b2=T,b3=true,b4=True,b5=TRUE,b6=f,b7=F,b8=false,b9=False,b10=FALSE 5",
    b"# a comment\n\n  m v=1 1\nm v=2 2\n",
    b'm s="multi\nline",v=1 3',
    b"m v=1,v=2 4",
    b"m v=-1e-5,w=.5,x=5.,y=1E+5 6",
    b"m v=-9223372036854775808i 7",
    b"m v=1 -1",
    b"a time=1,v=2 1",
    b"h\xc3\xa9 v=1 1",
    b"m,t=1 v=1 1\nm,t=2 v=2 2\nn,u=1 w=3i 3\nm v=4 4",
    b"",
]

# Statuses compared only: reading a key that is both tag and field back is the InfluxQL side's.
# ("b": InfluxDB lists a measurement whose only point it dropped; we do not.)
ANSWER_ONLY = [b"c,k=x k=1 1", b"b time=1 1"]

# InfluxDB 1.6 answers a bare "field type conflict" (and stores nothing) when the first write to
# a new shard has an in-batch conflict, but a partial write once the shard exists. We always do
# the partial write (keep the good points); only the status is compared.
STATUS_ONLY = [b"m v=1 1\nm v=2i 2\nm v=3i 3", b"j v=1 1\nj v=1 2\nj v=1i 3\nj v=2 4"]

BAD = [
    b"cpu",
    b"cpu value",
    b"cpu value=",
    b"cpu,host value=1",
    b"cpu,host= value=1",
    b"cpu,=a value=1",
    b"cpu value=1 abc",
    b"cpu value=1 1 2",
    b"cpu value=tru",
    b'cpu value="abc',
    b"cpu,a=1,a=2 value=1",
    b",a=1 value=1",
    b"cpu value=1.5i",
    b"cpu value=99999999999999999999i",
    b"cpu v=1 99999999999999999999",
    b"cpu value=nan",
    b"cpu value=inf",
    b"cpu,a=b=c value=1",
    b"cpu a=b=c",
    b"cpu value=+5",
    b"cpu value=0x10",
    b"cpu, value=1",
    b"cpu value=1,",
    b"cpu ,value=1",
    b"cpu v=1 1.5",
    b"cpu v=1\r",
    b"cpu\tv=1",
    b"cpu v=1e5e5",
    b"cpu v=1e",
    b"cpu v=1 9223372036854775807",
    b"cpu v=1 -",
    b"k,t=\\ v=1",
    b"cpu v=9223372036854775808i",
    b"cpu v=1 1\xff",
    b"m v=1 1\nbad\nm v=2 2",
    b"bad1\nbad2",
    b"c,time=x v=1 1",
]

# (setup body, body): conflicts with what is already stored
CONFLICTS = [
    (b"m v=1 1", b"m v=1i 2"),
    (b"m v=1 1", b"m v=2i 2\nm v=3i 3\nm v=4 4\nbad"),
    (b"m v=1 1", b"m v=T 2"),
    (b'm s="x" 1', b"m s=1 2,t=1"),
]


class Pair:
    def __init__(self, ours: str, theirs: str) -> None:
        self.ours = httpx.Client(base_url=ours, timeout=30)
        self.theirs = httpx.Client(base_url=theirs, timeout=30)

    def fresh_db(self) -> str:
        name = f"compat{next(_ids)}"
        for c in (self.ours, self.theirs):
            assert c.post("/query", params={"q": f"CREATE DATABASE {name}"}).status_code == 200
        return name

    def both(self, method: str, url: str, **kw: object) -> tuple[httpx.Response, httpx.Response]:
        return self.ours.request(method, url, **kw), self.theirs.request(method, url, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def pair(real_influx: str, clmc_url: str) -> Iterator[Pair]:
    p = Pair(clmc_url, real_influx)
    yield p
    p.ours.close()
    p.theirs.close()


def _same_answer(ours: httpx.Response, theirs: httpx.Response) -> None:
    assert ours.status_code == theirs.status_code, (ours.text, theirs.text)
    if theirs.status_code != 204:
        assert ours.json()["error"] == theirs.json()["error"]


def _contents(client: httpx.Client, db: str) -> object:
    ms = client.get("/query", params={"q": "SHOW MEASUREMENTS", "db": db}).json()
    series = ms["results"][0].get("series", [])
    names = [v[0] for v in series[0]["values"]] if series else []
    out = {}
    for m in names:
        q = 'SELECT * FROM "' + m.replace("\\", "\\\\").replace('"', '\\"') + '"'
        out[m] = client.get("/query", params={"q": q, "db": db}).json()
    return out


@pytest.mark.parametrize("body", GOOD + BAD + ANSWER_ONLY, ids=lambda b: repr(b)[:40])
def test_write_answers_and_data_match(pair: Pair, body: bytes) -> None:
    db = pair.fresh_db()
    ours, theirs = pair.both("POST", "/write", params={"db": db}, content=body)
    _same_answer(ours, theirs)
    if body not in ANSWER_ONLY and all(
        line.split(b" ")[-1].lstrip(b"-").isdigit()
        for line in body.split(b"\n")
        if line.strip() and not line.strip().startswith(b"#")
    ):
        # every point has a timestamp, so both hold exactly the same rows
        assert _contents(pair.ours, db) == _contents(pair.theirs, db)


@pytest.mark.parametrize("body", STATUS_ONLY)
def test_in_batch_conflict_in_a_new_shard_status_matches(pair: Pair, body: bytes) -> None:
    db = pair.fresh_db()
    ours, theirs = pair.both("POST", "/write", params={"db": db}, content=body)
    assert ours.status_code == theirs.status_code == 400
    assert theirs.json()["error"] == "field type conflict"
    assert ours.json()["error"].startswith("partial write: field type conflict: input field")


@pytest.mark.parametrize(("setup", "body"), CONFLICTS)
def test_field_type_conflicts_match(pair: Pair, setup: bytes, body: bytes) -> None:
    db = pair.fresh_db()
    for r in pair.both("POST", "/write", params={"db": db}, content=setup):
        assert r.status_code == 204
    _same_answer(*pair.both("POST", "/write", params={"db": db}, content=body))
    assert _contents(pair.ours, db) == _contents(pair.theirs, db)


@pytest.mark.parametrize("precision", ["n", "u", "ms", "s", "m", "h", "x"])
def test_precisions_match(pair: Pair, precision: str) -> None:
    db = pair.fresh_db()
    _same_answer(
        *pair.both(
            "POST", "/write", params={"db": db, "precision": precision}, content=b"m v=1 3\nm v=2 7"
        )
    )
    assert _contents(pair.ours, db) == _contents(pair.theirs, db)


def test_request_level_errors_match(pair: Pair) -> None:
    db = pair.fresh_db()
    _same_answer(*pair.both("POST", "/write", params={}, content=b"m v=1"))
    _same_answer(*pair.both("POST", "/write", params={"db": "nope"}, content=b"m v=1"))
    _same_answer(
        *pair.both("POST", "/write", params={"db": db}, content=b"m v=1 1\n" * 20_000)
    )  # 413
    gz = {"Content-Encoding": "gzip"}
    _same_answer(
        *pair.both(
            "POST", "/write", params={"db": db}, content=gzip.compress(b"g v=1 1"), headers=gz
        )
    )
    _same_answer(*pair.both("POST", "/write", params={"db": db}, content=b"notgzip", headers=gz))
    _same_answer(*pair.both("GET", "/query", params={}))
    ours, theirs = pair.both("GET", "/ping")
    assert ours.status_code == theirs.status_code == 204
    assert "X-Influxdb-Version" in ours.headers


@pytest.mark.skipif(
    shutil.which("influx") is None,
    reason="influx CLI not installed (apt-get install -y influxdb-client)",
)
def test_the_influx_cli_works_against_us(clmc_url: str) -> None:
    port = clmc_url.rsplit(":", 1)[1]

    def influx(*args: str) -> str:
        done = subprocess.run(
            ["influx", "-host", "127.0.0.1", "-port", port, *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return done.stdout

    influx("-execute", "CREATE DATABASE cli")
    influx("-database", "cli", "-execute", "INSERT cpu,host=a value=0.5 1000000000")
    out = influx("-database", "cli", "-format", "csv", "-execute", "SELECT value FROM cpu")
    assert out.splitlines() == ["name,time,value", "cpu,1000000000,0.5"]


def test_query_text_is_byte_identical_for_simple_selects(pair: Pair) -> None:
    db = pair.fresh_db()
    body = b'm,h=a v=1,w=2.5,n=3i,s="x",b=true 1000000000\nm,h=b v=-4,w=1e21 2000000000'
    for r in pair.both("POST", "/write", params={"db": db}, content=body):
        assert r.status_code == 204
    ours, theirs = pair.both("GET", "/query", params={"db": db, "q": "SELECT * FROM m"})
    assert ours.text == theirs.text
