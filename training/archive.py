"""Package a run directory and the handler into model_store/bert_sentiment.mar.

    python -m training.archive runs/quick [--model-store model_store]

The archive carries the weights, config, tokenizer files, handler/sentiment_handler.py, the
`handler` package (the shared encode function and request parsing) and model-config.yaml; the
server needs nothing from this repository besides it.
"""
import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HANDLER_DIR = REPO / "handler"
MODEL_FILES = ["model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"]


def check_run_dir(run_dir: Path) -> dict:
    if not run_dir.is_dir():
        raise SystemExit(f"error: run directory {run_dir} does not exist")
    missing = [name for name in MODEL_FILES + ["metrics.json"] if not (run_dir / name).is_file()]
    if missing:
        raise SystemExit(f"error: run directory {run_dir} is incomplete, missing: "
                         f"{', '.join(missing)} (did training finish?)")
    config = json.loads((run_dir / "config.json").read_text())
    if not config.get("id2label"):
        raise SystemExit(f"error: {run_dir}/config.json has no id2label")
    return json.loads((run_dir / "metrics.json").read_text())


def archive_version(run_dir: Path, metrics: dict) -> str:
    """The run's identity: preset, date of the weights and validation accuracy."""
    stamp = int((run_dir / "model.safetensors").stat().st_mtime)
    return f"{metrics.get('preset', 'custom')}-{stamp}-acc{metrics.get('accuracy', 0):.4f}"


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m training.archive", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--model-store", type=Path, default=REPO / "model_store")
    parser.add_argument("--model-name", default="bert_sentiment")
    parser.add_argument("--config-file", type=Path, default=HANDLER_DIR / "model-config.yaml",
                        help="TorchServe model-config.yaml (batching, workers, handler settings)")
    args = parser.parse_args(argv)

    metrics = check_run_dir(args.run_dir)
    args.model_store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as staging:
        # a directory given to --extra-files has its subdirectories copied as they are, so the
        # archive root holds the `handler` package the handler module imports from
        package = Path(staging) / "handler"
        package.mkdir()
        for name in ("__init__.py", "encoding.py", "inference.py", "parsing.py"):
            shutil.copy2(HANDLER_DIR / name, package / name)
        extra = [str(args.run_dir / name) for name in MODEL_FILES[1:]]
        extra += [str(path) for path in args.run_dir.glob("special_tokens_map.json")]
        extra += [str(args.run_dir / "metrics.json"), staging]
        command = [
            str(Path(sys.executable).parent / "torch-model-archiver"),
            "--model-name", args.model_name,
            "--version", archive_version(args.run_dir, metrics),
            "--serialized-file", str(args.run_dir / "model.safetensors"),
            "--handler", str(HANDLER_DIR / "sentiment_handler.py"),
            "--extra-files", ",".join(extra),
            "--config-file", str(args.config_file),
            "--export-path", str(args.model_store),
            "--force",
        ]
        subprocess.run(command, check=True)
    mar = args.model_store / f"{args.model_name}.mar"
    print(f"wrote {mar} ({mar.stat().st_size / 1e6:.1f} MB)")
    return mar


if __name__ == "__main__":
    main()
