"""The in-process limit: the exported model called directly in Python with the serving code
(handler.encoding.encode_reviews + handler.inference.predict_probabilities), the handler's own
precision preparation (SentimentHandler.prepare_model) and as many torch threads as one
TorchServe worker gets. No HTTP, no queue: what the service could reach at best."""
import os
import time

from benchmarks.stats import percentile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")



def prepare(run_dir, precision: str):
    """(model, tokenizer, autocast dtype, max_length cap) exactly as the handler prepares them."""
    import warnings

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from handler.sentiment_handler import SentimentHandler
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    model = AutoModelForSequenceClassification.from_pretrained(run_dir).eval()
    handler = SentimentHandler()
    handler.device = torch.device("cpu")
    with warnings.catch_warnings():  # quantize_dynamic's deprecation notice
        warnings.simplefilter("ignore")
        model, autocast_dtype = handler.prepare_model(model, precision)
    return model, tokenizer, autocast_dtype, model.config.max_position_embeddings


def score(model, tokenizer, texts, max_length, autocast_dtype, batch_size):
    from handler.encoding import encode_reviews
    from handler.inference import predict_probabilities
    encoded = encode_reviews(tokenizer, texts, max_length)
    return predict_probabilities(model, encoded, tokenizer.pad_token_id, 1 << 30, batch_size,
                                 autocast_dtype)


def throughput(model, tokenizer, texts, max_length, autocast_dtype, batch_size,
               seconds: float, min_batches: int = 2) -> float:
    """Reviews per second scoring consecutive batches of `batch_size` texts (encode included)."""
    score(model, tokenizer, texts[:batch_size], max_length, autocast_dtype, batch_size)  # warm
    done, batches, start, position = 0, 0, time.perf_counter(), batch_size
    while batches < min_batches or time.perf_counter() - start < seconds:
        chunk = [texts[(position + i) % len(texts)] for i in range(batch_size)]
        score(model, tokenizer, chunk, max_length, autocast_dtype, batch_size)
        position += batch_size
        done += batch_size
        batches += 1
    return done / (time.perf_counter() - start)


def batch1_latency(model, tokenizer, texts, max_length, autocast_dtype, seconds: float,
                   min_count: int = 5) -> dict:
    """Latency of one review (encode + forward), p50/p99 in ms."""
    score(model, tokenizer, texts[:1], max_length, autocast_dtype, 1)
    latencies, start = [], time.perf_counter()
    while len(latencies) < min_count or time.perf_counter() - start < seconds:
        text = texts[len(latencies) % len(texts)]
        began = time.perf_counter()
        score(model, tokenizer, [text], max_length, autocast_dtype, 1)
        latencies.append((time.perf_counter() - began) * 1000)
    return {"p50_ms": round(percentile(latencies, 50), 2),
            "p99_ms": round(percentile(latencies, 99), 2), "count": len(latencies)}


def inprocess_limit(run_dir, texts: list[str], precision: str, max_length: int = 256,
                    batch_sizes=(1, 8, 16, 32, 64), seconds: float = 5.0,
                    threads: int | None = None) -> dict:
    import torch

    from handler.sentiment_handler import physical_cores
    threads = threads or physical_cores()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model, tokenizer, autocast_dtype, positions = prepare(run_dir, precision)
        max_length = min(max_length, positions)
        by_batch = {}
        for batch_size in batch_sizes:
            by_batch[batch_size] = round(throughput(model, tokenizer, texts, max_length,
                                                    autocast_dtype, batch_size, seconds), 2)
        latency = batch1_latency(model, tokenizer, texts, max_length, autocast_dtype, seconds)
    finally:
        torch.set_num_threads(previous)
    best = max(by_batch, key=by_batch.get)
    return {"precision": precision, "max_length": max_length, "threads": threads,
            "reviews_per_s_by_batch": by_batch, "best_batch": best,
            "best_reviews_per_s": by_batch[best], "batch1_p50_ms": latency["p50_ms"],
            "batch1_p99_ms": latency["p99_ms"]}
