"""The handler's device-error paths, on the CPU: which exceptions mean "out of memory, split the
batch" and which mean "the device is gone, replace the worker", the halving of micro-batches on
out-of-memory (a real handler, tokenizer and tiny model, whose forward pass runs out of memory
above N rows as a GPU would), and the worker exiting after a fatal device error.
tests/test_gpu.py provokes the same paths on a real GPU."""
import json
import logging
import re
import subprocess
import sys

import pytest
import torch
from ts.context import RequestProcessor

from harness.worker import load_handler
from handler.runtime import is_fatal_device_error
from handler.sentiment_handler import EXIT_CODE_DEVICE_FAILED
from tests.conftest import REPO, synthetic_reviews

FATAL_MESSAGES = [
    "CUDA error: an illegal memory access was encountered",
    "CUDA error: device-side assert triggered\nCompile with `TORCH_USE_CUDA_DSA` to enable "
    "device-side assertions.",
    "CUDA error: misaligned address",
    "CUDA error: unspecified launch failure",
]
ORDINARY_ERRORS = [
    RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x32 and 64x2)"),
    IndexError("index out of range in self"),
    ValueError("unsupported precision 'fp8' on cpu"),
    KeyError("input_ids"),
]


def test_out_of_memory_splits_and_is_not_fatal():
    error = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has "
                                   "a total capacity of 79.10 GiB")
    assert not is_fatal_device_error(error)


@pytest.mark.parametrize("message", FATAL_MESSAGES)
def test_cuda_errors_are_fatal(message):
    assert is_fatal_device_error(RuntimeError(message))


@pytest.mark.skipif(not hasattr(torch, "AcceleratorError"),
                    reason="this torch has no torch.AcceleratorError")
@pytest.mark.parametrize("message", FATAL_MESSAGES[:1] + ["unknown error"])
def test_accelerator_errors_are_fatal_whatever_their_message(message):
    error = torch.AcceleratorError(message)
    assert is_fatal_device_error(error)


@pytest.mark.parametrize("error", ORDINARY_ERRORS, ids=lambda e: type(e).__name__)
def test_ordinary_errors_are_neither(error):
    assert not is_fatal_device_error(error)


class OutOfMemoryAbove(torch.nn.Module):
    """The wrapped model, except that a forward pass over more than `rows` texts raises
    torch.OutOfMemoryError, as a GPU with too little free memory would."""

    def __init__(self, model, rows: int):
        super().__init__()
        self.model, self.config, self.rows = model, model.config, rows
        self.batch_rows: list[int] = []

    def forward(self, **inputs):
        rows = inputs["input_ids"].shape[0]
        self.batch_rows.append(rows)
        if rows > self.rows:
            raise torch.OutOfMemoryError(f"simulated: no memory for {rows} rows")
        return self.model(**inputs)


@pytest.fixture
def handler(tiny_run):
    """A real handler on the CPU (fp32), one forward pass per call of up to 64 texts."""
    return load_handler(tiny_run, "cpu", cpu_precision="fp32", micro_batch_size=64,
                        token_budget=1 << 20)


def reviews(count: int, seed: int) -> list[str]:
    return synthetic_reviews(count, seed=seed)["text"].tolist()


def answer_batch(handler, bodies: list[tuple[str, bytes]]):
    """Call `handle` as a TorchServe worker does: one request per (content type, body)."""
    context = handler.context
    context.request_ids = {i: f"request-{i}" for i in range(len(bodies))}
    context.request_processor = [RequestProcessor({"Content-Type": content_type})
                                 for content_type, _ in bodies]
    responses = handler.handle([{"body": body} for _, body in bodies], context)
    statuses = [context.request_processor[i].get_response_status_code()
                for i in range(len(bodies))]
    return statuses, [json.loads(response) for response in responses], context


