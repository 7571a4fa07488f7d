"""Helpers for tests of image intake (and of code built on it): a loopback HTTP server, a
static DNS resolver and image factories. Nothing in the serving path imports this module."""

from __future__ import annotations

import io
import socket
import struct
import zlib
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from PIL import Image

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class LoopbackServer:
    """An aiohttp server on 127.0.0.1 whose routes a test sets; counts hits per path."""

    def __init__(self) -> None:
        self.routes: dict[str, Handler] = {}
        self.hits: defaultdict[str, int] = defaultdict(int)
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.hits[request.path] += 1
        handler = self.routes.get(request.path)
        if handler is None:
            return web.Response(status=404, text="no such route")
        return await handler(request)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def serve_bytes(self, path: str, body: bytes) -> None:
        async def handler(request: web.Request) -> web.StreamResponse:
            return web.Response(body=body, content_type="application/octet-stream")

        self.routes[path] = handler


class StaticResolver(AbstractResolver):
    """DNS stand-in: fixed answers per name, and a record of every lookup."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.lookups: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups.append(host)
        if host not in self.table:
            raise OSError(f"unknown test host {host}")
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self.table[host]
        ]

    async def close(self) -> None:
        return None


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def textured(width: int, height: int, seed: int = 0) -> Image.Image:
    """A photo-like RGB image: smooth colour fields, hard-edged shapes and mild noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(height // 32, 2), max(width // 32, 2), 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))
    pixels = base.astype(np.int16)
    for _ in range(12):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(4, max(width // 4, 5))), int(rng.integers(4, max(height // 4, 5)))
        pixels[y : y + h, x : x + w] = rng.integers(0, 256, 3)
    pixels += rng.integers(-3, 4, pixels.shape, dtype=np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def crafted_png(
    width: int, height: int, bit_depth: int = 8, colour_type: int = 2, rows: bytes = b""
) -> bytes:
    """A PNG whose header declares any size; the image data is ``rows`` (may be too short)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(rows or b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite the frame header (SOF0) of a baseline JPEG to declare another size."""
    at = data.index(b"\xff\xc0")
    return data[: at + 5] + struct.pack(">HH", height, width) + data[at + 9 :]
