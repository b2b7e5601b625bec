"""int8 for the OpenVINO CPU runtime: the run's model converted to OpenVINO and quantized after
training with NNCF (weights and activations of the matrix multiplications in int8, which CPUs
with AVX512-VNNI compute natively), from activation statistics of held-out reviews. Quantizing
needs reviews, so it happens here, where the data is; the archive only packs the result.

    python -m training.quantize runs/quick --data ../shared/data/imdb   # an existing run

Writes openvino_model_int8.xml/.bin into the run directory and an `int8` entry in its
metrics.json: accuracy and agreement with the fp32 model on the validation carve. The model is
kept only if it agrees with fp32 on at least --min-agreement of those reviews and loses at
most --max-accuracy-drop of accuracy (the runtime's bar: 99.5 %, 0.1 point); the handler
serves it with cpu_precision int8, or auto on a CPU without native bf16
(handler/openvino_runtime.py). How much faster it serves on which CPU: docs/PERFORMANCE.md.
"""
import argparse
import json
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from handler.encoding import EncodingSettings, encode_reviews
from handler.inference import pad_batch
from handler.openvino_runtime import INT8_IR_FILE, convert
from handler.runtime import load_runtime
from training.data import DataError, load_reviews, take
from training.scoring import score_texts

CALIBRATION_REVIEWS = 300  # reviews whose activations set the int8 ranges
# kept only if, on the validation carve, int8 gives fp32's label to this share of reviews and
# loses at most this much accuracy (0.001 = 0.1 point): the bar of the OpenVINO runtime
MIN_AGREEMENT = 0.995
MAX_ACCURACY_DROP = 0.001


def int8_files(run_dir: Path) -> list[Path]:
    xml = Path(run_dir) / INT8_IR_FILE
    return [xml, xml.with_suffix(".bin")]


def calibration_batches(tokenizer, encoding, texts: list[str], input_names, batch_size: int = 8):
    """The reviews encoded and padded exactly as served (handler.encoding, handler.inference)."""
    batches = []
    for start in range(0, len(texts), batch_size):
        encoded = encode_reviews(tokenizer, texts[start:start + batch_size], encoding)
        padded = pad_batch(encoded, list(range(len(encoded["input_ids"]))),
                           tokenizer.pad_token_id, torch.device("cpu"))
        batches.append({name: padded[name].numpy() for name in input_names})
    return batches


def quantize(model, tokenizer, encoding, texts: list[str]):
    """The HF model as an int8 openvino.Model. NNCF's transformer scheme (SmoothQuant, fast bias
    correction) with the performance preset (symmetric activations), which kept fp32's answers
    more often than the mixed preset (docs/EXPERIMENTS.md)."""
    import nncf  # only here: importing it takes 3 s
    converted = convert(model, tokenizer)
    names = [port.get_any_name() for port in converted.inputs]
    batches = calibration_batches(tokenizer, encoding, texts, names)
    return nncf.quantize(converted, nncf.Dataset(batches), subset_size=len(batches),
                         model_type=nncf.ModelType.TRANSFORMER,
                         preset=nncf.QuantizationPreset.PERFORMANCE)


def compare(int8_probabilities, fp32_probabilities, labels) -> dict:
    """Accuracy of both and how far int8 moves the answers."""
    labels = torch.as_tensor(labels)
    int8_labels, fp32_labels = int8_probabilities.argmax(-1), fp32_probabilities.argmax(-1)
    shift = (int8_probabilities.float() - fp32_probabilities.float()).abs().max(-1).values
    return {"reviews": len(labels),
            "accuracy": round((int8_labels == labels).float().mean().item(), 4),
            "fp32_accuracy": round((fp32_labels == labels).float().mean().item(), 4),
            "agreement_with_fp32": round((int8_labels == fp32_labels).float().mean().item(), 4),
            "mean_probability_shift": round(shift.mean().item(), 4),
            "max_probability_shift": round(shift.max().item(), 4)}


