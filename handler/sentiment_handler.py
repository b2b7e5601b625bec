"""TorchServe handler: IMDB sentiment with a fine-tuned BERT-family encoder.

What a request goes through, in one call of `handle` (TorchServe hands over every request it
batched: batchSize / maxBatchDelay in model-config.yaml):
1. parsed into review texts, or answered with its own 4xx JSON error (handler/parsing.py);
2. scheduled against the call's time budget (handler/scheduler.py): what would not fit gets a
   503 + Retry-After instead of TorchServe killing the worker at its timeout;
3. scored with the model (handler/predictor.py: the run's encoding, the runtime of
   handler/runtime.py, the fitted temperatures), explained where asked (/explanations/NAME);
4. answered as JSON, one response per request, in order; a request whose inference fails is
   retried alone so that it fails by itself. Review text never reaches the logs.

TorchServe needs only a class with `initialize` and `handle`; this is that class, a thin
adapter: the settings are handler/settings.py, the metrics handler/metrics.py.
"""
import json
import logging
import os
import threading
import time

import torch

from handler.cpus import usable_cpus
from handler.metrics import HandlerMetrics
from handler.parsing import RequestError, parse_request
from handler.predictor import Predictor
from handler.runtime import is_fatal_device_error
from handler.scheduler import Scheduler
from handler.settings import HandlerSettings

logger = logging.getLogger(__name__)

REASONS = {400: "Bad Request", 413: "Payload Too Large", 415: "Unsupported Media Type",
           500: "Internal Server Error", 503: "Service Unavailable"}
EXIT_CODE_DEVICE_FAILED = 70


