"""The layering rule: domain logic, imaging and the model engine never import grpc."""

from __future__ import annotations

import subprocess
import sys

GRPC_FREE = [
    "inference_svc.domain.decision",
    "inference_svc.domain.output_parser",
    "inference_svc.domain.prompt",
    "inference_svc.domain.validation",
    "inference_svc.imaging.fetch",
    "inference_svc.imaging.tiling",
    "inference_svc.engine.runtime",
    "inference_svc.engine.process_client",
    "inference_svc.engine.process_child",
    "inference_svc.engine.continuous",
    "inference_svc.priority",
]


def test_domain_imaging_and_engine_do_not_import_grpc() -> None:
    # One interpreter, modules imported one by one: the first that pulls grpc in is named.
    probe = (
        "import sys, importlib\n"
        f"for name in {GRPC_FREE!r}:\n"
        "    importlib.import_module(name)\n"
        "    if 'grpc' in sys.modules:\n"
        "        print(name)\n"
        "        break\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=180, check=True
    )
    assert done.stdout.strip() == "", f"{done.stdout.strip()} imports grpc"


def test_the_probe_sees_grpc_when_it_is_imported() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import sys, grpc; print('grpc' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "True"
