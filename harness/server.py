"""A real TorchServe on free loopback ports for the tests and the benchmarks: configured with
serving/config.properties (ports, model store and given settings replaced), in its own process
group so `stop` ends it and all its children, and nothing else; its logs read back with what
log4j2 rolled away. `Server` is the process part, which benchmarks/seed_baseline.py's launcher
shares."""
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODEL_NAME = "bert_sentiment"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


LOG4J_ARG = "-Dlog4j.configurationFile="


def server_config(store: Path, ports: dict, **overrides) -> str:
    """serving/config.properties with loopback ports, the given model store and overrides. Its
    JVM arguments (heap bound included) are kept, with the log4j2 file's path made absolute:
    the server runs in its own work directory."""
    log4j = LOG4J_ARG + str(REPO / "serving" / "log4j2.xml")
    settings = {
        "inference_address": f"http://127.0.0.1:{ports['inference']}",
        "management_address": f"http://127.0.0.1:{ports['management']}",
        "metrics_address": f"http://127.0.0.1:{ports['metrics']}",
        "model_store": str(store),
        "metrics_config": str(REPO / "serving" / "metrics.yaml"),
        **{key: str(value) for key, value in overrides.items()},
    }
    lines, has_vmargs = [], "vmargs" in settings
    for line in (REPO / "serving" / "config.properties").read_text().splitlines():
        key, _, value = line.partition("=")
        key = key.strip()
        if key in settings:
            line = f"{key}={settings.pop(key)}"
        elif key == "vmargs":
            line = "vmargs=" + " ".join(log4j if arg.startswith(LOG4J_ARG) else arg
                                        for arg in value.split())
            has_vmargs = True
        lines.append(line)
    if not has_vmargs:
        settings["vmargs"] = log4j
    lines += [f"{key}={value}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def read_log(logs: Path, name: str) -> str:
    """TorchServe's `logs/<name>.log` with what log4j2 rolled away before it, oldest first: the
    shipped and the stock log4j2.xml roll every log at midnight and at 100 MB into
    `<name>.<day>.log.gz`, so a server that runs past midnight has its start in those."""
    rolled = sorted(Path(logs).glob(f"{name}.*.log.gz"), key=lambda path: path.stat().st_mtime)
    parts = [gzip.decompress(path.read_bytes()).decode(errors="replace") for path in rolled]
    current = Path(logs) / f"{name}.log"
    if current.is_file():
        parts.append(current.read_text(errors="replace"))
    return "".join(parts)


class Server:
    """A child process in its own session, with a log file and a health check."""
    process: subprocess.Popen
    workdir: Path
    log_name = "stdout.log"

    def auth(self, kind: str) -> dict:
        """Headers that authorize a request of this kind: none here."""
        return {}

    def log(self, name: str) -> str:
        """The whole of TorchServe's logs/<name>.log, rolled parts included (read_log)."""
        return read_log(self.workdir / "logs", name)

    def log_tail(self, lines: int = 60) -> str:
        text = ""
        stdout = self.workdir / self.log_name
        logs = {self.log_name: stdout.read_text(errors="replace") if stdout.is_file() else "",
                "logs/ts_log.log": self.log("ts_log"), "logs/model_log.log": self.log("model_log")}
        for name, log in logs.items():
            if log:
                text += f"\n--- {name}\n" + "\n".join(log.splitlines()[-lines:])
        return text

    def wait_for_prediction(self, timeout: float = 180, started: float | None = None) -> float:
        """Seconds from `started` (default: now) until one POST of a review gets a 200."""
        import requests
        started = time.monotonic() if started is None else started
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_tail()}")
            try:
                response = requests.post(self.url, data=b"A wonderful, moving film.", timeout=30,
                                         headers={"Content-Type": "text/plain",
                                                  **self.auth("inference")})
                if response.status_code == 200:
                    return time.monotonic() - started
            except (OSError, requests.ConnectionError, requests.Timeout):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"no successful prediction after {timeout} s: {self.log_tail()}")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server and all its children (frontend, workers)."""
        import psutil
        try:
            parent = psutil.Process(self.process.pid)
            processes = [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0.0
        total = 0.0
        for process in processes:
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total

    def cpu_by_role(self) -> dict:
        """`cpu_seconds` split by process: "frontend" (TorchServe's java), "worker" (its
        Python model workers), "server" (anything else: the launcher, a Flask server)."""
        import psutil
        try:
            parent = psutil.Process(self.process.pid)
            processes = [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return {}
        roles: dict[str, float] = {}
        for process in processes:
            try:
                times = process.cpu_times()
                command = " ".join(process.cmdline())
                role = ("frontend" if process.name() == "java" else
                        "worker" if "model_service_worker" in command else "server")
            except psutil.NoSuchProcess:
                continue
            roles[role] = roles.get(role, 0.0) + times.user + times.system
        return roles

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        except ProcessLookupError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class TorchServe(Server):
    """A real TorchServe on free loopback ports serving `store`/bert_sentiment.mar. It shares
    nothing with another TorchServe on the machine (a developer's `make serve`): gRPC ports,
    the launcher's pid file ($TMPDIR) and the worker sockets ($TEMP) are its own."""

    def __init__(self, workdir: Path, store: Path, token_auth: bool = False, **overrides):
        """`overrides`: config.properties settings; `token_auth`: TorchServe's default token
        authorization (keys in WORKDIR/key_file.json) instead of none."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.token_auth = token_auth
        self.ports = {name: free_port() for name in ("inference", "management", "metrics")}
        self.inference = f"http://127.0.0.1:{self.ports['inference']}"
        self.management = f"http://127.0.0.1:{self.ports['management']}"
        self.metrics = f"http://127.0.0.1:{self.ports['metrics']}"
        self.url = f"{self.inference}/predictions/{MODEL_NAME}"
        overrides.setdefault("grpc_inference_port", free_port())
        overrides.setdefault("grpc_management_port", free_port())
        store = Path(store).resolve()
        config = self.workdir / "config.properties"
        config.write_text(server_config(store, self.ports, **overrides))
        env = {key: value for key, value in os.environ.items() if not key.startswith("TS_")}
        env.update(LOG_LOCATION=str(self.workdir / "logs"),
                   METRICS_LOCATION=str(self.workdir / "logs"), HF_HUB_OFFLINE="1",
                   TOKENIZERS_PARALLELISM="false", TMPDIR=str(self.workdir),
                   TEMP=str(self.workdir))
        torchserve = Path(sys.executable).parent / "torchserve"
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [str(torchserve), "--start", "--foreground", "--ncs",
             *([] if token_auth else ["--disable-token-auth"]),
             "--ts-config", str(config), "--model-store", str(store)],
            cwd=self.workdir, env=env, stdout=open(self.workdir / self.log_name, "wb"),
            stderr=subprocess.STDOUT, start_new_session=True)

    def cold_start(self, timeout: float = 180) -> float:
        """Seconds from process start to the first successful prediction."""
        return self.wait_for_prediction(timeout, started=self.started)

    def key(self, kind: str) -> str:
        """`inference`, `management` or `API` from key_file.json (token auth: written at start)."""
        return json.loads((self.workdir / "key_file.json").read_text())[kind]["key"]

    def auth(self, kind: str) -> dict:
        """The Authorization header an `inference` or `management` request needs: none without
        token auth."""
        return {"Authorization": f"Bearer {self.key(kind)}"} if self.token_auth else {}

    def wait_ready(self, timeout: float = 180) -> float:
        """Seconds until /ping is healthy and the model has a READY worker (with token auth,
        asked with the keys, which exist only once the server has started)."""
        import requests
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"TorchServe exited: {self.log_tail()}")
            try:
                ping = requests.get(f"{self.inference}/ping", headers=self.auth("inference"),
                                    timeout=2)
                if ping.status_code == 200 and \
                        any(w["status"] == "READY" for w in self.describe()["workers"]):
                    return time.monotonic() - started
            except (OSError, requests.RequestException, KeyError, IndexError, ValueError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"TorchServe not ready after {timeout} s: {self.log_tail()}")

    def describe(self) -> dict:
        import requests
        return requests.get(f"{self.management}/models/{MODEL_NAME}",
                            headers=self.auth("management"), timeout=10).json()[0]


def frontend_process(url: str):
    """The psutil.Process of the java frontend listening on `url`'s port."""
    import psutil
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return psutil.Process(conn.pid)
    raise RuntimeError(f"no process listens on port {port}")


@contextmanager
def running(workdir: Path, store: Path, **overrides):
    """A `TorchServe` of its own once it is ready; stopped on leaving, ready or not."""
    with TorchServe(workdir, store, **overrides) as server:
        server.wait_ready()
        yield server


def workers_once_settled(server, count: int, timeout: float) -> list[dict]:
    """The model's workers once there are `count` of them, all READY, or as they are at the
    deadline. Even a synchronous scale-up needs the wait: TorchServe 0.12 answers it when the new
    worker reports its model loaded (WorkerThread.setState notifies its listener first), a moment
    before describe shows that worker READY rather than UNLOADING."""
    deadline = time.monotonic() + timeout
    while True:
        workers = server.describe()["workers"]
        settled = len(workers) == count and all(w["status"] == "READY" for w in workers)
        if settled or time.monotonic() > deadline:
            return workers
        time.sleep(0.5)


def manifest_version(mar: Path) -> str:
    """The version an archive is served under (MANIFEST.json's modelVersion: training/archive.py
    sets it to a hash of what produced the answers)."""
    import zipfile
    with zipfile.ZipFile(mar) as archive:
        return json.loads(archive.read("MAR-INF/MANIFEST.json"))["model"]["modelVersion"]
