"""Image download behaviour against real loopback servers: caps, timeouts, retries, redirects,
host rewrite, inline images."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from aiohttp import web

from inference_svc.domain.errors import ErrorKind, InspectionError, Reason
from inference_svc.domain.models import ImageRole, ImageSource
from inference_svc.imaging.fetch import FetchConfig, ImageFetcher
from inference_svc.imaging.fetch_errors import UNAVAILABLE_CAUSES
from tests.support.imaging import Handler, LoopbackServer, StaticResolver

MakeFetcher = Callable[..., ImageFetcher]
BODY = bytes(range(256)) * 40  # 10240 bytes


def source(uri: str | None = None, content: bytes | None = None, index: int = 0) -> ImageSource:
    return ImageSource(ImageRole.PICKUP, index, uri=uri, content=content)


def reference(uri: str, index: int = 0) -> ImageSource:
    return ImageSource(ImageRole.REFERENCE, index, uri=uri)


async def failure(fetcher: ImageFetcher, src: ImageSource, reason: Reason) -> InspectionError:
    """The error ``src`` fails with; the image host's failures are UNAVAILABLE (the caller may
    retry), everything else INVALID_ARGUMENT."""
    with pytest.raises(InspectionError) as info:
        await fetcher.fetch(src)
    err = info.value
    assert err.reason is reason, str(err)
    unavailable = reason is Reason.IMAGE_SOURCE_UNAVAILABLE
    assert err.kind is (ErrorKind.UNAVAILABLE if unavailable else ErrorKind.INVALID_ARGUMENT)
    assert (err.metadata["fetch_error"] in UNAVAILABLE_CAUSES) is unavailable
    assert err.metadata["image"] == src.field_path
    assert err.violations[0].field == src.field_path
    return err


async def test_download_returns_bytes_and_leaves_hashing_to_the_worker_thread(
    make_fetcher: MakeFetcher, server: LoopbackServer
) -> None:
    server.serve_bytes("/img.jpg", BODY)
    got = await make_fetcher().fetch(source(server.url("/img.jpg")))
    assert got.data == BODY
    # Hashing megabytes on the event loop stalls it; prepare_image hashes in its thread.
    assert got.sha256 == ""
    assert got.fetched_uri == server.url("/img.jpg")


def chunked(total: int, chunk: bytes, state: dict[str, bool]) -> Handler:
    """Streams ``total`` bytes with chunked encoding (no Content-Length)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        sent = 0
        try:
            while sent < total:
                part = chunk[: total - sent]
                await resp.write(part)
                sent += len(part)
            await resp.write_eof()
            state["completed"] = True
        except (ConnectionError, asyncio.CancelledError):
            state["completed"] = False
            raise
        return resp

    return handler


async def test_stream_over_cap_is_aborted(
    make_fetcher: MakeFetcher, server: LoopbackServer
) -> None:
    state: dict[str, bool] = {}
    # 256 MiB offered; the client must hang up after the cap instead of reading it all.
    server.routes["/endless"] = chunked(256 * 1024 * 1024, b"\xab" * (1024 * 1024), state)
    err = await failure(
        make_fetcher(max_bytes=100_000),
        source(server.url("/endless"), index=4),
        Reason.IMAGE_TOO_LARGE,
    )
    assert "100000" in err.message
    for _ in range(200):  # wait for the server side to notice the hang-up
        if "completed" in state:
            break
        await asyncio.sleep(0.05)
    assert state.get("completed") is False


@pytest.mark.parametrize(("size", "ok"), [(50_000, True), (50_001, False)])
async def test_cap_boundary_when_streaming(
    make_fetcher: MakeFetcher, server: LoopbackServer, size: int, ok: bool
) -> None:
    server.routes["/s"] = chunked(size, b"\x01" * 7000, {})
    fetcher = make_fetcher(max_bytes=50_000)
    if ok:
        assert len((await fetcher.fetch(source(server.url("/s")))).data) == size
    else:
        await failure(fetcher, source(server.url("/s")), Reason.IMAGE_TOO_LARGE)


async def test_declared_length_over_cap_is_refused_without_reading(
    make_fetcher: MakeFetcher, server: LoopbackServer
) -> None:
    server.serve_bytes("/big", b"\x00" * 300_000)
    err = await failure(
        make_fetcher(max_bytes=200_000), source(server.url("/big")), Reason.IMAGE_TOO_LARGE
    )
    assert "image is 300000 bytes, over the limit of 200000 bytes" in err.message


