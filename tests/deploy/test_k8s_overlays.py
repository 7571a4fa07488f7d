"""The production overlays' structure: prod-gpu-core applies without the Prometheus Operator
and KEDA CRDs and prod-gpu adds exactly those components; the namespace set in one place
reaches every name that embeds it; the inference pod waits for its model (the init container's
script is run here with a real shell); the model-rwo component and the loader's placement.

Rendering, schema validation and the helpers live in test_k8s_manifests.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from test_k8s_manifests import (
    K8S,
    K8S_VERSIONS,
    OVERLAYS,
    Obj,
    _kubectl,
    container,
    env_values,
    find,
    prestop_seconds,
    probe_budget_s,
    render,
)

# Kinds whose CRDs come with the optional operators (kube-prometheus-stack, KEDA).
OPERATOR_KINDS = {"PodMonitor", "ScaledObject"}
REPO = K8S.parents[1]


def kustomize(directory: Path) -> list[Obj]:
    out = subprocess.run(
        [_kubectl(), "kustomize", str(directory)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def keyed(objs: list[Obj]) -> dict[tuple[str, str], Obj]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objs}


def test_core_overlay_needs_no_operator_crds_and_full_adds_only_the_components() -> None:
    core, full = keyed(render("prod-gpu-core")), keyed(render("prod-gpu"))
    assert not {kind for kind, _ in core} & OPERATOR_KINDS
    components = [
        o
        for name in ("monitoring", "autoscaling")
        for o in kustomize_component_sources(K8S / "components" / name)
    ]
    added = {(o["kind"], o["metadata"]["name"]) for o in components}
    assert set(full) - set(core) == added
    assert {kind for kind, _ in added} & OPERATOR_KINDS == OPERATOR_KINDS
    # Everything else is the same object, so step 2 of the deploy changes nothing that runs.
    for key, obj in core.items():
        assert full[key] == obj, key


def kustomize_component_sources(directory: Path) -> list[Obj]:
    listed = yaml.safe_load((directory / "kustomization.yaml").read_text())["resources"]
    return [
        doc for name in listed for doc in yaml.safe_load_all((directory / name).read_text()) if doc
    ]


def test_the_namespace_set_in_the_core_overlay_reaches_every_name(tmp_path: Path) -> None:
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    kustomization = copy / "overlays" / "prod-gpu-core" / "kustomization.yaml"
    text = kustomization.read_text()
    assert "\nnamespace: rpi\n" in text
    kustomization.write_text(text.replace("\nnamespace: rpi\n", "\nnamespace: shop-rpi\n"))
    objs = kustomize(copy / "overlays" / "prod-gpu")
    for obj in objs:
        if obj["kind"] == "Namespace":
            assert obj["metadata"]["name"] == "shop-rpi"
        else:
            assert obj["metadata"]["namespace"] == "shop-rpi", obj["metadata"]["name"]
    scaled = find(objs, "ScaledObject", "inference")
    for trigger in scaled["spec"]["triggers"]:
        assert 'namespace="shop-rpi"' in trigger["metadata"]["query"]
    # No name anywhere still embeds the old namespace (DNS names, writer identity, queries).
    rendered = yaml.safe_dump_all(objs)
    assert not re.search(r'\.rpi(\.|\b)|namespace="rpi"', rendered)
    writer = env_values(container(find(objs, "Deployment", "persistence"), "persistence"))
    cert = find(objs, "Certificate", "inference-tls")
    assert writer["WRITER_IDENTITIES"] == cert["spec"]["dnsNames"][0] == "inference.shop-rpi.svc"


def _wait_for_model(objs: list[Obj]) -> Obj:
    pod = find(objs, "Deployment", "inference")["spec"]["template"]["spec"]
    (init,) = [c for c in pod.get("initContainers", []) if c["name"] == "wait-for-model"]
    return init


@pytest.mark.parametrize("name", ["prod-gpu-core", "prod-gpu"])
def test_inference_waits_for_the_model_it_will_load(name: str) -> None:
    objs = render(name)
    init = _wait_for_model(objs)
    server = container(find(objs, "Deployment", "inference"), "inference")
    assert env_values(init)["MODEL_PATH"] == env_values(server)["MODEL_PATH"]
    assert init["image"] == server["image"]
    model_mounts = [m for m in server["volumeMounts"] if m["name"] == "model"]
    assert [m for m in init["volumeMounts"] if m["name"] == "model"] == model_mounts
    assert init["securityContext"] == server["securityContext"]
    # Bounded, and longer than the startup probe would have allowed the server to wait.
    startup = server["startupProbe"]
    wait_s = int(env_values(init)["MODEL_WAIT_S"])
    assert startup["periodSeconds"] * startup["failureThreshold"] < wait_s <= 24 * 3600


def _run_wait(init: Obj, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = init["command"]
    assert command[:2] == ["/bin/sh", "-c"]
    return subprocess.run(
        ["/bin/sh", "-c", command[2]],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_wait_for_model_script_passes_once_the_model_is_there(tmp_path: Path) -> None:
    init = _wait_for_model(render("prod-gpu-core"))
    model = tmp_path / "v1"
    model.mkdir()
    (model / "config.json").write_text("{}")
    done = _run_wait(init, {"MODEL_PATH": str(model), "MODEL_WAIT_S": "60", "MODEL_POLL_S": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "model found" in done.stdout


def test_wait_for_model_script_gives_up_with_a_clear_message(tmp_path: Path) -> None:
    init = _wait_for_model(render("prod-gpu-core"))
    missing = tmp_path / "v1"
    done = _run_wait(init, {"MODEL_PATH": str(missing), "MODEL_WAIT_S": "0", "MODEL_POLL_S": "1"})
    assert done.returncode == 1
    assert f"no model at {missing}" in done.stdout
    assert "model-loader.yaml" in done.stdout


def _with_model_rwo(tmp_path: Path) -> list[Obj]:
    overlay = tmp_path / "rwo"
    overlay.mkdir()
    rel = os.path.relpath(K8S, overlay)
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [f"{rel}/overlays/prod-gpu-core"],
                "components": [f"{rel}/components/model-rwo"],
            }
        )
    )
    return kustomize(overlay)


def test_model_rwo_component_keeps_every_replica_on_the_volumes_node(tmp_path: Path) -> None:
    objs = _with_model_rwo(tmp_path)
    pvc = find(objs, "PersistentVolumeClaim", "inference-model")
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    deployment = find(objs, "Deployment", "inference")
    spec = deployment["spec"]["template"]["spec"]
    (term,) = spec["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == {"app.kubernetes.io/name": "inference"}
    assert "topologySpreadConstraints" not in spec
    # No surge pod: it would need a second free GPU on that same node.
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    for obj in objs:
        if obj["kind"] in {"Deployment", "PersistentVolumeClaim"}:
            kubernetes_validate.validate(obj, K8S_VERSIONS[-1], strict=True)


def test_loader_pinned_to_the_inference_node_validates(tmp_path: Path) -> None:
    # The command docs/operations.md gives for RWO volumes (the node name stands in).
    guide = (REPO / "docs" / "operations.md").read_text()
    assert 'sed "s/^spec:$/spec:\\n  nodeName: $node/" deploy/k8s/tools/model-loader.yaml' in guide
    done = subprocess.run(
        ["sed", "s/^spec:$/spec:\\n  nodeName: gpu-node-1/", str(K8S / "tools/model-loader.yaml")],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    (pod,) = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert pod["spec"]["nodeName"] == "gpu-node-1"
    kubernetes_validate.validate(pod, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("name", OVERLAYS)
def test_inference_drain_windows_agree_with_the_probes_and_the_grace(name: str) -> None:
    deployment = find(render(name), "Deployment", "inference")
    c = container(deployment, "inference")
    env = env_values(c)
    pre_stop, drain_prestop = prestop_seconds(c), float(env["DRAIN_PRESTOP_S"])
    drain_grace = float(env["DRAIN_GRACE_S"])
    readiness = c["readinessProbe"]
    # The pod keeps listening (refusing DRAINING) at least until its readiness probe has seen
    # NOT_SERVING: one full readiness window after SIGTERM, counting the preStop sleep.
    assert pre_stop + drain_prestop >= readiness["periodSeconds"] * readiness["failureThreshold"]
    # SIGKILL only after every phase: preStop, the DRAINING window, the in-flight grace.
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > pre_stop + drain_prestop + drain_grace
    # Liveness never restarts a draining pod: its name stays SERVING, and its window is not
    # shorter than a readiness window (a stall long enough to restart is also seen by readiness).
    liveness = c["livenessProbe"]
    assert liveness["grpc"]["service"] == "liveness"
    assert probe_budget_s(liveness) >= probe_budget_s(readiness)
