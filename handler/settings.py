"""The handler's settings: the `handler:` section of model-config.yaml (packed into the archive),
with every default written once, here. A key the handler does not know is logged, not ignored
silently; a value of the wrong type fails the worker's start with the key named.

Values of 0 mean "derive it": max_length 0 is the length the model was trained with,
max_call_seconds 0 a quarter of TorchServe's responseTimeout, threads_per_worker 0 the usable
CPUs divided by maxWorkers, explain_cost_factor 0 three times (explain_steps + 1).
"""
import logging
from dataclasses import dataclass, fields

from handler.parsing import Limits

logger = logging.getLogger(__name__)

RESPONSE_TIMEOUT = 120  # TorchServe's own default responseTimeout, in seconds


@dataclass(frozen=True)
class HandlerSettings:
    max_length: int = 0                 # may only lower the trained length (encoding.json)
    max_call_seconds: float = 0.0       # work per handler call before 503 + Retry-After
    min_confidence: float = 0.0         # below it the label is "uncertain"; 0 = off
    max_texts_per_request: int = Limits.max_texts_per_request  # more texts: 413
    max_chars_per_text: int = Limits.max_chars_per_text        # longer texts: 413
    token_budget: int = 16384           # padded tokens per forward pass
    micro_batch_size: int = 64          # texts per forward pass at most
    pad_to_multiple_of: int = 32        # fewer distinct shapes: flat worker memory
    explain_steps: int = 20             # Integrated Gradients steps per text
    explain_token_budget: int = 8192    # padded tokens per explanation pass
    max_texts_per_explanation: int = 16
    explain_cost_factor: float = 0.0    # an explanation's first cost guess, in predictions
    cpu_runtime: str = "torch"          # torch | openvino (GPUs always run torch)
    cpu_precision: str = "auto"         # auto | fp32 | bf16 | int8
    gpu_precision: str = "fp16"         # fp16 | bf16
    threads_per_worker: int = 0
    openvino_cache_dir: str = ""        # "" = openvino_cache in the unpacked archive

    @classmethod
    def from_model_yaml(cls, model_yaml: dict | None) -> "HandlerSettings":
        section = (model_yaml or {}).get("handler") or {}
        known = {field.name: type(field.default) for field in fields(cls)}
        unknown = sorted(set(section) - set(known))
        if unknown:
            logger.warning("model-config.yaml handler settings not known, ignored: %s",
                           ", ".join(unknown))
        values = {}
        for name, value in section.items():
            if name not in known or value is None:
                continue
            try:
                values[name] = known[name](value)
            except (TypeError, ValueError):
                raise ValueError(f"model-config.yaml handler.{name}: {value!r} is not a "
                                 f"{known[name].__name__}") from None
        return cls(**values)

    @property
    def limits(self) -> Limits:
        return Limits(self.max_texts_per_request, self.max_chars_per_text)

    @property
    def explain_limits(self) -> Limits:
        return Limits(self.max_texts_per_explanation, self.max_chars_per_text)

    def call_seconds(self, model_yaml: dict | None) -> float:
        timeout = float((model_yaml or {}).get("responseTimeout", RESPONSE_TIMEOUT))
        return self.max_call_seconds or timeout / 4

    def threads(self, model_yaml: dict | None, usable_cpus: int) -> int:
        """workers x threads <= usable CPUs."""
        workers = max(1, int((model_yaml or {}).get("maxWorkers", 1)))
        return self.threads_per_worker or max(1, usable_cpus // workers)

    def explain_cost(self) -> float:
        return self.explain_cost_factor or 3.0 * (self.explain_steps + 1)