async def test_inline_images_are_size_checked(make_fetcher: MakeFetcher) -> None:
    fetcher = make_fetcher(max_bytes=1000)
    got = await fetcher.fetch(source(content=b"x" * 1000))
    assert got.data == b"x" * 1000
    assert got.fetched_uri == ""
    await failure(fetcher, source(content=b"x" * 1001, index=2), Reason.IMAGE_TOO_LARGE)


async def test_source_needs_exactly_one_of_uri_and_content(make_fetcher: MakeFetcher) -> None:
    fetcher = make_fetcher()
    for src in (source(), source(uri="https://a.test/x", content=b"x")):
        with pytest.raises(InspectionError) as info:
            await fetcher.fetch(src)
        assert info.value.reason is Reason.INVALID_ARGUMENT


def hanging(release: asyncio.Event, after_headers: bool) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        if after_headers:
            resp.content_length = 1000
            await resp.prepare(request)
            await resp.write(b"\x00" * 10)
        await release.wait()
        return resp

    return handler


@pytest.mark.parametrize("after_headers", [False, True], ids=["no-headers", "stalled-body"])
async def test_total_timeout(
    make_fetcher: MakeFetcher, server: LoopbackServer, after_headers: bool
) -> None:
    release = asyncio.Event()
    server.routes["/slow"] = hanging(release, after_headers)
    try:
        err = await failure(
            make_fetcher(total_timeout_s=0.3),
            source(server.url("/slow")),
            Reason.IMAGE_SOURCE_UNAVAILABLE,
        )
    finally:
        release.set()
    assert "timed out" in err.message


