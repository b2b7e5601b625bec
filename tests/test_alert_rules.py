"""The alerting rules (docker/prometheus-rules.yml): promtool (Debian's `prometheus` package)
checks them and runs their unit tests on synthetic series (tests/alert_rules_test.yml); and
every metric they read is one TorchServe or our handler really exports (serving/metrics.yaml).
"""
import re
import subprocess
from pathlib import Path

import yaml

from harness.tools import tool

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "docker" / "prometheus-rules.yml"
UNIT_TESTS = REPO / "tests" / "alert_rules_test.yml"
# series that come from Prometheus itself and from kube-state-metrics, not from TorchServe
OTHER_EXPORTERS = {"up", "kube_pod_status_ready"}
PROMQL_WORDS = {"sum", "by", "rate", "or", "and", "unless", "on", "changes", "count", "abs",
                "increase", "e6"}


def promtool(*args: str) -> subprocess.CompletedProcess:
    binary = tool("promtool", "Debian package `prometheus`; make tools")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120)


def alerts() -> list:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_promtool_checks_the_rules_and_the_compose_config():
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout
    # docker/prometheus.yml loads the rules file next to it
    result = promtool("check", "config", str(REPO / "docker" / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_alerts_fire_and_stay_quiet_on_synthetic_series():
    result = promtool("test", "rules", str(UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_not_firing():
    fired, quiet = set(), set()
    for case in yaml.safe_load(UNIT_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names == {"BertSentimentHigh5xxRatio", "BertSentimentQueueFull",
                     "BertSentimentLatencyHigh", "BertSentimentWorkerRestarts",
                     "BertSentimentNoReadyWorker", "BertSentimentPredictionDrift"}
    assert names <= fired, f"never seen firing: {names - fired}"
    assert names <= quiet, f"never seen quiet: {names - quiet}"


def test_rules_read_metrics_that_are_exported():
    """Names as TorchServe 0.12 exports them in prometheus mode: declared in
    serving/metrics.yaml, counters without an added `_total`."""
    declared = yaml.safe_load((REPO / "serving" / "metrics.yaml").read_text())
    exported = {metric["name"] for section in ("ts_metrics", "model_metrics")
                for metrics in declared[section].values() for metric in metrics}
    for rule in alerts():
        expression = re.sub(r'\{[^}]*\}|"[^"]*"|\[[^\]]*\]', "", rule["expr"])
        names = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", expression)) - PROMQL_WORDS
        names -= {"namespace", "job", "pod", "instance"}  # grouping labels
        assert names - OTHER_EXPORTERS <= exported, f"{rule['alert']}: {names - exported}"
