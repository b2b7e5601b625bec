"""One benchmark run: every system against the same exported checkpoint and the same texts, on
this machine, in one go, so the ratios between systems are meaningful even when absolute numbers
are noisy. Two workloads, each server loaded with both in turn:
  long   held-out IMDB reviews (~200 tokens), from --data
  short  one-sentence reviews (~26 tokens): SST-2's validation sentences from --short-data
         (validation.parquet, typed as people type them), else data/short_reviews.jsonl

    python -m benchmarks.run --run runs/quick --data $IMDB_DATA_DIR --short-data $SST2_DATA_DIR
    python -m benchmarks.run ... --quick                   # smoke, ~3 min
    python -m benchmarks.run ... --workload short          # one workload only

Per level it reports throughput, latency and the CPU-ms per request of each process (TorchServe's
java frontend, its Python worker, the load client): on a machine shared with other work, CPU per
request moves much less than throughput does.

Systems:
  inprocess-PREC  the model called directly (serving encode + inference code), best batch size;
                  PREC is a torch precision, "openvino" or "openvino-int8" (the OpenVINO
                  runtime, training/quantize.py for int8): the in-process
                  limit of the targets is the best of them
  seed            benchmarks/seed_baseline.py: Flask threaded, HF model per request, batch 1, fp32
  ts-*            this service on TorchServe, one archive per serving configuration (generated
                  model-config.yaml passed to training.archive --config-file)

Writes OUTPUT/bench.json, OUTPUT/bench.png and OUTPUT/bench.md (the tables for
docs/PERFORMANCE.md). Every server listens on 127.0.0.1 and all load goes to 127.0.0.1.
"""
import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.loadgen import load_levels, parse_levels  # noqa: E402
from benchmarks.stats import check_targets, level, ratio  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BASE_CONFIG = REPO / "handler" / "model-config.yaml"
TARGET_CONCURRENCY = 16
# torch precisions, then the OpenVINO runtime: "openvino" (bf16 where the CPU has it, else f32)
# and "openvino-int8" (the run's int8 model, training/quantize.py)
PRECISIONS = ["fp32", "bf16", "int8", "openvino", "openvino-int8"]


def shipped_batching() -> tuple[int, int]:
    """(batchSize, maxBatchDelay) of handler/model-config.yaml."""
    import yaml
    settings = yaml.safe_load(BASE_CONFIG.read_text())
    return settings["batchSize"], settings["maxBatchDelay"]


def ts_config(name: str, precision: str, batch: int | None = None, delay: int | None = None,
              workers: int = 1, threads: int = 0, levels: str = "all",
              role: str = "precision") -> dict:
    """One served configuration; precision "openvino" is cpu_runtime openvino (bf16 where the
    CPU has it), "openvino-int8" the same runtime at int8, the others cpu_runtime torch at that
    cpu_precision. Batching not given is the shipped one. (TorchServe reads a maxBatchDelay <= 0
    as unset: its default, 100 ms.)"""
    shipped = shipped_batching()
    batch, delay = batch or shipped[0], delay or shipped[1]
    return {"name": name, "precision": precision, "batchSize": batch, "maxBatchDelay": delay,
            "workers": workers, "threads_per_worker": threads, "levels": levels, "role": role}


def serving_configs(default: str, quick: bool) -> list[dict]:
    """The TorchServe configurations worth comparing. Runtimes and precisions get the full
    concurrency sweep (the shipped batching, 1 worker x all cores); batching and
    workers x threads are ablations of the default at the idle and target concurrencies."""
    if quick:
        return [ts_config(f"ts-{p}", p) for p in dict.fromkeys((default, "fp32", "openvino"))]
    configs = [ts_config(f"ts-{p}", p) for p in PRECISIONS]
    configs += [
        ts_config(f"ts-{default}-b1", default, batch=1, levels="ablation",
                  role="no batching"),
        ts_config(f"ts-{default}-d5", default, batch=16, delay=5, levels="ablation",
                  role="batchSize 16, maxBatchDelay 5 ms"),
        ts_config(f"ts-{default}-d10", default, batch=16, delay=10, levels="ablation",
                  role="batchSize 16, maxBatchDelay 10 ms (the earlier default)"),
        ts_config(f"ts-{default}-b32-d20", default, batch=32, delay=20, levels="ablation",
                  role="batchSize 32, maxBatchDelay 20 ms"),
        ts_config(f"ts-{default}-2x1", default, workers=2, threads=1, levels="ablation",
                  role="2 workers x 1 thread"),
        ts_config(f"ts-{default}-1x1", default, workers=1, threads=1, levels="ablation",
                  role="1 worker x 1 thread (leaves a core to the frontend)"),
    ]
    return configs


