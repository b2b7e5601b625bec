"""End to end through docker-compose: build the image, let model-init train a tiny model into a
temporary model store, serve it with TorchServe and talk to it on 127.0.0.1 only.

    BASE_IMAGE=local/python:3.11-slim-bookworm pytest -m docker tests/test_docker_e2e.py -s

Skipped when no Docker engine answers, when neither `docker-compose` nor `docker compose` is
there, or when the base image is not present locally (nothing is pulled); under CI=true each of
these fails instead (harness/tools.py). The stack runs
under its own compose project name (DOCKER_E2E_PROJECT, default bertsentiment-e2e) on free
loopback ports with a temporary model store, so a user's stack and ./model_store are left
alone. The image keeps the compose default tag (BERT_SENTIMENT_IMAGE, default
bert-sentiment:latest) so that the build cache serves both; DOCKER_E2E_BUILD=0 tests an
image built before (e.g. a CPU-only one built with TORCH_INDEX_URL) without rebuilding it.
Training data: IMDB_DATA_DIR (a directory with train.parquet, relative paths taken from the
repo root) or, when unset, synthetic reviews written to a temporary directory; the hub is
never needed. Every wait is bounded; the stack is taken down (`down -v`) at the end, pass or
fail.
"""
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests

from handler.cpus import native_int8
from harness.docker import BASE_IMAGE, BUILD_TIMEOUT, IMAGE, LOOPBACK, engine, run
from harness.http import JSON, assert_prediction, post
from harness.server import free_port, workers_once_settled
from harness.tools import missing
from tests.conftest import synthetic_reviews

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
PROJECT = os.environ.get("DOCKER_E2E_PROJECT", "bertsentiment-e2e")
READY_TIMEOUT = float(os.environ.get("DOCKER_E2E_READY_TIMEOUT", 600))   # model-init + startup
# the tiny model-init budget: seconds of training, not minutes
BUDGET = {"MODEL_INIT_MAX_TRAIN_SAMPLES": "64", "MODEL_INIT_MAX_EVAL_SAMPLES": "64",
          "MODEL_INIT_VALIDATION_SIZE": "64", "MODEL_INIT_MAX_LENGTH": "64",
          "MODEL_INIT_EPOCHS": "1"}


def compose_command():
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    try:
        if run(["docker", "compose", "version"], timeout=30).returncode == 0:
            return ["docker", "compose"]
    except (OSError, subprocess.TimeoutExpired):
        pass
    return None


def training_data(tmp_path_factory) -> Path:
    given = os.environ.get("IMDB_DATA_DIR")
    if given:
        path = Path(given) if Path(given).is_absolute() else REPO / given
        assert (path / "train.parquet").is_file(), f"IMDB_DATA_DIR={given}: no train.parquet"
        return path.resolve()
    path = tmp_path_factory.mktemp("reviews")
    synthetic_reviews(400).to_parquet(path / "train.parquet")
    path.chmod(0o755)
    (path / "train.parquet").chmod(0o644)
    return path


