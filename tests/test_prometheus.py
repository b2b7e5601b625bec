"""A real Prometheus (Debian's `prometheus`) scrapes the TorchServe metrics port; we ask
Prometheus's own query API whether TorchServe's and our handler's metrics arrived."""
import subprocess
import time

import pytest
import requests

from harness.server import free_port
from harness.tools import tool

pytestmark = pytest.mark.serve


@pytest.fixture(scope="module")
def prometheus(torchserve, tmp_path_factory):
    binary = tool("prometheus", "Debian package `prometheus`; make tools")
    workdir = tmp_path_factory.mktemp("prometheus")
    (workdir / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: torchserve\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{torchserve.ports['metrics']}']\n")
    port = free_port()
    process = subprocess.Popen(
        [binary, f"--config.file={workdir / 'prometheus.yml'}",
         f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=open(workdir / "prometheus.log", "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("prometheus did not become ready: "
                        + (workdir / "prometheus.log").read_text()[-2000:])
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def query(prometheus: str, expression: str) -> list:
    response = requests.get(f"{prometheus}/api/v1/query", params={"query": expression}, timeout=10)
    response.raise_for_status()
    return response.json()["data"]["result"]


def test_prometheus_scrapes_torchserve_and_handler_metrics(torchserve, prometheus):
    for text in ("A wonderful film.", "Dull and boring."):
        response = requests.post(f"{torchserve.inference}/predictions/bert_sentiment",
                                 data=text.encode(), headers={"Content-Type": "text/plain"},
                                 timeout=30)
        assert response.status_code == 200
    wanted = {"ts_inference_requests_total": None, "TextsPerBatch_count": None,
              'PredictionsPerLabel{ModelName="bert_sentiment"}': None}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(wanted.values()):
        for expression in wanted:
            wanted[expression] = wanted[expression] or query(prometheus, expression)
        time.sleep(1)
    assert all(wanted.values()), f"not scraped: {[e for e, r in wanted.items() if not r]}"
    assert float(wanted["ts_inference_requests_total"][0]["value"][1]) >= 2
    # one slow scrape on a busy machine (the timeout is the 1 s interval) reads "down" for a
    # second; a target that never answers stays so
    while True:
        targets = requests.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"]
        health = [t["health"] for t in targets["activeTargets"]]
        if health == ["up"] or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert health == ["up"], targets["activeTargets"]