def test_out_of_memory_halves_micro_batches_and_answers_equal_unsplit(handler, caplog):
    texts = reviews(40, seed=11)
    runtime = handler.predictor.runtime
    expected, _ = handler.predictor.predict(texts)
    runtime.model = OutOfMemoryAbove(runtime.model, rows=5)
    with caplog.at_level(logging.WARNING, logger="handler.inference"):
        answers, _ = handler.predictor.predict(texts)
    rows = runtime.model.batch_rows
    assert rows[0] == 40, rows  # all at once first (the tiny run pads every text to 32 tokens)
    caps = [int(re.search(r"retrying with (\d+) ", record.getMessage()).group(1))
            for record in caplog.records if "out of memory" in record.getMessage()]
    assert caps == [32, 16, 8, 4], caps  # the cap on texts per pass halves from 64
    answered, last = 0, len(rows)
    while answered < len(texts):  # the passes of the attempt that succeeded
        last -= 1
        answered += rows[last]
    assert answered == len(texts) and max(rows[last:]) <= 4, rows
    assert [a["label"] for a in answers] == [e["label"] for e in expected]
    assert [a["probabilities"]["positive"] for a in answers] == pytest.approx(
        [e["probabilities"]["positive"] for e in expected], abs=1e-5)
    assert sum("out of memory" in record.getMessage() for record in caplog.records) == 4
    assert not any(text in caplog.text for text in texts)  # no review text in the log


def test_out_of_memory_in_a_batch_of_requests_keeps_every_answer(handler):
    texts = reviews(30, seed=12)
    bodies = [("application/json", {"texts": texts}), ("text/plain", "A superb, moving film."),
              ("text/plain", "   "), ("application/json", {"text": "Dull and boring."})]
    expected_statuses, expected, _ = answer_batch(handler, bodies)
    assert expected_statuses == [200, 200, 400, 200]
    runtime = handler.predictor.runtime
    runtime.model = OutOfMemoryAbove(runtime.model, rows=3)
    statuses, answers, _ = answer_batch(handler, bodies)
    assert statuses == expected_statuses
    assert answers[2]["code"] == 400
    served = [*answers[0], answers[1], answers[3]]
    unsplit = [*expected[0], expected[1], expected[3]]
    assert [a["probabilities"]["positive"] for a in served] == pytest.approx(
        [e["probabilities"]["positive"] for e in unsplit], abs=1e-5)


def test_out_of_memory_even_for_one_text_fails_only_that_call(handler):
    runtime = handler.predictor.runtime
    runtime.model = OutOfMemoryAbove(runtime.model, rows=0)
    statuses, answers, _ = answer_batch(handler, [("text/plain", "Great film."),
                                                  ("text/plain", "")])
    assert statuses == [500, 400]
    assert answers[0] == {"error": "inference failed", "code": 500}
    runtime.model = runtime.model.model  # memory again: the same worker answers
    assert answer_batch(handler, [("text/plain", "Great film.")])[0] == [200]


# Run in a child process: after a fatal device error the handler ends its own process.
FATAL_CHILD = """
import json, sys, time, torch
from ts.context import RequestProcessor
from harness.worker import load_handler
handler = load_handler(sys.argv[1], "cpu", cpu_precision="fp32")
class Broken(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config
    def forward(self, **inputs):
        raise RuntimeError("CUDA error: device-side assert triggered")
handler.predictor.runtime.model = Broken(handler.predictor.runtime.model)
context = handler.context
context.request_ids = {0: "a", 1: "b"}
context.request_processor = [RequestProcessor({"Content-Type": "text/plain"}) for _ in range(2)]
responses = handler.handle([{"body": "A wonderful film."}, {"body": "Dull."}], context)
print(json.dumps({"statuses": [p.get_response_status_code() for p in context.request_processor],
                  "retry_after": [p.get_response_headers().get("Retry-After")
                                  for p in context.request_processor],
                  "bodies": [json.loads(r) for r in responses]}), flush=True)
time.sleep(60)
print("still alive", flush=True)
"""


def test_fatal_device_error_answers_503_then_the_worker_exits(tiny_run):
    child = subprocess.run([sys.executable, "-c", FATAL_CHILD, str(tiny_run)], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == EXIT_CODE_DEVICE_FAILED, child.stderr[-2000:]
    assert "still alive" not in child.stdout  # it exited; it did not sleep its 60 s out
    report = json.loads(child.stdout.strip().splitlines()[-1])
    assert report["statuses"] == [503, 503]
    assert report["retry_after"] == ["5", "5"]
    assert all(body["code"] == 503 and "retry" in body["error"] for body in report["bodies"])
    assert "device" in child.stderr and "wonderful" not in child.stderr
