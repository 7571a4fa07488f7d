"""Issue 18's intake findings, each reproduced first: metadata host names, port-blind test-host
allowances, slow bodies, decode amplification and inconsistent size errors."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio
from aiohttp import web

from inference_svc.domain.errors import InspectionError, Reason
from inference_svc.domain.models import FetchedImage, ImageRole, ImageSource
from inference_svc.egress.addresses import Allowance
from inference_svc.imaging.decode import PixelBudget, header_dimensions, probe_image
from inference_svc.imaging.fetch import FetchConfig, ImageFetcher
from inference_svc.settings import InferenceSettings
from tests.support.imaging import (
    Handler,
    LoopbackServer,
    StaticResolver,
    crafted_png,
    encode,
    png_chunk,
    textured,
)

MakeFetcher = Callable[..., ImageFetcher]
PUBLIC = "93.184.216.34"  # what a (hostile or misconfigured) resolver would answer


def pickup(uri: str | None = None, content: bytes | None = None, index: int = 0) -> ImageSource:
    return ImageSource(ImageRole.PICKUP, index, uri=uri, content=content)


async def refusal(fetcher: ImageFetcher, src: ImageSource, reason: Reason) -> InspectionError:
    with pytest.raises(InspectionError) as info:
        await fetcher.fetch(src)
    assert info.value.reason is reason, str(info.value)
    return info.value


# -- metadata and other internal names (item 3)

INTERNAL_NAMES = [
    "metadata.google.internal",
    "METADATA.GOOGLE.INTERNAL.",
    "metadata",
    "instance-data",
    "kubernetes.default.svc.cluster.internal",
    "printer.local",
    "db.localhost",
]


@pytest.mark.parametrize("name", INTERNAL_NAMES)
async def test_internal_names_are_refused_before_any_lookup(
    make_fetcher: MakeFetcher, name: str
) -> None:
    canonical = name.lower().rstrip(".")
    dns = StaticResolver({canonical: [PUBLIC]})
    fetcher = make_fetcher(resolver=dns, allow_http=False, allowed_networks=(), retries=2)
    err = await refusal(
        fetcher, pickup(f"https://{name}/computeMetadata/v1/"), Reason.IMAGE_URL_FORBIDDEN
    )
    assert dns.lookups == []  # refused by name: the resolver's answer never mattered
    assert err.metadata["fetch_error"] == "forbidden"  # not a retryable fetch failure
    assert "internal name" in err.message


async def test_redirect_to_an_internal_name_is_refused(
    make_fetcher: MakeFetcher, server: LoopbackServer
) -> None:
    async def to_metadata(request: web.Request) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": "http://metadata.google.internal/"})

    server.routes["/r"] = to_metadata
    dns = StaticResolver({"metadata.google.internal": ["127.0.0.1"]})
    fetcher = make_fetcher(resolver=dns, follow_redirects=True)
    await refusal(fetcher, pickup(server.url("/r")), Reason.IMAGE_URL_FORBIDDEN)
    assert dns.lookups == []


async def test_an_allowlisted_internal_name_is_looked_up(
    make_fetcher: MakeFetcher, server: LoopbackServer
) -> None:
    # Explicitly allowed by the operator (the host allowlist): resolved and fetched as usual.
    server.serve_bytes("/a.jpg", b"pixels")
    dns = StaticResolver({"images.corp.internal": ["127.0.0.1"]})
    fetcher = make_fetcher(resolver=dns, allowed_hosts=("*.corp.internal",))
    got = await fetcher.fetch(pickup(f"http://images.corp.internal:{server.port}/a.jpg"))
    assert got.data == b"pixels"
    assert dns.lookups == ["images.corp.internal"]


# -- test-host allowances are host:port precise (item 7)


def test_allowance_syntax() -> None:
    assert Allowance.parse("127.0.0.1/32").port is None
    assert Allowance.parse("127.0.0.1:8080").port == 8080
    assert Allowance.parse("10.0.0.0/8:443").port == 443
    assert Allowance.parse("[::1]:8443").port == 8443
    assert Allowance.parse("::1/128").port is None
    for bad in ("127.0.0.1:", "127.0.0.1:99999", "[::1]", "[::1]8080", "127.0.0.1:http"):
        with pytest.raises(ValueError, match="allowed network"):
            Allowance.parse(bad)


@pytest_asyncio.fixture
async def other_server() -> AsyncIterator[LoopbackServer]:
    srv = LoopbackServer()
    await srv.start()
    srv.serve_bytes("/secret", b"another service")
    yield srv
    await srv.stop()


def redirect_to(server: LoopbackServer, path: str, location: str) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": location})

    server.routes[path] = handler


async def test_allowance_with_a_port_admits_that_port_only(
    make_fetcher: MakeFetcher, server: LoopbackServer, other_server: LoopbackServer
) -> None:
    server.serve_bytes("/a.jpg", b"pixels")
    fetcher = make_fetcher(allowed_networks=(f"127.0.0.1:{server.port}",), follow_redirects=True)
    assert (await fetcher.fetch(pickup(server.url("/a.jpg")))).data == b"pixels"
    await refusal(fetcher, pickup(other_server.url("/secret")), Reason.IMAGE_URL_FORBIDDEN)
    redirect_to(server, "/hop", other_server.url("/secret"))
    await refusal(fetcher, pickup(server.url("/hop")), Reason.IMAGE_URL_FORBIDDEN)
    assert other_server.hits["/secret"] == 0


@pytest.mark.parametrize("by_name", [False, True], ids=["literal", "name"])
async def test_redirect_to_another_port_of_an_allowed_network_is_refused(
    make_fetcher: MakeFetcher,
    server: LoopbackServer,
    other_server: LoopbackServer,
    by_name: bool,
) -> None:
    # The finding: ALLOWED_NETWORKS=["127.0.0.1/32"] let a redirect reach any loopback port.
    host = "svc.test" if by_name else "127.0.0.1"
    dns = StaticResolver({"svc.test": ["127.0.0.1"]})
    fetcher = make_fetcher(resolver=dns, follow_redirects=True)  # allows 127.0.0.1/32
    redirect_to(server, "/hop", other_server.url("/secret", host=host))
    err = await refusal(fetcher, pickup(server.url("/hop")), Reason.IMAGE_URL_FORBIDDEN)
    assert "not a public address" in err.message
    assert other_server.hits["/secret"] == 0
    # A redirect that keeps the port is followed; the caller's own URL may name any port.
    server.serve_bytes("/a.jpg", b"pixels")
    redirect_to(server, "/same", server.url("/a.jpg", host=host))
    assert (await fetcher.fetch(pickup(server.url("/same")))).data == b"pixels"
    assert (await fetcher.fetch(pickup(other_server.url("/secret")))).data == b"another service"


# -- one deadline, and a floor under the transfer rate (item 6)


def trickle(sent: list[int], delay_s: float = 1.0) -> Handler:
    """One byte every ``delay_s`` of a declared 1000-byte body; ``sent`` counts the bytes."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = 1000
        await resp.prepare(request)
        for _ in range(1000):
            await resp.write(b"\x00")
            sent.append(1)
            await asyncio.sleep(delay_s)
        return resp

    return handler