def shipped_default(run_dir: Path) -> str:
    """What handler/model-config.yaml serves on this CPU from `run_dir`: a torch precision,
    "openvino" or "openvino-int8" (cpu_precision auto: bf16 where native, else the run's int8
    model if it has one; handler/openvino_runtime.py resolve_precision)."""
    import yaml
    handler = yaml.safe_load(BASE_CONFIG.read_text())["handler"]
    if handler.get("cpu_runtime", "torch") != "openvino":
        return handler.get("cpu_precision", "fp32")
    import openvino

    from handler.cpus import native_int8
    from handler.openvino_runtime import INT8_IR_FILE, resolve_precision
    computes = resolve_precision(
        handler.get("cpu_precision", "auto"),
        openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"),
        (Path(run_dir) / INT8_IR_FILE).is_file(), native_int8())
    return "openvino-int8" if computes == "int8" else "openvino"


def write_model_config(config: dict, path: Path) -> Path:
    """handler/model-config.yaml with one configuration's settings."""
    import yaml
    settings = yaml.safe_load(BASE_CONFIG.read_text())
    settings.update(minWorkers=config["workers"], maxWorkers=config["workers"],
                    batchSize=config["batchSize"], maxBatchDelay=config["maxBatchDelay"])
    openvino = config["precision"].startswith("openvino")
    precision = {"openvino": "bf16", "openvino-int8": "int8"}.get(config["precision"],
                                                                 config["precision"])
    settings["handler"].update(cpu_runtime="openvino" if openvino else "torch",
                               cpu_precision=precision,
                               threads_per_worker=config["threads_per_worker"])
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


def archive(run_dir: Path, config: dict, workdir: Path) -> Path:
    """A model store holding bert_sentiment.mar built with this configuration."""
    import contextlib
    import io

    from training.archive import main as archive_main
    store = workdir / "store"
    yaml_path = write_model_config(config, workdir / "model-config.yaml")
    with contextlib.redirect_stdout(io.StringIO()):
        archive_main([str(run_dir), "--model-store", str(store), "--config-file", str(yaml_path)])
    return store


# the CPU flags that decide which precisions run natively
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def machine() -> dict:
    import torch
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "cpus": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)), "cuda": torch.cuda.is_available()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                info["avx512_bf16"] = "avx512_bf16" in flags
                info["avx512_vnni"] = "avx512_vnni" in flags
                info["cpu_flags"] = [flag for flag in CPU_FLAGS if flag in flags]
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gb"] = round(int(line.split()[1]) / 1024 / 1024, 1)
        info["loadavg_at_start"] = os.getloadavg()
    except OSError:
        pass
    return info


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def measure_server(server, corpora: dict, levels, args) -> dict:
    """{workload: {"cold_start_s", "levels"}}: the server loaded with each workload in turn."""
    cold = server.cold_start(timeout=args.start_timeout)
    log(f"  first prediction after {cold:.1f} s; load at concurrency {levels}")
    measured = {}
    for workload, texts in corpora.items():
        results = load_levels(server.url, texts, levels, args.duration, args.warmup,
                              args.max_requests, timeout=args.request_timeout,
                              cpu_clock=server.cpu_seconds, cpu_roles=server.cpu_by_role)
        for entry in results:
            cpu = ", ".join(f"{role} {ms}" for role, ms in
                            entry.get("cpu_ms_per_request", {}).items())
            log(f"  {workload} c={entry['concurrency']:>3}: {entry['reviews_per_s']:7.1f} "
                f"reviews/s  p50 {entry['p50_ms']} ms  p99 {entry['p99_ms']} ms  errors "
                f"{entry['errors']}  CPU-ms per request: {cpu}  (load {os.getloadavg()[0]:.1f})")
            entry["loadavg"] = round(os.getloadavg()[0], 2)
        measured[workload] = {"cold_start_s": round(cold, 2), "levels": results}
    return measured


