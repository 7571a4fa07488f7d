"""A real Prometheus server (the Debian ``prometheus`` binary) run as a subprocess, scraping
loopback targets, and a small client for its HTTP query API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp

from tests.support.processes import free_port


def find_prometheus() -> str | None:
    """The Prometheus server binary, or None when the package is not installed."""
    if Path("/usr/bin/prometheus").is_file():
        return "/usr/bin/prometheus"
    return shutil.which("prometheus")


def scrape_config(targets: Mapping[str, int], interval_s: float) -> str:
    """A Prometheus configuration with one job per ``targets`` entry (job name -> port on
    127.0.0.1). JSON is valid YAML, so no YAML writer is needed."""
    interval = f"{int(interval_s * 1000)}ms"
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
            for job, port in targets.items()
        ],
    }
    return json.dumps(config, indent=2)


@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: float


class PrometheusError(RuntimeError):
    pass


class PrometheusServer:
    """One Prometheus process with its own storage and config in ``workdir``.

    ``start()`` returns once ``/-/ready`` answers; ``stop()`` terminates it (SIGTERM, then
    SIGKILL when it does not exit in time). Queries go through the public HTTP API, as
    Grafana's and operators' do.
    """

    def __init__(self, binary: str, workdir: Path, targets: Mapping[str, int]) -> None:
        self.binary = binary
        self.workdir = workdir
        self.targets = dict(targets)
        self.port = 0
        self.log_path = workdir / "prometheus.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    async def start(self, *, scrape_interval_s: float = 1.0, timeout_s: float = 20.0) -> None:
        config = self.workdir / "prometheus.yml"
        config.write_text(scrape_config(self.targets, scrape_interval_s))
        self.port = free_port()
        self._log = self.log_path.open("wb")
        self._proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once; nothing to await
            [
                self.binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        deadline = time.monotonic() + timeout_s
        while True:
            if self._proc.poll() is not None:
                raise PrometheusError(
                    f"prometheus exited with {self._proc.returncode}:\n{self.log_tail()}"
                )
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self._session.get(f"{self.url}/-/ready") as response:
                    if response.status == 200:
                        return
            if time.monotonic() > deadline:
                raise PrometheusError(f"prometheus not ready in {timeout_s} s:\n{self.log_tail()}")
            await asyncio.sleep(0.1)

    async def stop(self, timeout_s: float = 10.0) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait, timeout_s)
        if self._log is not None:
            self._log.close()
            self._log = None

    async def _api(self, path: str, params: Mapping[str, str]) -> Any:
        if self._session is None:
            raise PrometheusError("prometheus is not started")
        async with self._session.get(f"{self.url}{path}", params=params) as response:
            body = await response.json()
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {dict(params)}: {body}")
        return body["data"]

    async def query(self, expr: str, at: float | None = None) -> list[Sample]:
        """An instant query at ``at`` (Unix time; default now); the samples of its vector
        result."""
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        data = await self._api("/api/v1/query", params)
        if data["resultType"] != "vector":
            raise PrometheusError(f"{expr}: a {data['resultType']}, not a vector")
        return [Sample(dict(r["metric"]), float(r["value"][1])) for r in data["result"]]

    async def value(self, expr: str) -> float:
        """The one sample ``expr`` yields; AssertionError when it yields none or several."""
        samples = await self.query(expr)
        assert len(samples) == 1, f"{expr}: expected one sample, got {samples}"
        return samples[0].value

    async def wait_scraped_after(
        self, since: float, jobs: list[str], *, timeout_s: float = 30.0
    ) -> None:
        """Returns once every job has a completed scrape that started after ``since`` (Unix
        time): from then on, queries see what the targets exposed at ``since`` or later."""
        deadline = time.monotonic() + timeout_s
        behind = list(jobs)
        while True:
            samples = await self.query('timestamp(up{job=~"' + "|".join(jobs) + '"})')
            newest = {s.labels.get("job", ""): s.value for s in samples}
            behind = [j for j in jobs if not newest.get(j, -math.inf) > since]
            if not behind:
                return
            if time.monotonic() > deadline:
                targets = await self._api("/api/v1/targets", {"state": "active"})
                raise PrometheusError(
                    f"no scrape of {behind} after {since} within {timeout_s} s; targets: "
                    f"{json.dumps(targets)[:3000]}\n{self.log_tail()}"
                )
            await asyncio.sleep(0.2)
