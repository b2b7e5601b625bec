"""Zero-downtime model updates on one host with TorchServe's own model API, in the mode of
serving/config-model-api.properties (model API on, token auth on, no URLs allowed):

    register v2 from the store (warm: one worker, synchronous) -> check it on its versioned
    endpoint -> set it default -> wait for v1's queue to empty -> unregister v1

and back again, v1 -> v2 -> v1, while clients send predictions: not one may fail.

    pytest tests/test_model_rollout.py -s     (prints the timings; docs/ROLLOUTS.md)

v2 is the tiny run with its classifier's two rows swapped, so each answer tells which version
gave it.
The server is a native TorchServe on free loopback ports (harness/server.py's config, but
started without --disable-token-auth: this mode needs token auth).
"""
import shutil
import threading
import time
from pathlib import Path

import pytest
import requests

from harness.http import TEXT, post
from harness.server import MODEL_NAME, TorchServe, manifest_version

pytestmark = pytest.mark.serve

REPO = Path(__file__).resolve().parent.parent
MODE_CONFIG = REPO / "serving" / "config-model-api.properties"
# set per server by server_config(): ports, store, paths into the repo
LOCAL_KEYS = {"inference_address", "management_address", "metrics_address", "model_store",
              "metrics_config", "vmargs"}
PROBE = b"A wonderful film, the actors were great."
CLIENTS = 3
LOAD_LIMIT = 240.0  # seconds: hard bound on the load, whatever happens


def mode_settings() -> dict:
    """The model-API mode's own settings (everything but what server_config sets per server)."""
    settings = {}
    for line in MODE_CONFIG.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            if key.strip() not in LOCAL_KEYS:
                settings[key.strip()] = value.strip()
    return settings


class ModelApiServer(TorchServe):
    """TorchServe in the model-API mode on free loopback ports, token auth on."""

    def __init__(self, workdir: Path, store: Path):
        super().__init__(workdir, store, token_auth=True, **mode_settings())

    def manage(self, method: str, path: str, key: str = "management", **kwargs):
        headers = {"Authorization": f"Bearer {self.key(key)}"} if key else {}
        return requests.request(method, f"{self.management}{path}", headers=headers,
                                timeout=kwargs.pop("timeout", 60), **kwargs)

    def predict(self, version: str | None = None, timeout: float = 30):
        return post(self, PROBE, version=version, timeout=timeout)

    def versions(self) -> dict:
        """{version: description} of every registered version of the model."""
        response = self.manage("GET", f"/models/{MODEL_NAME}/all")
        assert response.status_code == 200, response.text
        return {entry["modelVersion"]: entry for entry in response.json()}


@pytest.fixture(scope="module")
def server(two_archives, tmp_path_factory):
    v1, v2 = two_archives
    store = tmp_path_factory.mktemp("rollout-store")
    shutil.copy2(v1, store / "bert_sentiment.mar")
    shutil.copy2(v2, store / "bert_sentiment-v2.mar")
    with ModelApiServer(tmp_path_factory.mktemp("ts-model-api"), store) as ts:
        ts.store = store
        ts.wait_ready()
        yield ts


def refused_for_the_token(response) -> bool:
    """TorchServe 0.12 answers a missing or wrong key with 400 "Token Authorization failed"."""
    return response.status_code in (400, 401) and "token" in response.text.lower()


def test_management_needs_its_token_and_registers_only_from_the_store(server, tmp_path):
    path = f"/models/{MODEL_NAME}"
    assert refused_for_the_token(server.manage("GET", path, key=None))
    assert refused_for_the_token(server.manage("GET", path, key="inference"))
    assert server.manage("GET", path).status_code == 200
    # token auth in TorchServe 0.12 is one switch: predictions need the inference key too
    assert refused_for_the_token(requests.post(f"{server.inference}/predictions/{MODEL_NAME}",
                                               data=PROBE, headers=TEXT, timeout=30))
    assert refused_for_the_token(requests.get(f"{server.inference}/ping", timeout=30))
    assert server.predict().status_code == 200

    outside = tmp_path / "elsewhere.mar"
    shutil.copy2(server.store / "bert_sentiment-v2.mar", outside)
    for url in (f"file://{outside}", "http://127.0.0.1:9/bert_sentiment.mar",
                "https://example.com/bert_sentiment.mar", "../bert_sentiment.mar"):
        response = server.manage("POST", "/models", params={"url": url})
        assert response.status_code in (400, 404), (url, response.status_code, response.text)
        assert "token" not in response.text.lower(), response.text
    assert refused_for_the_token(server.manage("POST", "/models", key="inference",
                                               params={"url": "bert_sentiment-v2.mar"}))
    assert len(server.versions()) == 1
    assert sorted(p.name for p in server.store.iterdir()) == ["bert_sentiment-v2.mar",
                                                              "bert_sentiment.mar"]


