"""Graceful stop for a TorchServe replica behind a load balancer.

TorchServe 0.12 does not drain: on SIGTERM its frontend closes every open connection, and under
`tini -g` the workers get the signal too, so the requests in flight fail (measured on the
project image: 3 of the 4 requests in flight at `docker stop` got a connection error). This
wrapper runs the command it is given (serve.sh) in a session of its own, out of reach of
tini's group signal, and tells the load balancer whether to send requests:

    GET :8083/ready   200 while the model has a READY worker (docker/healthcheck.py), else 503

On SIGTERM (`docker stop`, a Swarm update or scale-down) it answers 503 at once, waits
DRAIN_MIN seconds for the load balancer to notice (HAProxy: 2 checks 0.5 s apart), then until
no connection is open on the inference port (HAProxy opens one per request:
`option http-server-close`), at most DRAIN_MAX seconds; only then does it stop TorchServe.
It exits with 0 after a drained stop, else with TorchServe's status. stop_grace_period must
exceed DRAIN_MAX plus TorchServe's own stop (a few seconds).

    tini -g -- python drain.py serve.sh [torchserve args...]
"""
import contextlib
import io
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, "/usr/local/bin")
import healthcheck  # noqa: E402  docker/healthcheck.py: /ping and a READY worker

READY_PORT = int(os.environ.get("DRAIN_READY_PORT", 8083))
INFERENCE_PORT = int(os.environ.get("TS_INFERENCE_ADDRESS", ":8080").rsplit(":", 1)[1])
DRAIN_MIN = float(os.environ.get("DRAIN_MIN", 2))
DRAIN_MAX = float(os.environ.get("DRAIN_MAX", 20))
stopping = threading.Event()
ready = threading.Event()


def log(message: str) -> None:
    print(f"drain: {message}", file=sys.stderr, flush=True)


def open_connections(port: int) -> int:
    """ESTABLISHED TCP connections on a local port, from /proc/net/tcp{,6} (this netns)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


def watch_readiness() -> None:
    """Refresh `ready` every half second (the check itself prints: keep it quiet)."""
    while not stopping.is_set():
        with contextlib.redirect_stdout(io.StringIO()):
            healthy = healthcheck.main() == 0
        ready.set() if healthy else ready.clear()
        stopping.wait(0.5)


class Readiness(BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path == "/ready" and ready.is_set() and not stopping.is_set()
        body = b"ready\n" if ok else b"not ready\n"
        self.send_response(200 if ok else 503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # one line per check would flood the log
        pass


def drain(server: subprocess.Popen) -> None:
    started = time.monotonic()
    log(f"stop requested: not ready; draining (at least {DRAIN_MIN:g} s, at most {DRAIN_MAX:g} s)")
    time.sleep(DRAIN_MIN)
    while open_connections(INFERENCE_PORT) and time.monotonic() - started < DRAIN_MAX:
        if server.poll() is not None:
            return
        time.sleep(0.1)
    left = open_connections(INFERENCE_PORT)
    log(f"drained in {time.monotonic() - started:.1f} s ({left} connections still open); "
        "stopping TorchServe")


def main() -> int:
    if len(sys.argv) < 2:
        sys.exit("usage: drain.py COMMAND [ARGS...]")
    server = subprocess.Popen(sys.argv[1:], start_new_session=True)
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    threading.Thread(target=watch_readiness, daemon=True).start()
    http = ThreadingHTTPServer(("0.0.0.0", READY_PORT), Readiness)
    threading.Thread(target=http.serve_forever, daemon=True).start()

    while not stopping.is_set() and server.poll() is None:
        stopping.wait(0.2)
    if server.poll() is not None:  # TorchServe ended on its own: let the orchestrator see it
        log(f"TorchServe exited with {server.returncode}")
        return server.returncode or 1
    drain(server)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    try:
        code = server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        code = server.wait()
    log(f"TorchServe stopped ({code})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
