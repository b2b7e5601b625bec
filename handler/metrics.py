"""The handler's custom metrics. TorchServe's backend sends each one as a log line that the
frontend parses; with metrics_mode=prometheus they reach :8082/metrics only if the server knows
them (serving/metrics.yaml declares the same), so `HandlerMetrics` also registers them in the
worker's metric cache: the archive then serves on a stock TorchServe too."""
import logging

from ts.metrics.metric_type_enum import MetricTypes

logger = logging.getLogger(__name__)

# name: (type, unit, extra dimensions)
METRICS = {
    "TextsPerBatch": (MetricTypes.HISTOGRAM, "Count", []),
    "RequestsPerBatch": (MetricTypes.HISTOGRAM, "Count", []),
    "TokensPerBatch": (MetricTypes.HISTOGRAM, "Count", []),
    "TruncatedTexts": (MetricTypes.COUNTER, "Count", []),
    "PredictionsPerLabel": (MetricTypes.COUNTER, "Count", ["Label"]),
    "RejectedRequests": (MetricTypes.COUNTER, "Count", ["Code"]),
    "HandlerInferenceTime": (MetricTypes.GAUGE, "ms", []),
}


class HandlerMetrics:
    def __init__(self, cache, model_name: str):
        """`cache`: the worker's metric cache (TorchServe's context.metrics), or None."""
        self.cache, self.model_name = cache, model_name
        for name, (metric_type, unit, extra) in METRICS.items():
            if cache is None:
                break
            try:
                cache.get_metric(name, metric_type)
            except Exception:  # not declared in the server's metrics YAML: add it
                cache.add_metric_to_cache(name, unit, ["ModelName", "Level", *extra], metric_type)

    def emit(self, name: str, value, *extra_dimensions: str) -> None:
        """Emit a metric; telemetry failing never fails an inference."""
        if self.cache is None:
            return
        try:
            self.cache.get_metric(name, METRICS[name][0]).add_or_update(
                value, [self.model_name, "Model", *extra_dimensions])
        except Exception as err:  # noqa: BLE001
            logger.warning("metric %s not emitted: %s", name, err)

    def predictions(self, results: list[dict], tokens: int) -> None:
        """What one scored batch of texts was: its size, tokens, truncations and labels."""
        self.emit("TextsPerBatch", len(results))
        self.emit("TokensPerBatch", tokens)
        self.emit("TruncatedTexts", sum(result["truncated"] for result in results))
        labels = {}
        for result in results:
            labels[result["label"]] = labels.get(result["label"], 0) + 1
        for label, count in labels.items():
            self.emit("PredictionsPerLabel", count, label)
