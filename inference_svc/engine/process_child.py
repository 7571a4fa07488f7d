"""The engine process: an in-process engine driven by :mod:`.messages` over a pipe.

One thread reads the pipe (and takes shared-memory slabs as they are offered); the event loop
runs one task per call and is the only writer to the pipe. See :mod:`.process_client`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import pickle
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection

from inference_svc.priority import lower_process_priority

from .api import GenerationRequest
from .config import EngineConfig
from .local import LocalEngine
from .messages import (
    Cancel,
    Cancelled,
    Done,
    Errored,
    Failed,
    Generate,
    Queued,
    Ready,
    Released,
    RemoteModel,
    SlabOffer,
    Started,
    Stop,
    ToEngine,
    Tokens,
)
from .pixel_slabs import SlabReceiver

logger = logging.getLogger(__name__)

# The engine process's engine for a configuration (a module-level callable: it is pickled).
EngineFactory = Callable[[EngineConfig], LocalEngine]


class _PipeListener:
    def __init__(self, call_id: int, conn: Connection, wants_text: bool) -> None:
        self._id = call_id
        self._conn = conn
        self.wants_text = wants_text

    def on_queued(self, position: int) -> None:
        self._conn.send(Queued(self._id, position))

    def on_started(self) -> None:
        self._conn.send(Started(self._id))

    def on_tokens(self, tokens_generated: int, text_so_far: str) -> None:
        self._conn.send(Tokens(self._id, tokens_generated, text_so_far))


def child_main(
    config: EngineConfig, conn: Connection, log_level: str, factory: EngineFactory
) -> None:
    """Entry point of the engine process."""
    from svc_common.logging import configure_logging  # noqa: PLC0415 - child process only

    # The parent owns the drain: a terminal's Ctrl-C or a pod's SIGTERM reaches the process
    # group, and the child must keep generating until the parent says stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging("inference-engine", log_level)
    lower_process_priority(config.worker_nice)
    try:
        asyncio.run(_serve(factory(config), conn))
    finally:
        conn.close()


def _portable(exc: Exception) -> Exception:
    """The exception itself when it survives pickling (the parent raises the same type),
    else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(exc))  # noqa: S301 - our own bytes, a round-trip probe
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


async def _serve(engine: LocalEngine, conn: Connection) -> None:
    try:
        await engine.start()
    except Exception as exc:
        logger.exception("engine failed to start")
        conn.send(Failed(f"{type(exc).__name__}: {exc}"))
        return
    tokenizer_dir = tempfile.mkdtemp(prefix="rpi-tokenizer-")
    loaded = engine.loaded
    await asyncio.to_thread(loaded.tokenizer.save_pretrained, tokenizer_dir)
    info = engine.info
    model = RemoteModel(
        name=info.model_name,
        revision=info.model_revision,
        untrained=info.untrained,
        tokens_per_image_tile=loaded.tokens_per_tile,
        image_size=loaded.image_size,
        runtime=loaded.runtime,
        runner=info.runner,
        tokenizer_dir=tokenizer_dir,
        load_path=info.model_load_path,
    )
    conn.send(Ready(model, engine.stats()))
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[ToEngine | None] = asyncio.Queue()
    threading.Thread(
        target=_read, args=(conn, loop, inbox), name="engine-inbox", daemon=True
    ).start()
    tasks: dict[int, asyncio.Task[None]] = {}

    async def run(call_id: int, request: GenerationRequest, wants_text: bool) -> None:
        listener = _PipeListener(call_id, conn, wants_text)
        try:
            result = await engine.generate(request, listener)
        except asyncio.CancelledError:
            conn.send(Cancelled(call_id, engine.stats()))
        except Exception as exc:
            conn.send(Errored(call_id, _portable(exc), engine.stats()))
        else:
            conn.send(Done(call_id, result, engine.stats()))
        finally:
            tasks.pop(call_id, None)

    while True:
        message = await inbox.get()
        if message is None or isinstance(message, Stop):
            break
        if isinstance(message, Generate):
            tasks[message.call_id] = asyncio.create_task(
                run(message.call_id, message.request, message.wants_text)
            )
        elif isinstance(message, Cancel) and message.call_id in tasks:
            tasks[message.call_id].cancel()
    # The parent has drained its calls before it says stop (or it is gone): whatever still
    # runs here has no one waiting, so its rows leave at the next step.
    for task in list(tasks.values()):
        task.cancel()
    await engine.stop()
    if tasks:
        await asyncio.gather(*tasks.values(), return_exceptions=True)
    shutil.rmtree(tokenizer_dir, ignore_errors=True)


def _read(
    conn: Connection, loop: asyncio.AbstractEventLoop, inbox: asyncio.Queue[ToEngine | None]
) -> None:
    """The pipe reader: slab offers are taken here, a generate's tiles are copied out of
    their slab (which is given back from the event loop, the one writer to the pipe)."""
    slabs = SlabReceiver()
    while True:
        message: ToEngine | None
        try:
            message = conn.recv()
            if isinstance(message, SlabOffer):
                slabs.add(conn, message.number, message.size)
                continue
            if isinstance(message, Generate) and message.slab is not None:
                pixels = slabs.take(message.slab)
                loop.call_soon_threadsafe(conn.send, Released(message.slab.slab))
                request = dataclasses.replace(message.request, pixel_values=pixels)
                message = Generate(message.call_id, request, message.wants_text)
        except (EOFError, OSError):
            message = None  # the parent is gone: stop
        loop.call_soon_threadsafe(inbox.put_nowait, message)
        if message is None or isinstance(message, Stop):
            return
