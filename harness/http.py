"""One way to post a request to the service and one check of a prediction's answer, for any
server with an `inference` URL (harness.server.TorchServe, the docker-compose stack)."""
import requests

from harness.server import MODEL_NAME

TEXT = {"Content-Type": "text/plain"}
JSON = {"Content-Type": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
LABELS = {"negative", "positive"}


def post(server, body, headers=TEXT, route="predictions", version=None, timeout=60):
    """POST `body` (a str is sent as UTF-8) to the model's `route` (predictions, explanations),
    or to one `version` of it, with `headers`; with token auth, the server's inference key."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    url = f"{server.inference}/{route}/{MODEL_NAME}" + (f"/{version}" if version else "")
    if hasattr(server, "auth"):
        headers = {**headers, **server.auth("inference")}
    return requests.post(url, data=body, headers=headers, timeout=timeout)


def assert_prediction(response):
    """A 200 with a JSON prediction, or a list of them for {"texts": [...]}: each a label, its
    score, and probabilities over both labels that sum to 1, the label's the highest. The
    answer (or list of answers)."""
    assert response.status_code == 200, response.text[:300]
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    answer = response.json()
    for one in answer if isinstance(answer, list) else [answer]:
        assert one["label"] in LABELS, one
        assert set(one["probabilities"]) == LABELS, one
        assert abs(sum(one["probabilities"].values()) - 1.0) <= 1e-5, one
        assert one["score"] == max(one["probabilities"].values()), one
        assert one["probabilities"][one["label"]] == one["score"], one
    return answer
