"""Parse one TorchServe request into review texts, or say exactly what is wrong with it.

Kept apart from the handler (and free of torch) so the parsing rules can be tested and fuzzed
directly. Accepted bodies:
  text/plain                      one review (also curl's default form encoding of `-d "..."`)
  application/json {"text": "…"}  one review
  application/json {"texts": […]} several reviews, answered in order
"""
import json
from dataclasses import dataclass


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
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(f"body is not valid UTF-8 (byte {err.start}: {err.reason})") from None
    return text.removeprefix("\ufeff")  # a byte-order mark is not part of the review


def check_text(text, where: str, limits: Limits) -> str:
    if not isinstance(text, str):
        raise RequestError(f"{where} must be a string, got {json_type(text)}")
    if not text.strip():
        raise RequestError(f"{where} is empty or whitespace only")
    if len(text) > limits.max_chars_per_text:
        raise RequestError(f"{where} has {len(text)} characters; the limit is "
                           f"{limits.max_chars_per_text}", code=413)
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


def parse_request(request: dict, content_type: str, limits: Limits = Limits()) -> ParsedRequest:
    """`request` is one entry of TorchServe's batch: {"body": ...} or form fields."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type.startswith("multipart/"):
        raise RequestError("multipart forms are not supported; send the review as text/plain "
                           "or JSON", code=415)
    body = request.get("body", request.get("data"))
    if body is None and media_type == "application/x-www-form-urlencoded":
        body = form_text(request)
    if body is None:
        raise RequestError("request has no body; send a review as text/plain or JSON")
    if isinstance(body, (dict, list)):  # TorchServe already decoded the JSON
        return parse_json(body, limits)
    if media_type in ("", "text/plain", "application/x-www-form-urlencoded"):
        text = body if isinstance(body, str) else decode_utf8(body)
        return ParsedRequest([check_text(text, "review text", limits)], batched=False)
    if media_type == "application/json":
        text = body if isinstance(body, str) else decode_utf8(body)
        try:
            document = json.loads(text)
        except RecursionError:
            raise RequestError("JSON body is nested too deeply") from None
        except ValueError as err:
            raise RequestError(f"body is not valid JSON: {err}") from None
        return parse_json(document, limits)
    raise RequestError(f"unsupported content type {media_type!r}; send text/plain or "
                       "application/json", code=415)


def form_text(request: dict):
    """curl -d 'great movie' sends a form with one empty-valued field named by the review."""
    fields = {name: value for name, value in request.items() if name not in ("body", "data")}
    if "text" in fields:
        return fields["text"]
    if len(fields) == 1:
        name, value = next(iter(fields.items()))
        if not value:
            return name
    return None
