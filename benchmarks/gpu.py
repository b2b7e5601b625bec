"""GPU benchmark: the in-process limit of the real handler on the GPU (best batch, fp16) against
the served throughput of TorchServe configurations tuned for the GPU, at concurrency 1-256, in
one run; and where the time of one handler call goes (tokenize, pad+copy, forward, serialise).

    python -m benchmarks.gpu --run runs/full --data $IMDB_DATA_DIR                 # on a GPU
    python -m benchmarks.gpu --run runs/quick --data $IMDB_DATA_DIR --device cpu --quick   # smoke

The in-process side builds the handler's model core (handler/predictor.py: the same runtime
factory, device, precision and encoding a worker uses) and calls its `predict`: no HTTP, no
queue. Each served configuration is an archive built by training.archive with a
generated model-config.yaml (batchSize / maxBatchDelay / workers, micro-batch and token budget
sized to the batch). On a GPU the encoder is cheap, so the Python tokenization, the copies and
the frontend may become the limit: the breakdown says which. GPU timings are taken between
`torch.cuda.synchronize` calls, so queued kernels are charged to the step that launched them.

Writes OUTPUT/bench-gpu.json and OUTPUT/bench-gpu.md. Servers and load stay on 127.0.0.1.
"""
import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.loadgen import load_levels, parse_levels  # noqa: E402
from benchmarks.stats import level, percentile, ratio  # noqa: E402
from harness.worker import load_predictor  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BASE_CONFIG = REPO / "handler" / "model-config.yaml"
P99_CONCURRENCY = 64


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def pick_device(requested: str):
    import torch
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch sees no CUDA GPU "
                         "(torch.cuda.is_available() is False); use --device cpu for a smoke run")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    return device


