"""OpenVINO as the CPU runtime: the fine-tuned HF model converted to an OpenVINO model with
dynamic batch and length, compiled for this CPU: one of the runtimes of handler/runtime.py,
scored through the same micro-batch loop as torch (`handler.inference.score`), so padding,
order and temperature are shared.

Precision: bf16 only where the CPU computes it natively (OpenVINO lists "BF16" in
OPTIMIZATION_CAPABILITIES: AVX512-BF16 or AMX): a bf16 hint on a CPU without it runs an
emulation far slower than f32. int8 is a second model, quantized after training from held-out
reviews (training/quantize.py: openvino_model_int8.xml), served where asked for or, with `auto`,
on a CPU without native bf16; elsewhere f32.

The converted model (IR: openvino_model.xml + .bin) is written into the archive by
training/archive.py when the archive's runtime is openvino; a worker then never loads torch
weights to serve. Without it the worker converts the HF model at start (slower cold start).
The compiled model is cached in `cache_dir` (OpenVINO's CACHE_DIR), so a restart skips
compilation.
"""
import logging
import time
from pathlib import Path

import torch

from handler.cpus import native_int8

logger = logging.getLogger(__name__)

IR_FILE = "openvino_model.xml"
INT8_IR_FILE = "openvino_model_int8.xml"
PRECISIONS = ("auto", "fp32", "bf16", "int8")


def example_batch(tokenizer) -> dict:
    """A tiny batch encoded and padded exactly as serving does: the names and types of the
    converted model's inputs are those of the real inputs. Two lengths, so the trace holds a
    padded attention mask (an all-ones mask may be dropped from the traced graph)."""
    from handler.encoding import EncodingSettings, encode_reviews
    from handler.inference import pad_batch
    encoded = encode_reviews(tokenizer, ["a tiny example review", "two"], EncodingSettings(16))
    return pad_batch(encoded, [0, 1], tokenizer.pad_token_id, torch.device("cpu"))


def convert(model, tokenizer):
    """The HF model as an openvino.Model with dynamic batch and length."""
    import openvino as ov
    inputs = example_batch(tokenizer)
    with torch.no_grad():
        converted = ov.convert_model(model.eval(), example_input=inputs)
    converted.reshape({port.get_any_name(): ov.PartialShape([-1, -1])
                       for port in converted.inputs})
    return converted


def save_ir(model, tokenizer, directory) -> Path:
    """Convert and write openvino_model.xml/.bin into `directory`. Weights stay f32 (no fp16
    compression): f32 machines then match torch fp32 up to float rounding."""
    import openvino as ov
    path = Path(directory) / IR_FILE
    ov.save_model(convert(model, tokenizer), str(path), compress_to_fp16=False)
    return path


def resolve_precision(requested: str, capabilities: list[str], has_int8: bool,
                      fast_int8: bool) -> str:
    """What to compute in, "bf16", "int8" or "f32", for a cpu_precision: auto is bf16 where
    native, else int8 where the archive has the int8 model and the CPU has int8 dot products
    (`fast_int8`: handler/cpus.py native_int8; without them int8 is slower than f32), else f32;
    bf16 asked for on a CPU without it is f32; int8 asked for without the int8 model is an
    error."""
    if requested not in PRECISIONS:
        raise ValueError(f"cpu_precision {requested!r} is not available with cpu_runtime "
                         f"openvino (choose {', '.join(PRECISIONS)}, or cpu_runtime torch)")
    if requested == "int8" and not has_int8:
        raise FileNotFoundError(f"cpu_precision int8 needs {INT8_IR_FILE} in the archive: "
                                "quantize the run (python -m training.quantize RUN --data DATA) "
                                "and archive it again")
    if requested in ("auto", "bf16") and "BF16" in capabilities:
        return "bf16"
    if requested == "int8" or (requested == "auto" and has_int8 and fast_int8):
        return "int8"
    return "f32"


class OpenVINOModel:
    """A compiled OpenVINO model with the runtime interface of handler/runtime.py. One
    inference request, used by one thread at a time (a TorchServe worker)."""

    device = torch.device("cpu")

    def __init__(self, compiled, config, precision: str | None = None):
        self.compiled = compiled
        self.config = config
        self.request = compiled.create_infer_request()
        self.input_names = [port.get_any_name() for port in compiled.inputs]
        self.precision = precision or \
            compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.threads = int(compiled.get_property("INFERENCE_NUM_THREADS"))

    @classmethod
    def load(cls, model_dir, config, threads: int, precision: str = "bf16",
             cache_dir=None, tokenizer=None) -> "OpenVINOModel":
        """Compile the IR in `model_dir`, or, without one, convert the HF model there
        (`tokenizer` makes the example batch; by default the one in `model_dir`). `threads` CPU
        threads, one stream."""
        import openvino as ov
        core = ov.Core()
        started = time.perf_counter()
        int8_ir = Path(model_dir) / INT8_IR_FILE
        capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        computes = resolve_precision(precision, capabilities, int8_ir.is_file(), native_int8())
        properties = {
            # int8 model: the operations left unquantized (softmax, layer norm...) in f32
            "INFERENCE_PRECISION_HINT": "bf16" if computes == "bf16" else "f32",
            "INFERENCE_NUM_THREADS": max(1, int(threads)),
            "NUM_STREAMS": 1,  # one request at a time per worker; all its threads on it
            "PERFORMANCE_HINT": "LATENCY",
        }
        if cache_dir:
            try:
                Path(cache_dir).mkdir(parents=True, exist_ok=True)
                properties["CACHE_DIR"] = str(cache_dir)
            except OSError as err:  # a read-only model directory: serve, only slower to start
                logger.warning("no compiled-model cache (%s): %s", cache_dir, err)
                cache_dir = None
        ir = int8_ir if computes == "int8" else Path(model_dir) / IR_FILE
        if ir.is_file():
            # from a path, a cache hit skips reading the model as well as compiling it
            source = str(ir)
        elif (Path(model_dir) / "tokenizer.json").is_file() or tokenizer is not None:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_dir)
            model = AutoModelForSequenceClassification.from_pretrained(model_dir)
            source = convert(model, tokenizer)
            del model  # only the converted weights stay in memory
            logger.info("no %s in the archive: converted the HF model in %.1f s", IR_FILE,
                        time.perf_counter() - started)
        else:
            raise FileNotFoundError(f"{ir} not found, and no tokenizer to convert the HF "
                                    "model with")
        compiled = core.compile_model(source, "CPU", properties)
        runtime = cls(compiled, config, "int8" if computes == "int8" else None)
        logger.info("OpenVINO %s: %s inference precision, %d threads, ready in %.1f s%s",
                    ov.__version__, runtime.precision, runtime.threads,
                    time.perf_counter() - started,
                    f" (cache {cache_dir})" if cache_dir else "")
        return runtime

    def forward(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        """Logits of one padded micro-batch (tensors from handler.inference.pad_batch)."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask,
                  "token_type_ids": token_type_ids}
        self.request.infer({name: inputs[name].numpy() for name in self.input_names},
                           share_inputs=True)
        return torch.from_numpy(self.request.get_output_tensor(0).data.copy())
