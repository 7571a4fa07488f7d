"""`make demo`: the whole system on one machine, one streamed inspection, a clean shutdown.

Starts the persistence service (embedded PostgreSQL unless DATABASE_URL is set) and the
inference service (a locally built, untrained demo model unless MODEL_PATH is set), sends one
inspection through the Python CLI with live progress, reads the record back from the
persistence service, and stops both services with SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image, ImageDraw
from rpi.persistence.v1 import persistence_pb2 as ppb
from rpi.persistence.v1 import persistence_pb2_grpc as ppb_grpc

from inference_svc.domain.models import OutputLimits
from inference_svc.domain.prompt import PromptTemplate, with_output_limits

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var" / "demo"


def short_output_template() -> Path:
    """The bundled prompt template asking for short strings (for the untrained demo model)."""
    limits = OutputLimits(max_evidence_chars=24, max_analysis_chars=32, max_result_chars=16)
    path = VAR / "prompt-short-output.j2"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(with_output_limits(PromptTemplate.bundled_source(), limits), encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def banner(text: str) -> None:
    print(f"\n\033[1;36m=== {text} ===\033[0m", flush=True)


def wait_serving(target: str, service: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"{service} exited with code {proc.returncode}; see its log")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.5)
    raise SystemExit(f"{service} not SERVING after {timeout:.0f} s")


def wait_recorded(target: str, inspection_id: str, timeout: float) -> None:
    done = (ppb.INSPECTION_STATUS_COMPLETED, ppb.INSPECTION_STATUS_FAILED)
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = ppb_grpc.PersistenceServiceStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = stub.GetInspection(
                    ppb.GetInspectionRequest(inspection_id=inspection_id), timeout=2
                )
                if reply.inspection.status in done:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)


def make_images() -> tuple[Path, Path, Path]:
    """Synthetic product photos: a red mug as the catalogue image, two pickup photos."""
    VAR.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, size, colour in (
        ("reference.jpg", (800, 800), (200, 30, 30)),
        ("pickup-front.jpg", (1200, 900), (190, 35, 35)),
        ("pickup-label.jpg", (900, 1200), (185, 40, 30)),
    ):
        img = Image.new("RGB", size, (235, 235, 230))
        draw = ImageDraw.Draw(img)
        w, h = size
        draw.rectangle((w * 0.3, h * 0.25, w * 0.7, h * 0.8), fill=colour)
        draw.ellipse((w * 0.68, h * 0.4, w * 0.85, h * 0.6), outline=colour, width=18)
        draw.text((w * 0.35, h * 0.5), "ACME", fill=(255, 255, 255))
        path = VAR / name
        img.save(path, quality=90)
        paths.append(path)
    return paths[0], paths[1], paths[2]


def main() -> int:
    VAR.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    py = sys.executable
    p_port, i_port = free_port(), free_port()
    p_env = {
        **env,
        "GRPC_LISTEN": f"127.0.0.1:{p_port}",
        "METRICS_PORT": str(free_port()),
        "EMBEDDED_PG_DIR": str(ROOT / "var" / "pgdata"),
    }
    i_env = {
        **env,
        "GRPC_LISTEN": f"127.0.0.1:{i_port}",
        "METRICS_PORT": str(free_port()),
        "PERSISTENCE_TARGET": f"127.0.0.1:{p_port}",
        "EVENT_SPOOL_DIR": str(ROOT / "var" / "spool"),
    }
    if "MODEL_PATH" not in env:
        # A random model fills every string up to its bound; short bounds (the prompt
        # template's output limits) keep its schema-constrained output well inside the budget.
        i_env.setdefault("MAX_NEW_TOKENS", "1000")
        i_env.setdefault("PROMPT_TEMPLATE_PATH", str(short_output_template()))
    if "DATABASE_URL" not in env:
        print(
            "DATABASE_URL is unset: the persistence service starts an embedded PostgreSQL "
            f"in {p_env['EMBEDDED_PG_DIR']}"
        )
    if "MODEL_PATH" not in env:
        print(
            "\033[1;33mMODEL_PATH is unset: a small, randomly initialised InternVL model is "
            "built locally. It runs the real model code path, but its ANSWERS ARE MEANINGLESS "
            "(untrained demo model).\033[0m"
        )
    logs = {name: open(VAR / f"{name}.log", "wb") for name in ("persistence", "inference")}  # noqa: SIM115
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        banner("starting persistence_svc")
        procs["persistence"] = subprocess.Popen(
            [py, "-m", "persistence_svc"],
            env=p_env,
            cwd=ROOT,
            stdout=logs["persistence"],
            stderr=subprocess.STDOUT,
        )
        wait_serving(
            f"127.0.0.1:{p_port}",
            "rpi.persistence.v1.PersistenceService",
            procs["persistence"],
            180,
        )
        print(f"persistence_svc SERVING on 127.0.0.1:{p_port} (log: {VAR / 'persistence.log'})")
        banner("starting inference_svc (loading the model)")
        procs["inference"] = subprocess.Popen(
            [py, "-m", "inference_svc"],
            env=i_env,
            cwd=ROOT,
            stdout=logs["inference"],
            stderr=subprocess.STDOUT,
        )
        wait_serving(
            f"127.0.0.1:{i_port}", "rpi.inspection.v1.InspectionService", procs["inference"], 600
        )
        print(f"inference_svc SERVING on 127.0.0.1:{i_port} (log: {VAR / 'inference.log'})")

        reference, front, label = make_images()
        questions = VAR / "questions.json"
        questions.write_text(
            json.dumps(
                [
                    {
                        "type": "Colour",
                        "label": "Is the colour of the mug red?",
                        "value_to_check": "Yes",
                        "mandatory": True,
                    },
                    {
                        "type": "Brand",
                        "label": "Is the brand name ACME visible?",
                        "value_to_check": "Yes",
                        "mandatory": True,
                    },
                    {
                        "type": "Damage",
                        "label": "Is the product damaged?",
                        "value_to_check": "No",
                        "mandatory": True,
                    },
                    {
                        "type": "Quantity",
                        "label": "How many units are there?",
                        "value_to_check": "1",
                        "mandatory": False,
                    },
                ],
                indent=2,
            )
        )
        banner("InspectStream through the Python CLI")
        out = VAR / "inspection.json"
        with open(out, "wb") as fh:
            rc = subprocess.call(
                [
                    py,
                    "-m",
                    "clients.python.rpi_client",
                    "inspect",
                    "--target",
                    f"127.0.0.1:{i_port}",
                    "--reference",
                    str(reference),
                    "--pickup",
                    str(front),
                    "--pickup",
                    str(label),
                    "--questions",
                    str(questions),
                    "--product-name",
                    "ACME ceramic mug, red, 350 ml",
                    "--shipping-id",
                    "SHIP-DEMO-0001",
                    "--product-id",
                    "SKU-MUG-RED",
                    "--json",
                ],
                cwd=ROOT,
                stdout=fh,
            )
        text = out.read_text()
        print(text)
        if rc != 0:
            print(f"inspection failed (exit code {rc})")
            return rc
        inspection_id = json.loads(text)["inspectionId"]
        banner("the record, read back from persistence_svc")
        # Records are delivered in the background, after the answer: wait for the result.
        p_target = f"127.0.0.1:{p_port}"
        wait_recorded(p_target, inspection_id, timeout=30)
        rc = subprocess.call(
            [
                py,
                "-m",
                "clients.python.rpi_client",
                "get",
                "--persistence-target",
                p_target,
                inspection_id,
            ],
            cwd=ROOT,
        )
        if "MODEL_PATH" not in env:
            print("\033[1;33mReminder: the answers above come from an UNTRAINED demo model.\033[0m")
        return rc
    finally:
        banner("shutting down (SIGTERM, drain)")
        for name in ("inference", "persistence"):
            proc = procs.get(name)
            if proc and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    code = proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    code = proc.wait()
                print(f"{name}_svc exited with code {code}")
        for fh in logs.values():
            fh.close()


if __name__ == "__main__":
    raise SystemExit(main())
