"""Malformed and hostile requests against a real TorchServe (tiny model, loopback, free ports).

Every bad request gets a 4xx with a JSON error saying what is wrong, valid requests in the same
batch still get their 200, and the worker never restarts. Also: the request-size, texts and
characters limits, and two security checks (no model registration from a URL, no review text
in the logs). Queue, timeout and worker-kill behaviour: tests/test_faults.py.
"""
import ast
import asyncio
import gzip
import http.server
import json
import re
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
import requests

from harness.http import JSON, TEXT, assert_prediction, post
from harness.server import running
from tests.conftest import REPO

pytestmark = pytest.mark.serve
MAX_REQUEST_SIZE = 2_097_152  # serving/config.properties
URL_PATH = "/predictions/bert_sentiment"


def workers(server) -> set:
    """Identity of the running workers: a restart changes the pid (startTime survives it)."""
    return {(w["id"], w["startTime"], w["pid"]) for w in server.describe()["workers"]}


@pytest.fixture(scope="module")
def server(tiny_archive, tmp_path_factory):
    with running(tmp_path_factory.mktemp("ts-bad-input"), tiny_archive.parent) as ts:
        yield ts


def js(value) -> bytes:
    return json.dumps(value).encode()


MULTIPART = (b'--XyZ\r\nContent-Disposition: form-data; name="data"; filename="r.txt"\r\n'
             b"Content-Type: text/plain\r\n\r\ngreat movie\r\n--XyZ--\r\n")

# (name, body, headers, status, words of the JSON error message)
BAD = [
    ("empty text body", b"", TEXT, 400, "empty"),
    ("empty JSON body", b"", JSON, 400, "body is empty"),
    ("whitespace only", b" \t\r\n ", TEXT, 400, "empty or whitespace"),
    ("unicode whitespace only", "\u3000\u2003\u00a0".encode(), TEXT, 400, "empty or whitespace"),
    ("invalid UTF-8", b"great \xff\xfe movie", TEXT, 400, "not valid UTF-8"),
    ("invalid UTF-8 in JSON", b'{"text": "great \xc3\x28"}', JSON, 400, "not valid UTF-8"),
    ("overlong UTF-8", b"great \xc0\xaf", TEXT, 400, "not valid UTF-8"),
    ("UTF-16 body", "great movie".encode("utf-16"), TEXT, 400, "not valid UTF-8"),
    ("latin-1 charset", "café".encode("latin-1"), {"Content-Type": "text/plain; charset=latin-1"},
     415, "charset"),
    ("UTF-16 JSON charset", js({"text": "a"}), {"Content-Type": "application/json; charset=utf-16"},
     415, "charset"),
    ("truncated JSON", b'{"text": "great', JSON, 400, "not valid JSON"),
    ("JSON trailing garbage", b'{"text": "great"} }', JSON, 400, "not valid JSON"),
    ("JSON single quotes", b"{'text': 'great'}", JSON, 400, "not valid JSON"),
    ("deeply nested arrays", b"[" * 100_000 + b"]" * 100_000, JSON, 400, "nested too deeply"),
    ("deeply nested objects", b'{"text":' * 50_000 + b'"a"' + b"}" * 50_000, JSON, 400,
     "nested too deeply"),
    ("5000-digit number", b'{"text": ' + b"9" * 5000 + b"}", JSON, 400, "not valid JSON"),
    ("top-level string", b'"great movie"', JSON, 400, "got a string"),
    ("top-level 1e11 integer", b"100000000000", JSON, 400, "got a number"),
    ("top-level float", b"1.5", JSON, 400, "got a number"),
    ("top-level null", b"null", JSON, 400, "got null"),
    ("top-level boolean", b"true", JSON, 400, "got a boolean"),
    ("top-level array", b'["great movie"]', JSON, 400, "got an array"),
    ("text is null", js({"text": None}), JSON, 400, "got null"),
    ("text is a number", js({"text": 5}), JSON, 400, "got a number"),
    ("text is an array", js({"text": ["great"]}), JSON, 400, "got an array"),
    ("text is an object", js({"text": {"a": "b"}}), JSON, 400, "got an object"),
    ("texts is a string", js({"texts": "great"}), JSON, 400, "must be an array"),
    ("texts is empty", js({"texts": []}), JSON, 400, "is empty"),
    ("texts item null", js({"texts": ["great", None]}), JSON, 400, '"texts"[1] must be a string'),
    ("texts item number", js({"texts": [1]}), JSON, 400, '"texts"[0] must be a string'),
    ("texts item blank", js({"texts": ["great", "  "]}), JSON, 400, '"texts"[1] is empty'),
    ("both text and texts", js({"text": "a", "texts": ["b"]}), JSON, 400, "exactly one"),
    ("no known key", js({"review": "great"}), JSON, 400, "exactly one"),
    ("lone surrogate", b'{"text": "great \\ud800 movie"}', JSON, 400, "unpaired"),
    ("65 texts", js({"texts": ["great"] * 65}), JSON, 413, "limit is 64"),
    ("20001 characters", b"a" * 20_001, TEXT, 413, "limit is 20000"),
    ("20001 characters in JSON", js({"texts": ["ok", "a" * 20_001]}), JSON, 413,
     '"texts"[1] has 20001 characters'),
    ("application/xml", b"<review>great</review>", {"Content-Type": "application/xml"}, 415,
     "unsupported content type"),
    ("application/octet-stream", b"great", {"Content-Type": "application/octet-stream"}, 415,
     "unsupported content type"),
    ("text/html", b"<b>great</b>", {"Content-Type": "text/html"}, 415, "unsupported content type"),
    ("gzip without header", gzip.compress(b"great movie"), TEXT, 415, "gzip"),
    ("gzip with Content-Encoding", gzip.compress(b'{"text": "great"}'),
     {**JSON, "Content-Encoding": "gzip"}, 415, "gzip"),
    ("multipart form", MULTIPART, {"Content-Type": "multipart/form-data; boundary=XyZ"}, 415,
     "multipart"),
    ("form with two fields", b"great=1&movie=2",
     {"Content-Type": "application/x-www-form-urlencoded"}, 400, 'field named "text"'),
    ("curl -d form (no field)", b"great movie",
     {"Content-Type": "application/x-www-form-urlencoded"}, 400, "Content-Type: text/plain"),
]

