"""Unit tests and fuzzing of handler.parsing.parse_request (pure Python, no TorchServe).

The property: whatever the body, parse_request either returns non-empty, valid-Unicode texts
within the limits or raises RequestError with a 4xx code and a message. Any other exception
would fail every request of the TorchServe batch (the worker answers 503 for all of them).
"""
import gzip
import json
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from handler.parsing import Limits, ParsedRequest, RequestError, parse_request

SMALL = Limits(max_texts_per_request=5, max_chars_per_text=60)
CONTENT_TYPES = ["", "text/plain", "text/plain; charset=utf-8", "text/plain;charset=UTF-8",
                 "text/plain; charset=latin-1", "application/json",
                 "application/json; charset=utf-8", "APPLICATION/JSON", "text/html",
                 "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                 "application/octet-stream", "application/xml", ";", "text/plain; charset",
                 "application/json; charset=\"utf-8\"", "\x00", "é/ü"]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# every code point, lone surrogates included
any_char = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, blacklist_categories=()) | \
    st.sampled_from(["\ud800", "\udfff", "\ufeff", "\x00", " ", "\u200b", "a"])
any_text = st.text(alphabet=any_char, max_size=80)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | any_text,
    lambda children: st.lists(children, max_size=7) | st.dictionaries(any_text, children,
                                                                      max_size=4),
    max_leaves=20)
review_like = st.one_of(
    st.fixed_dictionaries({"text": json_values}),
    st.fixed_dictionaries({"texts": st.lists(json_values | any_text, max_size=8)}),
    st.fixed_dictionaries({"text": any_text, "texts": st.lists(any_text)}),
    st.dictionaries(st.sampled_from(["text", "texts", "other"]), json_values, max_size=3),
    json_values)


def as_torchserve(body: bytes, content_type: str):
    """What the TorchServe 0.12 worker hands the handler (ts/protocol/otf_message_handler.py):
    exactly "application/json" is JSON-decoded, "text*" is UTF-8-decoded, each only when that
    succeeds; anything else stays bytes."""
    if content_type == "application/json":
        try:
            return json.loads(body.decode("utf-8"))
        except Exception:
            return body
    if content_type.startswith("text"):
        try:
            return body.decode("utf-8")
        except Exception:
            return body
    return body


def check(request, content_type: str, limits: Limits = SMALL):
    """Parse, and assert the contract. Returns the ParsedRequest or the RequestError."""
    try:
        parsed = parse_request(request, content_type, limits)
    except RequestError as err:
        assert 400 <= err.code < 500, err.code
        assert str(err).strip()
        return err
    assert isinstance(parsed, ParsedRequest)
    assert 1 <= len(parsed.texts) <= limits.max_texts_per_request
    assert parsed.batched or len(parsed.texts) == 1
    for text in parsed.texts:
        assert isinstance(text, str) and text.strip()
        assert len(text) <= limits.max_chars_per_text
        text.encode("utf-8")  # no lone surrogates reach the tokenizer
    return parsed


# --- fuzzing -------------------------------------------------------------------------------

@FUZZ
@given(body=st.binary(max_size=200), content_type=st.sampled_from(CONTENT_TYPES))
@example(body=b"\x1f\x8b\x08\x00", content_type="text/plain")
@example(body=b"[" * 5000, content_type="application/json")
@example(body=b"1" * 5000, content_type="application/json")
def test_any_bytes_body(body, content_type):
    check({"body": body}, content_type)
    check({"body": as_torchserve(body, content_type)}, content_type)


@FUZZ
@given(text=any_text, content_type=st.sampled_from(CONTENT_TYPES))
def test_any_text_body(text, content_type):
    result = check({"body": text.encode("utf-8", "surrogatepass")}, content_type)
    if isinstance(result, ParsedRequest) and content_type in ("", "text/plain"):
        assert result.texts == [text.removeprefix("\ufeff")]


@FUZZ
@given(document=review_like, ensure_ascii=st.booleans(),
       content_type=st.sampled_from(["application/json", "application/json; charset=utf-8",
                                     "text/plain", ""]))