async def test_a_one_byte_per_second_body_is_abandoned_early(
    make_fetcher: MakeFetcher, server: LoopbackServer
) -> None:
    sent: list[int] = []
    server.routes["/slow"] = trickle(sent)
    fetcher = make_fetcher(min_bytes_per_s=100, rate_grace_s=0.5, total_timeout_s=60.0, retries=2)
    err = await refusal(fetcher, pickup(server.url("/slow")), Reason.IMAGE_SOURCE_UNAVAILABLE)
    # Abandoned by the rate floor (its own reason), long before the 60 s deadline: the
    # server got to send a byte or two, and the download was not retried.
    assert "slower than 100 bytes/s" in err.message
    assert err.metadata["fetch_error"] == "timeout"
    assert server.hits["/slow"] == 1
    assert len(sent) <= 3


async def test_no_response_at_all_is_abandoned_after_the_grace(
    make_fetcher: MakeFetcher, server: LoopbackServer
) -> None:
    release = asyncio.Event()

    async def silent(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response(body=b"late")

    server.routes["/silent"] = silent
    fetcher = make_fetcher(min_bytes_per_s=100, rate_grace_s=0.3, total_timeout_s=60.0)
    try:
        err = await refusal(fetcher, pickup(server.url("/silent")), Reason.IMAGE_SOURCE_UNAVAILABLE)
    finally:
        release.set()
    assert "(0 bytes received)" in err.message
    assert server.hits["/silent"] == 1


async def test_a_slow_start_that_catches_up_is_kept(
    make_fetcher: MakeFetcher, server: LoopbackServer
) -> None:
    # The floor is an average from the start: a late first byte followed by the rest at
    # speed stays above it.
    async def late(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.2)
        return web.Response(body=b"\x01" * 50_000)

    server.routes["/late"] = late
    fetcher = make_fetcher(min_bytes_per_s=1000, rate_grace_s=0.5)
    assert len((await fetcher.fetch(pickup(server.url("/late")))).data) == 50_000


def test_settings_reach_the_fetch_config() -> None:
    config = FetchConfig.from_settings(
        InferenceSettings(fetch_min_bytes_per_s=123, max_request_pixels=456, max_image_pixels=789)  # type: ignore[call-arg]
    )
    assert (config.min_bytes_per_s, config.max_request_pixels, config.max_image_pixels) == (
        123,
        456,
        789,
    )


# -- the same problem, the same answer (item 9)


async def test_oversized_inline_and_downloaded_images_are_reported_alike(
    make_fetcher: MakeFetcher, server: LoopbackServer
) -> None:
    server.serve_bytes("/big", b"\x00" * 2000)
    fetcher = make_fetcher(max_bytes=1000)
    inline = await refusal(fetcher, pickup(content=b"\x00" * 2000), Reason.IMAGE_TOO_LARGE)
    download = await refusal(fetcher, pickup(server.url("/big")), Reason.IMAGE_TOO_LARGE)
    assert inline.kind is download.kind
    assert inline.violations == download.violations
    assert [v.field for v in inline.violations] == ["pickup_images[0]"]
    assert inline.message == download.message
    assert inline.message == "pickup_images[0]: image is 2000 bytes, over the limit of 1000 bytes"


async def test_transport_failures_are_described_without_class_names(
    make_fetcher: MakeFetcher,
) -> None:
    closed = LoopbackServer()
    await closed.start()
    url = closed.url("/gone.jpg")
    await closed.stop()
    err = await refusal(make_fetcher(), pickup(url), Reason.IMAGE_SOURCE_UNAVAILABLE)
    assert "cannot connect" in err.message
    assert "Error" not in err.message and "(" + "Client" not in err.message


# -- decode cost: a pixel budget per request (item 5)


def fetched(data: bytes, index: int = 0) -> FetchedImage:
    return FetchedImage(source=pickup(content=data, index=index), data=data)


@pytest.mark.parametrize(
    ("fmt", "params"),
    [
        ("PNG", {}),
        ("WEBP", {"lossless": False}),
        ("WEBP", {"lossless": True}),
    ],
    ids=["png", "webp-lossy", "webp-lossless"],
)
def test_header_dimensions_agree_with_pillow(fmt: str, params: dict[str, object]) -> None:
    for size in ((1, 1), (37, 23), (640, 481), (2000, 3)):
        data = encode(textured(*size), fmt, **params)
        assert header_dimensions(data) == size
        assert probe_image(data, "f", 10**9).width == size[0]


def test_header_dimensions_of_extended_webp() -> None:
    rgba = textured(300, 200).convert("RGBA")
    assert header_dimensions(encode(rgba, "WEBP")) == (300, 200)  # VP8X (alpha)
    frames = [textured(120, 80, seed=i) for i in range(3)]
    animated = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:])
    assert header_dimensions(animated) == (120, 80)
    assert header_dimensions(encode(textured(50, 40), "JPEG")) == (50, 40)


