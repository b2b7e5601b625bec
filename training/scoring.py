"""Scoring texts offline exactly as the handler serves them, and the metrics reported on them.
Training, `training.evaluate`, `training.quantize` and the benchmarks score through `score_texts`:
the handler's encoding, micro-batches and runtime, its logits and each text's length in tokens,
which is all a calibrator needs (handler/calibration.py) to give the served probabilities.
"""
from dataclasses import dataclass

import torch
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from handler.calibration import UNCALIBRATED, Calibrator
from handler.encoding import encode_reviews
from handler.inference import forward_all
from handler.settings import HandlerSettings


@dataclass
class Scores:
    logits: torch.Tensor   # (texts, classes), float32, in input order
    lengths: torch.Tensor  # tokens per text as encoded for the model ([CLS] and [SEP] included)
    labels: torch.Tensor | None = None  # the true labels, where known

    def probabilities(self, calibrator: Calibrator = UNCALIBRATED) -> torch.Tensor:
        """What the handler serves with `calibrator` (none: the model's own softmax)."""
        return calibrator.apply(self.logits, self.lengths)

    def predictions(self) -> list[int]:
        return self.logits.argmax(-1).tolist()


def score_texts(runtime, tokenizer, texts: list[str], encoding, labels=None,
                chunk: int = 256) -> Scores:
    """Logits and lengths for every text, computed as the handler computes them, with a runtime
    from handler/runtime.py (or `TorchRuntime(model)` for a model in memory)."""
    serving = HandlerSettings()
    logits, lengths = [], []
    for start in range(0, len(texts), chunk):
        encoded = encode_reviews(tokenizer, texts[start:start + chunk], encoding)
        logits.append(forward_all(runtime, encoded, tokenizer.pad_token_id, serving.token_budget,
                                  serving.micro_batch_size, serving.pad_to_multiple_of))
        lengths += [len(ids) for ids in encoded["input_ids"]]
    return Scores(torch.cat(logits) if logits else torch.empty(0, runtime.config.num_labels),
                  torch.tensor(lengths, dtype=torch.long),
                  None if labels is None else torch.as_tensor(list(labels)))


def classification_metrics(labels, predictions) -> dict:
    """Accuracy, binary F1/precision/recall (positive = 1) and the confusion matrix."""
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, predictions, average="binary", zero_division=0)
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "f1": float(f1),
        "precision": float(precision),
        "recall": float(recall),
        # rows: true negative/positive, columns: predicted negative/positive
        "confusion_matrix": confusion_matrix(labels, predictions, labels=[0, 1]).tolist(),
    }


def accuracy_by_kind(kinds: list[str], labels: list[int], predictions: list[int]) -> dict:
    """{kind: {"accuracy", "samples"}} for data tagged by kind (data/short_reviews.jsonl)."""
    groups = {}
    for kind, label, predicted in zip(kinds, labels, predictions):
        groups.setdefault(str(kind), []).append(label == predicted)
    return {kind: {"accuracy": sum(hits) / len(hits), "samples": len(hits)}
            for kind, hits in sorted(groups.items())}
