"""Every overlay of deploy/k8s, rendered by kustomize and checked offline: against
the Kubernetes API schemas (kubernetes-validate), the KafkaTopic schema, and against
what the service itself would do with the settings it renders (the topics ``migrate``
creates, the ports it listens on)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from copy import deepcopy
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from ledger.ports import Stream
from services.adapters.kafka_ledger import topic_configs
from services.bootstrap import PROCESS_HEALTH
from services.settings import Settings, host_and_port
from tests.deploy import tools

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
# The oldest Kubernetes still supported upstream when this was written, and the newest
# whose schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ["1.32.0", kubernetes_validate.latest_version()]
TOPIC_SCHEMA = json.loads((Path(__file__).parent / "kafkatopic.schema.json").read_text())
SECRETS = {
    "consent-ledger-postgres",
    "consent-ledger-tokens",
    "consent-ledger-tls",
    "consent-ledger-checkpoint-key",
}


@cache
def _rendered(overlay: str) -> str:
    done = subprocess.run(
        [str(tools.kustomize()), "build", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"kustomize build {overlay} failed:\n{done.stderr}"
    return done.stdout


def render(overlay: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(_rendered(overlay)) if doc]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"want one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


def settings_of(docs: list[dict[str, Any]]) -> Settings:
    """The settings a pod of this overlay reads: the rendered ConfigMap, and a DSN from
    the secret (its value is the operator's; any will do to read the rest)."""
    data = one(docs, "ConfigMap")["data"]
    return Settings.from_env({**data, "CONSENT_POSTGRES_DSN": "postgresql://db/consent"})


def test_prod_serves_no_auditors_console() -> None:
    assert settings_of(render("prod")).console_listen == ""
    assert one(render("prod"), "ConfigMap")["data"]["CONSENT_CONSOLE_LISTEN"] == ""


def test_there_is_a_dev_and_a_prod_overlay() -> None:
    assert {"dev", "prod"} <= set(OVERLAYS)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_resource_validates_against_the_kubernetes_schemas(
    overlay: str, version: str
) -> None:
    kinds = []
    for doc in render(overlay):
        if doc["kind"] == "KafkaTopic":
            continue
        # strict: a field the schema does not know (a typo) is an error, not ignored
        kubernetes_validate.validate(doc, version, strict=True)
        kinds.append(doc["kind"])
    assert sorted(kinds) == sorted(
        [
            "ConfigMap",
            "Deployment",
            "Deployment",
            "HorizontalPodAutoscaler",
            "Job",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Service",
            "ServiceAccount",
        ]
    )


def test_the_kubernetes_validation_refuses_a_misspelt_field() -> None:
    deployment = deepcopy(one(render("prod"), "Deployment", "consent-ledger"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kafka_topics_validate_against_the_kafkatopic_schema(overlay: str) -> None:
    topics = [d for d in render(overlay) if d["kind"] == "KafkaTopic"]
    assert len(topics) == len(Stream) + 1  # and the checkpoints
    for topic in topics:
        jsonschema.validate(topic, TOPIC_SCHEMA)


def test_the_kafkatopic_schema_refuses_a_misspelt_field() -> None:
    topic = deepcopy(next(d for d in render("prod") if d["kind"] == "KafkaTopic"))
    topic["spec"]["replica"] = topic["spec"].pop("replicas")
    with pytest.raises(jsonschema.ValidationError, match="replica"):
        jsonschema.validate(topic, TOPIC_SCHEMA)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_kafkatopics_are_the_topics_migrate_creates(overlay: str) -> None:
    """One source of truth: the names, partitions, replicas and configs come from the
    code (KafkaLedgerSettings) fed with the rendered ConfigMap, and the KafkaTopic
    resources must say the same; a prefix that repeats ``consent.`` shows up here."""
    docs = render(overlay)
    kafka = settings_of(docs).kafka
    assert kafka is not None
    topics = {d["spec"]["topicName"]: d["spec"] for d in docs if d["kind"] == "KafkaTopic"}
    assert set(topics) == set(kafka.topic_partitions())
    for name, partitions in kafka.topic_partitions().items():
        spec = topics[name]
        assert "consent.consent." not in name
        assert spec["partitions"] == partitions, name
        assert spec["replicas"] == kafka.replication_factor, name
        assert {k: str(v) for k, v in spec["config"].items()} == topic_configs(kafka), name


def test_prod_topics_are_the_codes_names_unprefixed() -> None:
    kafka = settings_of(render("prod")).kafka
    assert kafka is not None
    assert {kafka.topic(s) for s in Stream} == {
        "consent.subscriber-events.v1",
        "consent.campaign-events.v1",
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_locked_down(overlay: str) -> None:
    for where, spec in pod_specs(render(overlay)):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, where
        assert pod["runAsUser"] != 0, where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        mounts_tmp = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for container in spec.get("initContainers", []) + spec["containers"]:
            name = f"{where} {container['name']}"
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert any(
                m["mountPath"] == "/tmp" and m["name"] in mounts_tmp
                for m in container["volumeMounts"]
            ), f"{name}: a writable /tmp"
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), name
            assert "memory" in resources["limits"], name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_read_the_configmap_and_only_the_documented_secrets(overlay: str) -> None:
    docs = render(overlay)
    configmap = one(docs, "ConfigMap")["metadata"]["name"]  # with kustomize's hash
    for where, spec in pod_specs(docs):
        for container in spec.get("initContainers", []) + spec["containers"]:
            assert container["envFrom"] == [{"configMapRef": {"name": configmap}}], where
            secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in container.get("env", [])}
            assert secrets <= SECRETS, where
        assert {v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v} <= SECRETS


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_api_probes_the_health_port_it_serves(overlay: str) -> None:
    docs = render(overlay)
    settings = settings_of(docs)
    _, health_port = host_and_port(settings.health_listen)
    _, grpc_port = host_and_port(settings.listen)
    _, metrics_port = host_and_port(settings.metrics_listen)
    container = one(docs, "Deployment", "consent-ledger")["spec"]["template"]["spec"]["containers"][
        0
    ]
    assert container["args"] == ["serve"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": grpc_port, "health": health_port, "metrics": metrics_port}
    # Ready only while CanSend can answer; alive (and started) while the process
    # serves, so that an outage of the broker or the database restarts no pod.
    assert container["readinessProbe"]["grpc"] == {"port": health_port}
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": health_port, "service": PROCESS_HEALTH}, probe
    # the tokens file, TLS files and checkpoint key the settings name are on mounted secrets
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    assert settings.tls is not None and settings.tokens_file is not None
    assert settings.checkpoint_key_file is not None
    files = (settings.tokens_file, settings.tls.cert_file, settings.tls.key_file)
    for path in (*files, settings.checkpoint_key_file):
        assert any(str(path).startswith(m + "/") for m in mounts), path


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_projector_runs_beside_api_pods_that_leave_projection_to_it(overlay: str) -> None:
    docs = render(overlay)
    assert settings_of(docs).projector == "off"
    projector = one(docs, "Deployment", "consent-ledger-projector")
    assert projector["spec"]["replicas"] >= 1
    # what a projector pod reads: the same settings, no tokens file needed
    data = one(docs, "ConfigMap")["data"]
    settings = Settings.from_env(
        {**data, "CONSENT_POSTGRES_DSN": "postgresql://db/consent"}, api=False
    )
    _, health_port = host_and_port(settings.health_listen)
    _, metrics_port = host_and_port(settings.metrics_listen)
    spec = projector["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["args"] == ["project"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": health_port, "metrics": metrics_port}
    assert container["readinessProbe"]["grpc"] == {"port": health_port}
    assert container["livenessProbe"]["grpc"] == {"port": health_port, "service": PROCESS_HEALTH}
    (wait,) = spec["initContainers"]
    assert wait["args"][:2] == ["migrate", "--check"]
    api = one(docs, "Deployment", "consent-ledger")["spec"]["template"]["spec"]
    assert container["image"] == wait["image"] == api["containers"][0]["image"]
    labels = projector["spec"]["template"]["metadata"]["labels"]
    assert projector["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # the API's Service, disruption budget and autoscaler are not the projector's
    api_selector = one(docs, "Service")["spec"]["selector"]
    assert not api_selector.items() <= labels.items()
    assert (
        one(docs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"]
        != (projector["metadata"]["name"])
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_migrations_run_before_the_api_serves(overlay: str) -> None:
    docs = render(overlay)
    job = one(docs, "Job")["spec"]["template"]["spec"]
    assert [c["args"] for c in job["containers"]] == [["migrate"]]
    api = one(docs, "Deployment", "consent-ledger")["spec"]["template"]["spec"]
    (wait,) = api["initContainers"]
    assert wait["args"][:2] == ["migrate", "--check"]
    assert wait["image"] == job["containers"][0]["image"] == api["containers"][0]["image"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_image_is_the_overlays_tagged_image(overlay: str) -> None:
    for where, spec in pod_specs(render(overlay)):
        for container in spec.get("initContainers", []) + spec["containers"]:
            repository, _, tag = container["image"].rpartition(":")
            assert repository.endswith("consent-ledger") and tag, (where, container["image"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_find_the_api_pods(overlay: str) -> None:
    docs = render(overlay)
    deployment = one(docs, "Deployment", "consent-ledger")
    labels = deployment["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str]) -> bool:
        return selector.items() <= labels.items()

    assert selects(deployment["spec"]["selector"]["matchLabels"])
    assert selects(one(docs, "Service")["spec"]["selector"])
    assert selects(one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"])
    assert selects(one(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"])
    for spread in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]:
        assert selects(spread["labelSelector"]["matchLabels"])
    hpa = one(docs, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["maxReplicas"]
    # a drain can always proceed, and never takes the service down to nothing
    assert one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] < hpa["minReplicas"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_network_policy_admits_the_served_ports_and_reaches_the_brokers(
    overlay: str,
) -> None:
    docs = render(overlay)
    settings = settings_of(docs)
    policy = one(docs, "NetworkPolicy")["spec"]
    admitted = {p["port"] for rule in policy["ingress"] for p in rule["ports"]}
    assert admitted == {
        host_and_port(settings.listen)[1],
        host_and_port(settings.metrics_listen)[1],
    }
    cluster = {
        d["metadata"]["labels"]["strimzi.io/cluster"] for d in docs if d["kind"] == "KafkaTopic"
    }
    brokers = [
        peer["podSelector"]["matchLabels"]["strimzi.io/cluster"]
        for rule in policy["egress"]
        for peer in rule.get("to", [])
        if "podSelector" in peer
    ]
    assert brokers == sorted(cluster)
    assert settings.kafka is not None
    bootstrap_port = int(settings.kafka.bootstrap_servers.rsplit(":", 1)[1])
    egress_ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    assert bootstrap_port in egress_ports
