"""Start a real InfluxDB 1.x (Debian's `influxd`) on loopback: the oracle of the differential
tests and the peer of the ingest benchmark. Not used by the CLMC itself.

Settings match the CLMC's defaults where they matter for a fair comparison: every write is
fsynced before it is acknowledged (`wal-fsync-delay = "0s"`), no self-monitoring, no logs.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from flame.common.ports import free_port

__all__ = ["InfluxDB", "influxd_binary"]


def influxd_binary() -> str | None:
    return shutil.which("influxd")


class InfluxDB:
    """A throw-away influxd in a temporary directory; use as a context manager."""

    def __init__(
        self, max_body_size: int = 25_000_000, data_options: dict[str, int] | None = None
    ) -> None:
        """`data_options` go to the `[data]` section (e.g. `max-values-per-tag`)."""
        binary = influxd_binary()
        if binary is None:
            raise FileNotFoundError("influxd not found: apt-get install -y influxdb")
        self._binary = binary
        self._tmp = Path(tempfile.mkdtemp(prefix="flame-influxd-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        rpc = free_port()
        d = self._tmp
        extra = "".join(f"  {k} = {v}\n" for k, v in (data_options or {}).items())
        (d / "influxdb.conf").write_text(
            f"""reporting-disabled = true
bind-address = "127.0.0.1:{rpc}"
[meta]
  dir = "{d}/meta"
  logging-enabled = false
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  wal-fsync-delay = "0s"
  query-log-enabled = false
{extra}[monitor]
  store-enabled = false
[http]
  bind-address = "127.0.0.1:{self.port}"
  log-enabled = false
  pprof-enabled = false
  max-body-size = {max_body_size}
[continuous_queries]
  enabled = false
[logging]
  level = "error"
"""
        )
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        self._proc = subprocess.Popen(
            [self._binary, "-config", str(self._tmp / "influxdb.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"influxd exited with status {self._proc.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/ping", timeout=1):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"influxd did not answer on {self.url} within {timeout_s}s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> InfluxDB:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