# unusual but valid: 200 with a prediction
VALID = [
    ("UTF-8 BOM", b"\xef\xbb\xbfA wonderful film.", TEXT),
    ("NUL bytes", b"great\x00movie\x00", TEXT),
    ("control characters", b"great\x01\x02\x1b[31m movie\x7f\x08", TEXT),
    ("emoji", "Loved it 😍🎬👍🏽".encode(), TEXT),
    ("RTL text", "فيلم رائع جدا \u200fשלום".encode(), TEXT),
    ("combining characters", "Cafe\u0301 z\u0351\u0352o\u0300\u0301".encode(), TEXT),
    ("emoji as JSON surrogate pair", b'{"text": "great \\ud83d\\ude00"}', JSON),
    ("JSON with charset", js({"text": "great"}), {"Content-Type": "application/json; charset=utf-8"}),
    ("no content type", b"great movie", {}),
    ("form text field", b"text=great+movie", {"Content-Type": "application/x-www-form-urlencoded"}),
    ("JSON extra keys", js({"text": "great", "id": 7}), JSON),
    ("64 texts", js({"texts": ["great"] * 64}), JSON),
    ("20000 characters", b"great " * 3333 + b"ab", TEXT),
]


def assert_json_error(response, code: int, words: str):
    assert response.status_code == code, response.text[:300]
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()
    assert error["code"] == code and words in error["error"], error


@pytest.mark.parametrize("name, body, headers, code, words", BAD, ids=[c[0] for c in BAD])
def test_bad_request_gets_a_json_4xx(server, name, body, headers, code, words):
    assert_json_error(post(server, body, headers), code, words)


@pytest.mark.parametrize("name, body, headers", VALID, ids=[c[0] for c in VALID])
def test_unusual_but_valid_request_gets_200(server, name, body, headers):
    assert_prediction(post(server, body, headers))


def test_bad_requests_do_not_spoil_their_batch_or_restart_the_worker(server):
    before = workers(server)
    cases = [(body, headers, code) for _, body, headers, code, _ in BAD]
    cases += [(body, headers, 200) for _, body, headers in VALID]
    cases += [(b"A wonderful film.", TEXT, 200)] * 16
    with ThreadPoolExecutor(max_workers=32) as pool:
        responses = list(pool.map(lambda case: post(server, case[0], case[1]), cases))
    assert [r.status_code for r in responses] == [code for _, _, code in cases]
    for response, (_, _, code) in zip(responses, cases):
        if code == 200:
            assert_prediction(response)
        else:
            assert response.json()["code"] == code
    assert workers(server) == before


# no HTTP request reaches these: TorchServe always hands the handler a body or form fields
NOT_FROM_HTTP = ("request has no body",)


