"""HOST_REWRITE_ROLES: the S3-host-to-CDN rewrite applied to pickup URLs too when configured
(the seeds' CloudFront set-up), through the settings the service is built from."""

from __future__ import annotations

from aiohttp import web

from inference_svc.domain.models import ImageRole, ImageSource
from inference_svc.imaging.fetch import FetchConfig, ImageFetcher
from inference_svc.settings import InferenceSettings
from tests.support.imaging import LoopbackServer, StaticResolver


async def test_pickup_urls_are_rewritten_when_the_role_is_listed() -> None:
    server = LoopbackServer()

    async def echo_host(request: web.Request) -> web.StreamResponse:
        return web.Response(text=request.host)

    server.routes["/k/p.jpg"] = echo_host
    await server.start()
    settings = InferenceSettings.model_validate(
        {
            "allow_http": True,
            "allowed_networks": ["127.0.0.1/32"],
            "host_rewrites": {"bucket.s3.test": "cdn.test"},
            "host_rewrite_roles": ["reference", "pickup"],
        }
    )
    dns = StaticResolver({"bucket.s3.test": ["127.0.0.1"], "cdn.test": ["127.0.0.1"]})
    fetcher = ImageFetcher(FetchConfig.from_settings(settings), resolver=dns)
    try:
        uri = f"http://bucket.s3.test:{server.port}/k/p.jpg"
        pickup = await fetcher.fetch(ImageSource(ImageRole.PICKUP, 0, uri=uri))
    finally:
        await fetcher.close()
        await server.stop()
    assert pickup.data.decode() == f"cdn.test:{server.port}"
    assert pickup.fetched_uri == f"http://cdn.test:{server.port}/k/p.jpg"


def test_by_default_only_reference_urls_are_rewritten() -> None:
    config = FetchConfig.from_settings(InferenceSettings())
    assert config.host_rewrite_roles == frozenset({ImageRole.REFERENCE})
