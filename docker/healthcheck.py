"""Container health check: TorchServe answers /ping AND the model has a READY worker.

/ping alone turns "Healthy" as soon as the workers' processes start, before the model is
loaded, so the check also asks the management API (inside the container, on loopback) for
the model's workers. Exit 0 = healthy, 1 = not (the reason goes to the health log).
Addresses come from TS_INFERENCE_ADDRESS / TS_MANAGEMENT_ADDRESS (0.0.0.0 becomes 127.0.0.1);
the model from HEALTHCHECK_MODEL (default bert_sentiment).
"""
import json
import os
import sys
import urllib.request


def local(address: str) -> str:
    return address.rstrip("/").replace("//0.0.0.0:", "//127.0.0.1:")


def main() -> int:
    inference = local(os.environ.get("TS_INFERENCE_ADDRESS", "http://127.0.0.1:8080"))
    management = local(os.environ.get("TS_MANAGEMENT_ADDRESS", "http://127.0.0.1:8081"))
    model = os.environ.get("HEALTHCHECK_MODEL", "bert_sentiment")
    try:
        with urllib.request.urlopen(f"{inference}/ping", timeout=3) as response:
            if b"Healthy" not in response.read():
                print("ping: not healthy")
                return 1
        with urllib.request.urlopen(f"{management}/models/{model}", timeout=3) as response:
            workers = json.load(response)[0]["workers"]
    except Exception as error:  # connection refused, HTTP 5xx/404, bad JSON: all unhealthy
        print(f"unhealthy: {error}")
        return 1
    ready = sum(worker.get("status") == "READY" for worker in workers)
    print(f"{model}: {ready}/{len(workers)} workers ready")
    return 0 if ready else 1


if __name__ == "__main__":
    sys.exit(main())
