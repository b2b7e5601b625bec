"""Accuracy cost of each CPU serving precision on held-out reviews (the validation split carved
from train exactly as training carved it), scored with the serving code path and the handler's
own precision preparation. fp32 is the reference; "openvino" is the OpenVINO runtime
(bf16 where the CPU has it, f32 elsewhere), "openvino-int8" its int8 model
(benchmarks/inprocess.py `prepare`).

    python -m benchmarks.accuracy --model runs/quick --data $IMDB_DATA_DIR --samples 2000
"""
import argparse
import json
import time
from pathlib import Path

PRECISIONS = ("fp32", "bf16", "int8", "openvino", "openvino-int8")


def evaluate_precisions(run_dir: Path, data: str | None, samples: int,
                        precisions=PRECISIONS, max_length: int | None = None) -> dict:
    import torch

    from benchmarks.inprocess import prepare
    from benchmarks.texts import load_split
    from handler.calibration import load_calibrator
    from handler.encoding import EncodingSettings
    from training.scoring import score_texts
    run = json.loads((Path(run_dir) / "metrics.json").read_text())
    texts, labels = load_split(data, samples, run.get("validation_size", 2000),
                               run.get("seed", 42))
    encoding = EncodingSettings.serving(run_dir, max_length)
    results, reference = {}, None
    for precision in precisions:
        runtime, tokenizer = prepare(run_dir, precision)
        started = time.perf_counter()
        predicted = score_texts(runtime, tokenizer, texts, encoding, chunk=64).probabilities(
            load_calibrator(run_dir)).argmax(-1)
        accuracy = (predicted == torch.tensor(labels)).float().mean().item()
        entry = {"samples": len(texts), "accuracy": round(accuracy, 4),
                 "seconds": round(time.perf_counter() - started, 1)}
        entry["inference_precision"] = runtime.precision
        if reference is None:
            reference = (precision, accuracy, predicted)
        else:
            entry["delta_points_vs_" + reference[0]] = round((accuracy - reference[1]) * 100, 2)
            entry["agreement_with_" + reference[0]] = round(
                (predicted == reference[2]).float().mean().item(), 4)
        results[precision] = entry
        print(precision, json.dumps(entry), flush=True)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="run directory")
    parser.add_argument("--data", help="parquet directory (default: $IMDB_DATA_DIR)")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    args = parser.parse_args(argv)
    results = evaluate_precisions(args.model, args.data, args.samples,
                                  args.precisions.split(","))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