class Stack:
    def __init__(self, compose_cmd, env, store: Path):
        self.compose_cmd = compose_cmd
        self.env = env
        self.store = store
        self.inference = f"http://{LOOPBACK}:{env['INFERENCE_PORT']}"
        self.management = f"http://{LOOPBACK}:{env['MANAGEMENT_PORT']}"
        self.metrics = f"http://{LOOPBACK}:{env['METRICS_PORT']}"
        self.timings = {}

    def compose(self, *args, timeout=300, check=True) -> subprocess.CompletedProcess:
        result = run([*self.compose_cmd, "-p", PROJECT, "-f", str(COMPOSE_FILE), *args],
                     timeout=timeout, cwd=REPO, env=self.env)
        if check and result.returncode != 0:
            raise AssertionError(f"compose {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
        return result

    def containers(self, service=None, all_=True) -> list[str]:
        cmd = ["docker", "ps", "-q", "--no-trunc", "--filter",
               f"label=com.docker.compose.project={PROJECT}"]
        if service:
            cmd += ["--filter", f"label=com.docker.compose.service={service}"]
        if all_:
            cmd.append("-a")
        return run(cmd, timeout=30).stdout.split()

    def container(self, service) -> str:
        ids = self.containers(service)
        assert len(ids) == 1, f"expected one {service} container, found {ids}"
        return ids[0]

    def inspect(self, service) -> dict:
        result = run(["docker", "inspect", self.container(service)], timeout=30)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)[0]

    def logs(self, tail=150) -> str:
        try:
            result = self.compose("logs", "--no-color", "--tail", str(tail), timeout=60, check=False)
            return result.stdout[-12000:] + result.stderr[-2000:]
        except subprocess.TimeoutExpired:
            return "(compose logs timed out)"

    def wait_healthy(self, timeout=READY_TIMEOUT, min_restarts=0) -> float:
        """Seconds until the torchserve container is healthy and answers a prediction."""
        started = time.monotonic()
        last = None
        while time.monotonic() - started < timeout:
            init = self.containers("model-init")
            if init:
                state = self.inspect("model-init")["State"]
                if state["Status"] == "exited" and state["ExitCode"] != 0:
                    pytest.fail(f"model-init failed ({state['ExitCode']}):\n{self.logs()}")
            if self.containers("torchserve"):
                state = self.inspect("torchserve")
                last = (state["State"]["Status"], state["State"].get("Health", {}).get("Status"),
                        state["RestartCount"])
                if last[2] > min_restarts + 3:
                    pytest.fail(f"torchserve keeps restarting ({last}):\n{self.logs()}")
                if last[0] == "running" and last[1] == "healthy" and last[2] >= min_restarts:
                    try:
                        if post(self, "A wonderful film.").status_code == 200:
                            return time.monotonic() - started
                    except requests.RequestException:
                        pass
            time.sleep(1)
        pytest.fail(f"torchserve not healthy after {timeout:.0f} s (state {last}):\n{self.logs()}")

    def describe(self) -> dict:
        response = requests.get(f"{self.management}/models/bert_sentiment", timeout=10)
        assert response.status_code == 200, response.text
        return response.json()[0]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    compose_cmd = compose_command()
    if compose_cmd is None:
        missing("neither docker-compose nor `docker compose` is installed")
    engine()

    store = tmp_path_factory.mktemp("model_store")
    store.chmod(0o755)  # the container's model-server user must read it
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("MODEL_INIT_", "COMPOSE_", "TS_"))}
    env.update(BUDGET, BASE_IMAGE=BASE_IMAGE, BERT_SENTIMENT_IMAGE=IMAGE,
               MODEL_STORE_DIR=str(store),
               IMDB_DATA_DIR=str(training_data(tmp_path_factory)), INFERENCE_BIND=LOOPBACK,
               INFERENCE_PORT=str(free_port()), MANAGEMENT_PORT=str(free_port()),
               METRICS_PORT=str(free_port()), MODEL_INIT_PRESET="quick")
    stack = Stack(compose_cmd, env, store)
    stack.compose("down", "-v", "--remove-orphans", timeout=120, check=False)  # leftovers
    try:
        if os.environ.get("DOCKER_E2E_BUILD", "1") != "0":  # 0: test an image built before
            started = time.monotonic()
            stack.compose("build", timeout=BUILD_TIMEOUT)
            stack.timings["build_s"] = round(time.monotonic() - started, 1)
        elif run(["docker", "image", "inspect", IMAGE], timeout=30).returncode != 0:
            pytest.fail(f"DOCKER_E2E_BUILD=0 but there is no image {IMAGE}")
        started = time.monotonic()
        stack.compose("up", "-d", timeout=READY_TIMEOUT)
        stack.timings["up_returned_s"] = round(time.monotonic() - started, 1)
        stack.wait_healthy(timeout=max(60.0, READY_TIMEOUT - (time.monotonic() - started)))
        stack.timings["up_to_first_prediction_s"] = round(time.monotonic() - started, 1)
        print(f"\ndocker e2e timings: {stack.timings}")
        yield stack
    finally:
        stack.compose("down", "-v", "--remove-orphans", "--timeout", "30", timeout=180,
                      check=False)


