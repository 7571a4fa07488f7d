"""The deployment's security wiring, as rendered by kustomize: certificates, their mounts and
the settings that point at them, and the NetworkPolicies (default deny plus the allows the
system needs), evaluated with the NetworkPolicy semantics rather than by shape.

Rendering, schema validation and the helpers live in test_k8s_manifests.py.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml
from test_k8s_manifests import (
    K8S,
    OVERLAYS,
    Obj,
    _render_cached,
    container,
    env_values,
    find,
    named_port,
    pod_labels,
    render,
    workloads,
)

SERVICES = ("inference", "persistence")
# Keys cert-manager writes into a Certificate's Secret (ca.crt from CA-type issuers).
CERT_MANAGER_KEYS = {"tls.crt", "tls.key", "ca.crt"}
# The out-of-band auth Secret's keys (docs/security.md): the API-key file and the JWKS.
AUTH_SECRET = "rpi-auth"
AUTH_SECRET_KEYS = {"tokens.yaml", "jwks.json"}
# The out-of-band webhook signing Secret's key (docs/operations-async.md, "Webhooks").
WEBHOOK_SECRET = "rpi-webhooks"
WEBHOOK_SECRET_KEYS = {"webhook-secrets.yaml"}
# Settings that name a file the pod must be able to read.
FILE_SETTINGS = re.compile(r"^((PERSISTENCE_)?(TLS|AUTH)_\w+_FILE|WEBHOOK_SECRETS_FILE)$")
PUBLIC_IMAGE_HOST = "93.184.215.14"  # An address on the public internet.
INTERNAL_ADDRESSES = (
    "10.96.0.10",  # A typical Service CIDR address (kube-dns on kubeadm).
    "10.244.1.7",  # A typical pod CIDR address.
    "172.20.0.1",
    "192.168.1.1",
    "100.64.3.4",  # Carrier-grade NAT range, used for pods on some clouds.
    "169.254.169.254",  # The cloud metadata endpoint.
    "127.0.0.1",
    "fd00::1",
    "fe80::1",
)
KUBE_DNS = ({"kubernetes.io/metadata.name": "kube-system"}, {"k8s-app": "kube-dns"})
PROMETHEUS = (
    {"kubernetes.io/metadata.name": "monitoring"},
    {"app.kubernetes.io/name": "prometheus"},
)
CALLER_LABELS = {"rpiplatform.com/rpi-caller": "true"}


@pytest.fixture(params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> list[Obj]:
    name: str = request.param
    return render(name)


def namespace_of(objs: list[Obj]) -> str:
    name: str = next(o for o in objs if o["kind"] == "Namespace")["metadata"]["name"]
    return name


# --- NetworkPolicy evaluation (the subset of the API these manifests use)


@dataclass(frozen=True)
class Endpoint:
    """One side of a connection: a pod (its namespace, that namespace's extra labels and the
    pod's labels) or an address outside the pod network."""

    namespace: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    ns_labels: dict[str, str] = field(default_factory=dict)
    ip: str = ""

    @property
    def namespace_labels(self) -> dict[str, str]:
        # Kubernetes labels every namespace with its name.
        return {**self.ns_labels, "kubernetes.io/metadata.name": self.namespace}


def pod(
    namespace: str, labels: dict[str, str], ns_labels: dict[str, str] | None = None
) -> Endpoint:
    return Endpoint(namespace, labels, ns_labels or {})


def _selector_matches(selector: Obj, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"unsupported selector {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _peer_matches(peer: Obj, policy_ns: str, other: Endpoint) -> bool:
    if "ipBlock" in peer:
        if not other.ip:
            return False  # ipBlock peers are for addresses outside the pod network.
        address = ipaddress.ip_address(other.ip)
        cidr = ipaddress.ip_network(peer["ipBlock"]["cidr"])
        if address.version != cidr.version or address not in cidr:
            return False
        return not any(
            address in ipaddress.ip_network(e)
            for e in peer["ipBlock"].get("except", [])
            if ipaddress.ip_network(e).version == address.version
        )
    if other.ip:
        return False
    if "namespaceSelector" in peer:
        if not _selector_matches(peer["namespaceSelector"], other.namespace_labels):
            return False
    elif other.namespace != policy_ns:
        return False  # A podSelector alone means the policy's own namespace.
    return _selector_matches(peer.get("podSelector", {}), other.labels)


def _port_matches(rule: Obj, port: int, protocol: str) -> bool:
    ports: list[Obj] = rule.get("ports", [])
    return not ports or any(
        p.get("port") == port and p.get("protocol", "TCP") == protocol for p in ports
    )


def _isolating(policies: list[Obj], target: Endpoint, direction: str) -> list[Obj]:
    return [
        p
        for p in policies
        if p["metadata"]["namespace"] == target.namespace
        and direction in p["spec"]["policyTypes"]
        and _selector_matches(p["spec"]["podSelector"], target.labels)
    ]


def allowed(
    objs: list[Obj], source: Endpoint, dest: Endpoint, port: int, protocol: str = "TCP"
) -> bool:
    """Whether the policies let `source` open a connection to `dest` on `port`: the egress
    side of a pod source and the ingress side of a pod destination must both admit it."""
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]

    def side_admits(pod_end: Endpoint, other: Endpoint, direction: str, key: str) -> bool:
        isolating = _isolating(policies, pod_end, direction)
        if not isolating:
            return True  # Not isolated in this direction: everything is allowed.
        return any(
            _port_matches(rule, port, protocol)
            and any(_peer_matches(peer, pod_end.namespace, other) for peer in rule.get(key, []))
            for policy in isolating
            for rule in policy["spec"].get(direction.lower(), [])
        )

    egress_ok = source.ip != "" or side_admits(source, dest, "Egress", "to")
    ingress_ok = dest.ip != "" or side_admits(dest, source, "Ingress", "from")
    return egress_ok and ingress_ok


def service_pod(objs: list[Obj], name: str) -> Endpoint:
    return pod(namespace_of(objs), pod_labels(find(objs, "Deployment", name)))


def test_the_evaluator_denies_what_no_rule_admits() -> None:
    # Guards the tests below: with the default deny, a connection nobody allowed is refused,
    # and removing the allow makes an allowed connection fail.
    objs = render("prod-gpu")
    inference, persistence = service_pod(objs, "inference"), service_pod(objs, "persistence")
    assert allowed(objs, inference, persistence, 50061)
    assert not allowed(objs, persistence, inference, 50051)
    assert not allowed(objs, inference, persistence, 5432)
    without = [o for o in objs if o["metadata"]["name"] != "persistence-allow-inference"]
    assert not allowed(without, inference, persistence, 50061)


# --- default deny and the allows


def test_namespace_is_default_deny_both_ways(rendered: list[Obj]) -> None:
    deny = [
        o
        for o in rendered
        if o["kind"] == "NetworkPolicy"
        and o["spec"]["podSelector"] == {}
        and set(o["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    ]
    assert len(deny) == 1
    assert not deny[0]["spec"].get("ingress")
    assert not deny[0]["spec"].get("egress")
    # Every workload is covered, so none is reachable or can reach out by accident.
    ns = namespace_of(rendered)
    stranger = pod("elsewhere", {"app.kubernetes.io/name": "anything"})
    for workload in workloads(rendered):
        me = pod(ns, pod_labels(workload))
        for port_name in ("grpc", "metrics", "health", "postgres"):
            ports = [
                p
                for c in workload["spec"]["template"]["spec"]["containers"]
                for p in c.get("ports", [])
                if p["name"] == port_name
            ]
            for p in ports:
                assert not allowed(rendered, stranger, me, p["containerPort"]), port_name


def test_every_pod_may_resolve_names(rendered: list[Obj]) -> None:
    dns = pod("kube-system", KUBE_DNS[1])
    for workload in workloads(rendered):
        me = pod(namespace_of(rendered), pod_labels(workload))
        assert allowed(rendered, me, dns, 53, "UDP"), workload["metadata"]["name"]
        assert allowed(rendered, me, dns, 53, "TCP"), workload["metadata"]["name"]
        assert not allowed(rendered, me, dns, 443)


def test_inference_reaches_persistence_and_nothing_else_does(rendered: list[Obj]) -> None:
    inference, persistence = (
        service_pod(rendered, "inference"),
        service_pod(rendered, "persistence"),
    )
    target = env_values(container(find(rendered, "Deployment", "inference"), "inference"))
    port = int(target["PERSISTENCE_TARGET"].rsplit(":", 1)[1])
    assert allowed(rendered, inference, persistence, port)
    ns = namespace_of(rendered)
    for other in (
        pod(ns, {"app.kubernetes.io/name": "debug"}),
        pod("returns-backend", {"app.kubernetes.io/name": "inference"}),
        pod("returns-backend", CALLER_LABELS, CALLER_LABELS),
    ):
        assert not allowed(rendered, other, persistence, port)


def test_persistence_reaches_its_database(rendered: list[Obj]) -> None:
    persistence = service_pod(rendered, "persistence")
    ns = namespace_of(rendered)
    if any(o["kind"] == "StatefulSet" for o in rendered):
        postgres = pod(ns, pod_labels(find(rendered, "StatefulSet", "postgres")))
        assert allowed(rendered, persistence, postgres, 5432)
        assert not allowed(rendered, service_pod(rendered, "inference"), postgres, 5432)
    else:
        # Production: an external database by address, set by the operator in one policy.
        policy = find(rendered, "NetworkPolicy", "persistence-egress-database")
        peers = [p for r in policy["spec"]["egress"] for p in r["to"]]
        assert [set(p) for p in peers] == [{"ipBlock"}]
        database = ipaddress.ip_network(peers[0]["ipBlock"]["cidr"])
        assert allowed(rendered, persistence, Endpoint(ip=str(database[0])), 5432)
        assert not allowed(rendered, persistence, Endpoint(ip=str(database[0])), 443)
    assert not allowed(rendered, persistence, Endpoint(ip=PUBLIC_IMAGE_HOST), 5432)


def test_inference_fetches_public_images_but_no_internal_address(rendered: list[Obj]) -> None:
    inference = service_pod(rendered, "inference")
    for port in (443, 80):
        assert allowed(rendered, inference, Endpoint(ip=PUBLIC_IMAGE_HOST), port)
        assert allowed(rendered, inference, Endpoint(ip="2606:2800:21f:cb07::1"), port)
        for address in INTERNAL_ADDRESSES:
            assert not allowed(rendered, inference, Endpoint(ip=address), port), address
    assert not allowed(rendered, inference, Endpoint(ip=PUBLIC_IMAGE_HOST), 22)
    # Only the service that fetches images may reach the internet.
    persistence = service_pod(rendered, "persistence")
    assert not allowed(rendered, persistence, Endpoint(ip=PUBLIC_IMAGE_HOST), 443)


def test_only_labelled_callers_reach_the_inference_api(rendered: list[Obj]) -> None:
    inference = service_pod(rendered, "inference")
    c = container(find(rendered, "Deployment", "inference"), "inference")
    grpc, metrics = named_port(c, "grpc"), named_port(c, "metrics")
    caller = pod("returns-backend", CALLER_LABELS, CALLER_LABELS)
    assert allowed(rendered, caller, inference, grpc)
    assert not allowed(rendered, caller, inference, metrics)
    # Both the namespace and the pod must opt in.
    assert not allowed(rendered, pod("returns-backend", CALLER_LABELS), inference, grpc)
    assert not allowed(rendered, pod("returns-backend", {}, CALLER_LABELS), inference, grpc)


def test_prometheus_scrapes_the_metrics_ports_only() -> None:
    objs = render("prod-gpu")
    prometheus = pod("monitoring", PROMETHEUS[1])
    for name in SERVICES:
        c = container(find(objs, "Deployment", name), name)
        target = service_pod(objs, name)
        metrics = int(env_values(c)["METRICS_PORT"])
        assert named_port(c, "metrics") == metrics
        assert allowed(objs, prometheus, target, metrics), name
        assert not allowed(objs, prometheus, target, named_port(c, "grpc")), name
        assert not allowed(objs, prometheus, target, named_port(c, "health")), name


def test_health_port_is_left_to_the_node_local_kubelet(rendered: list[Obj]) -> None:
    # Kubelet probes come from the pod's own node, which NetworkPolicy always admits; no
    # policy opens the plaintext health port to any other peer.
    anywhere = (
        pod("kube-system", {}),
        pod(namespace_of(rendered), {}),
        pod("returns-backend", CALLER_LABELS, CALLER_LABELS),
        pod("monitoring", PROMETHEUS[1]),
        Endpoint(ip="10.0.0.5"),
    )
    for name in SERVICES:
        c = container(find(rendered, "Deployment", name), name)
        target = service_pod(rendered, name)
        for peer in anywhere:
            assert not allowed(rendered, peer, target, named_port(c, "health")), (name, peer)


def test_traces_reach_the_collector_of_the_otlp_endpoint() -> None:
    objs = render("prod-gpu")
    for name in SERVICES:
        env = env_values(container(find(objs, "Deployment", name), name))
        endpoint = urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert endpoint.hostname is not None
        assert endpoint.port is not None
        collector_ns = endpoint.hostname.split(".")[1]
        collector = pod(collector_ns, {"app.kubernetes.io/name": "opentelemetry-collector"})
        assert allowed(objs, service_pod(objs, name), collector, endpoint.port), name


# --- certificates


def certificates(objs: list[Obj]) -> dict[str, Obj]:
    return {o["spec"]["secretName"]: o for o in objs if o["kind"] == "Certificate"}


def _hours(duration: str) -> float:
    match = re.fullmatch(r"(\d+)h", duration)
    assert match, f"durations are written in hours here: {duration}"
    return float(match.group(1))


def test_certificates_rotate_before_expiry_with_new_keys() -> None:
    objs = render("prod-gpu")
    certs = certificates(objs)
    assert set(certs) == {"inference-tls", "persistence-tls"}
    issuers = {yaml.safe_dump(c["spec"]["issuerRef"]) for c in certs.values()}
    assert len(issuers) == 1, "one issuer for both, set in one place"
    patch = yaml.safe_load(
        (K8S / "overlays" / "prod-gpu-core" / "certificate-issuer.yaml").read_text()
    )
    for cert in certs.values():
        spec = cert["spec"]
        assert cert["apiVersion"] == "cert-manager.io/v1"
        assert spec["issuerRef"] == patch["spec"]["issuerRef"]
        assert spec["privateKey"]["rotationPolicy"] == "Always"
        assert spec["privateKey"]["encoding"] == "PKCS8"
        duration, renew = _hours(spec["duration"]), _hours(spec["renewBefore"])
        # Renewed well before expiry, and well after issue (cert-manager requires it).
        assert duration / 4 <= renew < duration / 2
        assert "digital signature" in spec["usages"]
        assert "server auth" in spec["usages"]
    assert "client auth" in certs["inference-tls"]["spec"]["usages"]
    assert "client auth" not in certs["persistence-tls"]["spec"]["usages"]


def test_certificates_cover_the_names_their_clients_dial() -> None:
    objs = render("prod-gpu")
    ns = namespace_of(objs)
    certs = certificates(objs)
    inference = container(find(objs, "Deployment", "inference"), "inference")
    dialled = env_values(inference)["PERSISTENCE_TARGET"].rsplit(":", 1)[0]
    persistence_names = set(certs["persistence-tls"]["spec"]["dnsNames"])
    assert dialled in persistence_names
    for service_name, secret in (
        ("persistence", "persistence-tls"),
        ("inference", "inference-tls"),
    ):
        service = find(objs, "Service", service_name)["metadata"]["name"]
        names = set(certs[secret]["spec"]["dnsNames"])
        expected = {service, f"{service}.{ns}", f"{service}.{ns}.svc"}
        assert expected | {f"{service}.{ns}.svc.cluster.local"} <= names, secret
        assert all(n.split(".")[0] == service for n in names), f"{secret}: foreign names"


def test_writer_identities_are_the_inference_client_identity() -> None:
    objs = render("prod-gpu")
    persistence = env_values(container(find(objs, "Deployment", "persistence"), "persistence"))
    writers = [w.strip() for w in persistence["WRITER_IDENTITIES"].split(",")]
    inference_cert = certificates(objs)["inference-tls"]["spec"]
    # A client certificate's caller name is its first SAN: that one must be the writer.
    assert writers == [inference_cert["dnsNames"][0]]
    assert "TLS_CLIENT_CA_FILE" in persistence, "writer identities need mutual TLS"


# --- mounts and the settings that point at them


def _mounted_file(deployment: Obj, c: Obj, path: str) -> tuple[Obj, Obj]:
    """The volume mount and volume that hold `path`."""
    file = PurePosixPath(path)
    mounts = [m for m in c["volumeMounts"] if file.parent == PurePosixPath(m["mountPath"])]
    assert len(mounts) == 1, f"{path} is not directly in one mounted directory"
    volumes: list[Obj] = deployment["spec"]["template"]["spec"]["volumes"]
    volume = next(v for v in volumes if v["name"] == mounts[0]["name"])
    return mounts[0], volume


def _keys_of(objs: list[Obj], volume: Obj) -> set[str]:
    if "secret" in volume:
        secret = volume["secret"]["secretName"]
        if secret in certificates(objs):
            return CERT_MANAGER_KEYS
        if secret == WEBHOOK_SECRET:
            return WEBHOOK_SECRET_KEYS
        assert secret == AUTH_SECRET, f"unknown secret {secret}"
        return AUTH_SECRET_KEYS
    config_map = find(objs, "ConfigMap", volume["configMap"]["name"])
    return set(config_map["data"])


def test_no_secret_or_config_is_mounted_with_subpath(rendered: list[Obj]) -> None:
    # subPath mounts are copies taken at container start: renewals would never reach them.
    for workload in workloads(rendered):
        pod_spec = workload["spec"]["template"]["spec"]
        projected = {
            v["name"] for v in pod_spec["volumes"] if set(v) & {"secret", "configMap", "projected"}
        }
        for c in pod_spec["containers"]:
            for mount in c.get("volumeMounts", []):
                if mount["name"] in projected:
                    assert "subPath" not in mount, mount
                    assert "subPathExpr" not in mount, mount
                    assert mount.get("readOnly") is True, mount


def _assert_file_settings_are_mounted(objs: list[Obj], name: str) -> dict[str, str]:
    deployment = find(objs, "Deployment", name)
    c = container(deployment, name)
    files = {k: v for k, v in env_values(c).items() if FILE_SETTINGS.match(k)}
    for setting, path in files.items():
        mount, volume = _mounted_file(deployment, c, path)
        assert mount["readOnly"] is True, setting
        assert PurePosixPath(path).name in _keys_of(objs, volume), setting
        source: Obj = volume.get("secret") or volume["configMap"]
        assert "items" not in source, f"{setting}: mount every key, as the Secret has them"
    return files


@pytest.mark.parametrize("name", SERVICES)
def test_tls_and_auth_settings_point_at_mounted_files(name: str) -> None:
    objs = render("prod-gpu")
    files = _assert_file_settings_are_mounted(objs, name)
    assert {"TLS_CERT_FILE", "TLS_KEY_FILE", "AUTH_TOKENS_FILE", "AUTH_POLICY_FILE"} <= set(files)
    deployment = find(objs, "Deployment", name)
    c = container(deployment, name)
    env = env_values(c)
    # Certificate and key from the same Secret, which is this service's own Certificate.
    _, cert_volume = _mounted_file(deployment, c, env["TLS_CERT_FILE"])
    _, key_volume = _mounted_file(deployment, c, env["TLS_KEY_FILE"])
    assert cert_volume is key_volume
    cert = certificates(objs)[cert_volume["secret"]["secretName"]]
    assert cert["spec"]["dnsNames"][0].split(".")[0] == name


@pytest.mark.parametrize("overlay", ["prod-gpu-core", "prod-gpu"])
def test_prod_mounts_the_webhook_secrets_file_where_the_setting_points(overlay: str) -> None:
    # Without the file every callback is refused at submit.
    objs = render(overlay)
    files = _assert_file_settings_are_mounted(objs, "inference")
    assert "WEBHOOK_SECRETS_FILE" in files, "callbacks need the webhook signing secrets"
    deployment = find(objs, "Deployment", "inference")
    mount, volume = _mounted_file(
        deployment, container(deployment, "inference"), files["WEBHOOK_SECRETS_FILE"]
    )
    assert mount["readOnly"] is True
    assert volume["secret"]["secretName"] == WEBHOOK_SECRET
    assert volume["secret"].get("optional") is False, "a missing file would fail the start"


def test_inference_uses_mutual_tls_towards_persistence() -> None:
    objs = render("prod-gpu")
    env = env_values(container(find(objs, "Deployment", "inference"), "inference"))
    persistence = env_values(container(find(objs, "Deployment", "persistence"), "persistence"))
    for suffix in ("CA", "CERT", "KEY"):
        assert f"PERSISTENCE_TLS_{suffix}_FILE" in env
    # The client presents the inference certificate and trusts the CA the server's clients are
    # checked against: one private CA on both sides.
    assert env["PERSISTENCE_TLS_CERT_FILE"] == env["TLS_CERT_FILE"]
    assert env["PERSISTENCE_TLS_KEY_FILE"] == env["TLS_KEY_FILE"]
    assert PurePosixPath(env["PERSISTENCE_TLS_CA_FILE"]).name == "ca.crt"
    assert PurePosixPath(persistence["TLS_CLIENT_CA_FILE"]).name == "ca.crt"


def test_jwt_component_adds_jwt_callers_from_the_mounted_auth_secret(tmp_path: Path) -> None:
    # Rendered as an operator would use it: an overlay on top of prod-gpu with the component.
    def rel(p: Path) -> str:
        return os.path.relpath(p, tmp_path)

    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [rel(K8S / "overlays" / "prod-gpu")],
        "components": [rel(K8S / "components" / "jwt-auth")],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    objs = list(_render_cached(str(tmp_path)))
    files = _assert_file_settings_are_mounted(objs, "inference")
    assert PurePosixPath(files["AUTH_JWKS_FILE"]).name == "jwks.json"
    env = env_values(container(find(objs, "Deployment", "inference"), "inference"))
    assert "AUTH_TOKENS_FILE" in env, "JWTs come in addition to API keys"
    assert urlsplit(env["AUTH_JWT_ISSUER"]).scheme == "https"
    assert env["AUTH_JWT_AUDIENCE"]
    assert "AUTH_JWKS_FILE" not in env_values(
        container(find(render("prod-gpu"), "Deployment", "inference"), "inference")
    ), "opt-in only"


def test_dev_stays_plaintext_without_auth() -> None:
    objs = render("dev-cpu")
    assert not certificates(objs)
    for name in SERVICES:
        env = env_values(container(find(objs, "Deployment", name), name))
        assert not [k for k in env if FILE_SETTINGS.match(k)], name


# --- no secret values


_SECRET_VALUE = re.compile(
    r"-----BEGIN [A-Z ]*(PRIVATE KEY|CERTIFICATE)-----|\brpi_[A-Za-z0-9_-]{40,}|\b[0-9a-f]{64}\b"
)
_SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|_KEY|APIKEY|CREDENTIAL)", re.IGNORECASE)


def _source_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*") if p.is_file())


def test_no_secret_values_in_the_manifests(rendered: list[Obj]) -> None:
    for path in _source_files():
        found = _SECRET_VALUE.search(path.read_text())
        assert not found, f"{path}: {found.group(0)[:20]}..."
    for workload in workloads(rendered):
        for c in workload["spec"]["template"]["spec"]["containers"]:
            for entry in c.get("env", []):
                if _SECRET_NAME.search(entry["name"]) and "value" in entry:
                    # Only paths to mounted files, never the secret itself.
                    assert entry["name"].endswith("_FILE"), entry["name"]
                    assert entry["value"].startswith("/"), entry["name"]
    # Secrets rendered from the repository are the development ones only.
    secrets = {o["metadata"]["name"] for o in rendered if o["kind"] == "Secret"}
    if namespace_of(rendered) != "rpi-dev":
        assert not secrets
