import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from flame.common import setup_logging
from flame.common.logging import RedactingFilter

TOKEN = "flm_" + "s3cr3t-" * 6 + "x"  # 4 + 43 characters
TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
log = logging.getLogger("flame.sfemc")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root, flame = logging.getLogger(), logging.getLogger("flame")
    saved = (list(root.handlers), root.level, flame.level)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    flame.setLevel(saved[2])


def configure(fmt: str, level: str = "INFO") -> io.StringIO:
    stream = io.StringIO()
    setup_logging(level, fmt, stream)
    return stream


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_text_format():
    stream = configure("text")
    log.info("route added", extra={"service": "acme-cdn", "count": 3, "note": "two words"})
    (line,) = lines(stream)
    assert re.fullmatch(
        TS + r' INFO flame\.sfemc: route added service=acme-cdn count=3 note="two words"',
        line,
    )
    when = datetime.strptime(line[:23], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC)
    assert abs(datetime.now(UTC) - when) < timedelta(minutes=1)  # UTC, not local time


def test_json_format():
    stream = configure("json")
    log.warning("slow %s", "edge-1", extra={"ms": 1200, "level": "x"})
    (line,) = lines(stream)
    doc = json.loads(line)
    assert re.fullmatch(TS, doc.pop("ts"))
    assert doc == {
        "level": "WARNING",
        "logger": "flame.sfemc",
        "msg": "slow edge-1",
        "ms": 1200,
        "extra_level": "x",  # an extra cannot overwrite a fixed field
    }


def test_json_includes_exception():
    stream = configure("json")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    doc = json.loads(stream.getvalue())
    assert doc["msg"] == "failed"
    assert "RuntimeError: boom" in doc["exc"]


def test_levels():
    stream = configure("text", "info")
    log.debug("hidden")
    log.info("shown")
    logging.getLogger("urllib3").info("third-party chatter")
    logging.getLogger("urllib3").warning("third-party warning")
    assert [line.split(": ", 1)[1] for line in lines(stream)] == ["shown", "third-party warning"]
    stream = configure("text", "DEBUG")
    log.debug("now shown")
    assert lines(stream)[0].endswith("DEBUG flame.sfemc: now shown")


def test_setup_is_idempotent():
    first = configure("text")
    second = configure("json")
    log.info("once")
    assert first.getvalue() == ""
    assert len(lines(second)) == 1
    ours = [h for h in logging.getLogger().handlers if type(h).__name__ == "_FlameHandler"]
    assert len(ours) == 1


@pytest.mark.parametrize(("level", "fmt"), [("LOUD", "text"), ("INFO", "xml")])
def test_invalid_arguments(level, fmt):
    with pytest.raises(ValueError, match="invalid log"):
        setup_logging(level, fmt, io.StringIO())


# --- redaction -----------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize(
    "key", ["token", "api_secret", "Authorization", "db_password", "refresh_token", "SECRET"]
)
def test_secret_extras_are_redacted(fmt, key):
    stream = configure(fmt)
    log.info("request", extra={key: "hunter2-value", "service": "acme-cdn"})
    out = stream.getvalue()
    assert "hunter2-value" not in out
    assert "***" in out
    assert "acme-cdn" in out  # other extras untouched


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_tokens_in_messages_are_redacted(fmt):
    stream = configure(fmt)
    log.info("login with %s", TOKEN)
    log.info(f"inline {TOKEN} and truncated {TOKEN[:25]}")
    out = stream.getvalue()
    assert "s3cr3t" not in out
    assert out.count("***") == 3


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_nested_and_exception_secrets_are_redacted(fmt):
    stream = configure(fmt)
    headers = {"Authorization": "Bearer hunter2-value", "Accept": "json"}
    log.info("call", extra={"headers": headers, "argv": [TOKEN]})
    try:
        raise ValueError(f"bad token {TOKEN}")
    except ValueError:
        log.exception("failed")
    out = stream.getvalue()
    assert "hunter2-value" not in out
    assert "s3cr3t" not in out
    assert "Accept" in out
    assert headers["Authorization"] == "Bearer hunter2-value"  # caller's dict untouched


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_token_ids_stay_readable(fmt):
    stream = configure(fmt)
    log.info("revoked flm_Xy3_a9Qe")
    assert "flm_Xy3_a9Qe" in stream.getvalue()


def test_other_handlers_see_redacted_records():
    configure("text")
    seen: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    handler = Collect()
    logging.getLogger().addHandler(handler)
    log.info("got %s", TOKEN, extra={"password": "pw"})
    try:
        raise ValueError(TOKEN)
    except ValueError:
        log.exception("failed")
    first, second = seen
    assert first.getMessage() == "got ***"
    assert vars(first)["password"] == "***"  # an `extra=` field
    assert second.exc_text is not None
    assert "ValueError: ***" in second.exc_text


def test_filter_never_raises_for_bad_format_args():
    record = logging.LogRecord("flame.x", logging.INFO, __file__, 1, "%d items", ("x",), None)
    assert RedactingFilter().filter(record) is True
    assert record.args == ("x",)  # left for the handler to report