def test_model_init_trained_and_installed_the_archive(stack):
    state = stack.inspect("model-init")["State"]
    assert state["Status"] == "exited" and state["ExitCode"] == 0
    logs = stack.compose("logs", "--no-color", "model-init", timeout=60).stdout
    assert "training one now" in logs and "wrote /app/model_store/bert_sentiment.mar" in logs, logs
    assert "preset full" in logs  # tells how to train the full model instead
    # the int8 try only where this host's CPU would serve it (VNNI/AMX): the container reads
    # the host's /proc/cpuinfo
    if native_int8():
        assert "int8:       tried" in logs and "int8: accuracy" in logs, logs
    else:
        assert "int8:       skipped" in logs and "--no-int8" in logs, logs
        assert "int8: accuracy" not in logs, logs
    mar = stack.store / "bert_sentiment.mar"
    assert mar.is_file() and mar.stat().st_size > 1_000_000
    # written by root in the container, owned like the store directory on the host
    assert (mar.stat().st_uid, mar.stat().st_gid) == (stack.store.stat().st_uid,
                                                      stack.store.stat().st_gid)
    assert mar.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in stack.store.iterdir()] == ["bert_sentiment.mar"]  # no leftovers


def test_model_init_exits_at_once_when_the_archive_exists(stack):
    before = (stack.store / "bert_sentiment.mar").stat().st_mtime_ns
    started = time.monotonic()
    result = stack.compose("run", "--rm", "--no-deps", "model-init", timeout=120)
    assert "nothing to do" in result.stdout, result.stdout + result.stderr
    assert time.monotonic() - started < 60
    assert (stack.store / "bert_sentiment.mar").stat().st_mtime_ns == before


def test_predictions_in_all_three_formats(stack):
    assert_prediction(post(stack, "A wonderful, moving film with brilliant actors."))
    assert_prediction(post(stack, json.dumps({"text": "Boring plot, awful acting."}), JSON))
    texts = ["A superb story.", "A dull waste of time.", "I loved the music."]
    answers = assert_prediction(post(stack, json.dumps({"texts": texts}), JSON))
    assert isinstance(answers, list) and len(answers) == len(texts)


def test_workers_scale_through_the_loopback_management_port(stack):
    assert len(stack.describe()["workers"]) == 1
    response = requests.put(f"{stack.management}/models/bert_sentiment",
                            params={"min_worker": 2, "synchronous": "true"}, timeout=180)
    assert response.status_code == 200, response.text
    workers = workers_once_settled(stack, 2, timeout=10)
    assert len(workers) == 2 and all(w["status"] == "READY" for w in workers), workers
    assert post(stack, "great").status_code == 200

    # asynchronous: TorchServe 0.12 scales down, but a synchronous scale-down may answer 500
    # ("Failed to start workers ...", after "WorkerThread interrupted during waitFor")
    response = requests.put(f"{stack.management}/models/bert_sentiment",
                            params={"min_worker": 1, "max_worker": 1}, timeout=60)
    assert response.status_code in (200, 202), response.text
    workers = workers_once_settled(stack, 1, timeout=60)
    assert len(workers) == 1 and workers[0]["status"] == "READY", workers


def test_prometheus_metrics_on_the_loopback_metrics_port(stack):
    assert post(stack, "A brilliant film.").status_code == 200
    response = requests.get(f"{stack.metrics}/metrics", timeout=30)
    assert response.status_code == 200
    assert "ts_inference_requests_total" in response.text
    assert "TextsPerBatch" in response.text, response.text[:3000]