def parser_refusals() -> dict[int, re.Pattern]:
    """{line: its message as a pattern, f-string values as wildcards} of every
    `raise RequestError(...)` in handler/parsing.py."""
    refusals = {}
    for node in ast.walk(ast.parse((REPO / "handler" / "parsing.py").read_text())):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and \
                getattr(node.exc.func, "id", None) == "RequestError":
            message = node.exc.args[0]
            parts = message.values if isinstance(message, ast.JoinedStr) else [message]
            refusals[node.lineno] = re.compile("".join(
                re.escape(part.value) if isinstance(part, ast.Constant) else ".*"
                for part in parts), re.S)
    return refusals


def test_the_table_meets_every_refusal_of_the_parser(server):
    """Checked against the code, not the table: every refusal handler/parsing.py can give is
    what the server answers to some case of BAD or QUERY_CASES, so a refusal added to the
    parser without a case here, or a refusal no case reaches any more, fails."""
    answers = [post(server, body, headers) for _, body, headers, _, _ in BAD]
    answers += [post_query_case(server, *case) for case in QUERY_CASES]
    messages = [answer.json()["error"] for answer in answers]
    refusals = parser_refusals()
    assert len(refusals) >= 20, "handler/parsing.py's refusals were not found"
    unmet = {line: pattern.pattern for line, pattern in refusals.items()
             if not re.sub(r"\\(.)", r"\1", pattern.pattern).startswith(NOT_FROM_HTTP)
             and not any(pattern.search(message) for message in messages)}
    assert not unmet, f"refusals of handler/parsing.py no case reaches: {unmet}"


def test_body_over_max_request_size_is_refused_by_the_frontend(server):
    """TorchServe's Netty frontend refuses a body over max_request_size itself, before the
    handler: 413 with an EMPTY body (no JSON; documented in SECURITY.md). At the limit exactly
    the body reaches the handler (extra JSON keys are ignored)."""
    before = workers(server)
    at_limit = b'{"text": "great", "pad": "' + b"x" * (MAX_REQUEST_SIZE - 28) + b'"}'
    assert len(at_limit) == MAX_REQUEST_SIZE
    assert_prediction(post(server, at_limit, JSON))
    for size in (MAX_REQUEST_SIZE + 1, 3 * MAX_REQUEST_SIZE):
        response = post(server, b"a" * size, TEXT)
        assert response.status_code == 413, response.text[:200]
        assert response.content == b""
    assert_prediction(post(server, b"still fine", TEXT))
    assert workers(server) == before


def test_many_tiny_requests_at_once(server):
    """200 concurrent tiny requests: each is answered 200, or 503 when the job queue is full;
    nothing else, no worker restart, and the service answers normally right after."""
    import aiohttp

    async def burst():
        timeout = aiohttp.ClientTimeout(total=60)
        connector = aiohttp.TCPConnector(limit=200)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            async def one(i):
                body = b"a" if i % 2 else b'{"text": "b"}'
                headers = TEXT if i % 2 else JSON
                async with session.post(server.inference + URL_PATH, data=body,
                                        headers=headers) as response:
                    await response.read()
                    return response.status
            return await asyncio.gather(*(one(i) for i in range(200)))

    before = workers(server)
    statuses = asyncio.run(asyncio.wait_for(burst(), timeout=90))
    counts = {status: statuses.count(status) for status in set(statuses)}
    print(f"200 concurrent tiny requests: {counts}")
    assert set(counts) <= {200, 503} and counts.get(200, 0) >= 100, counts
    assert workers(server) == before
    assert_prediction(post(server, b"great", TEXT))


# --- security ------------------------------------------------------------------------------

@contextmanager
def loopback_http_server():
    """A web server on 127.0.0.1 that records every request it gets (none should come)."""
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"PK\x05\x06" + b"\x00" * 18)  # an empty zip

        def log_message(self, *args):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    finally:
        httpd.shutdown()
        httpd.server_close()


def register(server, url: str):
    return requests.post(f"{server.management}/models", params={"url": url, "initial_workers": 1},
                         timeout=30)


def model_names(server) -> list:
    return [m["modelName"] for m in
            requests.get(f"{server.management}/models", timeout=10).json()["models"]]


def test_registering_a_model_from_a_url_is_refused(server):
    """enable_model_api=false: the management API registers nothing, and fetches nothing."""
    with loopback_http_server() as (base, hits):
        for url in (f"{base}/evil.mar", "file:///etc/passwd.mar", "bert_sentiment.mar"):
            response = register(server, url)
            assert 400 <= response.status_code < 500, response.text
            print(url, "->", response.status_code, response.json().get("message"))
        assert hits == []
    assert model_names(server) == ["bert_sentiment"]


