"""Parse one TorchServe request into review texts, or say exactly what is wrong with it.

Kept apart from the handler (and free of torch) so the parsing rules can be tested and fuzzed
directly (tests/test_parsing.py). Accepted bodies:
  text/plain                      one review
  application/x-www-form-urlencoded with a field "text" (curl --data-urlencode 'text=...')
  application/json {"text": "…"}  one review
  application/json {"texts": […]} several reviews, answered in order
Bodies must be UTF-8 (a leading byte-order mark is dropped). Anything else raises RequestError
with a 4xx code and a message for the client; `parse_request` raises nothing else, whatever the
body (a bad request must never fail the other requests of its batch).

What TorchServe hands over as `request["body"]` depends on the Content-Type: exactly
"application/json" bodies arrive already decoded by the worker (any JSON value: dict, list, str,
int, float, bool or None) unless the JSON is invalid (then bytes); "text/*" bodies arrive as str
when they are valid UTF-8 (else bytes); everything else arrives as bytes. Form fields
(application/x-www-form-urlencoded) arrive as separate keys of `request`.
"""
import json
from dataclasses import dataclass

UTF8_CHARSETS = {"utf-8", "utf8", "us-ascii", "ascii"}
GZIP_MAGIC = b"\x1f\x8b"
FORM = "application/x-www-form-urlencoded"
TEXT_TYPES = ("", "text/plain", FORM)
JSON_TYPE = "application/json"


@dataclass(frozen=True)
class Limits:
    max_texts_per_request: int = 64
    max_chars_per_text: int = 20_000


class RequestError(ValueError):
    """A client error: `code` is the HTTP status, the message goes back in the JSON body."""

    def __init__(self, message: str, code: int = 400):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ParsedRequest:
    texts: list[str]
    batched: bool  # {"texts": [...]} is answered with a list, the other forms with one object


def decode_utf8(body: bytes) -> str:
    body = bytes(body)
    if body.startswith(GZIP_MAGIC):
        raise RequestError("body looks gzip-compressed; compressed bodies (Content-Encoding) "
                           "are not supported, send plain UTF-8 text or JSON", code=415)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(f"body is not valid UTF-8 (byte {err.start}: {err.reason})") from None
    return text.removeprefix("\ufeff")  # a byte-order mark is not part of the review


def check_text(text, where: str, limits: Limits) -> str:
    if not isinstance(text, str):
        raise RequestError(f"{where} must be a string, got {json_type(text)}")
    if len(text) > limits.max_chars_per_text:
        raise RequestError(f"{where} has {len(text)} characters; the limit is "
                           f"{limits.max_chars_per_text}", code=413)
    try:  # JSON "\ud800" decodes to a lone surrogate, which the tokenizer cannot take
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise RequestError(f"{where} has an unpaired UTF-16 surrogate at character "
                           f"{err.start}; send valid Unicode") from None
    if not text.strip():
        advice = "" if where.startswith('"') else (
            "; send the review in the request body (text/plain, JSON or the form field text): "
            "a review in the URL (?text=...) is not read")
        raise RequestError(f"{where} is empty or whitespace only{advice}")
    return text


def json_type(value) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(value), "a value")


def parse_json(document, limits: Limits) -> ParsedRequest:
    """Validate an already-decoded JSON document."""
    if not isinstance(document, dict):
        raise RequestError(f'JSON body must be an object like {{"text": "..."}} or '
                           f'{{"texts": ["...", "..."]}}, got {json_type(document)}')
    keys = set(document) & {"text", "texts"}
    if len(keys) != 1:
        raise RequestError('JSON body must have exactly one of the keys "text" or "texts"')
    if "text" in document:
        return ParsedRequest([check_text(document["text"], '"text"', limits)], batched=False)
    texts = document["texts"]
    if not isinstance(texts, list):
        raise RequestError(f'"texts" must be an array of strings, got {json_type(texts)}')
    if not texts:
        raise RequestError('"texts" is empty; send at least one review')
    if len(texts) > limits.max_texts_per_request:
        raise RequestError(f'"texts" has {len(texts)} reviews; the limit is '
                           f"{limits.max_texts_per_request} per request", code=413)
    return ParsedRequest([check_text(t, f'"texts"[{i}]', limits) for i, t in enumerate(texts)],
                         batched=True)


