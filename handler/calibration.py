"""The temperatures fitted after training (training/calibration.py fits them): `calibration.json`
in the run directory and in the archive, written by training and read by the handler and by
`training.evaluate`. Serving divides each text's logits by its temperature before the softmax.

Two temperatures, by length: a fine-tuned encoder is over-confident on one-line texts and, if
anything, under-confident on whole reviews, so one temperature over both made one of them worse
(quick preset, AMD EPYC with AVX2 only: a single T = 1.22 took IMDB validation's ECE 0.019 ->
0.044; docs/EXPERIMENTS.md). Texts of at most `short_tokens` tokens ([CLS] and [SEP] included,
as encoded for the model) get `short_temperature`, longer ones `temperature`."""
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

CALIBRATION_FILE = "calibration.json"
SHORT_TOKENS = 64  # a one-line review is ~10-50 tokens, an IMDB review ~100-256


def short_texts(lengths, short_tokens: int = SHORT_TOKENS) -> torch.Tensor:
    """Which texts get the short-text temperature: those of at most `short_tokens` tokens. The
    one rule for serving (Calibration.temperatures) and fitting (training/calibration.py)."""
    return torch.as_tensor(lengths) <= short_tokens


@dataclass(frozen=True)
class Calibration:
    temperature: float = 1.0               # 1: no calibration (a run fitted none)
    short_temperature: float | None = None  # None: `temperature` for every length
    short_tokens: int = SHORT_TOKENS
    fitted_on: str = ""                    # what the temperatures were fitted on, in words
    samples: int = 0

    def temperatures(self, lengths) -> torch.Tensor:
        """The temperature of each text (float32), from its length in tokens."""
        lengths = torch.as_tensor(lengths)
        long = torch.full(lengths.shape, self.temperature, dtype=torch.float32)
        if self.short_temperature is None:
            return long
        return torch.where(short_texts(lengths, self.short_tokens),
                           torch.tensor(self.short_temperature, dtype=torch.float32), long)

    def describe(self) -> str:
        if self.short_temperature is None:
            return f"temperature {self.temperature:.4f}"
        return (f"temperature {self.short_temperature:.4f} up to {self.short_tokens} tokens, "
                f"{self.temperature:.4f} above")

    def save(self, directory) -> Path:
        path = Path(directory) / CALIBRATION_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory) -> "Calibration":
        """The run's calibration, or none (temperature 1) when it has no calibration.json. A file
        from before the length split (one `temperature`) serves that one for every length."""
        path = Path(directory) / CALIBRATION_FILE
        if not path.is_file():
            return cls()
        saved = json.loads(path.read_text())
        short = saved.get("short_temperature")
        return cls(float(saved["temperature"]), None if short is None else float(short),
                   int(saved.get("short_tokens", SHORT_TOKENS)), str(saved.get("fitted_on", "")),
                   int(saved.get("samples", 0)))

    @staticmethod
    def remove(directory) -> None:
        """No calibration: a stale file from an earlier run in the directory must not be served."""
        (Path(directory) / CALIBRATION_FILE).unlink(missing_ok=True)
