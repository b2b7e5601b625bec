"""The numbers that say whether a model's probabilities can be taken at face value (ECE, log
loss, Brier), before and after its calibrator (handler/calibration.py fits and applies it), and
the reliability diagram that shows them.

A fine-tuned encoder is over-confident: its 0.95 is right less than 95 % of the time. A
calibrator fitted on held-out texts shaped like what is served mends most of that; it is never
fitted on a set that is reported.

Every function takes torch tensors, numpy arrays or lists: probabilities are (samples, classes),
labels are class indices.
"""
import math

import torch

ECE_BINS = 15


def _tensors(scores, labels, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.as_tensor(scores, dtype=torch.float64).detach().cpu()
    labels = torch.as_tensor(labels).detach().cpu()
    if scores.ndim != 2 or scores.shape[1] < 2 or scores.shape[0] == 0:
        raise ValueError(f"{name} must be (samples, classes >= 2) with samples > 0, got "
                         f"shape {tuple(scores.shape)}")
    if labels.shape != scores.shape[:1]:
        raise ValueError(f"labels must be ({scores.shape[0]},) to match the {name}, got "
                         f"shape {tuple(labels.shape)}")
    if labels.is_floating_point() and not torch.equal(labels, labels.round()):
        raise ValueError("labels must be class indices")
    labels = labels.long()
    if labels.min() < 0 or labels.max() >= scores.shape[1]:
        raise ValueError(f"labels must be in 0..{scores.shape[1] - 1}")
    if not torch.isfinite(scores).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return scores, labels


def _probabilities(probs, labels) -> tuple[torch.Tensor, torch.Tensor]:
    probs, labels = _tensors(probs, labels, "probabilities")
    if probs.min() < 0 or not torch.allclose(probs.sum(1), torch.ones_like(probs[:, 0]), atol=1e-3):
        raise ValueError("probabilities must be >= 0 and sum to 1 per row")
    return probs, labels


def bin_index(confidence: torch.Tensor, bins: int) -> torch.Tensor:
    """The equal-width bin of each top-class probability: (lower, upper], 0 in the first."""
    return (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)


def reliability_bins(probs, labels, bins: int = ECE_BINS) -> list[dict]:
    """Equal-width bins over the top-class probability: (lower, upper] edges (the first bin
    also holds 0), each with its count, mean confidence and accuracy (None when empty)."""
    probs, labels = _probabilities(probs, labels)
    confidence, predicted = probs.max(1)
    correct = (predicted == labels).double()
    index = bin_index(confidence, bins)
    rows = []
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        rows.append({"lower": b / bins, "upper": (b + 1) / bins, "count": count,
                     "confidence": confidence[members].mean().item() if count else None,
                     "accuracy": correct[members].mean().item() if count else None})
    return rows


def expected_calibration_error(probs, labels, bins: int = ECE_BINS) -> float:
    """sum over bins of (share of samples) * |accuracy - mean confidence|, top-class probability."""
    rows = reliability_bins(probs, labels, bins)
    total = sum(row["count"] for row in rows)
    return sum(row["count"] / total * abs(row["accuracy"] - row["confidence"])
               for row in rows if row["count"])


def ece_if_calibrated(probs, bins: int = ECE_BINS, draws: int = 2000, seed: int = 0) -> dict:
    """The ECE a perfectly calibrated model with these same confidences would still show on a
    set of this size: each draw makes every answer right with probability = its confidence.
    Measured ECE within this spread (median, 95th percentile) is sampling noise, not
    miscalibration; on a few hundred texts it is about 0.02-0.03 (Roelofs et al. 2022,
    "Mitigating bias in calibration error estimation", on the bias of binned ECE)."""
    probs = torch.as_tensor(probs, dtype=torch.float64).detach().cpu()
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise ValueError(f"probabilities must be (samples, classes), got {tuple(probs.shape)}")
    confidence = probs.max(1).values
    index = bin_index(confidence, bins)
    generator = torch.Generator().manual_seed(seed)
    correct = (torch.rand(draws, len(confidence), generator=generator, dtype=torch.float64)
               < confidence).double()
    one_hot = torch.nn.functional.one_hot(index, bins).double()  # (samples, bins)
    gap = (correct - confidence) @ one_hot  # per draw and bin: sum of (right - confidence)
    ece = gap.abs().sum(1) / len(confidence)
    return {"median": ece.median().item(), "p95": ece.quantile(0.95).item(), "draws": draws}


def nll(probs, labels) -> float:
    """Mean negative log-likelihood of the true class (probabilities clipped at 1e-12)."""
    probs, labels = _probabilities(probs, labels)
    return -probs[torch.arange(len(labels)), labels].clamp_min(1e-12).log().mean().item()


def brier(probs, labels) -> float:
    """Multi-class Brier score: mean over samples of sum over classes of (p - one_hot)^2, in
    [0, 2]. (With two classes it is twice the binary p-positive version.)"""
    probs, labels = _probabilities(probs, labels)
    one_hot = torch.nn.functional.one_hot(labels, probs.shape[1]).double()
    return ((probs - one_hot) ** 2).sum(1).mean().item()


def accuracy(probs, labels) -> float:
    probs, labels = _probabilities(probs, labels)
    return (probs.argmax(1) == labels).double().mean().item()


def probability_scores(probs, labels, bins: int = ECE_BINS) -> dict:
    return {"ece": expected_calibration_error(probs, labels, bins), "nll": nll(probs, labels),
            "brier": brier(probs, labels), "accuracy": accuracy(probs, labels)}


def calibration_report(scores, calibrator, bins: int = ECE_BINS) -> dict:
    """ECE, NLL, Brier and accuracy of `scores` (training/scoring.py) before and after the
    calibrator."""
    after = scores.probabilities(calibrator)
    return {"calibrator": calibrator.describe(), "samples": len(scores.labels), "ece_bins": bins,
            "before": probability_scores(scores.probabilities(), scores.labels, bins),
            "after": probability_scores(after, scores.labels, bins),
            "ece_if_calibrated": ece_if_calibrated(after, bins)}


def reliability_diagram(path, panels: dict, bins: int = ECE_BINS) -> None:
    """One column per panel name -> (scores, calibrator): top, accuracy against confidence per
    bin before and after the calibrator (the diagonal is perfect calibration); bottom, samples
    per bin."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not panels:
        raise ValueError("reliability_diagram needs at least one (scores, calibrator) panel")
    fig, axes = plt.subplots(2, len(panels), figsize=(5 * len(panels), 6.5), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    width = 1 / bins
    for column, (name, (scores, calibrator)) in enumerate(panels.items()):
        curve, counts = axes[0][column], axes[1][column]
        curve.plot([0, 1], [0, 1], ":", color="gray", label="perfect")
        labels = scores.labels
        for offset, (label, probs, color) in enumerate([
                ("before", scores.probabilities(), "tab:red"),
                (f"after ({calibrator.describe()})", scores.probabilities(calibrator),
                 "tab:blue")]):
            rows = reliability_bins(probs, labels, bins)
            filled = [row for row in rows if row["count"]]
            ece = expected_calibration_error(probs, labels, bins)
            curve.plot([r["confidence"] for r in filled], [r["accuracy"] for r in filled], "o-",
                       color=color, label=f"{label}: ECE {ece:.3f}")
            counts.bar([r["lower"] + width * (0.25 + 0.5 * offset) for r in rows],
                       [r["count"] for r in rows], width=width / 2, color=color)
        lowest = math.floor(bins / len(probs[0])) / bins  # the top class has >= 1/classes
        curve.set(title=f"{name} ({len(labels)} samples)", ylabel="accuracy", xlim=(lowest, 1),
                  ylim=(0, 1))
        curve.legend(loc="upper left")
        counts.set(xlabel="top-class probability", ylabel="samples", yscale="log")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
