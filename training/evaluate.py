"""Score an exported run directory on a data split as it is served: the handler's encoding and
runtime (training/scoring.py) and the run's calibrator (calibration.json).

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
from pathlib import Path

import torch
from transformers import AutoTokenizer

from handler.calibration import load_calibrator
from handler.encoding import EncodingSettings
from handler.runtime import load_runtime
from training.calibration import ECE_BINS, ece_if_calibrated, nll, probability_scores
from training.data import (FILE_SPLIT, SHORT, DataError, is_file_source, load_labelled,
                           load_reviews, take)
from training.scoring import accuracy_by_kind, classification_metrics, score_texts

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


def run_report(run_dir: Path) -> dict:
    """The run's metrics.json ({} where it has none); exits where `run_dir` is no run."""
    if not (run_dir / "config.json").is_file():
        raise SystemExit(f"error: {run_dir} is not a run directory (no config.json)")
    report = run_dir / "metrics.json"
    return json.loads(report.read_text()) if report.is_file() else {}


def pick_split(args, run: dict, data: str):
    """(the split's name, its texts) as the arguments and the run's own carve say."""
    seed = run.get("seed", 42)
    if args.short_data:  # SST-2's own split, scored whole
        splits, name = load_labelled(data, SHORT, only=(args.split,)), args.split
    elif is_file_source(data):  # a file is scored whole: no carve, no default sample cap
        return Path(data).stem, take(load_labelled(data)[FILE_SPLIT], args.max_samples, seed)
    else:
        splits, _ = load_reviews(data, run.get("validation_size", 2000), seed)
        name = args.split
    if args.split not in splits:
        raise SystemExit(f"error: split {args.split!r} not in {sorted(splits)}")
    max_samples = args.max_samples
    if max_samples is None and args.split == "validation" and not args.short_data:
        max_samples = run.get("max_eval_samples")
    return (f"sst2-{name}" if args.short_data else name), take(splits[args.split], max_samples,
                                                              seed)


def main(argv=None) -> dict:
    args = parse_args(argv)
    run = run_report(args.model)
    data = args.short_data or args.data or run.get("data_source")
    if data is None:
        raise SystemExit("error: --data is required (the run does not record its data source)")
    try:
        split, dataset = pick_split(args, run, data)
    except DataError as err:
        raise SystemExit(f"error: {err}")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    encoding = EncodingSettings.serving(args.model, args.max_length)
    calibrator = load_calibrator(args.model)
    # on the GPU when there is one, as the handler serves it there
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    runtime = load_runtime(args.model, device, args.precision)
    started = time.perf_counter()
    scores = score_texts(runtime, tokenizer, dataset["text"], encoding, dataset["label"])
    elapsed = time.perf_counter() - started
    probabilities = scores.probabilities(calibrator)
    labels, predictions = scores.labels.tolist(), probabilities.argmax(-1).tolist()
    metrics = classification_metrics(labels, predictions)
    metrics["eval_loss"] = nll(probabilities, scores.labels)
    if "kind" in dataset.column_names:
        metrics["accuracy_by_kind"] = accuracy_by_kind(dataset["kind"], labels, predictions)
    metrics["calibration"] = {"kind": calibrator.kind, **calibrator.to_dict(), "ece_bins": ECE_BINS,
                              **probability_scores(probabilities, scores.labels),
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
