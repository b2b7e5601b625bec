"""The archive is self-contained: `bert_sentiment.mar` serves on a stock TorchServe started the
way TorchServe's own docs start one, in an empty directory:

    torchserve --start --model-store DIR --models bert_sentiment=bert_sentiment.mar

TorchServe's default config (token auth on, metrics_mode log, its default metrics file), with
one departure: a config file that only moves the ports to free loopback ones, so the test never
collides with another server on 8080-8082.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from harness.http import assert_prediction
from harness.server import free_port, read_log

pytestmark = pytest.mark.serve


@pytest.fixture(scope="module")
def stock_server(tiny_archive, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("stock-ts")
    store = workdir / "store"
    store.mkdir()
    shutil.copy2(tiny_archive, store / "bert_sentiment.mar")
    ports = {name: free_port() for name in ("inference", "management", "metrics")}
    (workdir / "ports.properties").write_text(
        "".join(f"{name}_address=http://127.0.0.1:{port}\n" for name, port in ports.items())
        + f"grpc_inference_port={free_port()}\ngrpc_management_port={free_port()}\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith("TS_")}
    env.update(TMPDIR=str(workdir), TEMP=str(workdir))
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "torchserve"), "--start", "--foreground",
         "--model-store", str(store), "--models", "bert_sentiment=bert_sentiment.mar",
         "--ts-config", str(workdir / "ports.properties")],
        cwd=workdir, env=env, stdout=open(workdir / "stdout.log", "wb"),
        stderr=subprocess.STDOUT, start_new_session=True)
    server = {"workdir": workdir, "process": process,
              "inference": f"http://127.0.0.1:{ports['inference']}",
              "management": f"http://127.0.0.1:{ports['management']}"}
    try:
        wait_ready(server)
        yield server
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def keys(server) -> dict:
    """Token auth at its default: keys are written to key_file.json in the working directory."""
    document = json.loads((server["workdir"] / "key_file.json").read_text())
    return {name: document[name]["key"] for name in ("inference", "management")}


def wait_ready(server, timeout=180):
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if server["process"].poll() is not None:
            break
        try:
            key = keys(server)["management"]
            response = requests.get(f"{server['management']}/models/bert_sentiment",
                                    headers={"Authorization": f"Bearer {key}"}, timeout=5)
            if response.ok and any(w["status"] == "READY" for w in response.json()[0]["workers"]):
                return
        except (OSError, ValueError, KeyError, requests.RequestException):
            pass
        time.sleep(0.5)
    raise AssertionError("stock TorchServe did not get a READY worker:\n" +
                         (read_log(server["workdir"] / "logs", "model_log")[-3000:]
                          or "no model_log"))


def test_predictions_on_a_stock_torchserve_with_token_auth(stock_server):
    url = f"{stock_server['inference']}/predictions/bert_sentiment"
    body = {"texts": ["A wonderful, moving film.", "Dull and boring."]}
    refused = requests.post(url, json=body, timeout=30)  # auth is really on
    assert refused.status_code in (400, 401), refused.text
    assert "token" in refused.text.lower(), refused.text
    bearer = {"Authorization": f"Bearer {keys(stock_server)['inference']}"}
    for _ in range(3):
        answers = assert_prediction(requests.post(url, json=body, headers=bearer, timeout=30))
        assert len(answers) == 2
    response = requests.post(url, data=b"", headers={**bearer, "Content-Type": "text/plain"},
                             timeout=30)
    assert response.status_code == 400 and response.json()["code"] == 400


def test_custom_metrics_are_emitted_on_a_stock_torchserve(stock_server):
    """With TorchServe's default metrics file (none of ours declared) the handler registers its
    metrics itself and emits them: the frontend receives every one (ts_log.log records what the
    worker sends). A stock frontend then drops undeclared model metrics from its own output
    unless `model_metrics_auto_detect=true`; serving/metrics.yaml declares them."""
    wanted = {"TextsPerBatch", "RequestsPerBatch", "TokensPerBatch", "TruncatedTexts",
              "PredictionsPerLabel", "HandlerInferenceTime"}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = read_log(stock_server["workdir"] / "logs", "ts_log")
        if all(f"[METRICS]{name}." in text for name in wanted):
            break
        time.sleep(0.5)
    missing = [name for name in wanted if f"[METRICS]{name}." not in text]
    assert not missing, f"the worker never emitted {missing}"
    model_log = read_log(stock_server["workdir"] / "logs", "model_log")
    assert "not emitted" not in model_log and "MetricsCacheKeyError" not in model_log