def parse_content_type(content_type) -> tuple[str, str]:
    """("media/type", "charset" or "") of a Content-Type header value, lower-cased."""
    media_type, *params = str(content_type or "").split(";")
    charset = ""
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
    return media_type.strip().lower(), charset


def parse_request(request: dict, content_type: str, limits: Limits = Limits()) -> ParsedRequest:
    """`request` is one entry of TorchServe's batch: {"body": ...} or form fields."""
    media_type, charset = parse_content_type(content_type)
    if media_type.startswith("multipart/"):
        raise RequestError("multipart forms are not supported; send the review as text/plain "
                           "or JSON", code=415)
    if media_type not in TEXT_TYPES and media_type != JSON_TYPE:
        raise RequestError(f"unsupported content type {media_type[:100]!r}; send text/plain or "
                           "application/json", code=415)
    if charset and charset not in UTF8_CHARSETS:
        raise RequestError(f"unsupported charset {charset[:40]!r}; send UTF-8", code=415)
    if not isinstance(request, dict):
        raise RequestError("request has no body; send a review as text/plain or JSON")
    if media_type != FORM:
        refuse_query_parameters(request)

    if "body" in request or "data" in request:
        body = request["body"] if "body" in request else request["data"]
    elif media_type == FORM:
        body = form_text(request)
    else:
        raise RequestError("request has no body; send a review as text/plain or JSON")

    if isinstance(body, (bytes, bytearray, memoryview)):
        text = decode_utf8(body)
        if media_type != JSON_TYPE:
            return ParsedRequest([check_text(text, "review text", limits)], batched=False)
        if not text.strip():
            raise RequestError("body is empty; send a JSON object like {\"text\": \"...\"}")
        try:
            document = json.loads(text)
        except RecursionError:
            raise RequestError("JSON body is nested too deeply") from None
        except ValueError as err:  # JSONDecodeError, or an integer of more than 4300 digits
            raise RequestError(f"body is not valid JSON: {str(err)[:200]}") from None
        return parse_json(document, limits)
    if media_type != JSON_TYPE:
        if body is None:
            raise RequestError("request has no body; send a review as text/plain or JSON")
        if isinstance(body, str):  # TorchServe decoded a text/* body
            text = body.removeprefix("\ufeff")
            return ParsedRequest([check_text(text, "review text", limits)], batched=False)
    # TorchServe already decoded the JSON: any JSON value (a str is a JSON string literal)
    return parse_json(body, limits)


def refuse_query_parameters(request: dict) -> None:
    """On its /models/NAME/invoke, /NAME/predict and /invocations routes TorchServe merges the
    URL's query parameters into the request's fields (on /predictions it drops them), and it
    writes whole URLs to its logs: a review sent as ?text=... is refused, whatever the route.
    `model_name` is TorchServe's own routing parameter of /invocations."""
    names = sorted(name for name in request if name not in ("body", "data", "model_name"))
    if names:
        shown = ", ".join(repr(name[:40]) for name in names[:5])
        raise RequestError(f"query parameters are not accepted (got {shown}): a URL is written "
                           "to server logs, so never put a review in it; send the review in the "
                           "body as text/plain, as JSON {\"text\": \"...\"}, or as the form "
                           "field text (--data-urlencode 'text=...')")


def form_text(request: dict):
    """The review of an application/x-www-form-urlencoded body: the field named "text", or the
    one field of a body like "great=movie"...

    `curl -d 'great movie'` sends exactly that content type, and TorchServe 0.12 drops a form
    field that has no "=", so such a request reaches the handler with no field at all: say how
    to send it instead.
    """
    fields = {name: value for name, value in request.items() if name not in ("body", "data")}
    if "text" in fields:
        return fields["text"]
    if len(fields) == 1:
        name, value = next(iter(fields.items()))
        if not value:
            return name
    if not fields:
        raise RequestError("form body without a text field; curl -d sends a form: send the "
                           "review with -H 'Content-Type: text/plain', as JSON, or as "
                           "--data-urlencode 'text=...'")
    raise RequestError('form body must have one field named "text" (--data-urlencode '
                       "'text=...'); or send the review as text/plain or JSON")
