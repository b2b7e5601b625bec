"""Score an exported run directory on a data split with the serving encode + inference path.

    python -m training.evaluate --model runs/quick --data ../shared/data/imdb --split validation

`validation` is re-carved exactly as training carved it (seed, size and sample cap are read from
the run's metrics.json), so the accuracy matches the training report.
"""
import argparse
import json
import time
from pathlib import Path

import torch

from training.data import DataError, load_reviews, take


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="run directory")
    parser.add_argument("--data", help="HF hub dataset or parquet directory (default: the run's)")
    parser.add_argument("--split", default="validation", help="validation | test | train")
    parser.add_argument("--max-samples", type=int, help="default: the run's max_eval_samples")
    parser.add_argument("--max-length", type=int, help="default: the run's max_length")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--output", type=Path, help="default: RUN_DIR/eval-SPLIT.json")
    return parser.parse_args(argv)


def load_run(run_dir: Path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    if not (run_dir / "config.json").is_file():
        raise SystemExit(f"error: {run_dir} is not a run directory (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    model = AutoModelForSequenceClassification.from_pretrained(run_dir).eval()
    report = run_dir / "metrics.json"
    return tokenizer, model, json.loads(report.read_text()) if report.is_file() else {}


def score_texts(model, tokenizer, texts: list[str], max_length: int, autocast_dtype=None,
                chunk: int = 256) -> torch.Tensor:
    """Probabilities for every text, computed exactly as the handler computes them."""
    from handler.encoding import encode_reviews
    from handler.inference import predict_probabilities
    parts = []
    for start in range(0, len(texts), chunk):
        encoded = encode_reviews(tokenizer, texts[start:start + chunk], max_length)
        parts.append(predict_probabilities(model, encoded, tokenizer.pad_token_id,
                                           autocast_dtype=autocast_dtype))
    return torch.cat(parts)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from training.scoring import classification_metrics
    tokenizer, model, run = load_run(args.model)
    data = args.data or run.get("data_source")
    if data is None:
        raise SystemExit("error: --data is required (the run does not record its data source)")
    seed = run.get("seed", 42)
    try:
        splits, _ = load_reviews(data, run.get("validation_size", 2000), seed)
    except DataError as err:
        raise SystemExit(f"error: {err}")
    if args.split not in splits:
        raise SystemExit(f"error: split {args.split!r} not in {sorted(splits)}")
    max_samples = args.max_samples if args.max_samples is not None else (
        run.get("max_eval_samples") if args.split == "validation" else None)
    dataset = take(splits[args.split], max_samples, seed)
    max_length = args.max_length or run.get("max_length", 256)

    started = time.perf_counter()
    probabilities = score_texts(model, tokenizer, dataset["text"], max_length,
                                torch.bfloat16 if args.precision == "bf16" else None)
    elapsed = time.perf_counter() - started
    labels = torch.tensor(dataset["label"])
    metrics = classification_metrics(labels.tolist(), probabilities.argmax(-1).tolist())
    metrics["eval_loss"] = torch.nn.functional.nll_loss(probabilities.clamp_min(1e-12).log(),
                                                         labels).item()
    metrics.update({"split": args.split, "samples": len(dataset), "data_source": data,
                    "max_length": max_length, "inference_precision": args.precision,
                    "reviews_per_s": round(len(dataset) / elapsed, 1)})
    output = args.output or args.model / f"eval-{args.split}.json"
    output.write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    main()