def test_container_ports_user_mounts_and_init(stack):
    details = stack.inspect("torchserve")
    ports = details["NetworkSettings"]["Ports"]
    for port in ("8080/tcp", "8081/tcp", "8082/tcp"):
        assert ports.get(port), (port, ports)
        assert {binding["HostIp"] for binding in ports[port]} == {LOOPBACK}, (port, ports[port])
    for port in ("8081", "8082"):
        result = run(["docker", "port", stack.container("torchserve"), port], timeout=30)
        assert result.returncode == 0 and result.stdout.strip(), result.stderr
        assert all(line.startswith(f"{LOOPBACK}:") for line in result.stdout.split()), result.stdout
    assert details["Config"]["User"] not in ("", "root", "0")
    uid = run(["docker", "exec", details["Id"], "id", "-u"], timeout=30).stdout.strip()
    assert uid not in ("", "0")
    pid1 = run(["docker", "exec", details["Id"], "cat", "/proc/1/comm"], timeout=30).stdout.strip()
    assert pid1 == "tini"
    store = [m for m in details["Mounts"] if m["Destination"] == "/app/model_store"]
    assert len(store) == 1 and store[0]["RW"] is False
    assert details["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert details["State"]["Health"]["Status"] == "healthy"


def test_restart_serves_the_model_again(stack):
    stack.compose("restart", "torchserve", timeout=180)
    stack.wait_healthy(timeout=300)
    assert_prediction(post(stack, "The story was moving."))


def test_a_crashed_server_is_restarted(stack):
    """Killing the Java frontend ends the container's main process; the restart policy
    brings it back and the model is served again."""
    before = stack.inspect("torchserve")["RestartCount"]
    kill = ("for p in /proc/[0-9]*; do [ \"$(cat $p/comm 2>/dev/null)\" = java ] && "
            "kill -9 ${p#/proc/}; done; true")
    run(["docker", "exec", stack.container("torchserve"), "sh", "-c", kill], timeout=30)
    stack.wait_healthy(timeout=300, min_restarts=before + 1)
    assert stack.inspect("torchserve")["RestartCount"] >= before + 1


def test_stop_is_graceful_and_down_leaves_nothing(stack):
    started = time.monotonic()
    stack.compose("stop", "--timeout", "30", "torchserve", timeout=120)
    assert time.monotonic() - started < 30  # SIGTERM reached TorchServe; no SIGKILL needed
    assert stack.inspect("torchserve")["State"]["ExitCode"] != 137
    stack.compose("down", "-v", "--remove-orphans", timeout=180)
    assert stack.containers() == []
    networks = run(["docker", "network", "ls", "-q", "--filter",
                    f"label=com.docker.compose.project={PROJECT}"], timeout=30).stdout.split()
    assert networks == []
    assert (stack.store / "bert_sentiment.mar").is_file()  # the bind-mounted store is kept


def test_model_init_without_data_takes_the_hub_path(stack, tmp_path):
    """`make up` on a machine with internet: IMDB_DATA_DIR unset, so model-init gets the empty
    no-data mount and must hand the hub id to the real `datasets.load_dataset`, up to the
    training call. The hub is unreachable here (HF_HUB_OFFLINE=1 makes that immediate): the run
    ends with the loader's own error about stanfordnlp/imdb, never 'does not exist'."""
    store = tmp_path / "empty-store"
    store.mkdir()
    store.chmod(0o777)
    env = {key: value for key, value in stack.env.items() if key != "IMDB_DATA_DIR"}
    env["MODEL_STORE_DIR"] = str(store)
    project = [*stack.compose_cmd, "-p", PROJECT + "-nodata", "-f", str(COMPOSE_FILE)]
    try:
        result = run([*project, "run", "--rm", "--no-deps", "-e", "HF_HUB_OFFLINE=1",
                      "-e", "HF_DATASETS_OFFLINE=1", "model-init"], timeout=300, cwd=REPO,
                     env=env)
    finally:
        run([*project, "down", "--remove-orphans"], timeout=120, cwd=REPO, env=env)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "--data stanfordnlp/imdb" in output, output[-3000:]
    assert "could not load dataset 'stanfordnlp/imdb'" in output, output[-3000:]
    assert "does not exist" not in output, output[-3000:]
    assert not (store / "bert_sentiment.mar").exists()
