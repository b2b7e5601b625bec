"""Every way we run the encoder, behind one small interface, and the one factory that picks it.

A runtime has `forward(input_ids, attention_mask, token_type_ids=None) -> logits` for one padded
micro-batch (handler/inference.py scores every runtime through the same loop), its `device`,
the model's `config` (labels, positions) and `precision`, what it computes in, in words.
`load_runtime` builds one from a run directory or an unpacked archive: the handler,
`training.evaluate`, `training.quantize` and the benchmarks all get their model from it.

- torch: fp32; bf16/fp16 by autocast (on a GPU the weights are cast once: half the memory);
  int8 by dynamic quantization of the linear layers (CPU only).
- openvino (CPU only, handler/openvino_runtime.py): f32, bf16 where the CPU has it natively,
  or the run's int8 model quantized after training.
"""
import json
from pathlib import Path
from types import SimpleNamespace

import torch

BACKENDS = ("torch", "openvino")
HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


def is_fatal_device_error(error: BaseException) -> bool:
    """CUDA errors after which the device is unusable (device-side assert, illegal address):
    every later call on this worker would fail too, so the worker must be replaced."""
    if isinstance(error, torch.OutOfMemoryError):
        return False
    accelerator_error = getattr(torch, "AcceleratorError", ())
    message = str(error)
    return isinstance(error, accelerator_error) or "CUDA error" in message \
        or "device-side assert" in message


class TorchRuntime:
    """A transformers model for sequence classification, prepared for `precision`."""

    def __init__(self, model, precision: str = "fp32"):
        self.device = next(model.parameters()).device
        self.config = model.config
        self.precision = precision
        self.autocast_dtype = HALF.get(precision)
        if precision in HALF and self.device.type == "cuda":
            # half weights once on the GPU: no per-forward weight casts; autocast still keeps
            # layer norm and softmax in fp32
            model = model.to(dtype=self.autocast_dtype)
        elif precision == "int8" and self.device.type == "cpu":
            import warnings

            from torch.ao.quantization import quantize_dynamic
            with warnings.catch_warnings():  # quantize_dynamic's deprecation notice
                warnings.simplefilter("ignore")
                model = quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        elif precision != "fp32" and precision not in HALF:
            raise ValueError(f"unsupported precision {precision!r} on {self.device.type}")
        self.model = model
        # fp32 weights (bf16 on the CPU is only autocast): what explanations can reuse
        self.fp32_weights = precision == "fp32" or (precision in HALF and
                                                    self.device.type == "cpu")

    def forward(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        with torch.autocast(self.device.type, dtype=self.autocast_dtype,
                            enabled=self.autocast_dtype is not None):
            return self.model(**inputs).logits


def torch_precision(requested: str, device: torch.device) -> str:
    """auto: bf16 where the CPU computes it natively (else fp32); fp16 on a GPU."""
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "fp16"
    from handler.cpus import auto_cpu_precision
    return auto_cpu_precision()


def labels_and_positions(model_dir) -> SimpleNamespace:
    """What scoring needs of config.json (id2label, num_labels, max_position_embeddings), read
    without transformers: an OpenVINO worker then never imports it (a faster start)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    id2label = {int(i): label for i, label in config["id2label"].items()}
    return SimpleNamespace(id2label=id2label, num_labels=len(id2label),
                           max_position_embeddings=config.get("max_position_embeddings"))


def load_runtime(model_dir, device="cpu", precision: str = "auto", backend: str = "torch",
                 threads: int | None = None, cache_dir=None):
    """The model in `model_dir` ready to score: `backend` torch or openvino (CPU only),
    `precision` as model-config.yaml's cpu_precision / gpu_precision, `threads` for OpenVINO
    (torch uses torch.get_num_threads()), `cache_dir` for OpenVINO's compiled model."""
    device = torch.device(device)
    if backend not in BACKENDS:
        raise ValueError(f"cpu_runtime {backend!r}: choose {' or '.join(BACKENDS)}")
    if backend == "openvino":
        if device.type != "cpu":
            raise ValueError("the openvino runtime runs on the CPU; GPUs run torch")
        from handler.openvino_runtime import OpenVINOModel
        return OpenVINOModel.load(model_dir, labels_and_positions(model_dir),
                                  threads or torch.get_num_threads(), precision, cache_dir)
    from transformers import AutoModelForSequenceClassification
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    return TorchRuntime(model.eval().to(device), torch_precision(precision, device))


def fp32_torch_model(runtime, model_dir):
    """The model in fp32 on the runtime's device, for what needs autograd (explanations): the
    runtime's own weights where they are fp32, else loaded from `model_dir` (once per call:
    callers keep it)."""
    if isinstance(runtime, TorchRuntime) and runtime.fp32_weights:
        return runtime.model
    from transformers import AutoModelForSequenceClassification
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    return model.eval().to(runtime.device)