def quantize_run(run_dir: Path, model, tokenizer, encoding, calibration_texts: list[str],
                 check_texts: list[str], check_labels, fp32_probabilities,
                 min_agreement: float = MIN_AGREEMENT,
                 max_accuracy_drop: float = MAX_ACCURACY_DROP) -> dict:
    """Quantize, score `check_texts` with the int8 model through the serving runtime and keep
    its files in `run_dir` if it agrees with `fp32_probabilities` often enough and is about as
    accurate. The report."""
    import openvino as ov  # only here, as in handler/openvino_runtime.py

    started = time.perf_counter()
    quantized = quantize(model, tokenizer, encoding, calibration_texts)
    seconds = time.perf_counter() - started
    files = int8_files(run_dir)
    # checked as it will be served: the saved file, through the runtime factory
    ov.save_model(quantized, str(files[0]), compress_to_fp16=False)
    runtime = load_runtime(run_dir, "cpu", "int8", "openvino")
    report = compare(score_texts(runtime, tokenizer, check_texts, encoding).probabilities(),
                     fp32_probabilities, check_labels)
    report.update(calibration_reviews=len(calibration_texts), quantize_s=round(seconds, 1),
                  min_agreement=min_agreement, max_accuracy_drop=max_accuracy_drop,
                  kept=report["agreement_with_fp32"] >= min_agreement and
                  report["fp32_accuracy"] - report["accuracy"] <= max_accuracy_drop + 1e-9)
    if not report["kept"]:
        for path in files:  # a model that failed the check must not be served
            path.unlink(missing_ok=True)
    return report


def record(run_dir: Path, report: dict) -> None:
    """The report as metrics.json's `int8` entry (the model card and benchmarks read it)."""
    path = Path(run_dir) / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["int8"] = report
    path.write_text(json.dumps(metrics, indent=2) + "\n")


def describe(report: dict) -> str:
    verdict = "kept" if report["kept"] else (
        f"not kept (needs agreement >= {report['min_agreement']} and an accuracy drop <= "
        f"{report['max_accuracy_drop']}): the OpenVINO runtime serves f32")
    return (f"int8: accuracy {report['accuracy']:.4f} (fp32 {report['fp32_accuracy']:.4f}), "
            f"agreement {report['agreement_with_fp32']:.4f} on {report['reviews']} validation "
            f"reviews, quantized in {report['quantize_s']:.0f} s: {verdict}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m training.quantize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data", required=True,
                        help="the data the run was trained on (hub name or parquet directory)")
    parser.add_argument("--calibration-reviews", type=int, default=CALIBRATION_REVIEWS)
    parser.add_argument("--check-reviews", type=int,
                        help="validation reviews scored by both models (default: all)")
    parser.add_argument("--min-agreement", type=float, default=MIN_AGREEMENT)
    parser.add_argument("--max-accuracy-drop", type=float, default=MAX_ACCURACY_DROP,
                        help="validation accuracy int8 may lose (0.001 = 0.1 point)")
    args = parser.parse_args(argv)
    if not (args.run_dir / "metrics.json").is_file():
        raise SystemExit(f"error: {args.run_dir} is not a finished run (no metrics.json)")
    if args.calibration_reviews < 1 or not 0 <= args.min_agreement <= 1 \
            or not 0 <= args.max_accuracy_drop <= 1:
        raise SystemExit("error: --calibration-reviews must be >= 1, --min-agreement and "
                         "--max-accuracy-drop in [0, 1]")
    run = json.loads((args.run_dir / "metrics.json").read_text())
    try:  # the run's own validation carve; activation statistics from the rest of train
        splits, _ = load_reviews(args.data, run.get("validation_size", 2000), run.get("seed", 42))
    except DataError as err:
        raise SystemExit(f"error: {err}")
    check = take(splits["validation"], args.check_reviews, run.get("seed", 42))
    calibration = take(splits["train"], args.calibration_reviews, run.get("seed", 42) + 1)
    tokenizer = AutoTokenizer.from_pretrained(args.run_dir)
    encoding = EncodingSettings.load(args.run_dir)
    runtime = load_runtime(args.run_dir, "cpu", "fp32")
    fp32 = score_texts(runtime, tokenizer, check["text"], encoding).probabilities()
    report = quantize_run(args.run_dir, runtime.model, tokenizer, encoding,
                          list(calibration["text"]),
                          list(check["text"]), check["label"], fp32, args.min_agreement,
                          args.max_accuracy_drop)
    record(args.run_dir, report)
    print(describe(report), flush=True)
    return report


if __name__ == "__main__":
    main()