def load_corpora(args, run_meta: dict) -> tuple[dict, dict]:
    """({workload: texts}, {workload: where they came from}) for the chosen workloads."""
    from benchmarks.texts import load_short, load_split
    corpora, sources = {}, {}
    if args.workload in ("long", "both"):
        corpora["long"], _ = load_split(args.data, args.texts,
                                        run_meta.get("validation_size", 2000),
                                        run_meta.get("seed", 42))
        sources["long"] = f"IMDB held-out reviews ({args.data})"
    if args.workload in ("short", "both"):
        corpora["short"], sources["short"] = load_short(args.short_data, args.texts)
    return corpora, sources


def mean_tokens(run_dir: Path, texts: list[str], max_length: int) -> float:
    """Tokens per text as the model sees them (special tokens included, truncated)."""
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True,
                                             max_length=max_length)["input_ids"]]
    return round(sum(lengths) / len(lengths), 1)


def run_benchmark(args) -> dict:
    from benchmarks.seed_baseline import SeedBaseline
    from harness.server import TorchServe
    run_meta = json.loads((args.run / "metrics.json").read_text())
    max_length = args.max_length or run_meta.get("max_length", 256)
    corpora, sources = load_corpora(args, run_meta)
    log(f"workloads {', '.join(f'{w}: {len(t)} texts' for w, t in corpora.items())}, max_length "
        f"{max_length}, concurrency {args.concurrency}, {args.duration} s per level after "
        f"{args.warmup} s warm-up")
    ablation_levels = sorted({1, TARGET_CONCURRENCY} & set(args.concurrency)) or args.concurrency
    configs = serving_configs(args.precision, args.quick)
    wanted = set(args.systems.split(",")) if args.systems else None
    started = time.monotonic()
    result = {"command": args.command, "machine": machine(), "run_dir": str(args.run),
              "run_metrics": {k: run_meta.get(k) for k in ("preset", "base_model", "accuracy",
                                                           "max_length")},
              "settings": {"texts": len(next(iter(corpora.values()))), "max_length": max_length,
                           "concurrency": args.concurrency, "duration_s": args.duration,
                           "warmup_s": args.warmup, "max_requests": args.max_requests,
                           "default_precision": args.precision, "workloads": list(corpora)},
              "workloads": {workload: {"texts": len(texts), "source": sources[workload],
                                       "mean_tokens": mean_tokens(args.run, texts, max_length),
                                       "inprocess": {}, "systems": {}}
                            for workload, texts in corpora.items()}}
    workloads = result["workloads"]

    def selected(name):
        return wanted is None or name in wanted or name.split("-")[0] in wanted

    # the served configurations' precisions; all of them when only the in-process limit runs
    precisions = sorted({c["precision"] for c in configs if selected(c["name"])} or
                        {c["precision"] for c in configs}, key=PRECISIONS.index)
    if selected("inprocess"):
        from benchmarks.inprocess import inprocess_limit
        for workload, texts in corpora.items():
            for precision in precisions:
                log(f"in-process limit, {workload}, {precision}")
                limit = inprocess_limit(args.run, texts, precision, max_length,
                                        args.batch_sizes, args.inprocess_seconds)
                log(f"  {limit['reviews_per_s_by_batch']} reviews/s by batch size; batch-1 p50 "
                    f"{limit['batch1_p50_ms']} ms; {limit['reviews_per_cpu_s']} reviews per "
                    f"CPU-s (load {os.getloadavg()[0]:.1f})")
                workloads[workload]["inprocess"][precision] = limit

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        tmp = Path(tmp)
        if selected("seed"):
            log("seed baseline (Flask, batch 1, fp32)")
            with SeedBaseline(tmp / "seed", args.run, max_length) as server:
                for workload, measured in measure_server(server, corpora, args.concurrency,
                                                         args).items():
                    workloads[workload]["systems"]["seed"] = {"kind": "seed",
                                                              "precision": "fp32", **measured}
        for config in configs:
            if not selected(config["name"]):
                continue
            workdir = tmp / config["name"]
            workdir.mkdir()
            store = archive(args.run, config, workdir)
            levels = args.concurrency if config["levels"] == "all" else ablation_levels
            log(f"{config['name']}: {config['precision']}, batchSize {config['batchSize']}, "
                f"maxBatchDelay {config['maxBatchDelay']} ms, {config['workers']} worker(s) x "
                f"{config['threads_per_worker'] or 'auto'} thread(s)")
            with TorchServe(workdir / "ts", store) as server:
                measured = measure_server(server, corpora, levels, args)
                ready = sum(w["status"] == "READY" for w in server.describe()["workers"])
            for workload, entry in measured.items():
                workloads[workload]["systems"][config["name"]] = {
                    "kind": "torchserve", **config, **entry, "workers_ready": ready}
            shutil.rmtree(store, ignore_errors=True)

    if args.accuracy_samples and "long" in corpora:
        from benchmarks.accuracy import evaluate_precisions
        log(f"accuracy on {args.accuracy_samples} held-out reviews")
        result["accuracy"] = evaluate_precisions(args.run, args.data, args.accuracy_samples,
                                                 precisions=precisions, max_length=max_length)
    concurrency = TARGET_CONCURRENCY if TARGET_CONCURRENCY in args.concurrency \
        else max(args.concurrency)
    default = f"ts-{args.precision}"
    for name, workload in workloads.items():
        workload["ratios"] = ratios(workload, concurrency)
        if default in workload["systems"] and "seed" in workload["systems"]:
            best = best_inprocess(workload)  # the limit is the best runtime, not the default one
            workload["targets"] = {"system": default, "limit": best, "checks": check_targets(
                workload["systems"][default], workload["systems"]["seed"],
                workload["inprocess"].get(best), TARGET_CONCURRENCY,
                workload["systems"][default]["cold_start_s"], name)}
    result["wall_time_s"] = round(time.monotonic() - started, 1)
    return result


