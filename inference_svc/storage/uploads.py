"""A durable queue of objects to write to buckets (the evidence archive, the result export).

Each pending object is one file in the spool directory, named after its destination, written
to a temporary name and renamed, so a crash leaves either the whole object or nothing. A
background task writes the files to their stores and deletes each once its store has it;
while a store is down it retries with a capped exponential backoff, and the queue's size and
oldest entry are metrics an alert watches. Inspections never wait on a store: only on the local
file write, done in a worker thread.

``once`` objects (content-addressed images) are written with put-if-not-exists: a store that
already holds the key keeps its copy, so an image is stored once however often it is seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import obstore
from obstore.exceptions import AlreadyExistsError, BaseError

from inference_svc.storage.stores import BucketUri, StoreCache, parse_bucket_uri

log = logging.getLogger(__name__)

_ONCE, _REPLACE = "once", "replace"


@dataclass(frozen=True)
class UploadHooks:
    # kind: "archive" | "export"; outcome: written | present | failed | dropped
    on_outcome: Callable[[str, str], None] = lambda kind, outcome: None


@dataclass
class _Entry:
    path: Path
    uri: BucketUri
    once: bool
    kind: str
    size: int
    queued_at: float
    ready: bool = False  # its spool file is complete (reserved entries are not written yet)


def _name(uri: BucketUri, once: bool, kind: str) -> str:
    # A digest, not the URI itself: a shipping id can make a key longer than a file name.
    digest = hashlib.sha256(uri.geturl().encode()).hexdigest()
    return f"{kind}.{_ONCE if once else _REPLACE}.{digest}"


def _read_entry(path: Path) -> tuple[BucketUri, bytes]:
    """A spool file holds the destination URI on its first line, then the object."""
    raw = path.read_bytes()
    head, _, data = raw.partition(b"\n")
    return parse_bucket_uri(head.decode()), data


class UploadQueue:
    def __init__(
        self,
        spool_dir: Path,
        max_bytes: int,
        stores: StoreCache,
        *,
        hooks: UploadHooks | None = None,
        max_backoff_s: float = 30.0,
    ) -> None:
        self._dir = spool_dir
        self._max_bytes = max_bytes
        self._stores = stores
        self._hooks = hooks or UploadHooks()
        self._max_backoff_s = max_backoff_s
        self._entries: dict[str, _Entry] = {}
        self._bytes = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.consecutive_failures = 0

    # -- figures (metrics read them at scrape time)

    @property
    def pending(self) -> int:
        return len(self._entries)

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def oldest_age_s(self) -> float:
        oldest = min((e.queued_at for e in self._entries.values()), default=None)
        return 0.0 if oldest is None else max(0.0, time.time() - oldest)

    # -- producing

    async def enqueue(self, uri: BucketUri, data: bytes, *, once: bool, kind: str) -> None:
        """Keeps ``data`` for ``uri`` durably (local disk) and wakes the writer. Never raises:
        a full or broken spool drops the object and counts it (the record is kept anyway)."""
        name = _name(uri, once, kind)
        if name in self._entries:
            return
        if self._bytes + len(data) > self._max_bytes:
            log.error("upload spool full: object dropped", extra={"kind": kind})
            self._hooks.on_outcome(kind, "dropped")
            return
        entry = _Entry(self._dir / name, uri, once, kind, len(data), time.time())
        self._entries[name] = entry  # reserved before the write: a second enqueue is a no-op
        self._bytes += entry.size
        try:
            await asyncio.to_thread(_write_atomically, entry.path, uri, data)
            entry.ready = True
        except OSError:
            self._forget(name)
            log.exception("upload spool write failed: object dropped", extra={"kind": kind})
            self._hooks.on_outcome(kind, "dropped")
            return
        self._wake.set()

    # -- lifecycle

    async def start(self) -> None:
        await asyncio.to_thread(self._dir.mkdir, parents=True, exist_ok=True)
        for path in await asyncio.to_thread(lambda: sorted(self._dir.iterdir())):
            if path.name.startswith(".tmp-"):  # a write a crash interrupted
                path.unlink(missing_ok=True)
                continue
            kind, mode, _ = [*path.name.split(".", 2), "", ""][:3]
            try:
                uri, _data = await asyncio.to_thread(_read_entry, path)
            except (OSError, ValueError, UnicodeDecodeError):
                log.warning("unreadable upload spool file left in place", extra={"file": path.name})
                continue
            stat = path.stat()
            entry = _Entry(path, uri, mode == _ONCE, kind, stat.st_size, stat.st_mtime, True)
            self._entries[path.name] = entry
            self._bytes += stat.st_size
        self._task = asyncio.create_task(self._run(), name="storage-uploads")

    async def stop(self, timeout_s: float) -> int:
        """Writes what it can within ``timeout_s``; the rest stays spooled for the next start.
        Returns how many objects are still pending."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self._entries and self.consecutive_failures == 0:
                    self._wake.set()
                    await asyncio.sleep(0.05)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        return len(self._entries)

    async def drained(self) -> None:
        """Returns once nothing is pending (tests and drains wait on it)."""
        while self._entries:
            self._wake.set()
            await asyncio.sleep(0.05)

    # -- writing

    async def _run(self) -> None:
        backoff = 0.0
        while True:
            if not any(e.ready for e in self._entries.values()):
                self._wake.clear()
                await self._wake.wait()
            if backoff:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff):
                        await self._wake.wait()
                self._wake.clear()
            failed = False
            down: set[tuple[str, str]] = set()
            for name, entry in [(n, e) for n, e in self._entries.items() if e.ready]:
                bucket = (entry.uri.scheme, entry.uri.bucket)
                if bucket in down:
                    continue  # that store is likely down: back off before its other objects
                if not await self._write(name, entry):
                    failed = True
                    down.add(bucket)
            if failed:
                self.consecutive_failures += 1
                backoff = min(self._max_backoff_s, 0.2 * 2 ** min(self.consecutive_failures, 8))
            else:
                self.consecutive_failures = 0
                backoff = 0.0

    async def _write(self, name: str, entry: _Entry) -> bool:
        try:
            _uri, data = await asyncio.to_thread(_read_entry, entry.path)
        except FileNotFoundError:
            self._forget(name)
            return True
        outcome = "written"
        try:
            await obstore.put_async(
                self._stores.store(entry.uri),
                entry.uri.key,
                data,
                mode="create" if entry.once else "overwrite",
            )
        except AlreadyExistsError:
            outcome = "present"
        except (BaseError, OSError, ValueError):  # obstore raises builtins for some failures
            log.warning(
                "object store write failed; retrying later",
                extra={"kind": entry.kind},
                exc_info=True,
            )
            self._hooks.on_outcome(entry.kind, "failed")
            return False
        await asyncio.to_thread(entry.path.unlink, missing_ok=True)
        self._forget(name)
        self._hooks.on_outcome(entry.kind, outcome)
        return True

    def _forget(self, name: str) -> None:
        entry = self._entries.pop(name, None)
        if entry is not None:
            self._bytes -= entry.size


def _write_atomically(path: Path, uri: BucketUri, data: bytes) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "wb") as f:
        f.write(uri.geturl().encode() + b"\n")
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
