"""A shared HTTP cache for reference-image downloads: RFC 9111, the part a GET of an image needs.

A returns operation asks about the same products again and again, so the vendor's catalogue
photos are downloaded from the same CDN URLs many times a day. This cache keeps those bodies
while their response headers say a shared cache may reuse them, and no longer:

- Stored: a 200 to the URL asked for (not after a redirect), whose headers allow a shared cache
  to keep it (no ``no-store``, no ``private``, no ``Vary: *``) and that can be reused at all:
  an explicit freshness lifetime (``s-maxage``, else ``max-age``, else ``Expires`` minus
  ``Date``) or a validator (``ETag``, ``Last-Modified``) to revalidate it with.
- Served without a request while fresh: its age (``Age``, and the time since ``Date`` when
  that is later, plus the time it has been kept) under its lifetime. No heuristic freshness:
  a response without an explicit lifetime, or with ``no-cache``, is revalidated on every use.
- Revalidated once stale (``If-None-Match`` / ``If-Modified-Since``): a 304 keeps the body
  and takes the 304's caching headers (RFC 9111 section 4.3.4); a 200 replaces it.

Only reference images go through it (pickup photos never repeat), bounded in bytes, least
recently used first out. The URL checks (scheme, host allowlist, internal names) run before
every lookup, so a cached body is never served for a URL the fetcher would now refuse.
"""

from __future__ import annotations

import collections
import email.utils
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

# The response fields a 304 may update and the policy reads; nothing else is kept.
CACHING_FIELDS = ("cache-control", "expires", "date", "age", "etag", "last-modified", "vary")


def directives(values: Iterable[str]) -> dict[str, str | None]:
    """Cache-Control directives by lower-case name; a value unquoted, None when absent."""
    found: dict[str, str | None] = {}
    for value in values:
        for part in value.split(","):
            name, sep, arg = part.strip().partition("=")
            name = name.strip().lower()
            if name and name not in found:
                found[name] = arg.strip().strip('"') if sep else None
    return found


def _seconds(value: str | None) -> float | None:
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return None if parsed.tzinfo is None else parsed.timestamp()


@dataclass(frozen=True)
class Freshness:
    """What a response's caching fields allow, as of the moment it was received."""

    storable: bool
    lifetime_s: float
    initial_age_s: float


def freshness(fields: Mapping[str, list[str]], received_at: float) -> Freshness:
    """RFC 9111 sections 3, 4.2.1 and 4.2.3 for a shared cache; ``received_at`` is wall time."""
    cc = directives(fields.get("cache-control", []))
    vary = ",".join(fields.get("vary", []))
    has_validator = bool(fields.get("etag") or fields.get("last-modified"))
    date = _http_date(_first(fields, "date"))
    if "s-maxage" in cc:
        lifetime = _seconds(cc["s-maxage"]) or 0.0
    elif "max-age" in cc:
        lifetime = _seconds(cc["max-age"]) or 0.0
    elif "expires" in fields:
        # An invalid Expires means already expired (section 5.3).
        expires = _http_date(_first(fields, "expires"))
        lifetime = 0.0 if expires is None else max(0.0, expires - (date or received_at))
    else:
        lifetime = 0.0
    if "no-cache" in cc:
        lifetime = 0.0
    storable = (
        "no-store" not in cc
        and "private" not in cc
        and "*" not in vary
        and (lifetime > 0 or has_validator)
    )
    age = _seconds(_first(fields, "age")) or 0.0
    apparent = max(0.0, received_at - date) if date is not None else 0.0
    return Freshness(storable, lifetime, max(age, apparent))


def _first(fields: Mapping[str, list[str]], name: str) -> str | None:
    values = fields.get(name)
    return values[0] if values else None


def caching_fields(headers: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """The caching fields of a response's headers, by lower-case name."""
    kept: dict[str, list[str]] = {}
    for name, value in headers:
        key = name.lower()
        if key in CACHING_FIELDS:
            kept.setdefault(key, []).append(value)
    return kept


@dataclass
class CachedBody:
    body: bytes
    fields: dict[str, list[str]]
    lifetime_s: float
    initial_age_s: float
    stored_at: float  # monotonic

    def fresh(self, now: float) -> bool:
        return self.initial_age_s + (now - self.stored_at) < self.lifetime_s

    def validators(self) -> dict[str, str]:
        """The conditional request's fields (RFC 9110 section 13.1)."""
        conditional: dict[str, str] = {}
        if etag := _first(self.fields, "etag"):
            conditional["If-None-Match"] = etag
        if modified := _first(self.fields, "last-modified"):
            conditional["If-Modified-Since"] = modified
        return conditional

    def same_etag(self, fields: Mapping[str, list[str]]) -> bool:
        """False when a 304 names another representation than the one kept (section 4.3.4)."""
        new = _first(fields, "etag")
        return new is None or new == _first(self.fields, "etag")


@dataclass
class CacheCounts:
    hits: int = 0  # fresh: served without a request
    revalidated: int = 0  # stale, and a 304 said it is still current
    misses: int = 0  # nothing usable kept: downloaded
    evictions: int = 0
    bytes: int = 0
    entries: int = 0


@dataclass
class ResponseCache:
    """Bodies by URL, at most ``max_bytes`` of them. Used from the event loop only."""

    max_bytes: int
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    counts: CacheCounts = field(default_factory=CacheCounts)
    _entries: collections.OrderedDict[str, CachedBody] = field(
        default_factory=collections.OrderedDict
    )

    def lookup(self, url: str) -> CachedBody | None:
        entry = self._entries.get(url)
        if entry is not None:
            self._entries.move_to_end(url)
        return entry

    def is_fresh(self, entry: CachedBody) -> bool:
        return entry.fresh(self.clock())

    def store(self, url: str, body: bytes, headers: Iterable[tuple[str, str]]) -> None:
        """Keeps a downloaded 200 when its headers allow it; drops what was kept otherwise."""
        self._keep(url, body, caching_fields(headers))

    def revalidate(self, url: str, entry: CachedBody, headers: Iterable[tuple[str, str]]) -> None:
        """A 304 for ``entry``: its caching fields replace the kept ones (section 4.3.4)."""
        self._keep(url, entry.body, {**entry.fields, **caching_fields(headers)})

    def _keep(self, url: str, body: bytes, fields: dict[str, list[str]]) -> None:
        self._drop(url)
        verdict = freshness(fields, self.wall_clock())
        if not verdict.storable or len(body) > self.max_bytes:
            return
        self._entries[url] = CachedBody(
            body, fields, verdict.lifetime_s, verdict.initial_age_s, self.clock()
        )
        self.counts.bytes += len(body)
        while self.counts.bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.counts.bytes -= len(evicted.body)
            self.counts.evictions += 1
        self.counts.entries = len(self._entries)

    def _drop(self, url: str) -> None:
        old = self._entries.pop(url, None)
        if old is not None:
            self.counts.bytes -= len(old.body)
        self.counts.entries = len(self._entries)