def synchronize(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sized_for(predictor, batch_size: int) -> None:
    """One forward pass per `batch_size` texts, whatever their length."""
    from dataclasses import replace
    predictor.settings = replace(predictor.settings, micro_batch_size=batch_size,
                                 token_budget=batch_size * predictor.encoding.max_length)


def inprocess_limit(predictor, texts: list[str], batch_sizes, seconds: float) -> dict:
    """Reviews per second of `Predictor.predict` on consecutive batches, per batch size, and the
    latency of one review (p50/p99)."""
    by_batch = {}
    for batch_size in batch_sizes:
        sized_for(predictor, batch_size)
        predictor.predict(texts[:batch_size])  # warm: kernels for this shape
        done, position, started = 0, 0, time.perf_counter()
        while done < 2 * batch_size or time.perf_counter() - started < seconds:
            predictor.predict([texts[(position + i) % len(texts)] for i in range(batch_size)])
            position += batch_size
            done += batch_size
        synchronize(predictor.device)
        by_batch[batch_size] = round(done / (time.perf_counter() - started), 1)
    sized_for(predictor, 1)
    latencies, started = [], time.perf_counter()
    while len(latencies) < 5 or time.perf_counter() - started < min(seconds, 5.0):
        began = time.perf_counter()
        predictor.predict([texts[len(latencies) % len(texts)]])
        latencies.append((time.perf_counter() - began) * 1000)
    best = max(by_batch, key=by_batch.get)
    return {"reviews_per_s_by_batch": by_batch, "best_batch": best,
            "best_reviews_per_s": by_batch[best],
            "batch1_p50_ms": round(percentile(latencies, 50), 2),
            "batch1_p99_ms": round(percentile(latencies, 99), 2)}


def time_breakdown(predictor, texts: list[str], batch_size: int, batches: int) -> dict:
    """Mean milliseconds per handler call of `batch_size` reviews, split into tokenize
    (encode_reviews), pad+copy (padding, pinned host-to-device copy), forward (the encoder) and
    serialise (device-to-host copy, calibrated probabilities, labels, JSON), with the device
    synchronized between steps. The same functions as `Predictor.predict`, timed one by one."""
    import torch

    from handler.encoding import encode_reviews
    from handler.inference import micro_batches, pad_batch
    sized_for(predictor, batch_size)
    device, runtime, settings = predictor.device, predictor.runtime, predictor.settings
    limit = getattr(runtime.config, "max_position_embeddings", None)
    labels = predictor.labels
    totals = dict.fromkeys(["tokenize", "pad_copy", "forward", "serialise"], 0.0)
    for step in range(batches + 1):  # the first call warms up and is not counted
        chunk = [texts[(step * batch_size + i) % len(texts)] for i in range(batch_size)]
        spent = dict.fromkeys(totals, 0.0)
        synchronize(device)
        mark = time.perf_counter()
        encoded = encode_reviews(predictor.tokenizer, chunk, predictor.encoding)
        spent["tokenize"] = time.perf_counter() - mark
        lengths = [len(ids) for ids in encoded["input_ids"]]
        parts, order = [], []
        with torch.inference_mode():
            for indices in micro_batches(lengths, settings.token_budget,
                                          settings.micro_batch_size, settings.pad_to_multiple_of):
                mark = time.perf_counter()
                inputs = pad_batch(encoded, indices, predictor.tokenizer.pad_token_id, device,
                                   settings.pad_to_multiple_of, limit)
                synchronize(device)
                spent["pad_copy"] += time.perf_counter() - mark
                mark = time.perf_counter()
                parts.append(runtime.forward(**inputs).float())
                synchronize(device)
                spent["forward"] += time.perf_counter() - mark
                order += indices
            mark = time.perf_counter()
            logits = torch.empty(len(chunk), len(labels))
            logits[torch.tensor(order)] = torch.cat(parts).cpu()
            rows = predictor.calibrator.apply(logits, lengths)
            answers = []
            for row in rows.tolist():
                best = max(range(len(row)), key=row.__getitem__)
                answers.append(json.dumps({"label": labels[best], "score": round(row[best], 6),
                                           "probabilities": {label: round(p, 6) for label, p
                                                             in zip(labels, row)}}))
            spent["serialise"] = time.perf_counter() - mark
        if step:
            for name in totals:
                totals[name] += spent[name]
    whole = sum(totals.values())
    return {"batch_size": batch_size, "batches": batches,
            "ms_per_call": {name: round(1000 * value / batches, 3)
                            for name, value in totals.items()},
            "share": {name: round(value / whole, 3) for name, value in totals.items()},
            "dominant": max(totals, key=totals.get)}


def parse_configs(text: str) -> list[dict]:
    """'64/5/1,128/5/2' -> batchSize / maxBatchDelay ms / workers per served configuration."""
    configs = []
    for part in text.split(","):
        try:
            batch, delay, workers = (int(value) for value in part.split("/"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad configuration {part!r}: expected "
                                             "batchSize/maxBatchDelay/workers, e.g. 64/5/1")
        if batch < 1 or delay < 0 or workers < 1:
            raise argparse.ArgumentTypeError(f"bad configuration {part!r}")
        configs.append({"name": f"ts-b{batch}-d{delay}-w{workers}", "batchSize": batch,
                        "maxBatchDelay": delay, "workers": workers})
    return configs


def write_model_config(config: dict, device, precision: str, max_length: int,
                       path: Path) -> Path:
    """handler/model-config.yaml with one served configuration: a handler call's batch is
    scored in one forward pass (micro-batch and token budget sized to batchSize)."""
    import yaml
    settings = yaml.safe_load(BASE_CONFIG.read_text())
    settings.update(minWorkers=config["workers"], maxWorkers=config["workers"],
                    batchSize=config["batchSize"], maxBatchDelay=config["maxBatchDelay"])
    handler = settings["handler"]
    handler.update(micro_batch_size=max(config["batchSize"], handler.get("micro_batch_size", 1)),
                   token_budget=max(config["batchSize"] * max_length,
                                    handler.get("token_budget", 1)))
    handler["gpu_precision" if device.type == "cuda" else "cpu_precision"] = precision
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


def measure_served(run_dir: Path, config: dict, device, precision: str, max_length: int,
                   texts: list[str], levels: list[int], args, workdir: Path) -> dict:
    import contextlib
    import io

    import torch

    from harness.server import TorchServe
    from training.archive import main as archive_main
    workdir.mkdir(parents=True)
    yaml_path = write_model_config(config, device, precision, max_length,
                                   workdir / "model-config.yaml")
    with contextlib.redirect_stdout(io.StringIO()):
        archive_main([str(run_dir), "--model-store", str(workdir / "store"), "--config-file",
                      str(yaml_path)])
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    # the queue must hold every client's request, or the top levels measure 503s
    with TorchServe(workdir / "ts", workdir / "store", number_of_gpu=gpus,
                    job_queue_size=max(1000, 4 * max(levels))) as server:
        cold = server.cold_start(timeout=args.start_timeout)
        deadline = time.monotonic() + args.start_timeout
        while sum(w["status"] == "READY" for w in server.describe()["workers"]) < \
                config["workers"] and time.monotonic() < deadline:
            time.sleep(0.5)
        ready = sum(w["status"] == "READY" for w in server.describe()["workers"])
        log(f"{config['name']}: first prediction after {cold:.1f} s, {ready} worker(s) ready")
        results = []
        for concurrency in levels:
            # the client's own CPU share says whether the load generator was the limit
            cpu, wall = time.process_time(), time.perf_counter()
            (entry,) = load_levels(server.url, texts, [concurrency], args.duration, args.warmup,
                                   args.max_requests, timeout=args.request_timeout)
            entry["client_cpu_share"] = round((time.process_time() - cpu) /
                                              (time.perf_counter() - wall), 2)
            results.append(entry)
            log(f"  c={concurrency:>3}: {entry['reviews_per_s']:8.1f} reviews/s  p50 "
                f"{entry['p50_ms']} ms  p99 {entry['p99_ms']} ms  errors {entry['errors']}  "
                f"client CPU {entry['client_cpu_share']:.0%}")
    best = max(results, key=lambda entry: entry["reviews_per_s"])
    return {**config, "cold_start_s": round(cold, 2), "workers_ready": ready,
            "levels": results, "best_concurrency": best["concurrency"],
            "best_reviews_per_s": best["reviews_per_s"]}


def machine(device) -> dict:
    import platform

    import torch
    info = {"platform": platform.platform(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
            "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    gpus=torch.cuda.device_count(), cuda=torch.version.cuda)
    return info


def run(args) -> dict:
    import torch

    from benchmarks.texts import load_split
    device = args.device
    run_meta = json.loads((args.run / "metrics.json").read_text())
    texts, _ = load_split(args.data, args.texts, run_meta.get("validation_size", 2000),
                          run_meta.get("seed", 42))
    import yaml
    shipped = yaml.safe_load(BASE_CONFIG.read_text())["handler"]
    precision = args.precision or shipped["gpu_precision" if device.type == "cuda"
                                          else "cpu_precision"]
    log(f"{len(texts)} held-out reviews on {device} ({precision}); concurrency "
        f"{args.concurrency}, {args.duration} s per level")
    started = time.monotonic()
    result = {"command": args.command, "machine": machine(device), "run_dir": str(args.run),
              "run_metrics": {k: run_meta.get(k) for k in ("preset", "base_model", "accuracy",
                                                           "max_length")},
              "settings": {"texts": len(texts), "precision": precision,
                           "concurrency": args.concurrency, "duration_s": args.duration,
                           "warmup_s": args.warmup, "batch_sizes": args.batch_sizes}}
    key = "gpu_precision" if device.type == "cuda" else "cpu_precision"
    predictor = load_predictor(args.run, device, **{key: precision})
    max_length = predictor.encoding.max_length
    log(f"in-process limit: Predictor.predict on {device}, batch sizes {args.batch_sizes}")
    limit = inprocess_limit(predictor, texts, args.batch_sizes, args.inprocess_seconds)
    log(f"  {limit['reviews_per_s_by_batch']} reviews/s by batch; batch-1 p50 "
        f"{limit['batch1_p50_ms']} ms")
    result["inprocess"] = {"precision": precision, "max_length": max_length, **limit}
    result["breakdown"] = time_breakdown(predictor, texts, limit["best_batch"], args.batches)
    log(f"  time per call at batch {limit['best_batch']}: {result['breakdown']['ms_per_call']} "
        f"ms; dominant: {result['breakdown']['dominant']}")
    del predictor
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the served workers get the GPU to themselves

    result["systems"] = {}
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        for config in args.configs:
            log(f"{config['name']}: batchSize {config['batchSize']}, maxBatchDelay "
                f"{config['maxBatchDelay']} ms, {config['workers']} worker(s)")
            result["systems"][config["name"]] = measure_served(
                args.run, config, device, precision, max_length, texts, args.concurrency, args,
                Path(tmp) / config["name"])
    result["ratios"] = {
        name: {"best_reviews_per_s": system["best_reviews_per_s"],
               "at_concurrency": system["best_concurrency"],
               "vs_inprocess": _round(ratio(system["best_reviews_per_s"],
                                            limit["best_reviews_per_s"])),
               f"p99_ms_at_c{P99_CONCURRENCY}": (level(system, P99_CONCURRENCY) or {}).get(
                   "p99_ms")}
        for name, system in result["systems"].items()}
    result["wall_time_s"] = round(time.monotonic() - started, 1)
    return result


def _round(value):
    return None if value is None else round(value, 3)


def markdown(result: dict) -> str:
    machine_info, limit = result["machine"], result["inprocess"]
    out = [f"Device: {machine_info.get('gpu', machine_info['device'])}; precision "
           f"{limit['precision']}, max_length {limit['max_length']}.", "",
           "| in-process (Predictor.predict) | reviews/s by batch size | best | batch-1 p50 ms |",
           "|---|---|---:|---:|",
           f"| {machine_info['device']} | " + ", ".join(
               f"{b}: {v:.1f}" for b, v in limit["reviews_per_s_by_batch"].items()) +
           f" | {limit['best_reviews_per_s']:.1f} (batch {limit['best_batch']}) | "
           f"{limit['batch1_p50_ms']} |"]
    breakdown = result["breakdown"]
    out += ["", f"Time per handler call of {breakdown['batch_size']} reviews (mean of "
                f"{breakdown['batches']}):", "", "| step | ms | share |", "|---|---:|---:|"]
    for name, ms in breakdown["ms_per_call"].items():
        out.append(f"| {name} | {ms:.3f} | {breakdown['share'][name]:.0%} |")
    out += ["", "| system | batch / delay | workers | concurrency | reviews/s | p50 ms | "
                "p99 ms | errors | client CPU |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, system in result["systems"].items():
        for entry in system["levels"]:
            out.append(f"| {name} | {system['batchSize']} / {system['maxBatchDelay']} ms | "
                       f"{system['workers']} | {entry['concurrency']} | "
                       f"{entry['reviews_per_s']:.1f} | {entry['p50_ms']} | {entry['p99_ms']} "
                       f"| {entry['errors']} | {entry['client_cpu_share']:.0%} |")
    out += ["", "| system | best reviews/s | at concurrency | vs in-process limit | "
                f"p99 ms at c={P99_CONCURRENCY} |", "|---|---:|---:|---:|---:|"]
    for name, entry in result["ratios"].items():
        vs = "-" if entry["vs_inprocess"] is None else f"{entry['vs_inprocess']:.2f}"
        p99 = entry[f"p99_ms_at_c{P99_CONCURRENCY}"]
        out.append(f"| {name} | {entry['best_reviews_per_s']:.1f} | {entry['at_concurrency']} "
                   f"| {vs} | {'-' if p99 is None else p99} |")
    return "\n".join(out) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=REPO / "runs" / "full",
                        help="exported run directory (default: runs/full)")
    parser.add_argument("--data", help="IMDB parquet directory (default: $IMDB_DATA_DIR)")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu")
    parser.add_argument("--precision", choices=["fp32", "fp16", "bf16"],
                        help="default: model-config.yaml's gpu_precision / cpu_precision")
    parser.add_argument("--concurrency", type=parse_levels,
                        help="default 1,4,16,64,128,256; --quick 1,16")
    parser.add_argument("--configs", type=parse_configs,
                        help="served configurations batchSize/maxBatchDelay/workers, comma-"
                             "separated (default on a GPU 64/5/1,128/5/2,256/10/4; on the CPU "
                             "16/10/1; --quick: the first)")
    parser.add_argument("--batch-sizes", help="in-process batch sizes (default on a GPU "
                                              "1,16,64,128,256; on the CPU 1,16; --quick 1,16)")
    parser.add_argument("--duration", type=float, help="s per level (default 15; --quick 3)")
    parser.add_argument("--warmup", type=float, help="s per level (default 3; --quick 1)")
    parser.add_argument("--inprocess-seconds", type=float, help="per batch size (default 4; "
                                                                "--quick 1)")
    parser.add_argument("--batches", type=int, help="handler calls timed for the breakdown "
                                                    "(default 20; --quick 3)")
    parser.add_argument("--texts", type=int, default=2000, help="held-out reviews to replay")
    parser.add_argument("--max-requests", type=int, default=100_000,
                        help="cap on measured requests per level")
    parser.add_argument("--start-timeout", type=float, default=300)
    parser.add_argument("--request-timeout", type=float, default=120)
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer, shorter levels")
    args = parser.parse_args(argv)
    args.device = pick_device(args.device)
    quick, gpu = args.quick, args.device.type == "cuda"
    args.concurrency = args.concurrency or ([1, 16] if quick else [1, 4, 16, 64, 128, 256])
    configs = args.configs or parse_configs("64/5/1,128/5/2,256/10/4" if gpu else "16/10/1")
    args.configs = configs[:1] if quick and not args.configs else configs
    args.batch_sizes = [int(b) for b in (args.batch_sizes or (
        "1,16" if quick or not gpu else "1,16,64,128,256")).split(",")]
    for name, full, short in (("duration", 15.0, 3.0), ("warmup", 3.0, 1.0),
                              ("inprocess_seconds", 4.0, 1.0), ("batches", 20, 3)):
        if getattr(args, name) is None:
            setattr(args, name, short if quick else full)
    return args


def main(argv=None) -> dict:
    import sys
    args = parse_args(argv)
    args.command = "python -m benchmarks.gpu " + " ".join(sys.argv[1:] if argv is None else argv)
    from benchmarks.texts import data_dir
    args.data = data_dir(args.data)
    if not (args.run / "metrics.json").is_file():
        raise SystemExit(f"error: {args.run} is not a finished run directory (no metrics.json)")
    args.output.mkdir(parents=True, exist_ok=True)
    result = run(args)
    (args.output / "bench-gpu.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.output / "bench-gpu.md").write_text(markdown(result))
    print(markdown(result))
    log(f"wrote {args.output}/bench-gpu.json and bench-gpu.md in {result['wall_time_s']} s")
    return result


if __name__ == "__main__":
    main()
