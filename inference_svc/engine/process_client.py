"""The model engine in its own process, so the model loop never waits for the interpreter lock.

In one process the model thread shares the GIL with the event loop, gRPC, decoding and
tiling: every one of the ~100 small tensor operations of a decode step gives the lock up and
must win it back, and a busy Python thread holds it for up to the switch interval, so a step
next to a busy Python thread takes many times as long as alone. Here the engine (continuous
batching, unchanged) runs in a child process started with ``spawn``; the parent
keeps the event-loop side (admission, queue bound, deadlines, listeners) and talks to it over
a pipe:

parent and child exchange the frozen dataclasses of :mod:`.messages`; the child side is
:mod:`.process_child`.

Requests are pickled on a sender thread, never on the event loop. Their tiles (megabytes)
travel through shared-memory slabs when one is free (``slab_ref``; see :mod:`.pixel_slabs`),
else in the pickle. The parent tokenises nothing: it counts prompt tokens with the child's
tokenizer, saved to a temporary directory at start. When the child dies, every pending call
fails with EngineNotReady and the engine reports not ready (health NOT_SERVING), so the
orchestrator replaces the pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import multiprocessing
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
from transformers import AutoTokenizer

from .api import (
    EngineInfo,
    EngineNotReady,
    EngineOverloaded,
    EngineStats,
    GenerationListener,
    GenerationRequest,
    GenerationResult,
)
from .config import EngineConfig, engine_info
from .local import LocalEngine
from .messages import (
    Cancel,
    Cancelled,
    Done,
    Errored,
    Failed,
    FromEngine,
    Generate,
    Queued,
    Ready,
    Released,
    RemoteModel,
    Started,
    Stop,
    ToEngine,
    Tokens,
)
from .pixel_slabs import SlabSender, available
from .process_child import EngineFactory, child_main
from .prompting import build_prompt
from .scheduler import safe

logger = logging.getLogger(__name__)

# The pixels of a request whose tiles wait in a slab.
_NO_PIXELS = np.empty((0,), dtype=np.uint8)


@dataclass(eq=False)
class _Call:
    future: asyncio.Future[GenerationResult]
    listener: GenerationListener
    started: bool = False


class ProcessEngine:
    """Implements :class:`inference_svc.engine.api.Engine` by driving an engine in a child
    process (the one ``create_engine`` builds for the same config, in-process there)."""

    def __init__(
        self,
        config: EngineConfig,
        *,
        log_level: str = "INFO",
        engine_factory: EngineFactory | None = None,
    ) -> None:
        self.config = config
        # Builds the child's in-process engine (a module-level function: it is pickled).
        self._engine_factory = engine_factory or LocalEngine
        self._log_level = log_level
        self._model: RemoteModel | None = None
        self._tokenizer: Any = None
        self._process: Any = None
        self._conn: Connection | None = None
        self._outbox: queue.SimpleQueue[ToEngine | None] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._calls: dict[int, _Call] = {}
        self._ids = itertools.count(1)
        self._waiting = 0  # sent, not yet started by the child
        self._ready = False
        self._stopping = False
        self._started: asyncio.Future[RemoteModel] | None = None
        self._exited: asyncio.Event | None = None
        self._threads: list[threading.Thread] = []
        self._slabs: SlabSender | None = None
        # The child's counters, as of its last answer.
        self._stats = EngineStats()
        self._by_request: dict[str, int] = {}  # request id -> call id, for cancel()
        # Called on the event loop when the child exits unexpectedly.
        self.on_exit: Callable[[], None] | None = None

    # --- Engine protocol -------------------------------------------------------------------
    @property
    def info(self) -> EngineInfo:
        model = self._model
        runner = model.runner if model else ""
        return engine_info(self.config, model, runner, self.config.max_batch_size)

    def stats(self) -> EngineStats:
        slabs = self._slabs
        return dataclasses.replace(
            self._stats,
            running_rows=self.running_rows(),
            tiles_shared=slabs.shared if slabs else 0,
            tiles_pickled=slabs.pickled if slabs else 0,
            slab_bytes=slabs.slab_bytes if slabs else 0,
        )

    def cancel(self, request_id: str) -> None:
        call_id = self._by_request.get(request_id)
        call = self._calls.get(call_id) if call_id is not None else None
        if call_id is not None and call is not None and not call.future.done():
            call.future.cancel()
            self._outbox.put(Cancel(call_id))

    @property
    def pid(self) -> int | None:
        """The engine process's id while it runs (logs, debugging, tests)."""
        process = self._process
        return int(process.pid) if process is not None and process.pid is not None else None

    @property
    def ready(self) -> bool:
        return self._ready and not self._stopping

    @property
    def loaded(self) -> RemoteModel:
        if self._model is None:
            raise EngineNotReady("model not loaded")
        return self._model

    def queue_depth(self) -> int:
        return self._waiting

    def running_rows(self) -> int:
        return sum(1 for call in self._calls.values() if call.started)

    def count_prompt_tokens(self, prompt: str, tiles_per_image: tuple[int, ...]) -> int:
        model = self.loaded
        text = build_prompt(
            prompt, tiles_per_image, model.tokens_per_image_tile, self.config.system_message
        )
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    async def start(self) -> None:
        if self._process is not None:
            return
        loop = self._loop = asyncio.get_running_loop()
        self._stopping = False
        self._started = loop.create_future()
        self._exited = asyncio.Event()
        context = multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe()
        self._conn = parent_end
        inner = dataclasses.replace(self.config, engine_process=False)
        self._process = context.Process(
            target=child_main,
            args=(inner, child_end, self._log_level, self._engine_factory),
            name="model-engine",
            daemon=True,
        )
        self._process.start()
        child_end.close()
        budget = self.config.pixel_buffer_mb << 20
        self._slabs = (
            SlabSender(parent_end, budget, self._process.pid) if budget and available() else None
        )
        self._threads = [
            threading.Thread(target=self._receive, name="engine-receiver", daemon=True),
            threading.Thread(target=self._send, name="engine-sender", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        try:
            model = await self._started
        except BaseException:
            await self._shutdown_process(join_seconds=5)
            raise
        self._tokenizer = await asyncio.to_thread(
            AutoTokenizer.from_pretrained, model.tokenizer_dir
        )
        self._model = model
        self._ready = True
        logger.info(
            "engine process %d ready: %s rev %s on %s (%s)",
            self._process.pid,
            model.name,
            model.revision,
            model.runtime.device,
            f"{model.runner} runner",
        )

    async def stop(self) -> None:
        self._stopping = True
        self._ready = False
        if self._process is None:
            return
        if self._exited is not None and not self._exited.is_set():
            self._outbox.put(Stop())
            # The child finishes the rows it is generating, then exits.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(60):
                    await self._exited.wait()
        await self._shutdown_process(join_seconds=5)
        if self._model is not None:
            shutil.rmtree(self._model.tokenizer_dir, ignore_errors=True)

    async def generate(
        self, request: GenerationRequest, listener: GenerationListener
    ) -> GenerationResult:
        if not self.ready or self._loop is None:
            raise EngineNotReady("model not loaded" if not self._stopping else "engine stopping")
        # Calls sent but not started may still find free slots in the child, which enforces
        # the exact queue bound; this only stops a burst before pickling megabytes for it.
        if self._waiting >= self.config.max_queue_size + self.config.max_batch_size:
            raise EngineOverloaded(f"queue full ({self.config.max_queue_size})")
        if request.deadline is not None and request.deadline <= time.monotonic():
            raise TimeoutError("deadline passed before generation")
        call_id = next(self._ids)
        call = _Call(self._loop.create_future(), listener)
        self._calls[call_id] = call
        self._by_request[request.request_id] = call_id
        self._waiting += 1
        wants_text = bool(getattr(listener, "wants_text", True))
        self._outbox.put(Generate(call_id, request, wants_text))
        # Shielded: our caller's cancellation must reach the child as a message, not cancel
        # the future the receiver resolves.
        try:
            if request.deadline is None:
                return await asyncio.shield(call.future)
            remaining = max(request.deadline - time.monotonic(), 0)
            return await asyncio.wait_for(asyncio.shield(call.future), remaining)
        except (asyncio.CancelledError, TimeoutError):
            if not call.future.done():
                call.future.cancel()
                self._outbox.put(Cancel(call_id))
            raise
        finally:
            self._forget(call_id)
            if self._by_request.get(request.request_id) == call_id:
                del self._by_request[request.request_id]

    # --- plumbing --------------------------------------------------------------------------
    def _forget(self, call_id: int) -> None:
        call = self._calls.pop(call_id, None)
        if call is not None and not call.started:
            self._waiting -= 1

    def _send(self) -> None:
        conn = self._conn
        assert conn is not None
        while True:
            message = self._outbox.get()
            if message is None:
                return
            try:
                if isinstance(message, Generate):
                    message = self._with_shared_tiles(message)
                conn.send(message)
            except (OSError, ValueError):
                return  # the child is gone; the receiver reports it

    def _with_shared_tiles(self, message: Generate) -> Generate:
        """The generate message with its tiles moved into a slab, when one is free."""
        pixels = message.request.pixel_values
        ref = self._slabs.put(pixels) if self._slabs is not None and pixels.size else None
        if ref is None:
            return message
        request = dataclasses.replace(message.request, pixel_values=_NO_PIXELS)
        return Generate(message.call_id, request, message.wants_text, ref)

    def _receive(self) -> None:
        conn = self._conn
        loop = self._loop
        assert conn is not None and loop is not None
        while True:
            try:
                message: FromEngine = conn.recv()
            except (EOFError, OSError, TypeError):  # TypeError: closed under us at shutdown
                break
            except Exception:  # an unpicklable message must not kill the receiver
                logger.exception("bad message from the engine process")
                continue
            if isinstance(message, Released):
                if self._slabs is not None:
                    self._slabs.release(message.slab)
                continue
            loop.call_soon_threadsafe(self._dispatch, message)
        with contextlib.suppress(RuntimeError):  # the loop may be closed at interpreter exit
            loop.call_soon_threadsafe(self._on_exit)

    def _dispatch(self, message: FromEngine) -> None:
        started = self._started
        if isinstance(message, Ready):
            self._stats = message.stats
            if started is not None and not started.done():
                started.set_result(message.model)
            return
        if isinstance(message, Failed):
            if started is not None and not started.done():
                started.set_exception(RuntimeError(f"engine process: {message.reason}"))
            return
        if isinstance(message, Done | Errored | Cancelled):
            self._stats = message.stats
        call = self._calls.get(getattr(message, "call_id", -1))
        if call is None:
            return
        if isinstance(message, Queued):
            safe(call.listener.on_queued, message.position)
        elif isinstance(message, Started):
            if not call.started:
                call.started = True
                self._waiting -= 1
            safe(call.listener.on_started)
        elif isinstance(message, Tokens):
            safe(call.listener.on_tokens, message.count, message.text)
        elif isinstance(message, Done) and not call.future.done():
            call.future.set_result(message.result)
        elif isinstance(message, Errored) and not call.future.done():
            call.future.set_exception(message.error)

    def _on_exit(self) -> None:
        was_ready = self._ready
        self._ready = False
        if self._exited is not None:
            self._exited.set()
        if self._started is not None and not self._started.done():
            self._started.set_exception(RuntimeError("engine process exited while starting"))
        for call in self._calls.values():
            if not call.future.done():
                call.future.set_exception(EngineNotReady("the engine process exited"))
        if was_ready and not self._stopping:
            code = self._process.exitcode if self._process is not None else None
            logger.error("engine process exited unexpectedly (exit code %s)", code)
            if self.on_exit is not None:
                safe(self.on_exit)

    async def _shutdown_process(self, join_seconds: float) -> None:
        process, self._process = self._process, None
        self._outbox.put(None)
        if process is None:
            return
        await asyncio.to_thread(process.join, join_seconds)
        if process.is_alive():
            logger.warning("engine process did not exit; terminating it")
            process.terminate()
            await asyncio.to_thread(process.join, 5)
        # The receiver ends on the pipe's EOF once the child is gone; close after it.
        for thread in self._threads:
            await asyncio.to_thread(thread.join, 5)
        if self._conn is not None:
            self._conn.close()
        slabs, self._slabs = self._slabs, None
        if slabs is not None:
            slabs.close()