def roll(server, new_file: str, old: str, timings: dict) -> str:
    """TorchServe's own rollout: register, warm, check, set default, drain, unregister old."""
    # Asynchronously: a synchronous registration holds one of the Netty I/O threads, which the
    # inference API shares, until the new worker has loaded the model, and stalls every
    # inference connection on that thread meanwhile (measured: requests lost to client timeouts).
    started = time.monotonic()
    response = server.manage("POST", "/models", params={
        "url": new_file, "initial_workers": 1, "synchronous": "false"})
    assert response.status_code == 202, response.text
    (new,) = set(server.versions()) - {old}
    while time.monotonic() - started < 180:
        workers = server.versions()[new]["workers"]
        if workers and all(worker["status"] == "READY" for worker in workers):
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"version {new} has no READY worker after 180 s: {workers}")
    timings["register_and_warm_s"] = round(time.monotonic() - started, 2)
    for _ in range(3):  # warm and check the new version on its own endpoint first
        check = server.predict(version=new)
        assert check.status_code == 200, check.text

    timings["switching_at"] = time.monotonic()  # until here, requests get the old version
    response = server.manage("PUT", f"/models/{MODEL_NAME}/{new}/set-default")
    assert response.status_code == 200, response.text
    timings["switched_at"] = time.monotonic()  # from here on, the new one

    # Unregistering a version loses what it holds (measured: requests left unanswered until
    # the client's timeout): let the old version finish its queue and its worker's batch.
    drained = time.monotonic()
    while time.monotonic() - drained < 30:
        queue = server.versions()[old].get("jobQueueStatus", {})
        if queue.get("pendingRequests", 0) == 0:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"version {old} still has queued requests after 30 s")
    time.sleep(1.0)  # the batch in the worker: milliseconds here, ~1 s for MiniLM on 2 cores
    timings["drain_s"] = round(time.monotonic() - drained, 2)

    started = time.monotonic()
    response = server.manage("DELETE", f"/models/{MODEL_NAME}/{old}", timeout=120)
    assert response.status_code == 200, response.text
    timings["unregister_s"] = round(time.monotonic() - started, 2)
    assert set(server.versions()) == {new}
    return new


def test_round_trip_v1_v2_v1_under_load_fails_no_request(server, two_archives):
    v1_file, v2_file = "bert_sentiment.mar", "bert_sentiment-v2.mar"
    v1, v2 = (manifest_version(path) for path in two_archives)
    assert set(server.versions()) == {v1}
    reference = {v1: server.predict(version=v1).json()["probabilities"]["positive"]}

    results, lock, stop = [], threading.Lock(), threading.Event()
    deadline = time.monotonic() + LOAD_LIMIT
    key = server.key("inference")

    def client():
        session = requests.Session()
        while not stop.is_set() and time.monotonic() < deadline:
            sent = time.monotonic()
            try:
                response = session.post(f"{server.inference}/predictions/{MODEL_NAME}", data=PROBE,
                                        headers={**TEXT, "Authorization": f"Bearer {key}"},
                                        timeout=30)
                status = response.status_code
                positive = response.json()["probabilities"]["positive"] if status == 200 else None
            except (requests.RequestException, ValueError, KeyError) as error:
                status, positive = type(error).__name__, None
            with lock:
                results.append((sent, time.monotonic(), status, positive))

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    forward, back = {}, {}
    try:
        time.sleep(2.0)
        assert roll(server, v2_file, v1, forward) == v2
        reference[v2] = server.predict(version=v2).json()["probabilities"]["positive"]
        time.sleep(2.0)
        assert roll(server, v1_file, v2, back) == v1
        time.sleep(2.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=40)
    ended = time.monotonic()

    def shown(timings):
        return {key: value for key, value in timings.items()
                if key not in ("switching_at", "switched_at")}

    def version_of(positive):
        return min(reference, key=lambda version: abs(reference[version] - positive))

    assert abs(reference[v1] - reference[v2]) > 0.05, reference  # answers tell the versions apart
    failed = [r for r in results if r[2] != 200]
    served = [(sent, end, version_of(p)) for sent, end, status, p in results if status == 200]
    # once set-default has answered, every request sent after it gets the new version. A
    # request sent just before a switch may reach the server after it (CI: two sent in the
    # last few ms before the PUT went out were answered by the version it switched to), so
    # the version switched from is only owed what was answered before the next PUT went out.
    late_v1 = [r for r in served if r[0] > forward["switched_at"]
               and r[1] < back["switching_at"] and r[2] != v2]
    late_v2 = [r for r in served if r[0] > back["switched_at"] and r[2] != v1]
    seconds = ended - results[0][0]
    by = {version: sum(r[2] == version for r in served) for version in (v1, v2)}
    print(f"\nmodel API round trip v1 -> v2 -> v1 under load ({CLIENTS} clients): "
          f"{len(results)} requests in {seconds:.1f} s ({len(results) / seconds:.0f} req/s), "
          f"{len(failed)} failed; answers by v1 {by[v1]}, by v2 {by[v2]}; "
          f"v1->v2 {shown(forward)}, v2->v1 {shown(back)}")
    assert not failed, failed[:10]
    assert not late_v1 and not late_v2, (late_v1[:5], late_v2[:5])
    assert any(r[2] == v2 for r in served) and served[-1][2] == v1
    assert sorted(p.name for p in server.store.iterdir()) == ["bert_sentiment-v2.mar",
                                                              "bert_sentiment.mar"]
