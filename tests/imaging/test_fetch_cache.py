"""The reference-image HTTP cache (imaging/http_cache.py) against a real loopback server: what
its caching headers allow is reused, nothing past that, and every conditional request is seen
by the server."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from inference_svc.domain.errors import InspectionError, Reason
from inference_svc.domain.models import ImageRole, ImageSource
from inference_svc.imaging.fetch import ImageFetcher
from inference_svc.imaging.fetch_cache_metrics import FetchCacheCollector
from inference_svc.imaging.http_cache import directives, freshness
from tests.support.imaging import LoopbackServer

MakeFetcher = Callable[..., ImageFetcher]
BODY = b"catalogue photo " * 64


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reference(uri: str) -> ImageSource:
    return ImageSource(ImageRole.REFERENCE, 0, uri=uri)


def pickup(uri: str) -> ImageSource:
    return ImageSource(ImageRole.PICKUP, 0, uri=uri)


class Origin:
    """One path of the loopback server with settable body, ETag and caching headers; records the
    conditional fields of each request and answers 304 when the ETag matches."""

    def __init__(self, server: LoopbackServer, path: str = "/cat.jpg") -> None:
        self.server = server
        self.path = path
        self.body = BODY
        self.etag: str | None = None
        self.headers: dict[str, str] = {}
        self.not_modified_headers: dict[str, str] | None = None
        self.conditionals: list[dict[str, str]] = []
        server.routes[path] = self.handle

    async def handle(self, request: web.Request) -> web.StreamResponse:
        asked = {
            k: v for k, v in request.headers.items() if k in ("If-None-Match", "If-Modified-Since")
        }
        self.conditionals.append(asked)
        headers = dict(self.headers)
        if self.etag is not None:
            headers["ETag"] = self.etag
            if asked.get("If-None-Match") == self.etag:
                extra = self.not_modified_headers if self.not_modified_headers is not None else {}
                return web.Response(status=304, headers={**headers, **extra})
        return web.Response(body=self.body, headers=headers, content_type="image/jpeg")

    @property
    def url(self) -> str:
        return self.server.url(self.path)

    @property
    def hits(self) -> int:
        return self.server.hits[self.path]


def cached_fetcher(make_fetcher: MakeFetcher, clock: Clock, **overrides: object) -> ImageFetcher:
    fetcher = make_fetcher(cache_bytes=1 << 20, **overrides)
    assert fetcher.cache is not None
    fetcher.cache.clock = clock
    return fetcher


async def test_a_fresh_reference_is_served_without_a_request(
    make_fetcher: MakeFetcher, server: LoopbackServer
) -> None:
    origin = Origin(server)
    origin.headers = {"Cache-Control": "public, max-age=60"}
    clock = Clock()
    fetcher = cached_fetcher(make_fetcher, clock)
    first = await fetcher.fetch(reference(origin.url))
    clock.now += 59
    second = await fetcher.fetch(reference(origin.url))
    assert first.data == second.data == BODY
    assert second.fetched_uri == origin.url
    assert origin.hits == 1
    assert fetcher.cache is not None
    assert (fetcher.cache.counts.misses, fetcher.cache.counts.hits) == (1, 1)
    assert fetcher.cache.counts.bytes == len(BODY)


async def test_past_its_lifetime_a_reference_is_revalidated_and_a_304_keeps_the_body(
    make_fetcher: MakeFetcher, server: LoopbackServer
) -> None:
    origin = Origin(server)
    origin.etag = '"v1"'
    origin.headers = {"Cache-Control": "max-age=60"}
    clock = Clock()
    fetcher = cached_fetcher(make_fetcher, clock)
    await fetcher.fetch(reference(origin.url))
    clock.now += 61
    origin.body = b"the server would send this on a full download"
    got = await fetcher.fetch(reference(origin.url))
    assert got.data == BODY
    assert origin.conditionals == [{}, {"If-None-Match": '"v1"'}]
    # The 304 carried max-age=60 again: fresh for another minute.
    clock.now += 30
    await fetcher.fetch(reference(origin.url))
    assert origin.hits == 2
    assert fetcher.cache is not None
    assert fetcher.cache.counts.revalidated == 1
    assert fetcher.cache.counts.hits == 1


async def test_a_changed_image_replaces_the_kept_one(
    make_fetcher: MakeFetcher, server: LoopbackServer
) -> None:
    origin = Origin(server)
    origin.etag = '"v1"'
    origin.headers = {"Cache-Control": "max-age=10"}
    clock = Clock()
    fetcher = cached_fetcher(make_fetcher, clock)
    await fetcher.fetch(reference(origin.url))
    clock.now += 11
    origin.etag, origin.body = '"v2"', b"a new catalogue photo"
    got = await fetcher.fetch(reference(origin.url))
    assert got.data == b"a new catalogue photo"
    assert origin.conditionals[-1] == {"If-None-Match": '"v1"'}
    clock.now += 5
    assert (await fetcher.fetch(reference(origin.url))).data == b"a new catalogue photo"
    assert origin.hits == 2


async def test_a_304_naming_another_representation_is_fetched_again_in_full(
    make_fetcher: MakeFetcher, server: LoopbackServer
) -> None:
    origin = Origin(server)
    origin.etag = '"v1"'
    origin.headers = {"Cache-Control": "no-cache"}
    clock = Clock()
    fetcher = cached_fetcher(make_fetcher, clock)
    await fetcher.fetch(reference(origin.url))
    # A broken origin: matches the old validator but says the current one is v2.
    origin.not_modified_headers = {"ETag": '"v2"'}
    origin.body = b"v2 body"
    got = await fetcher.fetch(reference(origin.url))
    assert got.data == b"v2 body"
    assert origin.conditionals[1:] == [{"If-None-Match": '"v1"'}, {}]


@pytest.mark.parametrize(
    "headers",
    [
        {"Cache-Control": "no-store, max-age=600"},
        {"Cache-Control": "private, max-age=600"},
        {"Cache-Control": "max-age=600", "Vary": "*"},
        {},  # neither a lifetime nor a validator: nothing to reuse it with
        {"Cache-Control": "max-age=0"},
        {"Expires": "0"},  # invalid: already expired
    ],
)
async def test_responses_a_shared_cache_may_not_reuse_are_downloaded_every_time(
    make_fetcher: MakeFetcher, server: LoopbackServer, headers: dict[str, str]
) -> None:
    origin = Origin(server)
    origin.headers = headers
    fetcher = cached_fetcher(make_fetcher, Clock())
    for _ in range(3):
        assert (await fetcher.fetch(reference(origin.url))).data == BODY
    assert origin.hits == 3
    assert origin.conditionals == [{}, {}, {}]
    assert fetcher.cache is not None
    assert fetcher.cache.counts.entries == 0


async def test_no_cache_revalidates_on_every_use(
    make_fetcher: MakeFetcher, server: LoopbackServer
) -> None:
    origin = Origin(server)
    origin.headers = {
        "Cache-Control": "no-cache, max-age=600",
        "Last-Modified": "Tue, 01 Dec 2026 10:00:00 GMT",
    }
    origin.etag = '"v1"'
    fetcher = cached_fetcher(make_fetcher, Clock())
    for _ in range(3):
        assert (await fetcher.fetch(reference(origin.url))).data == BODY
    assert (
        origin.conditionals[1:]
        == [{"If-None-Match": '"v1"', "If-Modified-Since": "Tue, 01 Dec 2026 10:00:00 GMT"}] * 2
    )
    assert fetcher.cache is not None
    assert fetcher.cache.counts.revalidated == 2


async def test_the_age_an_upstream_cache_reports_counts_against_the_lifetime(
    make_fetcher: MakeFetcher, server: LoopbackServer
) -> None:
    origin = Origin(server)
    origin.headers = {"Cache-Control": "max-age=60", "Age": "50"}
    clock = Clock()
    fetcher = cached_fetcher(make_fetcher, clock)
    await fetcher.fetch(reference(origin.url))
    clock.now += 9
    await fetcher.fetch(reference(origin.url))
    assert origin.hits == 1
    clock.now += 2  # 50 + 11 s old: stale, and no validator to revalidate with
    await fetcher.fetch(reference(origin.url))
    assert origin.hits == 2


async def test_expires_and_s_maxage_give_the_lifetime(
    make_fetcher: MakeFetcher, server: LoopbackServer
) -> None:
    expiring = Origin(server, "/expires.jpg")
    now = time.time()
    expiring.headers = {
        "Date": email.utils.formatdate(now, usegmt=True),
        "Expires": email.utils.formatdate(now + 120, usegmt=True),
    }
    shared = Origin(server, "/shared.jpg")
    shared.headers = {"Cache-Control": "max-age=0, s-maxage=120"}
    clock = Clock()
    fetcher = cached_fetcher(make_fetcher, clock)
    for origin in (expiring, shared):
        await fetcher.fetch(reference(origin.url))
        clock.now += 60
        await fetcher.fetch(reference(origin.url))
        assert origin.hits == 1, origin.path
        clock.now += 70
        await fetcher.fetch(reference(origin.url))
        assert origin.hits == 2, origin.path


async def test_pickup_photos_are_never_kept(
    make_fetcher: MakeFetcher, server: LoopbackServer
) -> None:
    origin = Origin(server)
    origin.headers = {"Cache-Control": "max-age=600"}
    fetcher = cached_fetcher(make_fetcher, Clock())
    await fetcher.fetch(pickup(origin.url))
    await fetcher.fetch(pickup(origin.url))
    assert origin.hits == 2
    assert fetcher.cache is not None
    assert fetcher.cache.counts.entries == 0


async def test_a_response_after_a_redirect_is_not_kept_under_the_first_url(
    make_fetcher: MakeFetcher, server: LoopbackServer
) -> None:
    origin = Origin(server, "/final.jpg")
    origin.headers = {"Cache-Control": "max-age=600"}

    async def moved(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/final.jpg")

    server.routes["/moved.jpg"] = moved
    fetcher = cached_fetcher(make_fetcher, Clock(), follow_redirects=True)
    await fetcher.fetch(reference(server.url("/moved.jpg")))
    await fetcher.fetch(reference(server.url("/moved.jpg")))
    assert server.hits["/moved.jpg"] == 2
    assert origin.hits == 2


async def test_the_byte_bound_evicts_the_least_recently_used(
    make_fetcher: MakeFetcher, server: LoopbackServer
) -> None:
    origins = [Origin(server, f"/{name}.jpg") for name in "abc"]
    for origin in origins:
        origin.headers = {"Cache-Control": "max-age=600"}
    fetcher = make_fetcher(cache_bytes=2 * len(BODY) + 10)
    a, b, c = (reference(o.url) for o in origins)
    for src in (a, b, a, c):  # c pushes out b, the least recently used
        await fetcher.fetch(src)
    await fetcher.fetch(a)
    await fetcher.fetch(b)
    assert [o.hits for o in origins] == [1, 2, 1]
    assert fetcher.cache is not None
    assert fetcher.cache.counts.evictions == 2  # b for c, then c for b
    assert fetcher.cache.counts.bytes == 2 * len(BODY)


async def test_cache_bytes_zero_turns_it_off(
    make_fetcher: MakeFetcher, server: LoopbackServer
) -> None:
    origin = Origin(server)
    origin.headers = {"Cache-Control": "max-age=600"}
    fetcher = make_fetcher(cache_bytes=0)
    assert fetcher.cache is None
    await fetcher.fetch(reference(origin.url))
    await fetcher.fetch(reference(origin.url))
    assert origin.hits == 2


async def test_a_304_without_a_conditional_request_is_a_fetch_failure(
    make_fetcher: MakeFetcher, server: LoopbackServer
) -> None:
    async def not_modified(request: web.Request) -> web.StreamResponse:
        return web.Response(status=304)

    server.routes["/odd.jpg"] = not_modified
    with pytest.raises(InspectionError) as info:
        await make_fetcher().fetch(reference(server.url("/odd.jpg")))
    assert info.value.reason is Reason.IMAGE_FETCH_FAILED


def test_directives_and_freshness_parse_the_header_forms() -> None:
    assert directives(['public, max-age="30"', "S-MAXAGE=5, no-cache"]) == {
        "public": None,
        "max-age": "30",
        "s-maxage": "5",
        "no-cache": None,
    }
    received = 1_800_000_000.0
    dated = {"date": [email.utils.formatdate(received - 20, usegmt=True)]}
    verdict = freshness({**dated, "cache-control": ["max-age=100"], "age": ["5"]}, received)
    assert verdict.storable and verdict.lifetime_s == 100
    assert verdict.initial_age_s == pytest.approx(20)  # Date says 20 s, Age only 5
    assert not freshness({"cache-control": ["max-age=abc"]}, received).storable
    assert freshness({"etag": ['"x"']}, received).storable  # revalidated on every use


async def test_the_metrics_read_the_cache_counts_when_scraped(
    make_fetcher: MakeFetcher, server: LoopbackServer
) -> None:
    origin = Origin(server)
    origin.headers = {"Cache-Control": "max-age=600"}
    fetcher = cached_fetcher(make_fetcher, Clock())
    assert fetcher.cache is not None
    registry = CollectorRegistry()
    registry.register(FetchCacheCollector(fetcher.cache))
    for _ in range(3):
        await fetcher.fetch(reference(origin.url))
    lookups = "rpi_inference_fetch_cache_lookups_total"
    assert registry.get_sample_value(lookups, {"result": "hit"}) == 2
    assert registry.get_sample_value(lookups, {"result": "miss"}) == 1
    assert registry.get_sample_value(lookups, {"result": "revalidated"}) == 0
    assert registry.get_sample_value("rpi_inference_fetch_cache_bytes") == len(BODY)