@example(document={"texts": ["ok", "\ud800"]}, ensure_ascii=True, content_type="application/json")
def test_any_json_document(document, ensure_ascii, content_type):
    body = json.dumps(document, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")
    result = check({"body": as_torchserve(body, content_type)}, content_type)
    check({"body": body}, content_type)
    if isinstance(result, ParsedRequest) and content_type.startswith("application/json"):
        expected = document.get("text", document.get("texts"))
        assert result.texts == (expected if result.batched else [expected])


@FUZZ
@given(document=json_values)
def test_any_decoded_json_value(document):
    check({"body": document}, "application/json")


@FUZZ
@given(fields=st.dictionaries(any_text, st.binary(max_size=30) | any_text, max_size=4))
def test_any_form(fields):
    check(fields, "application/x-www-form-urlencoded")


@FUZZ
@given(request=st.dictionaries(st.sampled_from(["body", "data", "text", "x"]),
                               json_values | st.binary(max_size=40), max_size=3),
       content_type=st.sampled_from(CONTENT_TYPES))
def test_any_request_shape(request, content_type):
    check(request, content_type)


# --- examples: valid unusual input ---------------------------------------------------------

VALID_TEXTS = {
    "BOM": ("\ufeffA wonderful film.", "A wonderful film."),
    "NUL byte": ("great\x00movie", None),
    "control characters": ("great\x01\x02\x1b[31m movie\x7f", None),
    "emoji": ("Loved it 😍🎬👍🏽", None),
    "RTL": ("فيلم رائع جدا ‏שלום", None),
    "combining": ("Cafe\u0301 Zalgo: z\u0351\u0352\u0353o\u0300\u0301", None),
    "CJK": ("这部电影非常好看", None),
}


@pytest.mark.parametrize("name", VALID_TEXTS)
@pytest.mark.parametrize("content_type", ["text/plain", "application/json", ""])
def test_unusual_but_valid_text_is_accepted(name, content_type):
    text, expected = VALID_TEXTS[name]
    expected = expected or text
    if content_type == "application/json":
        body = json.dumps({"text": text}).encode()
        expected = text  # inside JSON a U+FEFF is part of the string
    else:
        body = text.encode("utf-8")
    for request in ({"body": body}, {"body": as_torchserve(body, content_type)}):
        assert parse_request(request, content_type).texts == [expected]


def test_curl_form_and_text_field():
    form = "application/x-www-form-urlencoded"
    assert parse_request({"great movie": b""}, form).texts == ["great movie"]
    assert parse_request({"text": bytearray(b"great movie")}, form).texts == ["great movie"]
    assert parse_request({"text": "great movie", "lang": b"en"}, form).texts == ["great movie"]


def test_texts_answered_in_order():
    parsed = parse_request({"body": {"texts": ["a b", "c d", "e"]}}, "application/json")
    assert parsed.texts == ["a b", "c d", "e"] and parsed.batched


# --- examples: each bad input names its problem --------------------------------------------

BAD = [
    ("empty", b"", "text/plain", 400, "empty"),
    ("whitespace", " \t\n\r\x0b\x0c\u3000".encode(), "text/plain", 400, "empty"),
    ("empty json", b"", "application/json", 400, "body is empty"),
    ("invalid utf-8", b"\xc3\x28", "text/plain", 400, "not valid UTF-8"),
    ("overlong utf-8", b"\xc0\xaf", "text/plain", 400, "not valid UTF-8"),
    ("utf-16", "great".encode("utf-16"), "text/plain", 400, "not valid UTF-8"),
    ("gzip", gzip.compress(b"great movie"), "text/plain", 415, "gzip"),
    ("gzip json", gzip.compress(b'{"text": "great"}'), "application/json", 415, "gzip"),
    ("latin-1 charset", "café".encode("latin-1"), "text/plain; charset=latin-1", 415, "charset"),
    ("malformed json", b'{"text": "great', "application/json", 400, "not valid JSON"),
    ("trailing garbage", b'{"text": "great"} x', "application/json", 400, "not valid JSON"),
    ("deep array", b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "nested too deeply"),
    ("deep object", b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "application/json", 400,
     "nested too deeply"),
    ("huge integer", b"9" * 10_000, "application/json", 400, "not valid JSON"),
    ("lone surrogate", b'{"text": "great \\ud800"}', "application/json", 400, "surrogate"),
    ("surrogate in texts", b'{"texts": ["ok", "\\udfff"]}', "application/json", 400,
     '"texts"[1] has an unpaired'),
    ("text null", b'{"text": null}', "application/json", 400, "got null"),
    ("text number", b'{"text": 5}', "application/json", 400, "got a number"),
    ("text bool", b'{"text": true}', "application/json", 400, "got a boolean"),
    ("text array", b'{"text": ["a"]}', "application/json", 400, "got an array"),
    ("text object", b'{"text": {"a": 1}}', "application/json", 400, "got an object"),
    ("texts string", b'{"texts": "great"}', "application/json", 400, "must be an array"),
    ("texts item number", b'{"texts": ["a", 1]}', "application/json", 400, '"texts"[1]'),
    ("texts item empty", b'{"texts": ["a", " "]}', "application/json", 400, "empty"),
    ("both keys", b'{"text": "a", "texts": ["b"]}', "application/json", 400, "exactly one"),
    ("no key", b'{"review": "great"}', "application/json", 400, "exactly one"),
    ("top-level string", b'"great"', "application/json", 400, "got a string"),
    ("top-level null", b"null", "application/json", 400, "got null"),
    ("top-level number", b"1.5", "application/json", 400, "got a number"),
    ("top-level negative", b"-1", "application/json", 400, "got a number"),
    ("top-level array", b'["great"]', "application/json", 400, "got an array"),
    ("empty texts", b'{"texts": []}', "application/json", 400, "empty"),
    ("too many texts", json.dumps({"texts": ["a"] * 6}).encode(), "application/json", 413,
     "limit is 5"),
    ("text over cap", b"a" * 61, "text/plain", 413, "limit is 60"),
    ("json text over cap", json.dumps({"text": "a" * 61}).encode(), "application/json", 413,
     "limit is 60"),
    ("multipart", b"--x\r\n\r\ngreat\r\n--x--", "multipart/form-data; boundary=x", 415,
     "multipart"),
    ("xml", b"<review>great</review>", "application/xml", 415, "unsupported content type"),
    ("octet-stream", b"great", "application/octet-stream", 415, "unsupported content type"),
    ("html", b"great", "text/html", 415, "unsupported content type"),
]


@pytest.mark.parametrize("name, body, content_type, code, message", BAD,
                         ids=[case[0] for case in BAD])
def test_bad_input_names_the_problem(name, body, content_type, code, message):
    for request in ({"body": body}, {"body": as_torchserve(body, content_type)}):
        with pytest.raises(RequestError) as caught:
            parse_request(request, content_type, SMALL)
        assert caught.value.code == code and message in str(caught.value), str(caught.value)


def test_bad_forms():
    form = "application/x-www-form-urlencoded"
    for request in ({}, {"a": b"1", "b": b"2"}, {"rating": b"5"}, {"a": bytearray(b"1")}):
        with pytest.raises(RequestError, match="form body") as caught:
            parse_request(request, form)
        assert caught.value.code == 400
    with pytest.raises(RequestError, match="no body"):
        parse_request({}, "text/plain")


@pytest.mark.parametrize("number", [10**12, 10**18, -1, 2.5, True])
def test_json_number_bodies_are_rejected_without_allocating(number):
    """TorchServe decodes a JSON body of `100000000000` to an int; bytes(int) would allocate
    that many bytes (the old code did exactly that)."""
    started = time.perf_counter()
    with pytest.raises(RequestError, match="got a"):
        parse_request({"body": number}, "application/json")
    assert time.perf_counter() - started < 0.5


def test_limits_apply_before_any_expensive_work():
    """A 2 MB text is refused on its length (no UTF-8 scan of the whole review needed after)."""
    limits = Limits()
    with pytest.raises(RequestError) as caught:
        parse_request({"body": "a" * 2_000_000}, "text/plain", limits)
    assert caught.value.code == 413 and "limit is 20000" in str(caught.value)
    with pytest.raises(RequestError) as caught:
        parse_request({"body": {"texts": ["a"] * 100_000}}, "application/json", limits)
    assert caught.value.code == 413 and "limit is 64" in str(caught.value)