def test_allowed_urls_refuses_http_even_with_the_model_api_on(tiny_archive, tmp_path_factory):
    """Second layer (CVE-2023-43654, ShellTorch SSRF): should enable_model_api ever be turned on,
    allowed_urls=file://.*\\.mar still refuses an http URL without fetching it."""
    with running(tmp_path_factory.mktemp("ts-model-api"), tiny_archive.parent,
                 enable_model_api="true") as ts, loopback_http_server() as (base, hits):
        response = register(ts, f"{base}/evil.mar")
        print("model API on:", response.status_code, response.json().get("message"))
        assert 400 <= response.status_code < 500, response.text
        assert "allowed" in response.json()["message"].lower()
        assert hits == []
        assert model_names(ts) == ["bert_sentiment"]


FORM = {"Content-Type": "application/x-www-form-urlencoded"}
# (route, query parameters, body, headers): on /predictions TorchServe drops the query string
# before the handler; on the other inference routes it merges it into the request's fields
QUERY_CASES = [
    (URL_PATH, {"text": "REVIEW"}, b"", {}),  # curl -X POST 'URL?text=...': no body at all
    (URL_PATH, {"text": "REVIEW"}, b"", TEXT),
    ("/models/bert_sentiment/invoke", {"text": "REVIEW"}, b"A fine film.", TEXT),
    ("/models/bert_sentiment/invoke", {"review": "REVIEW"}, js({"text": "A fine film."}), JSON),
    ("/bert_sentiment/predict", {"text": "REVIEW"}, b"", {}),
    ("/invocations", {"model_name": "bert_sentiment", "text": "REVIEW"}, b"A fine film.", TEXT),
]


def post_query_case(server, route, params, body, headers, review="A wonderful film"):
    params = {name: review if value == "REVIEW" else value for name, value in params.items()}
    return requests.post(server.inference + route, params=params, data=body, headers=headers,
                         timeout=30)


def test_review_in_the_query_string_is_refused_with_advice(server):
    before = workers(server)
    for route, params, body, headers in QUERY_CASES:
        response = post_query_case(server, route, params, body, headers)
        assert response.status_code == 400, (route, params, response.text)
        error = response.json()["error"]
        assert "query parameters are not accepted" in error or "in the URL" in error, error
        assert "body" in error, error
    # where the query is dropped, a review in the body is still answered
    response = requests.post(server.inference + URL_PATH, params={"text": "A fine film."},
                             data=b"A fine film.", headers=TEXT, timeout=30)
    assert response.status_code == 200
    assert workers(server) == before


def test_no_review_text_in_the_logs(server):
    marker = f"zqxmarker{uuid.uuid4().hex}"
    review = f"A wonderful film {marker} with a moving ending."
    sent = [
        (review.encode(), TEXT),
        (js({"text": review}), JSON),
        (js({"texts": ["great", review]}), JSON),
        ((review + " x" * 20_000).encode(), TEXT),  # 413 from the handler
        (review.encode(), {"Content-Type": "application/xml"}),  # 415
        (b'{"text": "' + review.encode(), JSON),  # invalid JSON
        (js({"texts": [review, 5]}), JSON),  # 400
        (review.encode() + b"\xff", TEXT),  # invalid UTF-8
        (review.encode() * 100_000, TEXT),  # over max_request_size: 413 from the frontend
    ]
    for body, headers in sent:
        assert post(server, body, headers).status_code in (200, 400, 413, 415)
    for route, params, body, headers in QUERY_CASES:  # the review in the URL: never logged
        response = post_query_case(server, route, params, body, headers, review)
        assert response.status_code == 400, response.text
    requests.post(server.inference + URL_PATH, params={"text": review}, data=b"A fine film.",
                  headers=TEXT, timeout=30)
    # the test server's logs: TorchServe's logs/ and its console output
    import time
    time.sleep(1.5)  # log4j and the worker's stdout are flushed asynchronously
    files = [server.workdir / "stdout.log", *(server.workdir / "logs").rglob("*")]
    checked = [path for path in files if path.is_file()]
    assert any(path.name == "model_log.log" for path in checked)
    leaks = [path.name for path in checked if marker.encode() in (  # logs rolled at midnight too
        gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes())]
    assert leaks == [], f"review text found in {leaks}"
