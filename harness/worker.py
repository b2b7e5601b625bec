"""The real handler without TorchServe, for a test or a benchmark to call in-process: the whole
`handler.sentiment_handler.SentimentHandler` initialized with TorchServe's own
`ts.context.Context` as a worker initializes it (load_handler), or its model core,
`handler.predictor.Predictor`, as that handler builds it (load_predictor)."""
from harness.server import MODEL_NAME


def load_handler(run_dir, device="cpu", workers: int = 1, **settings):
    """A `SentimentHandler` on the run directory `run_dir` as a TorchServe worker would have
    it: `device` "cuda:N" passes gpu_id N, "cpu" none; `workers` is maxWorkers (a CPU worker's
    threads are the usable CPUs divided by it); `settings` is the handler section of
    model-config.yaml (unset ones take the handler's defaults)."""
    import torch
    from ts.context import Context

    from handler.sentiment_handler import SentimentHandler
    device = torch.device(device)
    gpu_id = (device.index or 0) if device.type == "cuda" else None
    context = Context(MODEL_NAME, str(run_dir), {"model": {"modelName": MODEL_NAME}}, 1, gpu_id,
                      "0.12.0", model_yaml_config={"maxWorkers": workers, "handler": settings})
    handler = SentimentHandler()
    handler.initialize(context)
    return handler


def load_predictor(run_dir, device="cpu", **settings):
    """The handler's model core on `run_dir` (runtime, precision, encoding, calibrator) as a
    worker builds it; `settings` is the handler section of model-config.yaml."""
    from handler.predictor import Predictor
    from handler.settings import HandlerSettings
    return Predictor(run_dir, device, HandlerSettings(**settings))
