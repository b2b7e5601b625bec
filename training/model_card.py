"""MODEL_CARD.md for a model archive, written from the run's metrics.json at archive time, so the
card always describes the weights it ships with (training/archive.py packs it).

    python -m training.model_card runs/quick   # print the card

Sections that metrics.json has no data for (an older run without calibration or short-review
scores) are left out rather than filled with guesses.
"""
import json
import sys
from pathlib import Path

INTENDED_USE = """\
Sentiment (negative / positive) of English movie reviews and short opinions about films, as
typed into a review box or an API: one label with calibrated probabilities and, on
`/explanations`, the words that weighed most. A signal for aggregate views (a film's reception,
trends, triage), not a judgement about one person's text that anyone relies on without a human
looking at it."""

KNOWN_LIMITS = """\
- **Sarcasm and irony**: "Great, another two hours I will never get back." reads as positive
  to a model that weighs the words; the hand-written short-review set measures this (`sarcasm`).
- **Non-English text**: trained on English IMDB reviews only; other languages get an answer,
  but one that means little.
- **Very long reviews are truncated head+tail**: only the first quarter and the last three
  quarters of the token budget are read (`truncated: true` in the answer); a verdict in the
  middle of a long review is not seen.
- **Domain**: movie reviews. Product reviews, tweets or support tickets are out of domain.
- **Mixed or neutral opinions** are forced into one of the two labels; a probability near 0.5
  is the only sign of them.
- **Explanations** are Integrated Gradients attributions of the predicted class's logit against
  an all-[PAD] review: they show what moved this model, not why a human would agree."""

WHERE_IT_ERRS = """\
Measured once, on the full preset trained on one NVIDIA H100 (bf16, attention dropout 0.1) and
scored on the 240 hand-written short reviews (`data/short_reviews.jsonl`): 31 wrong, 22 of them
positive reviews called negative. (This card's own run is scored under Short reviews, where its
metrics have them.) Where that model erred:
- **Positive verdicts carried by a negation**: "Can't recommend it enough." got 0.01 positive,
  "There's nothing I'd change about it." 0.10.
- **Positive slang and idioms**: "this movie slaps", "Blew my mind."
- A likely reason for the first: in IMDB, negation leans negative. Of the excerpts cut from
  3,000 training reviews (the quick recipe of then), 43 % of those with a negation word ("not",
  "never", "n't", ...) come from positive reviews, against 52 % of the others."""


def percent(value) -> str:
    return f"{100 * value:.2f} %" if isinstance(value, (int, float)) else "n/a"


