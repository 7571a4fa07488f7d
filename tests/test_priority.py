"""Bulk work runs at a lower CPU priority than the event loop."""

from __future__ import annotations

import concurrent.futures
import os
import threading
from pathlib import Path

import pytest

from inference_svc.app import InferenceApp, engine_config
from inference_svc.priority import lower_thread_priority
from tests.support.e2e import inference_settings

pytestmark = pytest.mark.skipif(not hasattr(os, "setpriority"), reason="POSIX priorities")


def _thread_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def _in_new_thread(nice: int) -> int:
    with concurrent.futures.ThreadPoolExecutor(
        1, initializer=lower_thread_priority, initargs=(nice,)
    ) as pool:
        return pool.submit(_thread_nice).result()


def test_a_thread_lowers_only_its_own_priority() -> None:
    base = _thread_nice()
    assert _in_new_thread(4) == min(19, base + 4)
    assert _in_new_thread(0) == base
    assert _in_new_thread(40) == 19  # clamped to the lowest priority
    assert _thread_nice() == base  # the calling thread is untouched


def test_app_workers_run_below_the_event_loop(tmp_path: Path) -> None:
    base = os.nice(0)
    settings = inference_settings(tmp_path, "", worker_nice=6, preprocess_processes=1)
    app = InferenceApp(settings)
    try:
        assert app.executor.submit(_thread_nice).result() == min(19, base + 6)
        assert app.prepare_executor.submit(os.nice, 0).result() == min(19, base + 6)
        assert engine_config(settings).worker_nice == 6
    finally:
        app.executor.shutdown()
        app.prepare_executor.shutdown()
    assert os.nice(0) == base