def best_inprocess(result: dict) -> str | None:
    """The in-process runtime/precision with the highest throughput."""
    limits = result["inprocess"]
    return max(limits, key=lambda name: limits[name]["best_reviews_per_s"]) if limits else None


def ratios(result: dict, concurrency: int = TARGET_CONCURRENCY) -> dict:
    """Throughput of every served system relative to the seed baseline, to the in-process
    limit at its own precision and to the limit (the best in-process runtime), and its p99
    relative to the seed's, all at `concurrency`."""
    seed = level(result["systems"].get("seed"), concurrency)
    best = best_inprocess(result)
    best_rate = best and result["inprocess"][best]["best_reviews_per_s"]
    table = {}
    for name, system in result["systems"].items():
        entry = level(system, concurrency)
        if entry is None:
            continue
        limit = result["inprocess"].get(system.get("precision"), {})
        table[name] = {
            "reviews_per_s": entry["reviews_per_s"],
            "vs_seed": _round(ratio(entry["reviews_per_s"], seed and seed["reviews_per_s"])),
            "vs_inprocess": _round(ratio(entry["reviews_per_s"], limit.get("best_reviews_per_s"))),
            "vs_limit": _round(ratio(entry["reviews_per_s"], best_rate)),
            "p99_vs_seed": _round(ratio(entry["p99_ms"], seed and seed["p99_ms"])),
        }
    return {"concurrency": concurrency, "limit": best, "systems": table}


def _round(value):
    return None if value is None else round(value, 3)


