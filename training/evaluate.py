"""Score an exported run directory on a data split with the serving encode + inference path,
including the run's temperatures (calibration.json), so the probabilities are the served ones.

    python -m training.evaluate --model runs/quick --data ../shared/data/imdb --split validation
    python -m training.evaluate --model runs/quick --data data/short_reviews.jsonl
    python -m training.evaluate --model runs/quick --short-data ../shared/data/sst2

`validation` is re-carved exactly as training carved it (seed, size and sample cap are read from
the run's metrics.json), so the accuracy matches the training report. A .jsonl or .parquet file
(text, label and optionally kind columns) is scored whole, with accuracy per kind. `--short-data`
scores a split of SST-2 (hub id or directory) whole, its text normalised as training normalises
it: `validation` is the 872 sentences the training report gives beside IMDB.
"""
import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from training.data import DataError, check_reviews, load_reviews, load_short_texts, take

REVIEW_FILE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
PRECISIONS = ["fp32", "bf16", "fp16"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="run directory")
    parser.add_argument("--data", help="HF hub dataset, parquet directory, or a .jsonl/.parquet "
                                       "file scored whole (default: the run's data)")
    parser.add_argument("--short-data", help="score a split of this SST-2 hub id or directory "
                                             "instead (text normalised as in training)")
    parser.add_argument("--split", default="validation",
                        help="validation | test | train (not for a file)")
    parser.add_argument("--max-samples", type=int, help="default: the run's max_eval_samples")
    parser.add_argument("--max-length", type=int,
                        help="serve fewer tokens than the run was trained with (never more)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="bf16/fp16: autocast, and on a GPU half weights, as the handler "
                             "serves them")
    parser.add_argument("--output", type=Path,
                        help="default: RUN_DIR/eval-SPLIT.json, or RUN_DIR/eval-FILE_STEM.json")
    return parser.parse_args(argv)


def load_run(run_dir: Path):
    """(tokenizer, metrics.json) of a run directory (the model comes from handler/runtime.py)."""
    from transformers import AutoTokenizer
    if not (run_dir / "config.json").is_file():
        raise SystemExit(f"error: {run_dir} is not a run directory (no config.json)")
    report = run_dir / "metrics.json"
    return AutoTokenizer.from_pretrained(run_dir), \
        json.loads(report.read_text()) if report.is_file() else {}


def is_review_file(data: str) -> bool:
    return Path(data).suffix in REVIEW_FILE_FORMATS and not Path(data).is_dir()


def load_review_file(path):
    """All rows of a .jsonl or .parquet file of reviews: `text`, 0/1 `label`, maybe `kind`."""
    from datasets import Dataset
    path = Path(path)
    if path.suffix not in REVIEW_FILE_FORMATS:
        raise DataError(f"{path}: expected a {', '.join(REVIEW_FILE_FORMATS)} file")
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    try:
        if REVIEW_FILE_FORMATS[path.suffix] == "json":
            dataset = Dataset.from_json(str(path))
        else:
            dataset = Dataset.from_parquet(str(path))
    except Exception as err:  # malformed JSON / parquet: say which file, not its text
        raise DataError(f"could not read {path}: {type(err).__name__}") from err
    if len(dataset) == 0:
        raise DataError(f"data file {path} has no rows")
    check_reviews(dataset, path.name)
    return dataset


def accuracy_by_kind(kinds: list[str], labels: list[int], predictions: list[int]) -> dict:
    """{kind: {"accuracy", "samples"}} for data tagged by kind (data/short_reviews.jsonl)."""
    groups = {}
    for kind, label, predicted in zip(kinds, labels, predictions):
        groups.setdefault(str(kind), []).append(label == predicted)
    return {kind: {"accuracy": sum(hits) / len(hits), "samples": len(hits)}
            for kind, hits in sorted(groups.items())}


def score_texts(runtime, tokenizer, texts: list[str], encoding, calibration=None,
                chunk: int = 256) -> torch.Tensor:
    """Probabilities for every text, computed exactly as the handler computes them, with a
    runtime from handler/runtime.py (or `TorchRuntime(model)` for a model in memory)."""
    from handler.encoding import encode_reviews
    from handler.inference import score
    from handler.settings import HandlerSettings
    from handler.calibration import Calibration
    serving = HandlerSettings()
    calibration = calibration or Calibration()  # none: the model's own probabilities
    parts = []
    for start in range(0, len(texts), chunk):
        encoded = encode_reviews(tokenizer, texts[start:start + chunk], encoding)
        parts.append(score(runtime, encoded, tokenizer.pad_token_id, serving.token_budget,
                           serving.micro_batch_size, serving.pad_to_multiple_of, calibration))
    return torch.cat(parts)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from training.scoring import classification_metrics
    tokenizer, run = load_run(args.model)
    data = args.short_data or args.data or run.get("data_source")
    if data is None:
        raise SystemExit("error: --data is required (the run does not record its data source)")
    seed = run.get("seed", 42)
    split = Path(data).stem if is_review_file(data) else args.split
    try:
        if args.short_data:  # SST-2's own split, scored whole
            split = f"sst2-{args.split}"
            splits = load_short_texts(data)
            if args.split not in splits:
                raise SystemExit(f"error: split {args.split!r} not in {sorted(splits)}")
            dataset = take(splits[args.split], args.max_samples, seed)
        elif is_review_file(data):  # a file is scored whole: no carve, no default sample cap
            dataset = take(load_review_file(data), args.max_samples, seed)
        else:
            splits, _ = load_reviews(data, run.get("validation_size", 2000), seed)
            if args.split not in splits:
                raise SystemExit(f"error: split {args.split!r} not in {sorted(splits)}")
            max_samples = args.max_samples if args.max_samples is not None else (
                run.get("max_eval_samples") if args.split == "validation" else None)
            dataset = take(splits[args.split], max_samples, seed)
    except DataError as err:
        raise SystemExit(f"error: {err}")
    from handler.calibration import Calibration
    from handler.encoding import EncodingSettings
    from handler.runtime import load_runtime
    encoding = EncodingSettings.serving(args.model, args.max_length)
    calibration = Calibration.load(args.model)

    # on the GPU when there is one, as the handler serves it there
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    runtime = load_runtime(args.model, device, args.precision)
    started = time.perf_counter()
    probabilities = score_texts(runtime, tokenizer, dataset["text"], encoding, calibration)
    elapsed = time.perf_counter() - started
    labels = torch.tensor(dataset["label"])
    predictions = probabilities.argmax(-1).tolist()
    metrics = classification_metrics(labels.tolist(), predictions)
    metrics["eval_loss"] = torch.nn.functional.nll_loss(probabilities.clamp_min(1e-12).log(),
                                                         labels).item()
    if "kind" in dataset.column_names:
        metrics["accuracy_by_kind"] = accuracy_by_kind(dataset["kind"], labels.tolist(),
                                                       predictions)
    from training.calibration import ECE_BINS, ece_if_calibrated, scores
    metrics["calibration"] = {**asdict(calibration), "ece_bins": ECE_BINS,
                              **scores(probabilities, labels),
                              "ece_if_calibrated": ece_if_calibrated(probabilities)}
    metrics.update({"split": split, "samples": len(dataset), "data_source": data,
                    "max_length": encoding.max_length,
                    "inference_precision": args.precision, "device": str(device),
                    "reviews_per_s": round(len(dataset) / elapsed, 1)})
    output = args.output or args.model / f"eval-{split}.json"
    output.write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    main()
