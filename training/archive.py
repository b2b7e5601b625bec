"""Package a run directory and the handler into model_store/bert_sentiment.mar.

    python -m training.archive runs/quick [--model-store model_store]

The archive carries the weights, config, tokenizer files, handler/sentiment_handler.py, the
`handler` package (the shared encode function and request parsing), model-config.yaml and a
MODEL_CARD.md written from metrics.json (training/model_card.py); the server needs nothing from
this repository besides it. Its version is a content hash (`archive_version`).
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from handler.calibration import CALIBRATION_FILE
from handler.encoding import SETTINGS_FILE as ENCODING_FILE
from handler.openvino_runtime import save_ir
from handler.settings import HandlerSettings
from training import model_card
from training.quantize import int8_files

REPO = Path(__file__).resolve().parent.parent
HANDLER_DIR = REPO / "handler"
MODEL_FILES = ["model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"]
OPTIONAL_FILES = ["special_tokens_map.json", ENCODING_FILE, CALIBRATION_FILE]


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


def archive_version(run_dir: Path, config_file: Path = HANDLER_DIR / "model-config.yaml") -> str:
    """What produced the answers, as a short content hash (the first 12 hex digits of a
    sha256): weights, config and tokenizer, encoding settings, calibrator, handler code and
    model-config.yaml. Re-archiving the same run gives the same version; other weights,
    settings or code give another. The handler puts it into every answer."""
    files = [run_dir / name for name in MODEL_FILES + OPTIONAL_FILES if (run_dir / name).is_file()]
    files += [path for path in int8_files(run_dir) if path.is_file()]
    files += [*sorted(HANDLER_DIR.glob("*.py")), config_file]
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as stream:
            while block := stream.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()[:12]


def cpu_runtime(config_file: Path) -> str:
    """The handler's `cpu_runtime` in a model-config.yaml (handler/settings.py's default when not
    set)."""
    settings = yaml.safe_load(Path(config_file).read_text())
    return HandlerSettings.from_model_yaml(settings).cpu_runtime


def write_openvino_ir(run_dir: Path, directory: Path) -> Path:
    """The run converted to OpenVINO (handler/openvino_runtime.py) once, here, instead of in
    every worker at start: a cold start without torch weights (docs/PERFORMANCE.md)."""
    return save_ir(AutoModelForSequenceClassification.from_pretrained(run_dir),
                   AutoTokenizer.from_pretrained(run_dir), directory)


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
    with tempfile.TemporaryDirectory() as staging, tempfile.TemporaryDirectory() as scratch:
        # a directory given to --extra-files has its subdirectories copied as they are, so the
        # archive root holds the `handler` package the handler module imports from
        package = Path(staging) / "handler"
        package.mkdir()
        for module in HANDLER_DIR.glob("*.py"):
            shutil.copy2(module, package / module.name)
        extra = [str(args.run_dir / name) for name in MODEL_FILES[1:]]
        # the run's encoding settings and temperature: the handler serves exactly as trained
        extra += [str(args.run_dir / name) for name in OPTIONAL_FILES
                  if (args.run_dir / name).is_file()]
        version = archive_version(args.run_dir, args.config_file)
        model_card.write(metrics, Path(staging) / "MODEL_CARD.md", args.model_name, version)
        if cpu_runtime(args.config_file) == "openvino":
            write_openvino_ir(args.run_dir, Path(staging))
            # the int8 model quantized after training (training/quantize.py), if it was kept
            extra += [str(path) for path in int8_files(args.run_dir) if path.is_file()]
        extra += [str(args.run_dir / "metrics.json"), staging]
        command = [
            str(Path(sys.executable).parent / "torch-model-archiver"),
            "--model-name", args.model_name,
            "--version", version,
            "--serialized-file", str(args.run_dir / "model.safetensors"),
            "--handler", str(HANDLER_DIR / "sentiment_handler.py"),
            "--extra-files", ",".join(extra),
            "--config-file", str(args.config_file),
            "--export-path", str(args.model_store),
            "--force",
        ]
        # torch-model-archiver copies into $TMPDIR/<model name>, deleting what is there: a
        # private TMPDIR keeps archives built at the same time (tests, benchmarks) apart
        subprocess.run(command, check=True, env={**os.environ, "TMPDIR": scratch})
    mar = args.model_store / f"{args.model_name}.mar"
    print(f"wrote {mar} ({mar.stat().st_size / 1e6:.1f} MB), version {version}")
    return mar


if __name__ == "__main__":
    main()
