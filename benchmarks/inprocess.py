"""The in-process limit: the exported model called directly in Python with the serving code
(handler.encoding.encode_reviews + handler.inference.score), the runtime factory the handler
uses (handler/runtime.py) and as many threads as one TorchServe worker gets. No HTTP, no queue: what the service could reach at best.
"openvino" stands for the OpenVINO runtime (handler/openvino_runtime.py, bf16 where the CPU
has it, f32 elsewhere), "openvino-int8" for it with the run's int8 model (training/quantize.py),
next to torch's precisions: the limit is the best runtime."""
import os
import time

from benchmarks.stats import percentile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")



def prepare(run_dir, name: str):
    """(runtime, tokenizer) from handler/runtime.py's factory, as a worker gets them: `name` is
    a torch precision (fp32, bf16, int8), "openvino" (bf16 where the CPU has it natively, else
    f32) or "openvino-int8"."""
    import torch
    from transformers import AutoTokenizer

    from handler.runtime import load_runtime
    if name.startswith("openvino"):
        runtime = load_runtime(run_dir, "cpu", "int8" if name == "openvino-int8" else "bf16",
                               "openvino", torch.get_num_threads())
    else:
        runtime = load_runtime(run_dir, "cpu", name, "torch")
    return runtime, AutoTokenizer.from_pretrained(run_dir)


def score(runtime, tokenizer, texts, encoding, batch_size):
    from handler.encoding import encode_reviews
    from handler.inference import score as score_encoded
    from handler.settings import HandlerSettings
    encoded = encode_reviews(tokenizer, texts, encoding)
    return score_encoded(runtime, encoded, tokenizer.pad_token_id, 1 << 30, batch_size,
                         HandlerSettings().pad_to_multiple_of)


def throughput(runtime, tokenizer, texts, encoding, batch_size,
               seconds: float, min_batches: int = 2) -> tuple[float, float]:
    """Reviews per second scoring consecutive batches of `batch_size` texts (encode included),
    and reviews per CPU-second of this process (robust to other load on a shared machine)."""
    score(runtime, tokenizer, texts[:batch_size], encoding, batch_size)  # warm
    cpu_start = time.process_time()
    done, batches, start, position = 0, 0, time.perf_counter(), batch_size
    while batches < min_batches or time.perf_counter() - start < seconds:
        chunk = [texts[(position + i) % len(texts)] for i in range(batch_size)]
        score(runtime, tokenizer, chunk, encoding, batch_size)
        position += batch_size
        done += batch_size
        batches += 1
    return done / (time.perf_counter() - start), done / (time.process_time() - cpu_start)


def batch1_latency(runtime, tokenizer, texts, encoding, seconds: float,
                   min_count: int = 5) -> dict:
    """Latency of one review (encode + forward), p50/p99 in ms."""
    score(runtime, tokenizer, texts[:1], encoding, 1)
    latencies, start = [], time.perf_counter()
    while len(latencies) < min_count or time.perf_counter() - start < seconds:
        text = texts[len(latencies) % len(texts)]
        began = time.perf_counter()
        score(runtime, tokenizer, [text], encoding, 1)
        latencies.append((time.perf_counter() - began) * 1000)
    return {"p50_ms": round(percentile(latencies, 50), 2),
            "p99_ms": round(percentile(latencies, 99), 2), "count": len(latencies)}


def inprocess_limit(run_dir, texts: list[str], precision: str, max_length: int = 256,
                    batch_sizes=(1, 8, 16, 32, 64), seconds: float = 5.0,
                    threads: int | None = None) -> dict:
    import torch

    from handler.cpus import usable_cpus
    threads = threads or usable_cpus()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        runtime, tokenizer = prepare(run_dir, precision)
        from handler.encoding import EncodingSettings
        encoding = EncodingSettings.serving(run_dir, max_length)
        max_length = encoding.max_length
        by_batch, per_cpu = {}, {}
        for batch_size in batch_sizes:
            rate, cpu_rate = throughput(runtime, tokenizer, texts, encoding, batch_size, seconds)
            by_batch[batch_size], per_cpu[batch_size] = round(rate, 2), round(cpu_rate, 2)
        latency = batch1_latency(runtime, tokenizer, texts, encoding, seconds)
    finally:
        torch.set_num_threads(previous)
    best = max(by_batch, key=by_batch.get)
    return {"precision": precision, "max_length": max_length, "threads": threads,
            "inference_precision": runtime.precision,
            "reviews_per_s_by_batch": by_batch, "best_batch": best,
            "best_reviews_per_s": by_batch[best], "reviews_per_cpu_s": per_cpu[best],
            "batch1_p50_ms": latency["p50_ms"],
            "batch1_p99_ms": latency["p99_ms"]}


def compare(run_dir, texts: list[str], runtimes, batch_size: int = 16, rounds: int = 4,
            seconds: float = 10.0, max_length: int = 256, threads: int | None = None) -> dict:
    """Runtimes side by side on a shared machine: each loaded once, then measured in turns
    (A, B, A, B, ...) so that load from other processes hits them alike; medians per runtime."""
    import statistics

    import torch

    from handler.cpus import usable_cpus
    from handler.encoding import EncodingSettings
    torch.set_num_threads(threads or usable_cpus())
    loaded = {name: prepare(run_dir, name) for name in runtimes}
    runs = {name: [] for name in runtimes}
    for _ in range(rounds):
        for name, (runtime, tokenizer) in loaded.items():
            encoding = EncodingSettings.serving(run_dir, max_length)
            runs[name].append(throughput(runtime, tokenizer, texts, encoding, batch_size,
                                         seconds))
            print(f"{name}: {runs[name][-1][0]:.1f} reviews/s, {runs[name][-1][1]:.2f} per "
                  "CPU-second", flush=True)
    return {name: {"median_reviews_per_s": round(statistics.median(v[0] for v in values), 1),
                   "median_reviews_per_cpu_s": round(statistics.median(v[1] for v in values), 2),
                   "runs": [round(v[0], 1) for v in values],
                   "inference_precision": loaded[name][0].precision}
            for name, values in runs.items()}


def main(argv=None):
    """python -m benchmarks.inprocess --run runs/quick --data DIR --compare fp32,bf16,openvino"""
    import argparse
    import json
    from pathlib import Path

    from benchmarks.texts import load_split
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inprocess",
                                     description=compare.__doc__)
    parser.add_argument("--run", type=Path, required=True, help="run directory")
    parser.add_argument("--data", help="IMDB parquet directory (default: $IMDB_DATA_DIR)")
    parser.add_argument("--compare", default="fp32,bf16,openvino",
                        help="torch precisions and/or openvino, openvino-int8, comma-separated")
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0, help="per runtime per round")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, help="default: the usable CPUs")
    args = parser.parse_args(argv)
    run = json.loads((args.run / "metrics.json").read_text())
    texts, _ = load_split(args.data, args.texts, run.get("validation_size", 2000),
                          run.get("seed", 42))
    result = compare(args.run, texts, args.compare.split(","), args.batch_size, args.rounds,
                     args.seconds, args.max_length, args.threads)
    print(json.dumps({"load_average": os.getloadavg(), **result}, indent=2))


if __name__ == "__main__":
    main()
