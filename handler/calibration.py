"""The calibrator: how a model's logits become the probabilities it serves. Training fits one on
held-out texts (`fit`) and saves it as `calibration.json` in the run directory, which the archive
carries; the handler, `training.evaluate` and the benchmarks turn logits into probabilities only
through its `apply`.

Every kind fits texts of at most `short_tokens` tokens ([CLS] and [SEP] included) apart from
longer ones: a fine-tuned encoder is over-confident on one-line texts and, if anything,
under-confident on whole reviews, so one mapping over both makes one of them worse.
- `temperature`: softmax(logits / T), one T per length (Guo et al. 2017). Never changes a label.
- `isotonic`: a monotone, piecewise-linear map from the logit margin to P(positive) per length
  (Zadrozny & Elkan 2002); two classes only. It can mend a miscalibration of shape that one
  temperature cannot, at the cost of flat steps where the held-out texts are few.
Which kind training fits, and why: docs/EXPERIMENTS.md.
"""
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

CALIBRATION_FILE = "calibration.json"
FORMAT_VERSION = 2  # 1: a temperature calibrator's fields alone, without `format_version`/`kind`
SHORT_TOKENS = 64  # a one-line review is ~10-50 tokens, an IMDB review ~100-256
MIN_BUCKET = 100  # texts a length's mapping is fitted on at least; else one mapping for all


class CalibrationError(ValueError):
    """A calibration.json this handler cannot serve, or texts a calibrator cannot be fitted on."""


def short_texts(lengths, short_tokens: int = SHORT_TOKENS) -> torch.Tensor:
    """Which texts count as short: those of at most `short_tokens` tokens. The one rule for
    fitting and serving."""
    return torch.as_tensor(lengths) <= short_tokens


def _checked(logits, labels) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.as_tensor(logits, dtype=torch.float64).detach().cpu()
    labels = torch.as_tensor(labels).detach().cpu().long()
    if logits.ndim != 2 or logits.shape[0] == 0 or labels.shape != logits.shape[:1]:
        raise CalibrationError(f"need logits (texts, classes) and one label per text, got "
                               f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    if not torch.isfinite(logits).all():
        raise CalibrationError("logits contain NaN or infinite values")
    return logits, labels


def _by_length(lengths, short_tokens: int, min_samples: int):
    """The short-text mask, or None when either side has fewer than `min_samples` texts."""
    short = short_texts(lengths, short_tokens)
    return short if min(int(short.sum()), int((~short).sum())) >= min_samples else None


def _one_mapping_note(what: str, min_samples: int, short_tokens: int) -> str:
    return f" (one {what}: fewer than {min_samples} texts on one side of {short_tokens} tokens)"


def fit_temperature(logits, labels, max_iter: int = 200) -> float:
    """The T > 0 minimising the NLL of softmax(logits / T); optimised as log T with L-BFGS."""
    logits, labels = _checked(logits, labels)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-10,
                                  tolerance_change=1e-12)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = math.exp(log_t.item())
    if not math.isfinite(temperature) or temperature <= 0:
        raise CalibrationError(f"temperature fit diverged ({temperature}); are the labels all "
                               "one class and the predictions all right?")
    return temperature


@dataclass(frozen=True)
class TemperatureCalibrator:
    kind: ClassVar[str] = "temperature"
    temperature: float = 1.0                # 1: the model's own probabilities
    short_temperature: float | None = None  # None: `temperature` for every length
    short_tokens: int = SHORT_TOKENS
    fitted_on: str = ""                     # what it was fitted on, in words
    samples: int = 0                        # 0: nothing fitted (no calibration.json is written)

    @classmethod
    def fit(cls, logits, lengths, labels, fitted_on: str = "", short_tokens: int = SHORT_TOKENS,
            min_samples: int = MIN_BUCKET) -> "TemperatureCalibrator":
        logits, labels = _checked(logits, labels)
        short = _by_length(lengths, short_tokens, min_samples)
        if short is None:
            return cls(fit_temperature(logits, labels), None, short_tokens,
                       fitted_on + _one_mapping_note("temperature", min_samples, short_tokens),
                       len(labels))
        return cls(fit_temperature(logits[~short], labels[~short]),
                   fit_temperature(logits[short], labels[short]), short_tokens, fitted_on,
                   len(labels))

    def temperatures(self, lengths) -> torch.Tensor:
        """The temperature of each text (float32), from its length in tokens."""
        lengths = torch.as_tensor(lengths)
        long = torch.full(lengths.shape, self.temperature, dtype=torch.float32)
        if self.short_temperature is None:
            return long
        return torch.where(short_texts(lengths, self.short_tokens),
                           torch.tensor(self.short_temperature, dtype=torch.float32), long)

    def apply(self, logits, lengths) -> torch.Tensor:
        """Probabilities (float32): softmax of each text's logits divided by its temperature."""
        logits = torch.as_tensor(logits).float()
        return (logits / self.temperatures(lengths).to(logits.device)[:, None]).softmax(dim=-1)

    def describe(self) -> str:
        if self.short_temperature is None:
            return f"temperature {self.temperature:.4f}"
        return (f"temperature {self.short_temperature:.4f} up to {self.short_tokens} tokens, "
                f"{self.temperature:.4f} above")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict) -> "TemperatureCalibrator":
        short = saved.get("short_temperature")
        return cls(float(saved["temperature"]), None if short is None else float(short),
                   int(saved.get("short_tokens", SHORT_TOKENS)), str(saved.get("fitted_on", "")),
                   int(saved.get("samples", 0)))


