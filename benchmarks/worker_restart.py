"""How long a model is unavailable when its worker dies: kill -9 the worker (under a light load
of one-line reviews), then time until TorchServe shows a READY worker again and until the next
answer is a 200. What a worker start costs is importing the handler, loading the runtime and
warming it up.

    python -m benchmarks.worker_restart --run runs/quick            # archive the run, then time it
    python -m benchmarks.worker_restart --mar other/bert_sentiment.mar --kills 5

Servers and load stay on 127.0.0.1. Prints one JSON object: each kill's seconds, their median,
the worker's start as its own log says it, and the machine.
"""
import argparse
import json
import os
import platform
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from harness.server import TorchServe  # noqa: E402


def light_load(server, stop: threading.Event, answered: list) -> None:
    """One request at a time until `stop`: (seconds since start, status) of each answer."""
    import requests
    started = time.monotonic()
    while not stop.is_set():
        try:
            status = requests.post(server.url, data="A fine, moving film.", timeout=30,
                                   headers={"Content-Type": "text/plain"}).status_code
        except requests.RequestException:
            status = 0
        answered.append((time.monotonic() - started, status))
        time.sleep(0.05)


def worker_pid(server) -> int | None:
    workers = [w for w in server.describe()["workers"] if w["status"] == "READY"]
    return int(workers[0]["pid"]) if workers else None


def time_kill(server, timeout: float = 120) -> dict:
    """kill -9 the READY worker: seconds until another READY worker, and until a 200, and the
    CPU seconds the new worker spent to get READY (its start's work, whatever else runs)."""
    import psutil
    import requests
    pid = worker_pid(server)
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    ready = answered = cpu = None
    while time.monotonic() - killed < timeout and answered is None:
        if ready is None and worker_pid(server) not in (None, pid):
            ready = time.monotonic() - killed
            times = psutil.Process(worker_pid(server)).cpu_times()
            cpu = times.user + times.system
        if ready is not None:
            response = requests.post(server.url, data="Great.", timeout=30,
                                     headers={"Content-Type": "text/plain"})
            if response.status_code == 200:
                answered = time.monotonic() - killed
        time.sleep(0.1)
    return {"ready_s": round(ready, 2) if ready else None,
            "first_200_s": round(answered, 2) if answered else None,
            "worker_cpu_s": round(cpu, 2) if cpu else None}


def machine() -> str:
    flags = set()
    model = platform.processor()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
    kinds = [name for name in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")
             if name in flags]
    return f"{model}, {os.cpu_count()} CPUs, {' '.join(kinds)}"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.worker_restart",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="a run directory, archived with the shipped "
                                                 "model-config.yaml")
    source.add_argument("--mar", type=Path, help="an existing bert_sentiment.mar")
    parser.add_argument("--kills", type=int, default=3)
    args = parser.parse_args(argv)
    if args.kills < 1:
        parser.error("--kills must be >= 1")
    with tempfile.TemporaryDirectory() as scratch:
        store = Path(scratch) / "store"
        if args.run:
            from training.archive import main as archive
            mar = archive([str(args.run), "--model-store", str(store)])
        else:
            store.mkdir()
            mar = store / "bert_sentiment.mar"
            mar.symlink_to(args.mar.resolve())
        with TorchServe(Path(scratch) / "ts", store) as server:
            server.wait_ready()
            stop, answered = threading.Event(), []
            load = threading.Thread(target=light_load, args=(server, stop, answered))
            load.start()
            try:
                time.sleep(2)
                kills = []
                for _ in range(args.kills):
                    kills.append(time_kill(server))
                    time.sleep(2)
            finally:
                stop.set()
                load.join()
            starts = [line for line in server.log("model_log").splitlines()
                      if "ready in" in line]
    readies = [k["ready_s"] for k in kills if k["ready_s"] is not None]
    cpus = [k["worker_cpu_s"] for k in kills if k["worker_cpu_s"] is not None]
    result = {"archive": str(args.mar or args.run), "machine": machine(), "kills": kills,
              "median_ready_s": round(statistics.median(readies), 2) if readies else None,
              "median_worker_cpu_s": round(statistics.median(cpus), 2) if cpus else None,
              "load_average": os.getloadavg(),
              "load_answers": len(answered),
              "load_failures": sum(status != 200 for _, status in answered),
              "worker_start_log": [line.split("]", 1)[-1].strip()[-160:] for line in starts]}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
