"""A loopback HTTP image server in a process of its own, so that serving megabytes of JPEG does
not run on the inference service's event loop (in production the images come from a CDN)."""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import socket
import time
from typing import Any

from aiohttp import web

from inference_svc.priority import lower_process_priority


def _serve(images: dict[str, bytes], port: int, nice: int, cache_control: str | None) -> None:
    lower_process_priority(nice)
    etags = {name: f'"{hashlib.sha256(data).hexdigest()[:16]}"' for name, data in images.items()}

    async def handle(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        data = images.get(name)
        if data is None:
            raise web.HTTPNotFound()
        if cache_control is None:
            return web.Response(body=data, content_type="image/jpeg")
        # As a CDN answers: a lifetime, a validator, and 304 to a matching revalidation.
        headers = {"Cache-Control": cache_control, "ETag": etags[name]}
        if request.headers.get("If-None-Match") == etags[name]:
            return web.Response(status=304, headers=headers)
        return web.Response(body=data, content_type="image/jpeg", headers=headers)

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/{name}", handle)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()

    asyncio.run(main())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ImageServerProcess:
    """``with ImageServerProcess({"a.jpg": data}) as server: server.url("a.jpg")``

    ``cache_control``: sent with an ETag on every image (None: no caching headers)."""

    def __init__(
        self, images: dict[str, bytes], nice: int = 0, cache_control: str | None = None
    ) -> None:
        self.port = _free_port()
        ctx = multiprocessing.get_context("spawn")
        self._process: Any = ctx.Process(
            target=_serve, args=(images, self.port, nice, cache_control), daemon=True
        )

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def start(self, timeout_s: float = 60.0) -> None:
        self._process.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self._process.is_alive():
                raise RuntimeError("image server process exited")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("image server did not start")

    def stop(self) -> None:
        if self._process.is_alive():
            self._process.terminate()
        self._process.join(10)

    def __enter__(self) -> ImageServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
