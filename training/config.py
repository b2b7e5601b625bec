"""What a training run does: the `Recipe` (every setting, its default and its meaning, once), the
two presets as instances of it, and the command line built from its fields.

    python -m training --preset quick --learning-rate 3e-5   # a preset, one setting changed

The defaults are the full preset's; `quick` lists only what it changes. How each preset scores
and how long it trains on which machine: README and docs/EXPERIMENTS.md.
"""
import argparse
import types
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch

from handler.calibration import CALIBRATORS
from training.augment import parse_kinds
from training.data import (DEFAULT_DATA, DEFAULT_SHORT_DATA, NO_SHORT_DATA, SHORT_DATA_ENV,
                           default_short_data)

REPO = Path(__file__).resolve().parent.parent
SHORT_REVIEWS = REPO / "data" / "short_reviews.jsonl"
# texts per optimizer step unless --batch-size says otherwise: a GPU has the memory and is faster
# per text with larger batches; on the CPU 16 is as fast per text and steps more often
CPU_BATCH_SIZE, GPU_BATCH_SIZE = 16, 32


def setting(default, help: str, **argparse_options):
    """A Recipe field: its default and the one explanation (the option's --help)."""
    return field(default=default, metadata={"help": help, **argparse_options})


@dataclass(frozen=True)
class Recipe:
    # data
    max_train_samples: int | None = setting(None, "IMDB reviews trained on, a seeded draw "
                                                  "(none: the whole train split)")
    max_eval_samples: int | None = setting(None, "validation reviews scored (none: all)")
    validation_size: int = setting(2000, "reviews carved from train for validation")
    augment: str = setting("last,first,window",
                           "excerpt kinds cut from training reviews and mixed in (last, first, "
                           "window: training/augment.py), or 'none'")
    excerpts_per_review: float = setting(6.0, "excerpts added per training review")
    excerpt_reviews: int | None = setting(
        None, "cut the excerpts from this many train-split reviews: the training reviews, then "
              "ones left out of training (none: the training reviews)")
    short_samples: int | None = setting(None, "short-corpus (SST-2) phrases trained on (none: all)")
    short_min_words: int = setting(3, "leave out shorter SST phrases (1-2 words are mostly "
                                      "neutral)")
    # the model and its optimisation
    max_length: int = setting(256, "tokens per review, head+tail truncated")
    epochs: float = setting(1.0, "passes over the training texts")
    batch_size: int | None = setting(None, f"texts per step (none: {CPU_BATCH_SIZE} on the CPU, "
                                           f"{GPU_BATCH_SIZE} on a GPU)")
    learning_rate: float = setting(5e-5, "peak learning rate (MiniLM; 2e-5 suits bert-base)")
    warmup: float = setting(0.1, "warmup, a ratio of the steps")
    weight_decay: float = setting(0.01, "AdamW weight decay")
    attention_dropout: float = setting(
        0.0, "dropout on the attention probabilities (the base models' own is 0.1): off, a CPU "
             "runs its fused attention kernel and trains much faster")
    hidden_dropout: float | None = setting(
        None, "dropout on the hidden states and the classifier's input (none: the base model's "
              "own, 0.1 for MiniLM); one epoch sees each text once, and its masks cost CPU time")
    freeze_word_embeddings: bool = setting(
        False, "train everything but the word-embedding matrix: less time per step on a CPU")
    freeze_layers: int = setting(
        0, "also freeze all embeddings and this many encoder layers from the bottom: no "
           "backward pass below them")
    seed: int = setting(42, "decides every random draw: data, excerpts, the new head, the order")
    precision: str = setting("auto", "auto: bf16 on GPUs and CPUs that compute it natively, "
                                     "else fp16 / fp32", choices=["auto", "fp32", "bf16", "fp16"])
    # calibration, fitted after training on held-out texts
    calibration_size: int = setting(1000, "held-out train reviews the long-text calibration is "
                                          "fitted on; 0 = none")
    short_calibration_size: int = setting(
        1000, "short-corpus train sentences held out (none of their phrases trained on) that "
              "the short-text calibration is fitted on")
    calibration_excerpts: str = setting(
        "none", "excerpt kinds added to the calibration reviews, or 'none': an excerpt carries "
                "its review's label, not its own, and asks for a higher temperature than "
                "one-line reviews do")
    calibrator: str = setting("temperature", "how logits become probabilities "
                                             "(handler/calibration.py)", choices=list(CALIBRATORS))
    # distillation from the teacher's soft labels (training/distill.py, training/teacher.py)
    soft_labels: str | None = setting(
        None, "the teacher's soft labels to distil from, a parquet file made by "
              "`python -m training.teacher` (none: plain fine-tuning on the hard labels)")
    distill_alpha: float = setting(0.5, "the soft labels' share of the loss where a text has both")
    distill_temperature: float = setting(2.0, "the temperature both logits are softened by")
    transfer_samples: int = setting(0, "pieces of IMDB reviews labelled by the teacher alone "
                                       "(soft labels only) mixed into training")
    # int8 for the OpenVINO CPU runtime (training/quantize.py)
    int8: bool = setting(True, "quantize the trained model to int8 and keep it if it passes")
    int8_min_agreement: float = setting(0.995, "keep it only if it gives fp32's label to at "
                                               "least this share of validation reviews")
    int8_max_accuracy_drop: float = setting(0.001, "... and loses at most this validation "
                                                   "accuracy (0.001 = 0.1 point)")