# P(positive) is kept inside [EDGE, 1 - EDGE]: a step fitted on texts that were all right would
# otherwise answer 0 or 1, and one wrong answer there costs an infinite log loss
EDGE = 1e-3


def _isotonic_knots(margins: torch.Tensor, labels: torch.Tensor) -> list[list[float]]:
    """[margins, P(positive)]: the knots of the isotonic fit of the labels on the margins."""
    from sklearn.isotonic import IsotonicRegression  # only to fit: 1.2 s off every worker start
    fit = IsotonicRegression(y_min=EDGE, y_max=1 - EDGE, out_of_bounds="clip")
    fit.fit(margins.numpy(), labels.double().numpy())
    return [fit.X_thresholds_.tolist(), fit.y_thresholds_.tolist()]


@dataclass(frozen=True)
class IsotonicCalibrator:
    kind: ClassVar[str] = "isotonic"
    long: list  # [margins ascending, P(positive) at each]: the map for longer texts (or all)
    short: list | None = None  # the same for texts of at most short_tokens; None: `long`
    short_tokens: int = SHORT_TOKENS
    fitted_on: str = ""
    samples: int = 0

    @classmethod
    def fit(cls, logits, lengths, labels, fitted_on: str = "", short_tokens: int = SHORT_TOKENS,
            min_samples: int = MIN_BUCKET) -> "IsotonicCalibrator":
        logits, labels = _checked(logits, labels)
        if logits.shape[1] != 2:
            raise CalibrationError(f"isotonic calibration needs 2 classes, got {logits.shape[1]}")
        margins = logits[:, 1] - logits[:, 0]
        short = _by_length(lengths, short_tokens, min_samples)
        if short is None:
            return cls(_isotonic_knots(margins, labels), None, short_tokens,
                       fitted_on + _one_mapping_note("map", min_samples, short_tokens), len(labels))
        return cls(_isotonic_knots(margins[~short], labels[~short]),
                   _isotonic_knots(margins[short], labels[short]), short_tokens, fitted_on,
                   len(labels))

    def apply(self, logits, lengths) -> torch.Tensor:
        """Probabilities (float32): [1 - p, p], p interpolated from each text's logit margin."""
        logits = torch.as_tensor(logits).float().cpu()
        margins = (logits[:, 1] - logits[:, 0]).double().numpy()
        positive = np.interp(margins, *self.long)
        if self.short is not None:
            short = short_texts(lengths, self.short_tokens).numpy()
            positive = np.where(short, np.interp(margins, *self.short), positive)
        positive = torch.from_numpy(positive).float()
        return torch.stack([1 - positive, positive], dim=-1)

    def describe(self) -> str:
        maps = f"{len(self.long[0])} knots" if self.short is None else (
            f"{len(self.short[0])} knots up to {self.short_tokens} tokens, "
            f"{len(self.long[0])} above")
        return f"isotonic, {maps}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict) -> "IsotonicCalibrator":
        def knots(value):
            if value is None:
                return None
            margins, positive = (list(map(float, part)) for part in value)
            if len(margins) != len(positive) or not margins or margins != sorted(margins):
                raise CalibrationError("isotonic knots must be two equal-length lists, "
                                       "margins ascending")
            return [margins, positive]
        return cls(knots(saved["long"]), knots(saved.get("short")),
                   int(saved.get("short_tokens", SHORT_TOKENS)), str(saved.get("fitted_on", "")),
                   int(saved.get("samples", 0)))


CALIBRATORS = {kind.kind: kind for kind in (TemperatureCalibrator, IsotonicCalibrator)}
Calibrator = TemperatureCalibrator | IsotonicCalibrator
UNCALIBRATED = TemperatureCalibrator()  # softmax of the logits as they are


def save_calibrator(calibrator: Calibrator, directory) -> Path:
    path = Path(directory) / CALIBRATION_FILE
    saved = {"format_version": FORMAT_VERSION, "kind": calibrator.kind, **calibrator.to_dict()}
    path.write_text(json.dumps(saved, indent=2) + "\n")
    return path


def load_calibrator(directory) -> Calibrator:
    """The run's calibrator; UNCALIBRATED where it has no calibration.json. A file without a
    `format_version` (1) is a temperature calibrator's fields: it serves what it always did."""
    path = Path(directory) / CALIBRATION_FILE
    if not path.is_file():
        return UNCALIBRATED
    try:
        saved = json.loads(path.read_text())
        version = int(saved.get("format_version", 1))
        kind = saved.get("kind", TemperatureCalibrator.kind)
        if version > FORMAT_VERSION:
            raise CalibrationError(f"format_version {version} is newer than this code reads "
                                   f"({FORMAT_VERSION})")
        if kind not in CALIBRATORS:
            raise CalibrationError(f"unknown calibrator kind {kind!r} (known: "
                                   f"{', '.join(CALIBRATORS)})")
        return CALIBRATORS[kind].from_dict(saved)
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CalibrationError(f"{path}: cannot be served: {err}") from err


def remove_calibrator(directory) -> None:
    """No calibration: a stale file from an earlier run in the directory must not be served."""
    (Path(directory) / CALIBRATION_FILE).unlink(missing_ok=True)
