"""SSRF: no image URL may make the service connect anywhere internal, whatever its spelling."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest
from aiohttp import web

from inference_svc.domain.errors import InspectionError, Reason
from inference_svc.domain.models import ImageRole, ImageSource
from inference_svc.egress.addresses import AddressPolicy, is_public_address
from inference_svc.egress.resolver import ForbiddenAddressError, PolicyResolver
from inference_svc.imaging.fetch import ImageFetcher
from tests.support.imaging import LoopbackServer, StaticResolver

MakeFetcher = Callable[..., ImageFetcher]


def pickup(uri: str, index: int = 0) -> ImageSource:
    return ImageSource(ImageRole.PICKUP, index, uri=uri)


async def refused(fetcher: ImageFetcher, uri: str) -> InspectionError:
    with pytest.raises(InspectionError) as info:
        await fetcher.fetch(pickup(uri, 3))
    err = info.value
    assert err.reason is Reason.IMAGE_URL_FORBIDDEN, str(err)
    assert err.metadata["image"] == "pickup_images[3]"
    assert err.message.startswith("pickup_images[3]: ")
    assert err.stage == "fetch"
    return err


INTERNAL_LITERALS = [
    # loopback, unspecified
    "https://127.0.0.1/a.jpg",
    "https://127.8.9.10/a.jpg",
    "https://0.0.0.0/a.jpg",
    "https://[::1]/a.jpg",
    "https://[::]/a.jpg",
    # private and shared ranges
    "https://10.0.0.1/a.jpg",
    "https://172.16.5.4/a.jpg",
    "https://192.168.1.1/a.jpg",
    "https://100.64.0.1/a.jpg",
    "https://[fc00::1]/a.jpg",
    "https://[fd12:3456::1]/a.jpg",
    # link-local and cloud metadata endpoints
    "https://169.254.169.254/latest/meta-data/",
    "https://169.254.170.2/v2/credentials",
    "https://100.100.100.200/latest/meta-data/",
    "https://192.0.0.192/opc/v2/instance/",
    "https://[fd00:ec2::254]/latest/meta-data/",
    "https://[fe80::1]/a.jpg",
    # IPv4 hidden inside IPv6: mapped, compatible, NAT64, 6to4
    "https://[::ffff:127.0.0.1]/a.jpg",
    "https://[::ffff:7f00:1]/a.jpg",
    "https://[0:0:0:0:0:ffff:169.254.169.254]/a.jpg",
    "https://[::ffff:8.8.8.8]/a.jpg",
    "https://[::127.0.0.1]/a.jpg",
    "https://[64:ff9b::7f00:1]/a.jpg",
    "https://[64:ff9b::a9fe:a9fe]/a.jpg",
    "https://[2002:7f00:1::1]/a.jpg",
    "https://[2002:a9fe:a9fe::]/a.jpg",
    # multicast, broadcast, reserved
    "https://224.0.0.1/a.jpg",
    "https://255.255.255.255/a.jpg",
    "https://240.0.0.1/a.jpg",
    "https://[ff02::1]/a.jpg",
]


@pytest.mark.parametrize("uri", INTERNAL_LITERALS)
async def test_internal_ip_literals_are_refused(make_fetcher: MakeFetcher, uri: str) -> None:
    # No loopback allowance here: the production policy.
    fetcher = make_fetcher(allow_http=False, allowed_networks=())
    err = await refused(fetcher, uri)
    assert "public" in err.message


NON_CANONICAL_IPV4 = [
    "https://2130706433/a.jpg",  # decimal 127.0.0.1
    "https://0177.0.0.1/a.jpg",  # octal
    "https://0x7f.0.0.1/a.jpg",  # hex octet
    "https://0x7f000001/a.jpg",  # hex integer
    "https://017700000001/a.jpg",  # octal integer
    "https://127.1/a.jpg",  # short form
    "https://127.0.1/a.jpg",
    "https://0/a.jpg",
    "https://3232235777/a.jpg",  # 192.168.1.1
    "https://2852039166/latest/meta-data/",  # 169.254.169.254
    "https://0251.0376.0251.0376/latest/",  # 169.254.169.254 in octal
    "https://127.000.000.001/a.jpg",
    "https://1.2.3.4.5/a.jpg",
    "https://example.0x10/a.jpg",
    "https://１２７.０.０.１/a.jpg",  # full-width digits, NFKC-folded to 127.0.0.1
]


@pytest.mark.parametrize("uri", NON_CANONICAL_IPV4)
async def test_numeric_host_spellings_are_refused(make_fetcher: MakeFetcher, uri: str) -> None:
    # Refused even where internal addresses are allowed: these spellings mean different hosts
    # to different parsers.
    fetcher = make_fetcher(allow_private_addresses=True)
    await refused(fetcher, uri)


CONFUSING_URLS = [
    "https://example.com\\@127.0.0.1/a.jpg",
    "https://127.0.0.1\\.example.com/a.jpg",
    "https:\\\\example.com/a.jpg",
    "https://user@example.com/a.jpg",
    "https://user:pass@example.com/a.jpg",
    "https://example.com@127.0.0.1/a.jpg",
    "https://example.com%40127.0.0.1/a.jpg",
    "https://127.0.0.1%2f.example.com/a.jpg",
    "https://example.com:80@127.0.0.1/a.jpg",
    "https://[::1]@example.com/a.jpg",
    "https://example.com/a.jpg\r\nHost: 127.0.0.1",
    "https://exam ple.com/a.jpg",
    " https://example.com/a.jpg",
    "https://example.com\t/a.jpg",
    "https:///example.com/a.jpg",
    "https:example.com/a.jpg",
    "//example.com/a.jpg",
    "example.com/a.jpg",
    "https://example.com:99999/a.jpg",
    "https://example.com:0/a.jpg",
    "https://example.com:/a.jpg",
    "https://example.com:8o/a.jpg",
    "https://[::1/a.jpg",
    "https://[fe80::1%25eth0]/a.jpg",
    "https://::1/a.jpg",
    "https://exa_mple..com/a.jpg",
    "https://-/a.jpg",
    "",
]


@pytest.mark.parametrize("uri", CONFUSING_URLS)
async def test_ambiguous_urls_are_refused(make_fetcher: MakeFetcher, uri: str) -> None:
    fetcher = make_fetcher(allow_http=False, allowed_networks=())
    await refused(fetcher, uri)


OTHER_SCHEMES = [
    "file:///etc/passwd",
    "file://localhost/etc/passwd",
    "FILE:///etc/passwd",
    "ftp://example.com/a.jpg",
    "gopher://127.0.0.1:6379/_INFO",
    "dict://127.0.0.1:11211/stat",
    "data:image/png;base64,iVBORw0KGgo=",
    "javascript:alert(1)",
    "s3://bucket/key.jpg",
    "ws://example.com/a.jpg",
    "jar:http://example.com/a.zip!/a.jpg",
    "http://example.com/a.jpg",  # plain http while https is required
]


@pytest.mark.parametrize("uri", OTHER_SCHEMES)
async def test_only_https_is_accepted(make_fetcher: MakeFetcher, uri: str) -> None:
    fetcher = make_fetcher(allow_http=False, allowed_networks=())
    err = await refused(fetcher, uri)
    assert "scheme" in err.message or "http" in err.message


async def test_name_resolving_to_private_address_is_refused_when_dialled(
    make_fetcher: MakeFetcher, server: LoopbackServer
) -> None:
    server.serve_bytes("/a.jpg", b"secret")
    dns = StaticResolver(
        {
            "intranet.test": ["10.20.30.40"],
            "metadata.test": ["169.254.169.254"],
            "rebind.test": ["127.0.0.1"],
            "mixed.test": ["10.0.0.1", "192.168.0.1", "::1"],
        }
    )
    fetcher = make_fetcher(resolver=dns, allowed_networks=())
    for host in dns.table:
        await refused(fetcher, f"http://{host}:{server.port}/a.jpg")
    # The check runs at connection time, on the resolver's answer, for every host.
    assert sorted(set(dns.lookups)) == sorted(dns.table)
    assert server.hits["/a.jpg"] == 0


async def test_resolver_check_is_repeated_for_every_connection(
    make_fetcher: MakeFetcher, server: LoopbackServer
) -> None:
    server.serve_bytes("/a.jpg", b"secret")
    dns = StaticResolver({"rebind.test": ["127.0.0.2"]})
    fetcher = make_fetcher(resolver=dns)  # allows 127.0.0.1 only
    await refused(fetcher, f"http://rebind.test:{server.port}/a.jpg")
    await refused(fetcher, f"http://rebind.test:{server.port}/a.jpg")
    assert dns.lookups == ["rebind.test", "rebind.test"]  # refusals are never cached
    assert server.hits["/a.jpg"] == 0


async def test_allowed_loopback_is_reachable_by_name(
    make_fetcher: MakeFetcher, server: LoopbackServer
) -> None:
    # Positive control for the tests above: same server and resolver, the address allowed.
    server.serve_bytes("/a.jpg", b"image-bytes")
    dns = StaticResolver({"images.test": ["127.0.0.1"]})
    fetcher = make_fetcher(resolver=dns)
    got = await fetcher.fetch(pickup(f"http://images.test:{server.port}/a.jpg"))
    assert got.data == b"image-bytes"
    assert got.fetched_uri == f"http://images.test:{server.port}/a.jpg"


async def test_localhost_name_is_refused(make_fetcher: MakeFetcher) -> None:
    # Real system resolver (hosts file): localhost and its spellings resolve to loopback.
    fetcher = make_fetcher(allow_http=False, allowed_networks=())
    for uri in ("https://localhost/a.jpg", "https://LOCALHOST./a.jpg"):
        await refused(fetcher, uri)


async def test_redirect_to_internal_addresses_is_refused(
    make_fetcher: MakeFetcher, server: LoopbackServer
) -> None:
    targets = {
        "/to-private": "http://10.0.0.1/a.jpg",
        "/to-metadata": "http://169.254.169.254/latest/meta-data/iam/",
        "/to-mapped": f"http://[::ffff:127.0.0.1]:{server.port}/a.jpg",
        "/to-loopback-alias": f"http://127.0.0.2:{server.port}/a.jpg",
        "/to-decimal": f"http://2130706433:{server.port}/a.jpg",
        "/to-name": f"http://intranet.test:{server.port}/a.jpg",
        "/to-file": "file:///etc/passwd",
        "/to-gopher": "gopher://127.0.0.1:6379/_FLUSHALL",
        "/to-userinfo": f"http://x@127.0.0.1:{server.port}/a.jpg",
        "/to-backslash": f"http://127.0.0.1:{server.port}\\@10.0.0.1/a.jpg",
    }

    def redirect_to(location: str) -> object:
        async def handler(request: web.Request) -> web.StreamResponse:
            return web.Response(status=302, headers={"Location": location})

        return handler

    for path, location in targets.items():
        server.routes[path] = redirect_to(location)  # type: ignore[assignment]
    server.serve_bytes("/a.jpg", b"secret")
    dns = StaticResolver({"intranet.test": ["10.1.1.1"]})
    fetcher = make_fetcher(resolver=dns, follow_redirects=True)
    for path in targets:
        await refused(fetcher, server.url(path))
        assert server.hits[path] == 1
    assert server.hits["/a.jpg"] == 0


def test_public_address_classification() -> None:
    public = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "64:ff9b::808:808", "2002:808:808::1"]
    internal = ["127.0.0.1", "10.1.2.3", "169.254.169.254", "::ffff:8.8.8.8", "fd00:ec2::254"]
    assert all(is_public_address(ipaddress.ip_address(a)) for a in public)
    assert not any(is_public_address(ipaddress.ip_address(a)) for a in internal)


async def test_policy_resolver_drops_internal_answers() -> None:
    dns = StaticResolver({"dual.test": ["10.0.0.9", "93.184.216.34"], "inside.test": ["10.0.0.9"]})
    resolver = PolicyResolver(AddressPolicy.build(False, ()), dns)
    answers = await resolver.resolve("dual.test", 443)
    assert [a["host"] for a in answers] == ["93.184.216.34"]
    with pytest.raises(ForbiddenAddressError):
        await resolver.resolve("inside.test", 443)