def plot(result: dict, path: Path) -> Path:
    """Throughput and p99 by concurrency, one row of plots per workload."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    workloads = result["workloads"]
    fig, axes = plt.subplots(len(workloads), 2, figsize=(12, 4.5 * len(workloads)),
                             squeeze=False)
    for (left, right), (workload, measured) in zip(axes, workloads.items()):
        for name, system in measured["systems"].items():
            levels = system["levels"]
            xs = [entry["concurrency"] for entry in levels]
            style = "o-" if len(xs) > 2 else "s--"
            left.plot(xs, [e["reviews_per_s"] for e in levels], style, label=name)
            right.plot(xs, [e["p99_ms"] for e in levels], style, label=name)
        for precision, limit in measured["inprocess"].items():
            left.axhline(limit["best_reviews_per_s"], linestyle=":", linewidth=1, color="grey")
            left.annotate(f"in-process {precision}", (1, limit["best_reviews_per_s"]),
                          fontsize=7, color="grey", va="bottom")
        for axis, label in ((left, "throughput (reviews/s)"), (right, "p99 latency (ms)")):
            axis.set_xscale("log", base=2)
            axis.set_xlabel("concurrency (closed-loop clients)")
            axis.set_ylabel(label)
            axis.set_title(f"{workload}: {measured['mean_tokens']} tokens per text", fontsize=9)
            axis.grid(True, alpha=0.3)
        right.set_yscale("log")
        left.legend(fontsize=7)
    settings = result["settings"]
    fig.suptitle(f"{result['run_metrics'].get('preset')} checkpoint, max_length "
                 f"{settings['max_length']}, {result['machine'].get('cpu')}, "
                 f"{result['machine'].get('affinity')} CPUs: {settings['duration_s']} s per level",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(result: dict) -> str:
    """The tables of docs/PERFORMANCE.md: the machine, then per workload the served systems
    (with CPU-ms per request by process), the in-process limit, the ratios, the targets."""
    info = result["machine"]
    out = [f"Machine: {info.get('cpu')}, {info.get('affinity')} CPUs, flags "
           f"{', '.join(info.get('cpu_flags', [])) or 'none of ' + ', '.join(CPU_FLAGS)}; load "
           f"average at start {', '.join(f'{x:.1f}' for x in info.get('loadavg_at_start', []))}."]
    for workload, measured in result["workloads"].items():
        out += ["", f"### {workload}: {measured['source']}, {measured['texts']} texts, "
                f"{measured['mean_tokens']} tokens on average", ""]
        out += markdown_workload(measured)
    if result.get("accuracy"):
        out += ["", "| precision | held-out reviews | accuracy | delta vs fp32 (points) | "
                "agreement with fp32 |", "|---|---:|---:|---:|---:|"]
        for precision, entry in result["accuracy"].items():
            out.append(f"| {precision} | {entry['samples']} | {entry['accuracy']:.4f} | "
                       f"{entry.get('delta_points_vs_fp32', 0.0):+.2f} | "
                       f"{entry.get('agreement_with_fp32', 1.0):.4f} |")
    return "\n".join(out) + "\n"


def markdown_workload(result: dict) -> list[str]:
    out = ["| system | precision | batch / delay | workers x threads | concurrency | reviews/s "
           "| p50 ms | p95 ms | p99 ms | errors | cold start s | reviews / server CPU-s "
           "| CPU-ms per request: frontend / worker / server / client | load avg |",
           "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for name, system in result["systems"].items():
        if system["kind"] == "seed":
            batching, layout = "1 / -", "threaded Flask"
        else:
            batching = f"{system['batchSize']} / {system['maxBatchDelay']} ms"
            layout = f"{system['workers']} x {system['threads_per_worker'] or 'auto'}"
        for entry in system["levels"]:
            cpu = entry.get("cpu_ms_per_request", {})
            split = " / ".join(_fmt(cpu.get(role)) for role in
                               ("frontend", "worker", "server", "client"))
            out.append(f"| {name} | {system['precision']} | {batching} | {layout} | "
                       f"{entry['concurrency']} | {entry['reviews_per_s']:.1f} | "
                       f"{entry['p50_ms']} | {entry['p95_ms']} | {entry['p99_ms']} | "
                       f"{entry['errors']} | {system['cold_start_s']} | "
                       f"{_fmt(entry.get('reviews_per_cpu_s'))} | {split} | "
                       f"{_fmt(entry.get('loadavg'))} |")
    if result["inprocess"]:
        out += ["", "| in-process | reviews/s by batch size | best | batch-1 p50 ms | "
                "reviews / CPU-s (best batch) | CPU-ms per review (best batch) |",
                "|---|---|---:|---:|---:|---:|"]
        for precision, limit in result["inprocess"].items():
            by_batch = ", ".join(f"{b}: {v:.1f}" for b, v in
                                 limit["reviews_per_s_by_batch"].items())
            per_cpu = limit.get("reviews_per_cpu_s")
            out.append(f"| {precision} | {by_batch} | {limit['best_reviews_per_s']:.1f} "
                       f"(batch {limit['best_batch']}) | {limit['batch1_p50_ms']} | "
                       f"{_fmt(per_cpu)} | {_fmt(per_cpu and 1000 / per_cpu)} |")
    table = result.get("ratios", {}).get("systems", {})
    if table:
        out += ["", f"Ratios at concurrency {result['ratios']['concurrency']} (the limit: the "
                f"best in-process runtime, {result['ratios'].get('limit')}):", "",
                "| system | reviews/s | vs seed | vs in-process (same precision) | "
                "vs in-process limit | p99 vs seed p99 |", "|---|---:|---:|---:|---:|---:|"]
        for name, entry in table.items():
            out.append(f"| {name} | {entry['reviews_per_s']:.1f} | {_fmt(entry['vs_seed'])} | "
                       f"{_fmt(entry['vs_inprocess'])} | {_fmt(entry['vs_limit'])} | "
                       f"{_fmt(entry['p99_vs_seed'])} |")
    if result.get("targets"):
        out += ["", f"Targets for {result['targets']['system']} (in-process limit: "
                f"{result['targets'].get('limit')}, the best in-process runtime):", "",
                "| target | measured | goal | met |", "|---|---:|---:|---|"]
        for check in result["targets"]["checks"]:
            met = {True: "yes", False: "**no**", None: "not measured"}[check["met"]]
            out.append(f"| {check['target']} | {_fmt(check['value'])} {check['unit']} | "
                       f"{check['goal']} {check['unit']} | {met} |")
    return out


def _fmt(value):
    return "-" if value is None else f"{value:.2f}"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=REPO / "runs" / "quick",
                        help="exported run directory (default: runs/quick)")
    parser.add_argument("--data", help="IMDB parquet directory (default: $IMDB_DATA_DIR)")
    parser.add_argument("--short-data",
                        help="SST-2 parquet directory with validation.parquet (default: "
                             "$SST2_DATA_DIR; without one, data/short_reviews.jsonl)")
    parser.add_argument("--workload", choices=["short", "long", "both"], default="both",
                        help="one-sentence reviews, IMDB reviews, or both (default)")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--concurrency", type=parse_levels, default=None,
                        help="comma-separated levels (default 1,4,16,64; --quick 1,16)")
    parser.add_argument("--duration", type=float, help="s per level (default 15; --quick 3)")
    parser.add_argument("--warmup", type=float, help="s per level (default 3; --quick 1)")
    parser.add_argument("--max-requests", type=int, default=20000,
                        help="cap on measured requests per level")
    parser.add_argument("--texts", type=int, default=2000, help="held-out reviews to replay")
    parser.add_argument("--max-length", type=int, help="default: the run's max_length")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="the default configuration and the ablations' base: a torch "
                             "precision, openvino or openvino-int8 (default: what "
                             "model-config.yaml serves on this CPU from --run)")
    parser.add_argument("--systems", help="comma-separated subset: inprocess, seed, ts, or "
                                          "configuration names such as ts-bf16")
    parser.add_argument("--batch-sizes", default=None,
                        help="in-process batch sizes (default 1,16,32,64; --quick 1,16)")
    parser.add_argument("--inprocess-seconds", type=float, help="per batch size (default 4)")
    parser.add_argument("--accuracy-samples", type=int,
                        help="held-out reviews per precision for the accuracy check "
                             "(default 2000; --quick 0 = skip)")
    parser.add_argument("--start-timeout", type=float, default=180)
    parser.add_argument("--request-timeout", type=float, default=120)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1,16; 3 s per level")
    args = parser.parse_args(argv)
    quick = args.quick
    args.precision = args.precision or shipped_default(args.run)
    args.concurrency = args.concurrency or ([1, 16] if quick else [1, 4, 16, 64])
    args.duration = args.duration if args.duration is not None else (3.0 if quick else 15.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if quick else 3.0)
    args.batch_sizes = [int(b) for b in (args.batch_sizes or
                                         ("1,16" if quick else "1,16,32,64")).split(",")]
    if args.inprocess_seconds is None:
        args.inprocess_seconds = 2.0 if quick else 4.0
    if args.accuracy_samples is None:
        args.accuracy_samples = 0 if quick else 2000
    return args


def main(argv=None) -> dict:
    import sys
    args = parse_args(argv)
    args.command = "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv)
    from benchmarks.texts import data_dir
    if args.workload != "short":  # IMDB: the long workload, and the accuracy check
        args.data = data_dir(args.data)
    args.output.mkdir(parents=True, exist_ok=True)
    result = run_benchmark(args)
    (args.output / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.output / "bench.png")
    (args.output / "bench.md").write_text(markdown(result))
    print(markdown(result))
    log(f"wrote {args.output}/bench.json, bench.png, bench.md in {result['wall_time_s']} s")
    return result


if __name__ == "__main__":
    main()