def test_a_png_whose_decoder_would_read_another_size_is_refused() -> None:
    # A second IHDR: the budget is charged from the first, Pillow would use the second.
    data = crafted_png(10, 10)
    ihdr2 = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 9000, 7000, 8, 2, 0, 0, 0))
    data = data[:33] + ihdr2 + data[33:]
    assert header_dimensions(data) == (10, 10)
    with pytest.raises(InspectionError) as info:
        probe_image(data, "pickup_images[0]", 10**9)
    assert info.value.reason in (Reason.IMAGE_UNDECODABLE, Reason.IMAGE_TOO_LARGE)


def test_budget_counts_full_size_formats_and_refuses_before_the_decode() -> None:
    budget = PixelBudget(request_limit=100_000_000, image_limit=64_000_000)
    png = crafted_png(7900, 7900)  # header only: charging never decodes
    budget.charge(fetched(png, 0))
    assert budget.used == 7900 * 7900
    with pytest.raises(InspectionError) as info:
        budget.charge(fetched(png, 1))
    err = info.value
    assert err.reason is Reason.IMAGE_TOO_LARGE
    assert [v.field for v in err.violations] == ["pickup_images[1]"]
    assert "over the limit of 100000000 pixels per request" in err.message
    assert budget.used == 7900 * 7900  # a refused image is not counted
    # JPEGs decode reduced (draft mode) and do not count; the per-image limit still applies.
    budget.charge(fetched(encode(textured(64, 64), "JPEG"), 2))
    assert budget.used == 7900 * 7900
    with pytest.raises(InspectionError) as info:
        PixelBudget(10**12, 1000).charge(fetched(crafted_png(100, 11)))
    assert "over the limit of 1000 pixels" in info.value.message


def test_budget_from_the_fetcher_config() -> None:
    fetcher = ImageFetcher(FetchConfig(max_request_pixels=5, max_image_pixels=7))
    budget = fetcher.pixel_budget()
    assert (budget.request_limit, budget.image_limit, budget.used) == (5, 7, 0)
    assert fetcher.pixel_budget() is not budget  # one per request