PRESETS = {
    # the whole train split (less validation and calibration) and every SST-2 phrase of >= 3 words
    "full": Recipe(),
    # what `make up` trains on first start, sized to about 10 minutes of fp32 steps on 2 CPU
    # cores: a draw of the data, the bottom layer and every embedding frozen, no hidden dropout
    "quick": Recipe(max_train_samples=1200, max_eval_samples=2000, excerpts_per_review=3.0,
                    excerpt_reviews=6000, short_samples=38000, freeze_word_embeddings=True,
                    freeze_layers=1, hidden_dropout=0.0),
    # the teacher (training/teacher.py, all-mpnet-base-v2): SST-2 phrases only, no reviews; 128
    # tokens when it scores IMDB reviews
    "teacher": Recipe(max_train_samples=0, augment="none", excerpts_per_review=0.0,
                      max_length=128, learning_rate=3e-5, batch_size=32, int8=False),
}
DEFAULT_PRESET = "quick"


def option_value(annotation):
    """The option's value from its text: `int | None` takes an int or 'none'."""
    if not isinstance(annotation, types.UnionType):
        return annotation
    kind = next(part for part in annotation.__args__ if part is not type(None))
    return lambda text: None if text == "none" else kind(text)


def presets_say(name: str) -> str:
    values = {preset: "none" if getattr(recipe, name) is None else getattr(recipe, name)
              for preset, recipe in PRESETS.items()}
    if len(set(map(repr, values.values()))) == 1:
        return f"default {values[DEFAULT_PRESET]}"
    return "; ".join(f"{preset}: {value}" for preset, value in values.items())


def add_recipe_options(parser: argparse.ArgumentParser) -> None:
    """An option per Recipe field; one the command line leaves out is not set at all, and the
    preset's value stands."""
    for spec in fields(Recipe):
        options = dict(spec.metadata)
        help_text = f"{options.pop('help')} ({presets_say(spec.name)})"
        flag = "--" + spec.name.replace("_", "-")
        if spec.type is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = option_value(spec.type)
        parser.add_argument(flag, default=argparse.SUPPRESS, help=help_text, **options)


def problems(recipe: Recipe) -> list[str]:
    """What is wrong with a recipe, as usage errors."""
    checks = [
        (recipe.freeze_layers >= 0, "--freeze-layers must be >= 0"),
        (8 <= recipe.max_length <= 512, "--max-length must be between 8 and 512"),
        (0 <= recipe.excerpts_per_review <= 20, "--excerpts-per-review must be between 0 and 20"),
        (0 <= recipe.int8_min_agreement <= 1, "--int8-min-agreement must be between 0 and 1"),
        (0 <= recipe.int8_max_accuracy_drop <= 1,
         "--int8-max-accuracy-drop must be between 0 and 1"),
        (recipe.calibration_size >= 0 and recipe.short_calibration_size >= 0,
         "--calibration-size and --short-calibration-size must be >= 0"),
        (recipe.short_samples is None or recipe.short_samples >= 0,
         "--short-samples must be >= 0"),
        (recipe.short_min_words >= 1, "--short-min-words must be >= 1"),
        (0 <= recipe.distill_alpha <= 1, "--distill-alpha must be between 0 and 1"),
        (recipe.distill_temperature > 0, "--distill-temperature must be > 0"),
        (recipe.transfer_samples >= 0, "--transfer-samples must be >= 0"),
        (0 <= recipe.attention_dropout < 1, "--attention-dropout must be >= 0 and < 1"),
        (recipe.hidden_dropout is None or 0 <= recipe.hidden_dropout < 1,
         "--hidden-dropout must be >= 0 and < 1"),
    ]
    found = [message for ok, message in checks if not ok]
    for name, prefix in (("augment", ""), ("calibration_excerpts", "--calibration-excerpts: ")):
        try:
            parse_kinds(getattr(recipe, name))
        except ValueError as err:
            found.append(f"{prefix}{err}")
    return found


def parse_args(argv=None) -> argparse.Namespace:
    """The command line: where the data and the run are, the preset, and any Recipe field to
    change. `args.recipe` is the preset with those changes."""
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=PRESETS, default=DEFAULT_PRESET)
    parser.add_argument("--data", default=DEFAULT_DATA, help="HF hub dataset name or a directory "
                        f"with train.parquet (default {DEFAULT_DATA})")
    parser.add_argument("--base-model", help="HF model name or path (default: the embedded "
                                             "MiniLM)")
    parser.add_argument("--output-dir", default="runs/quick")
    parser.add_argument("--short-data", help="short-text corpus mixed into training and reported "
                        "(SST-2): a hub id or a directory with train.parquet (and "
                        f"validation.parquet), or '{NO_SHORT_DATA}' (default: ${SHORT_DATA_ENV} "
                        f"when set, else {DEFAULT_SHORT_DATA}, or {NO_SHORT_DATA} with "
                        "HF_HUB_OFFLINE)")
    parser.add_argument("--short-reviews", type=Path, default=SHORT_REVIEWS,
                        help="hand-written short reviews reported in metrics.json")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest checkpoint in OUTPUT_DIR/checkpoints")
    add_recipe_options(parser)
    args = parser.parse_args(argv)
    changed = {spec.name: vars(args).pop(spec.name) for spec in fields(Recipe)
               if spec.name in vars(args)}
    recipe = replace(PRESETS[args.preset], **changed)
    if recipe.batch_size is None:
        recipe = replace(recipe, batch_size=GPU_BATCH_SIZE if torch.cuda.is_available()
                         else CPU_BATCH_SIZE)
    for message in problems(recipe):
        parser.error(message)
    args.short_data_defaulted = args.short_data is None
    args.short_data = args.short_data or default_short_data()
    args.recipe = recipe
    return args