def number(value, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "n/a"


def data_section(metrics: dict) -> list[str]:
    sizes = metrics.get("split_sizes") or {}
    lines = ["## Data", ""]
    lines.append(f"- Training data: `{metrics.get('data_source', 'unknown')}` (IMDB movie "
                 "reviews, Maas et al. 2011), labels 0 = negative, 1 = positive.")
    if sizes:
        lines.append(f"- Reviews: {sizes.get('train', 'n/a')} for training, "
                     f"{sizes.get('validation', 'n/a')} for validation.")
    if metrics.get("validation_split"):
        lines.append(f"- Validation: {metrics['validation_split']}.")
    if metrics.get("augmentation"):
        lines.append(f"- Augmentation: {describe(metrics['augmentation'])}.")
    short = metrics.get("short_data")
    if isinstance(short, dict) and short.get("train_texts"):
        lines.append(f"- Short texts: {short['train_texts']} phrases and sentences of SST-2 "
                     f"(`{short.get('source', 'n/a')}`, Socher et al. 2013, Rotten Tomatoes "
                     f"reviews), {short.get('drawn', '')}; {short.get('text', '')}.")
    distilled = metrics.get("distillation")
    if distilled:
        lines.append(f"- Distilled from a teacher's soft labels (`{distilled['file']}`, "
                     f"alpha {distilled['alpha']}, temperature {distilled['temperature']}): "
                     f"{distilled['soft_labelled']} training texts carry them, and "
                     f"{distilled['transfer_pieces']} pieces of IMDB train reviews have only "
                     "them.")
    return lines + [""]


def describe(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{key} {describe(item)}" for key, item in value.items())
    return str(value)


def training_section(metrics: dict) -> list[str]:
    rows = [("preset", metrics.get("preset")), ("base model", metrics.get("base_model")),
            ("max length", metrics.get("max_length")), ("truncation", metrics.get("truncation")),
            ("epochs", metrics.get("epochs")), ("batch size", metrics.get("batch_size")),
            ("learning rate", metrics.get("learning_rate")),
            ("attention dropout", metrics.get("attention_dropout")),
            ("hidden dropout", metrics.get("hidden_dropout")),
            ("precision", metrics.get("mixed_precision")), ("device", metrics.get("device")),
            ("seed", metrics.get("seed")), ("train time", metrics.get("train_time_s") and
                                             f"{metrics['train_time_s']} s")]
    lines = ["## Training", "", "| setting | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows if value not in (None, "")]
    return lines + [""]


def metrics_section(metrics: dict) -> list[str]:
    size = (metrics.get("split_sizes") or {}).get("validation", "n/a")
    lines = ["## Metrics", "", f"On the validation carve ({size} reviews, never trained on):", "",
             "| metric | value |", "|---|---|",
             f"| accuracy | {percent(metrics.get('accuracy'))} |",
             f"| F1 (positive) | {number(metrics.get('f1'))} |",
             f"| precision | {number(metrics.get('precision'))} |",
             f"| recall | {number(metrics.get('recall'))} |"]
    if isinstance(metrics.get("eval_loss"), (int, float)):
        lines.append(f"| log loss | {number(metrics['eval_loss'])} |")
    matrix = metrics.get("confusion_matrix")
    if matrix:
        lines += ["", "Confusion matrix (rows: true negative / positive, columns: predicted):",
                  "", "| | predicted negative | predicted positive |", "|---|---|---|",
                  f"| negative | {matrix[0][0]} | {matrix[0][1]} |",
                  f"| positive | {matrix[1][0]} | {matrix[1][1]} |"]
    return lines + [""]


def calibration_section(calibration) -> list[str]:
    if not isinstance(calibration, dict):
        return []
    lines = ["## Calibration", ""]
    temperature, short = calibration.get("temperature"), calibration.get("short_temperature")
    fitted_on = f", fitted on {calibration['fitted_on']}." if calibration.get("fitted_on") else "."
    if calibration.get("kind") == "isotonic":
        lengths = (f" (one map for texts of at most {calibration.get('short_tokens')} tokens, "
                   "one for longer ones)" if calibration.get("short") else "")
        lines.append("Probabilities come from an isotonic (monotone, piecewise-linear) map of "
                     "the logit margin to P(positive)" + lengths + fitted_on)
    elif isinstance(temperature, (int, float)) and isinstance(short, (int, float)):
        lines.append(f"Probabilities are softmax(logits / T), with T = {short:.4f} for texts of "
                     f"at most {calibration.get('short_tokens')} tokens and T = "
                     f"{temperature:.4f} for longer ones" + fitted_on)
    elif isinstance(temperature, (int, float)):
        lines.append(f"Probabilities are softmax(logits / T) with temperature T = "
                     f"{temperature:.4f}" + fitted_on)
    panels = [(name, calibration[key]) for key, name in
              (("validation", "IMDB validation"), ("sst2_validation", "SST-2 validation"),
               ("short_reviews", "short reviews"))
              if isinstance(calibration.get(key), dict)]
    if panels:
        lines += ["", "| set | samples | ECE before | ECE after | log loss before | "
                  "log loss after |", "|---|---|---|---|---|---|"]
        for name, panel in panels:
            before, after = panel.get("before") or {}, panel.get("after") or {}
            lines.append(f"| {name} | {panel.get('samples', 'n/a')} | "
                         f"{number(before.get('ece'))} | {number(after.get('ece'))} | "
                         f"{number(before.get('nll'))} | {number(after.get('nll'))} |")
    return lines + [""]


# Published accuracy on SST-2 validation (Sanh et al. 2019, the DistilBERT paper, Table 1)
SST2_ANCHORS = "BERT-base 92.7 %, DistilBERT (66M parameters) 91.3 % (Sanh et al. 2019)"


def sst2_section(sst2) -> list[str]:
    if not isinstance(sst2, dict):
        return []
    return ["## SST-2 validation (external benchmark)", "",
            f"The {sst2.get('samples', 'n/a')} sentences of SST-2's validation split "
            f"(`{sst2.get('source', 'n/a')}`; never trained on, temperature not fitted on them): "
            f"accuracy {percent(sst2.get('accuracy'))}, F1 (positive) "
            f"{number(sst2.get('f1'))}. Published on the same set: {SST2_ANCHORS}.", ""]


def short_reviews_section(short) -> list[str]:
    if not isinstance(short, dict):
        return []
    lines = ["## Short reviews", "",
             f"Hand-written short reviews (`{short.get('source', 'n/a')}`, "
             f"{short.get('samples', 'n/a')} texts, the kind people type into a review box): "
             f"accuracy {percent(short.get('accuracy'))}."]
    by_kind = short.get("by_kind")
    if isinstance(by_kind, dict) and by_kind:
        lines += ["", "| kind | samples | accuracy |", "|---|---|---|"]
        lines += [f"| {kind} | {row.get('samples', 'n/a')} | {percent(row.get('accuracy'))} |"
                  for kind, row in by_kind.items() if isinstance(row, dict)]
    return lines + [""]


def int8_section(int8) -> list[str]:
    if not isinstance(int8, dict):
        return []
    lines = ["## int8 model (OpenVINO CPU runtime)", ""]
    check = (f"on {int8.get('reviews', 'n/a')} validation reviews: accuracy "
             f"{percent(int8.get('accuracy'))} against fp32's {percent(int8.get('fp32_accuracy'))}"
             f", the same label as fp32 on {percent(int8.get('agreement_with_fp32'))}, largest "
             f"probability shift {number(int8.get('max_probability_shift'))}")
    if int8.get("kept"):
        lines.append(f"Quantized after training (weights and activations of the matrix "
                     f"multiplications in int8), checked {check}. Served where `cpu_precision` "
                     "is `int8`, or `auto` on a CPU without native bf16.")
    else:
        lines.append(f"Not shipped: checked {check}; it needs {percent(int8.get('min_agreement'))}"
                     f" agreement and at most {percent(int8.get('max_accuracy_drop'))} of "
                     "accuracy lost. The OpenVINO runtime serves f32.")
    return lines + [""]


def render(metrics: dict, model_name: str = "bert_sentiment", version: str = "") -> str:
    """The card as Markdown."""
    title = f"# Model card: {model_name}" + (f" (version {version})" if version else "")
    lines = [title, "",
             "A BERT-family encoder fine-tuned to tell negative from positive movie reviews, "
             "served by TorchServe with the handler in this archive.", "",
             "## Intended use", "", INTENDED_USE, ""]
    lines += data_section(metrics)
    lines += training_section(metrics)
    lines += metrics_section(metrics)
    lines += sst2_section(metrics.get("sst2_validation"))
    lines += calibration_section(metrics.get("calibration"))
    lines += short_reviews_section(metrics.get("short_reviews"))
    lines += int8_section(metrics.get("int8"))
    lines += ["## Known limits", "", KNOWN_LIMITS, ""]
    lines += ["## Where the model errs", "", WHERE_IT_ERRS, ""]
    versions = metrics.get("library_versions")
    if isinstance(versions, dict) and versions:
        lines += ["## Software", "", ", ".join(f"{name} {v}" for name, v in versions.items()), ""]
    return "\n".join(lines)


def write(metrics: dict, path: Path, model_name: str = "bert_sentiment",
          version: str = "") -> Path:
    path.write_text(render(metrics, model_name, version))
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m training.model_card RUN_DIR")
    print(render(json.loads((Path(sys.argv[1]) / "metrics.json").read_text())))