class SentimentHandler:
    def initialize(self, context):
        started = time.perf_counter()
        self.context = context
        model_yaml = context.model_yaml_config or {}
        self.settings = settings = HandlerSettings.from_model_yaml(model_yaml)
        model = context.manifest["model"]
        self.metrics = HandlerMetrics(context.metrics, model["modelName"])
        gpu_id = context.system_properties.get("gpu_id")
        if torch.cuda.is_available() and gpu_id is not None:
            device = torch.device(f"cuda:{gpu_id}")
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
            torch.set_num_threads(settings.threads(model_yaml, usable_cpus()))
            logger.info("CPU worker: %d threads (%d usable CPUs, maxWorkers %s)",
                        torch.get_num_threads(), usable_cpus(), model_yaml.get("maxWorkers", 1))
        # the archive's content hash (training/archive.py), in every answer
        self.predictor = Predictor(context.system_properties["model_dir"], device, settings,
                                   str(model.get("modelVersion", "")))
        self.scheduler = Scheduler(settings.call_seconds(model_yaml), self.predictor.warm_up(),
                                   settings.explain_cost(), settings.micro_batch_size,
                                   settings.token_budget, self.predictor.encoding.max_length)
        logger.info("loaded %s on %s, runtime %s, %s, %s; %.1f us per token, at "
                    "most %.1f s of work per call; ready in %.1f s", model["modelName"], device,
                    self.predictor.runtime.precision, self.predictor.encoding,
                    self.predictor.calibrator.describe(), self.scheduler.seconds_per_token * 1e6,
                    self.scheduler.max_call_seconds, time.perf_counter() - started)
        self.initialized = True

    def handle(self, data, context):
        self.context = context
        started = time.perf_counter()
        responses, valid, explanations = [None] * len(data), {}, set()
        for idx, request in enumerate(data):
            context.set_response_content_type(idx, "application/json")
            # TorchServe marks requests to /explanations/NAME with the header explain: True
            explaining = context.get_request_header(idx, "explain") == "True"
            try:
                valid[idx] = parse_request(request, self.content_type(context, idx),
                                           self.settings.explain_limits if explaining
                                           else self.settings.limits)
                if explaining:
                    explanations.add(idx)
            except RequestError as err:
                responses[idx] = self.error(idx, err.code, str(err))
            except Exception:  # a parsing bug must not fail the other requests of the batch
                logger.exception("could not parse request %s", context.get_request_id(idx))
                responses[idx] = self.error(idx, 400, "request could not be parsed")

        answers, refused = self.scheduler.run(
            {idx: parsed.texts for idx, parsed in valid.items()}, explanations, started,
            lambda chunk: self.answer_isolated({idx: valid[idx] for idx in chunk}, explanations))
        for idx in refused:
            answers[idx] = self.error(idx, 503, "server busy: this batch is full; retry the "
                                      "request", retry_after=1)
        for idx, answer in answers.items():
            responses[idx] = answer
        self.metrics.emit("HandlerInferenceTime", (time.perf_counter() - started) * 1000)
        self.metrics.emit("RequestsPerBatch", len(data))
        return responses

    def answer_isolated(self, requests: dict, explanations: set) -> dict:
        """`answer`, and if it fails, each request alone, so one odd text fails only its own
        request. A device error that leaves the GPU unusable ends the worker (TorchServe starts
        a new one) after this call's answers are sent."""
        try:
            return self.answer(requests, explanations)
        except Exception as err:  # noqa: BLE001 - never log the texts
            failure = err
        if is_fatal_device_error(failure):  # before any further CUDA call, which would fail too
            return self.device_failed(requests, failure)
        # out of the except block: the failed batch's tensors are released before retrying
        if self.predictor.device.type == "cuda":
            torch.cuda.empty_cache()
        logger.error("inference failed for a batch of %d requests (%s); retrying each alone",
                     len(requests), type(failure).__name__)
        answers = {}
        for idx, parsed in requests.items():
            try:
                answers.update(self.answer({idx: parsed}, explanations))
            except Exception as err:  # noqa: BLE001 - keep the worker alive
                if is_fatal_device_error(err):
                    return {**answers, **self.device_failed(
                        {i: p for i, p in requests.items() if i not in answers}, err)}
                logger.error("inference failed for request %s: %s",
                             self.context.get_request_id(idx), type(err).__name__)
                answers[idx] = self.error(idx, 500, "inference failed")
        return answers

    def device_failed(self, requests: dict, error: BaseException) -> dict:
        logger.critical("device %s failed (%s): this worker exits so that TorchServe replaces "
                        "it", self.predictor.device, type(error).__name__)
        threading.Timer(1.0, os._exit, [EXIT_CODE_DEVICE_FAILED]).start()
        return {idx: self.error(idx, 503, "the model's device failed; the worker restarts, "
                                "retry the request", retry_after=5) for idx in requests}

    def answer(self, requests: dict, explanations: set) -> dict:
        """Score every text of the given requests in one pass; a JSON answer per request."""
        texts = [text for parsed in requests.values() for text in parsed.texts]
        if not texts:
            return {}
        results, tokens = self.predictor.predict(texts)
        self.metrics.predictions(results, tokens)
        explained = [idx in explanations for idx, parsed in requests.items()
                     for _ in parsed.texts]
        if any(explained):
            self.predictor.explain([text for text, e in zip(texts, explained) if e],
                                   [result for result, e in zip(results, explained) if e])
        results = iter(results)
        answers = {}
        for idx, parsed in requests.items():
            mine = [next(results) for _ in parsed.texts]
            answers[idx] = json.dumps(mine if parsed.batched else mine[0])
        return answers

    def error(self, idx: int, code: int, message: str, retry_after: int | None = None) -> str:
        self.context.set_response_status(code, REASONS.get(code, "Error"), idx)
        if retry_after is not None:
            self.context.set_response_header(idx, "Retry-After", str(retry_after))
        self.metrics.emit("RejectedRequests", 1, str(code))
        logger.info("request %s rejected with %d: %s", self.context.get_request_id(idx), code,
                    message[:200])
        return json.dumps({"error": message, "code": code})

    @staticmethod
    def content_type(context, idx: int) -> str:
        headers = context.get_all_request_header(idx) or {}
        for name, value in headers.items():
            if name.lower() == "content-type" and isinstance(value, str):
                return value
        body = headers.get("body")  # the parameter-level header TorchServe attaches to the body
        return body.get("content-type", "") if isinstance(body, dict) else ""
