"""Distillation from the teacher's soft labels (training/soft_labels.py; Hinton et al. 2015):

    loss = alpha * KL(teacher/tau || student/tau) * tau^2 + (1 - alpha) * cross-entropy

on texts with both a soft and a hard label; the KL term alone on transfer pieces (soft labels
only); cross-entropy alone on texts the teacher never labelled (IMDB reviews and excerpts).
"""
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset, Features, Sequence, Value, concatenate_datasets
from transformers import Trainer

from training.config import REPO, Recipe
from training.soft_labels import SoftLabelError, SoftLabels, review_digest, teacher_logits_for

NO_LABEL = -100  # cross_entropy's ignore_index: a transfer piece has no hard label
FEATURES = Features(text=Value("string"), label=Value("int64"),
                    teacher_logits=Sequence(Value("float32"), length=2), has_teacher=Value("bool"))


def distillation_loss(logits, labels, teacher_logits=None, has_teacher=None,
                      alpha: float = 0.5, temperature: float = 1.0) -> torch.Tensor:
    """The mean over the batch of each row's loss, as the module docstring says."""
    has_label = labels != NO_LABEL
    ce = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")
    if teacher_logits is None:
        return (ce * has_label).sum() / has_label.sum().clamp(min=1)
    kl = F.kl_div(F.log_softmax(logits / temperature, -1),
                  F.log_softmax(teacher_logits.to(logits.dtype) / temperature, -1),
                  log_target=True, reduction="none").sum(-1) * temperature ** 2
    teacher = has_teacher.to(logits.dtype)
    label = has_label.to(logits.dtype)
    kl_weight = teacher * torch.where(has_label, alpha, 1.0)
    ce_weight = label * (1 - alpha * teacher)
    return (kl_weight * kl + ce_weight * ce).sum() / len(logits)


class DistillingTrainer(Trainer):
    """The Hugging Face Trainer with `distillation_loss`; batches carry the soft labels."""

    def __init__(self, *args, alpha: float, temperature: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.alpha, self.temperature = alpha, temperature

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        teacher, has_teacher = inputs.pop("teacher_logits", None), inputs.pop("has_teacher", None)
        inputs.pop("length", None)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = distillation_loss(outputs.logits, labels, teacher, has_teacher, self.alpha,
                                 self.temperature)
        return (loss, outputs) if return_outputs else loss


def with_soft_labels(train_rows: Dataset, short_texts: list[str], labels: SoftLabels, path,
                     held_out_reviews: list[str], transfer_samples: int, seed: int):
    """(training rows with teacher_logits / has_teacher, what was added, in counts): every text
    the file labels gets the teacher's logits, and `transfer_samples` transfer pieces (soft
    labels only) are mixed in, none cut from `held_out_reviews` (validation, calibration).
    SoftLabelError when the file labels too few of `short_texts`: it was made for other texts."""
    teacher_logits_for(short_texts, labels, path)  # the file must be for this corpus
    logits, found = teacher_logits_for(list(train_rows["text"]), labels, path, min_match=0.0)
    rows = Dataset.from_dict(
        {"text": list(train_rows["text"]), "label": list(train_rows["label"]),
         "teacher_logits": logits.tolist(), "has_teacher": found.tolist()}, features=FEATURES)
    held = {review_digest(text) for text in held_out_reviews}
    texts, transfer_logits = labels.transfer(held)
    order = np.random.default_rng(seed).permutation(len(texts))[:transfer_samples]
    if len(order):
        transfer = Dataset.from_dict(
            {"text": [texts[i] for i in order], "label": [NO_LABEL] * len(order),
             "teacher_logits": transfer_logits[order].tolist(),
             "has_teacher": [True] * len(order)}, features=FEATURES)
        rows = concatenate_datasets([rows, transfer]).shuffle(seed=seed)
    return rows, {"soft_labelled": int(found.sum()), "transfer_pieces": int(len(order)),
                  "transfer_available": len(texts)}


def soft_label_file(name: str) -> Path:
    """The file as given, or, relative, in the repository (where the presets name it)."""
    path = Path(name).expanduser()
    return path if path.is_absolute() or path.exists() else REPO / path


def distil_as(recipe: Recipe, train_rows: Dataset, short_texts: list[str],
              held_out_reviews: list[str]):
    """`with_soft_labels` with the recipe's file and settings; SystemExit saying how to make
    the file when it is missing or made for other texts."""
    path = soft_label_file(recipe.soft_labels)
    try:
        rows, info = with_soft_labels(train_rows, short_texts, SoftLabels.load(path), path,
                                      held_out_reviews, recipe.transfer_samples, recipe.seed)
    except SoftLabelError as err:
        raise SystemExit(f"error: --soft-labels: {err}. Make the file with `make teacher` "
                         "(after `make teacher-install`), or train on the hard labels alone "
                         "with --soft-labels none")
    print(f"distil: {info['soft_labelled']} of {len(train_rows)} training texts have the "
          f"teacher's soft labels, + {info['transfer_pieces']} transfer pieces "
          f"(alpha {recipe.distill_alpha}, tau {recipe.distill_temperature})", flush=True)
    return rows, {**info, "file": path.name, "alpha": recipe.distill_alpha,
                  "temperature": recipe.distill_temperature}
