"""The fit: the Hugging Face Trainer on the encoded training texts, as the recipe says, with
progress lines where no terminal shows tqdm's bar and the loss curves drawn afterwards.
"""
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from handler.cpus import auto_cpu_precision
from handler.encoding import encode_reviews
from training.config import Recipe
from training.distill import DistillingTrainer
from training.scoring import classification_metrics

# one fused kernel per parameter group and step instead of a loop of small ones (on a GPU the
# launches add up); transformers' own default with torch >= 2.8, pinned here on purpose
OPTIMIZER = "adamw_torch_fused"
# with one epoch there is no best epoch to pick and the validation reviews are scored after
# training through the serving path: the Trainer's evaluation only draws the curves, on this many
CURVE_EVAL_REVIEWS = 200
# where output is not a terminal (docker logs, a CI log, a file), tqdm's bar never ends a line,
# so it never shows: a plain `training: step ...` line at the first and last step and every
# PROGRESS_EVERY_S seconds between (what `make up` shows while model-init trains)
PROGRESS_EVERY_S = 30.0
ETA_AFTER_STEPS = 10


@dataclass
class Fitted:
    trainer: Trainer
    seconds: float       # the steps alone
    metrics: dict        # the Trainer's own: train_loss, train_samples_per_second
    precision: str       # the mixed precision it trained in


def pick_precision(requested: str) -> str:
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return auto_cpu_precision()  # emulated bf16 (no AVX512-BF16/AMX) is slower than fp32


def encode_for_training(tokenizer, encoding, train_rows, validation, epochs: float):
    """(training set, the Trainer's evaluation set) encoded as served, with lengths for
    group_by_length."""
    def encode(batch):
        return encode_reviews(tokenizer, batch["text"], encoding)

    columns = ["text", "truncated"]
    train = train_rows.map(encode, batched=True, desc="encoding train").remove_columns(columns)
    evaluation = validation.map(encode, batched=True,
                                desc="encoding validation").remove_columns(columns)
    train = train.add_column("length", [len(ids) for ids in train["input_ids"]])
    if epochs <= 1:
        evaluation = evaluation.select(range(min(len(evaluation), CURVE_EVAL_REVIEWS)))
    return train, evaluation


def training_arguments(recipe: Recipe, output_dir: Path, precision: str,
                       train_size: int, distilling: bool = False) -> TrainingArguments:
    return TrainingArguments(
        remove_unused_columns=not distilling,  # the soft labels reach compute_loss
        output_dir=str(output_dir / "checkpoints"),
        learning_rate=recipe.learning_rate,
        num_train_epochs=recipe.epochs,
        per_device_train_batch_size=recipe.batch_size,
        per_device_eval_batch_size=recipe.batch_size * 2,
        warmup_steps=recipe.warmup,  # a float < 1 is a ratio of the total steps in transformers 5
        lr_scheduler_type="linear",
        weight_decay=recipe.weight_decay,
        seed=recipe.seed,
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
        logging_steps=max(1, min(50, train_size // recipe.batch_size // 20)),
        report_to="none",
    )


def fit(model, tokenizer, encoding, train_rows, validation, recipe: Recipe, output_dir: Path,
        resume: bool) -> Fitted:
    """The model fine-tuned on `train_rows`; checkpoints in OUTPUT_DIR/checkpoints."""
    train, evaluation = encode_for_training(tokenizer, encoding, train_rows, validation,
                                            recipe.epochs)
    precision = pick_precision(recipe.precision)
    distilling = "teacher_logits" in train.column_names
    arguments = training_arguments(recipe, output_dir, precision, len(train), distilling)
    trainer_class = partial(DistillingTrainer, alpha=recipe.distill_alpha,
                            temperature=recipe.distill_temperature) if distilling else Trainer
    trainer = trainer_class(
        model=model, args=arguments, train_dataset=train, eval_dataset=evaluation,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=lambda pred: classification_metrics(pred.label_ids,
                                                            pred.predictions.argmax(-1)),
        callbacks=[] if sys.stdout.isatty() else [progress_lines()])
    checkpoint = get_last_checkpoint(arguments.output_dir) if resume else None
    if resume:
        print(f"resuming from {checkpoint}" if checkpoint else "no checkpoint to resume from",
              flush=True)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.model.eval()
    return Fitted(trainer, time.perf_counter() - started, result.metrics, precision)


def progress_lines(every_s: float = PROGRESS_EVERY_S):
    """A Trainer callback that prints `training: step N/M (P %), M:SS elapsed, about M:SS to go`
    lines at the first and last step and every `every_s` seconds (no estimate before
    ETA_AFTER_STEPS steps)."""
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
    """Training loss, and the Trainer's evaluation loss and accuracy, by step."""
    import matplotlib  # only to draw: importing pyplot costs a second
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