def flaky(failures: list[int], then: bytes) -> Handler:
    """Answers each status in ``failures`` once, in order, then ``then``."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if failures:
            return web.Response(status=failures.pop(0), text="busy")
        return web.Response(body=then)

    return handler


async def test_transient_statuses_are_retried(
    make_fetcher: MakeFetcher, server: LoopbackServer
) -> None:
    server.routes["/flaky"] = flaky([503, 429], BODY)
    got = await make_fetcher(retries=2).fetch(source(server.url("/flaky")))
    assert got.data == BODY
    assert server.hits["/flaky"] == 3


async def test_one_deadline_covers_every_attempt(
    make_fetcher: MakeFetcher, server: LoopbackServer
) -> None:
    # FETCH_TIMEOUT_S is the whole download: a hung attempt uses it up and is not followed by
    # a fresh attempt with a fresh timeout (retries would multiply the time a slot is held).
    release = asyncio.Event()
    calls: list[int] = []

    async def hangs(request: web.Request) -> web.StreamResponse:
        calls.append(1)
        await release.wait()
        return web.Response(body=BODY)

    server.routes["/hangs"] = hangs
    try:
        err = await failure(
            make_fetcher(retries=3, total_timeout_s=0.3, min_bytes_per_s=0),
            source(server.url("/hangs")),
            Reason.IMAGE_SOURCE_UNAVAILABLE,
        )
    finally:
        release.set()
    assert len(calls) == 1
    assert "timed out after 0.3 s (1 attempt(s))" in err.message
    assert err.metadata["fetch_error"] == "timeout"


async def test_retries_stop_at_the_deadline(
    make_fetcher: MakeFetcher, server: LoopbackServer
) -> None:
    # Transient failures are retried only while the deadline leaves room for the backoff.
    server.routes["/down"] = flaky([503] * 10, BODY)
    err = await failure(
        make_fetcher(retries=5, backoff_s=0.5, total_timeout_s=1.2),
        source(server.url("/down")),
        Reason.IMAGE_SOURCE_UNAVAILABLE,
    )
    # Backoffs of at least 0.5 s and 1 s: the third attempt would start after the deadline.
    assert server.hits["/down"] == 2
    assert "2 attempt(s)" in err.message and "503" in err.message


@pytest.mark.parametrize(
    ("status", "cause"),
    [(503, "http_5xx"), (502, "http_5xx"), (429, "throttled"), (408, "timeout")],
)
async def test_retries_give_up(
    make_fetcher: MakeFetcher, server: LoopbackServer, status: int, cause: str
) -> None:
    server.routes["/down"] = flaky([status] * 10, BODY)
    err = await failure(
        make_fetcher(retries=2), source(server.url("/down")), Reason.IMAGE_SOURCE_UNAVAILABLE
    )
    assert server.hits["/down"] == 3
    assert "3 attempt(s)" in err.message and str(status) in err.message
    assert err.metadata["fetch_error"] == cause
    assert err.retry_after_seconds is None  # the service's default delay applies


@pytest.mark.parametrize(("header", "expected"), [("7", 7.0), ("86400", 60.0), ("soon", None)])
async def test_a_hosts_retry_after_is_passed_on_bounded(
    make_fetcher: MakeFetcher, server: LoopbackServer, header: str, expected: float | None
) -> None:
    async def throttled(request: web.Request) -> web.StreamResponse:
        return web.Response(status=429, headers={"Retry-After": header})

    server.routes["/busy"] = throttled
    err = await failure(
        make_fetcher(retries=0), source(server.url("/busy")), Reason.IMAGE_SOURCE_UNAVAILABLE
    )
    assert err.retry_after_seconds == expected


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 500, 501])
async def test_permanent_statuses_are_not_retried(
    make_fetcher: MakeFetcher, server: LoopbackServer, status: int
) -> None:
    # A 4xx is the caller's to fix; a 500 is the host's fault (UNAVAILABLE) but rarely heals
    # within one request's deadline.
    server.routes["/nope"] = flaky([status] * 5, BODY)
    reason = Reason.IMAGE_SOURCE_UNAVAILABLE if status >= 500 else Reason.IMAGE_FETCH_FAILED
    err = await failure(make_fetcher(retries=3), source(server.url("/nope")), reason)
    assert server.hits["/nope"] == 1
    assert str(status) in err.message
    assert err.metadata["fetch_error"] == ("http_5xx" if status >= 500 else "http_4xx")


async def test_an_unresolvable_name_is_unavailable(make_fetcher: MakeFetcher) -> None:
    dns = StaticResolver({})  # answers no name, as a resolver does for a name that does not exist
    err = await failure(
        make_fetcher(resolver=dns, retries=1),
        source("http://images.example.com/a.jpg"),
        Reason.IMAGE_SOURCE_UNAVAILABLE,
    )
    assert dns.lookups == ["images.example.com"] * 2  # retried: DNS failures are often brief
    assert err.metadata["fetch_error"] == "dns"
    assert "cannot resolve images.example.com" in err.message


async def test_too_large_is_not_retried(make_fetcher: MakeFetcher, server: LoopbackServer) -> None:
    server.serve_bytes("/big", b"\x00" * 5000)
    await failure(
        make_fetcher(retries=3, max_bytes=1000), source(server.url("/big")), Reason.IMAGE_TOO_LARGE
    )
    assert server.hits["/big"] == 1


async def test_connection_refused_fails_cleanly(make_fetcher: MakeFetcher) -> None:
    closed = LoopbackServer()
    await closed.start()
    url = closed.url("/gone.jpg")
    await closed.stop()
    err = await failure(make_fetcher(retries=1), source(url), Reason.IMAGE_SOURCE_UNAVAILABLE)
    assert "2 attempt(s)" in err.message
    assert err.metadata["fetch_error"] == "connection"


async def test_query_string_is_not_echoed(
    make_fetcher: MakeFetcher, server: LoopbackServer
) -> None:
    uri = server.url("/missing.jpg?X-Amz-Signature=topsecret&X-Amz-Credential=AKIA")
    err = await failure(make_fetcher(), source(uri), Reason.IMAGE_FETCH_FAILED)
    assert "topsecret" not in err.message and "AKIA" not in err.message


def redirect(location: str, status: int = 302) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, headers={"Location": location})

    return handler


async def test_redirects_are_refused_by_default(
    make_fetcher: MakeFetcher, server: LoopbackServer
) -> None:
    server.routes["/old"] = redirect("/new")
    server.serve_bytes("/new", BODY)
    err = await failure(make_fetcher(), source(server.url("/old")), Reason.IMAGE_FETCH_FAILED)
    assert "redirect" in err.message
    assert server.hits["/new"] == 0


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirects_are_followed_when_enabled(
    make_fetcher: MakeFetcher, server: LoopbackServer, status: int
) -> None:
    server.routes["/a"] = redirect("/b", status)  # relative
    server.routes["/b"] = redirect(server.url("/c"), status)  # absolute
    server.routes["/c"] = redirect(f"//127.0.0.1:{server.port}/d", status)  # scheme-relative
    server.serve_bytes("/d", BODY)
    got = await make_fetcher(follow_redirects=True).fetch(source(server.url("/a")))
    assert got.data == BODY
    assert got.fetched_uri == server.url("/d")


async def test_redirect_chain_is_bounded(make_fetcher: MakeFetcher, server: LoopbackServer) -> None:
    server.routes["/loop"] = redirect("/loop")
    err = await failure(
        make_fetcher(follow_redirects=True, max_redirects=3),
        source(server.url("/loop")),
        Reason.IMAGE_FETCH_FAILED,
    )
    assert "more than 3 redirects" in err.message
    assert server.hits["/loop"] == 4


async def test_redirect_hops_are_checked_against_the_allowlist(
    make_fetcher: MakeFetcher, server: LoopbackServer
) -> None:
    server.routes["/a"] = redirect(f"http://elsewhere.test:{server.port}/b")
    server.serve_bytes("/b", BODY)
    dns = StaticResolver({"images.test": ["127.0.0.1"], "elsewhere.test": ["127.0.0.1"]})
    fetcher = make_fetcher(resolver=dns, follow_redirects=True, allowed_hosts=("images.test",))
    err = await failure(
        fetcher, source(f"http://images.test:{server.port}/a"), Reason.IMAGE_URL_FORBIDDEN
    )
    assert "allowlist" in err.message
    assert server.hits["/b"] == 0


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("cdn.test", True),
        ("a.img.test", True),
        ("x.y.img.test", True),
        ("img.test", False),  # "*.img.test" means subdomains only
        ("evilimg.test", False),
        ("cdn.test.evil", False),
        ("evil.test", False),
    ],
)
async def test_host_allowlist(
    make_fetcher: MakeFetcher, server: LoopbackServer, host: str, allowed: bool
) -> None:
    server.serve_bytes("/x", BODY)
    dns = StaticResolver({host: ["127.0.0.1"]})
    fetcher = make_fetcher(resolver=dns, allowed_hosts=("cdn.test", "*.img.test"))
    src = source(f"http://{host}:{server.port}/x")
    if allowed:
        assert (await fetcher.fetch(src)).data == BODY
    else:
        await failure(fetcher, src, Reason.IMAGE_URL_FORBIDDEN)
        assert dns.lookups == []  # refused before any lookup


async def test_reference_host_is_rewritten(
    make_fetcher: MakeFetcher, server: LoopbackServer
) -> None:
    async def echo_host(request: web.Request) -> web.StreamResponse:
        return web.Response(text=request.host)

    server.routes["/k/img.jpg"] = echo_host
    dns = StaticResolver({"bucket.s3.test": ["127.0.0.1"], "cdn.test": ["127.0.0.1"]})
    fetcher = make_fetcher(resolver=dns, host_rewrites={"bucket.s3.test": "cdn.test"})
    uri = f"http://bucket.s3.test:{server.port}/k/img.jpg?v=1"

    ref = await fetcher.fetch(reference(uri))
    assert ref.data.decode() == f"cdn.test:{server.port}"
    assert ref.fetched_uri == f"http://cdn.test:{server.port}/k/img.jpg?v=1"

    # Pickup images are fetched as given, as the replaced service did.
    pick = await fetcher.fetch(source(uri))
    assert pick.data.decode() == f"bucket.s3.test:{server.port}"
    assert pick.fetched_uri == uri


async def test_rewrite_target_is_subject_to_the_address_policy(
    make_fetcher: MakeFetcher, server: LoopbackServer
) -> None:
    server.serve_bytes("/x", BODY)
    dns = StaticResolver({"bucket.s3.test": ["127.0.0.1"]})
    fetcher = make_fetcher(resolver=dns, host_rewrites={"bucket.s3.test": "10.9.8.7"})
    await failure(
        fetcher, reference(f"http://bucket.s3.test:{server.port}/x"), Reason.IMAGE_URL_FORBIDDEN
    )


def test_bad_rewrite_target_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="rewrite"):
        ImageFetcher(FetchConfig(host_rewrites={"a.test": "user@b.test"}))


async def test_fetcher_reopens_after_close(
    make_fetcher: MakeFetcher, server: LoopbackServer
) -> None:
    server.serve_bytes("/x", BODY)
    fetcher = make_fetcher()
    assert (await fetcher.fetch(source(server.url("/x")))).data == BODY
    await fetcher.close()
    assert (await fetcher.fetch(source(server.url("/x")))).data == BODY


async def test_concurrent_fetches(make_fetcher: MakeFetcher, server: LoopbackServer) -> None:
    for i in range(20):
        server.serve_bytes(f"/{i}", bytes([i]) * 1000)
    fetcher = make_fetcher(concurrency=4)
    got = await asyncio.gather(
        *(fetcher.fetch(source(server.url(f"/{i}"), index=i)) for i in range(20))
    )
    assert [g.data[0] for g in got] == list(range(20))


def test_config_from_settings() -> None:
    from inference_svc.settings import InferenceSettings

    settings = InferenceSettings.model_validate(
        {
            "allowed_hosts": ["*.cdn.test"],
            "host_rewrites": {"b.s3.test": "cdn.test"},
            "fetch_retries": 5,
        }
    )
    config = FetchConfig.from_settings(settings)
    assert config.allowed_hosts == ("*.cdn.test",)
    assert config.host_rewrites == {"b.s3.test": "cdn.test"}
    assert (config.retries, config.max_bytes, config.allow_http) == (5, 10 * 1024 * 1024, False)
