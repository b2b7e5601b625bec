"""The temperature fitted after training (training/calibration.py fits it): `calibration.json` in
the run directory and in the archive, written by training and read by the handler and by
`training.evaluate`. Serving divides the logits by it before the softmax."""
import json
from dataclasses import asdict, dataclass
from pathlib import Path

CALIBRATION_FILE = "calibration.json"


@dataclass(frozen=True)
class Calibration:
    temperature: float = 1.0  # 1: no calibration (a run fitted none)
    fitted_on: str = ""       # what the temperature was fitted on, in words
    samples: int = 0

    def save(self, directory) -> Path:
        path = Path(directory) / CALIBRATION_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory) -> "Calibration":
        """The run's calibration, or none (temperature 1) when it has no calibration.json."""
        path = Path(directory) / CALIBRATION_FILE
        if not path.is_file():
            return cls()
        saved = json.loads(path.read_text())
        return cls(float(saved["temperature"]), str(saved.get("fitted_on", "")),
                   int(saved.get("samples", 0)))

    @staticmethod
    def remove(directory) -> None:
        """No calibration: a stale file from an earlier run in the directory must not be served."""
        (Path(directory) / CALIBRATION_FILE).unlink(missing_ok=True)
