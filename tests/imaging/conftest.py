"""Fixtures for the image intake tests. Nothing leaves 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest_asyncio
from aiohttp.abc import AbstractResolver

from inference_svc.imaging.fetch import FetchConfig, ImageFetcher
from tests.support.imaging import LoopbackServer


@pytest_asyncio.fixture
async def server() -> AsyncIterator[LoopbackServer]:
    srv = LoopbackServer()
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


def loopback_config(**overrides: Any) -> FetchConfig:
    """Plain http to 127.0.0.1 only (not the rest of 127/8, nor any other internal range)."""
    values: dict[str, Any] = {
        "allow_http": True,
        "allowed_networks": ("127.0.0.1/32",),
        "retries": 0,
        "backoff_s": 0.0,
        "total_timeout_s": 5.0,
        "connect_timeout_s": 2.0,
        "max_bytes": 1_000_000,
    }
    values.update(overrides)
    return FetchConfig(**values)


MakeFetcher = Callable[..., ImageFetcher]


@pytest_asyncio.fixture
async def make_fetcher() -> AsyncIterator[MakeFetcher]:
    """make_fetcher(resolver=None, **config overrides) -> a fetcher closed after the test."""
    made: list[ImageFetcher] = []

    def make(resolver: AbstractResolver | None = None, **overrides: Any) -> ImageFetcher:
        fetcher = ImageFetcher(loopback_config(**overrides), resolver=resolver)
        made.append(fetcher)
        return fetcher

    try:
        yield make
    finally:
        for fetcher in made:
            await fetcher.close()
