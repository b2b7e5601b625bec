"""Fine-tune the tiny BERT end to end: loss falls, the export reloads, evaluate agrees."""
import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tests.conftest import REPO, tiny_bert

METRIC_FIELDS = {"accuracy", "f1", "precision", "recall", "confusion_matrix", "eval_loss",
                 "train_time_s", "train_samples_per_s", "base_model", "max_length", "preset",
                 "data_source", "split_sizes", "seed", "library_versions", "validation_split"}


def test_the_tiny_base_is_the_same_whatever_ran_before(tmp_path):
    """The tests' trained figures depend on the base's random weights: they must not depend on
    which tests drew random numbers first (CI once ran the SST test on another draw)."""
    from safetensors.torch import load_file
    torch.manual_seed(1)
    first = load_file(tiny_bert(tmp_path / "first") / "model.safetensors")
    after_first = torch.rand(3)
    second = load_file(tiny_bert(tmp_path / "second") / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    torch.manual_seed(1)  # and it leaves the caller's random stream where it was
    assert torch.equal(torch.rand(3), after_first)


def test_training_loss_goes_down(tiny_run):
    checkpoint = sorted((tiny_run / "checkpoints").glob("checkpoint-*"))[-1]
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) >= 8
    quarter = len(losses) // 4  # single logged batches are noisy: compare quarters
    assert sum(losses[-quarter:]) / quarter < 0.8 * sum(losses[:quarter]) / quarter


def test_export_reloads_with_labels(tiny_run):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_run)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert model.config.label2id == {"negative": 0, "positive": 1}
    tokenizer = AutoTokenizer.from_pretrained(tiny_run)
    assert tokenizer("great movie")["input_ids"][0] == tokenizer.cls_token_id
    assert (tiny_run / "curves.png").stat().st_size > 1000


def test_metrics_report_has_every_field(tiny_run):
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert METRIC_FIELDS <= set(metrics)
    assert metrics["split_sizes"] == {"train": 96, "validation": 24}
    assert sum(map(sum, metrics["confusion_matrix"])) == 24
    # the synthetic cue words make the task separable; a label or shuffling bug scores about
    # 0.5 (20 of 24 by chance: p < 0.001), and how well a CPU run learns is not reproducible
    assert metrics["accuracy"] >= 0.8
    assert {"torch", "transformers", "datasets"} <= set(metrics["library_versions"])


def test_evaluate_reproduces_training_accuracy(tiny_run):
    from training.evaluate import main
    trained = json.loads((tiny_run / "metrics.json").read_text())
    scored = main(["--model", str(tiny_run), "--split", "validation"])
    assert scored["samples"] == 24
    assert scored["accuracy"] == trained["accuracy"]
    assert scored["confusion_matrix"] == trained["confusion_matrix"]
    assert scored["eval_loss"] == pytest.approx(trained["eval_loss"], abs=1e-3)
    assert json.loads((tiny_run / "eval-validation.json").read_text())["accuracy"] == scored["accuracy"]


def test_attention_dropout_is_off_unless_asked_for(tiny_run, tiny_base_model):
    """The quick preset trains without dropout on the attention probabilities: with it, PyTorch's
    CPU attention leaves its fused kernel for one that builds the whole attention matrix (and a
    random mask the same size), which made the quick preset's long batches ~1.8x slower."""
    from training.config import parse_args
    from training.model import load_base
    assert json.loads((tiny_run / "config.json").read_text())["attention_probs_dropout_prob"] == 0.0
    assert json.loads((tiny_run / "metrics.json").read_text())["attention_dropout"] == 0.0
    args = parse_args(["--attention-dropout", "0.25"])
    _, model = load_base(str(tiny_base_model), args.recipe.attention_dropout)
    attention = model.bert.encoder.layer[0].attention.self
    assert model.config.attention_probs_dropout_prob == 0.25 and attention.dropout.p == 0.25


def test_attention_dropout_reaches_distilbert_in_both_presets(tiny_base_model, reviews_dir,
                                                              tmp_path):
    """DistilBERT (a base model the README names) calls the setting attention_dropout, not
    attention_probs_dropout_prob: training must run on it (passing BERT's key crashed it), and
    the default 0 must reach it (the CPU speed-up) in the quick preset and the full one (79
    minutes instead of hours on 2 cores)."""
    from transformers import BertConfig, BertTokenizer, DistilBertConfig, DistilBertModel

    from tests.conftest import train_tiny
    from training.config import parse_args
    from training.model import load_base
    path = tmp_path / "tiny-distilbert"
    tokenizer = BertTokenizer.from_pretrained(tiny_base_model)  # DistilBERT's is WordPiece too
    tokenizer.save_pretrained(path)
    vocab_size = BertConfig.from_pretrained(tiny_base_model).vocab_size
    DistilBertModel(DistilBertConfig(vocab_size=vocab_size, dim=32, n_layers=2, n_heads=2,
                                     hidden_dim=64, max_position_embeddings=128,
                                     attention_dropout=0.3)).save_pretrained(path)

    metrics = train_tiny(path, reviews_dir, tmp_path / "run", "--no-int8")  # quick preset
    assert metrics["attention_dropout"] == 0.0
    trained = json.loads((tmp_path / "run" / "config.json").read_text())
    assert trained["attention_dropout"] == 0.0 and "attention_probs_dropout_prob" not in trained
    _, model = load_base(str(path), 0.2, 0.0)
    assert model.distilbert.transformer.layer[0].attention.dropout.p == 0.2
    assert model.distilbert.transformer.layer[0].ffn.dropout.p == 0.0 and model.dropout.p == 0.0

    full = parse_args(["--preset", "full"]).recipe.attention_dropout
    _, model = load_base(str(path), full)
    assert full == 0.0 and model.distilbert.transformer.layer[0].attention.dropout.p == 0.0


def test_hidden_dropout_is_off_in_quick_and_the_base_models_own_in_full(tiny_run,
                                                                         tiny_base_model):
    """The quick preset (what make up trains) trains without dropout on the hidden states and the
    classifier's input, and says so in metrics.json; the full preset keeps the base model's own;
    --hidden-dropout reaches every dropout module but the attention's."""
    from transformers import BertConfig

    from training.config import parse_args
    from training.model import load_base
    trained = json.loads((tiny_run / "config.json").read_text())
    assert trained["hidden_dropout_prob"] == 0.0 and trained["classifier_dropout"] == 0.0
    assert json.loads((tiny_run / "metrics.json").read_text())["hidden_dropout"] == 0.0
    own = BertConfig.from_pretrained(tiny_base_model).hidden_dropout_prob
    assert own > 0
    full = parse_args(["--preset", "full"]).recipe.hidden_dropout
    _, model = load_base(str(tiny_base_model), 0.0, full)
    assert model.dropout.p == own and model.bert.encoder.layer[0].output.dropout.p == own
    asked = parse_args(["--hidden-dropout", "0.3"]).recipe.hidden_dropout
    _, model = load_base(str(tiny_base_model), 0.0, asked)
    ps = {module.p for name, module in model.named_modules()
          if isinstance(module, torch.nn.Dropout) and ".attention.self." not in name}
    assert ps == {0.3}


@pytest.mark.parametrize("value", ["1", "-0.1"])
def test_hidden_dropout_out_of_range_is_a_usage_error(value, capsys):
    from training.config import parse_args
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--hidden-dropout", value])
    assert exit_info.value.code == 2 and "--hidden-dropout" in capsys.readouterr().err


def test_the_same_seed_trains_the_same_model(tiny_base_model, reviews_dir, tmp_path):
    """--seed decides everything random in a run, the new classifier head's initial weights
    included: the same seed trains the same weights, whatever the process drew before it; another
    seed starts from another head."""
    from safetensors.torch import load_file

    from tests.conftest import train_tiny
    runs = {}
    for name, seed, draws in [("a", "3", 1), ("b", "3", 5), ("c", "4", 1)]:
        torch.rand(draws)  # the process's random stream is somewhere else before each run
        train_tiny(tiny_base_model, reviews_dir, tmp_path / name, "--no-int8", "--epochs", "1",
                   "--seed", seed)
        runs[name] = load_file(tmp_path / name / "model.safetensors")
    assert runs["a"].keys() == runs["b"].keys()
    assert all(torch.equal(runs["a"][key], runs["b"][key]) for key in runs["a"])
    assert not torch.equal(runs["a"]["classifier.weight"], runs["c"]["classifier.weight"])


def test_frozen_word_embeddings_stay_as_the_base_model_had_them(tiny_base_model, reviews_dir,
                                                                tmp_path):
    """--freeze-word-embeddings trains everything but the word-embedding matrix: it leaves the
    run exactly as the base model had it, while the rest (position embeddings included) moves."""
    from safetensors.torch import load_file

    from tests.conftest import train_tiny
    from training.config import parse_args
    from training.model import load_base
    assert parse_args([]).recipe.freeze_word_embeddings is True  # the quick preset
    assert parse_args(["--preset", "full"]).recipe.freeze_word_embeddings is False
    metrics = train_tiny(tiny_base_model, reviews_dir, tmp_path / "run", "--no-int8",
                         "--epochs", "2", "--freeze-word-embeddings")
    assert metrics["freeze_word_embeddings"] is True
    _, base = load_base(str(tiny_base_model), 0.0)
    trained = load_file(tmp_path / "run" / "model.safetensors")
    before = base.state_dict()
    name = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(trained[name], before[name])
    moved = "bert.embeddings.position_embeddings.weight"
    assert not torch.equal(trained[moved], before[moved])


def test_frozen_layers_stay_as_the_base_model_had_them(tiny_base_model, reviews_dir, tmp_path):
    """--freeze-layers N leaves every embedding and the bottom N encoder layers as the base
    model had them, while the layers above move; more layers than the encoder has is an error."""
    from safetensors.torch import load_file

    from tests.conftest import train_tiny
    from training.config import parse_args
    from training.model import freeze_bottom, load_base
    assert parse_args([]).recipe.freeze_layers == 1  # the quick preset
    assert parse_args(["--preset", "full"]).recipe.freeze_layers == 0
    metrics = train_tiny(tiny_base_model, reviews_dir, tmp_path / "run", "--no-int8",
                         "--epochs", "2", "--freeze-layers", "1")
    assert metrics["freeze_layers"] == 1
    _, base = load_base(str(tiny_base_model), 0.0)
    before = base.state_dict()
    trained = load_file(tmp_path / "run" / "model.safetensors")
    frozen = [name for name in before
              if name.startswith(("bert.embeddings.", "bert.encoder.layer.0."))]
    assert len(frozen) > 10
    assert all(torch.equal(trained[name], before[name]) for name in frozen)
    moved = "bert.encoder.layer.1.attention.self.query.weight"
    assert not torch.equal(trained[moved], before[moved])
    layers = len(base.bert.encoder.layer)
    with pytest.raises(SystemExit, match=f"{layers} layers"):
        freeze_bottom(base, layers + 1)


def test_training_prints_progress_lines_that_make_up_shows(tiny_base_model, reviews_dir,
                                                          tmp_path, capsys):
    """Where output is no terminal (model-init's docker logs), training prints one plain line per
    progress report, and the Makefile's `up` target turns it into a model-init line."""
    import re

    from tests.conftest import train_tiny
    train_tiny(tiny_base_model, reviews_dir, tmp_path / "run", "--no-int8", "--epochs", "1")
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("training: step ")]
    assert re.fullmatch(r"training: step 1/12 \(8 %\), 0:\d\d elapsed", lines[0])  # 96 / batch 8
    assert re.fullmatch(r"training: step 12/12 \(100 %\), \d+:\d\d elapsed, about 0:00 to go",
                        lines[-1]), lines
    assert len(lines) == 2  # 30 s between reports: the tiny run takes less
    assert "training: steps done in " in out
    up = re.search(r"-e '(s/\^training: [^']*)'", (REPO / "Makefile").read_text()).group(1)
    shown = subprocess.run(["sed", "-nE", up], input=out, capture_output=True, text=True,
                           check=True).stdout.splitlines()
    assert shown[1] == "model-init: " + lines[-1]


def test_resume_continues_from_the_last_checkpoint(tiny_base_model, reviews_dir, tmp_path):
    from tests.conftest import train_tiny
    output = tmp_path / "resumed"
    train_tiny(tiny_base_model, reviews_dir, output, "--epochs", "1")
    first = json.loads((output / "checkpoints" / "checkpoint-12" / "trainer_state.json")
                       .read_text())["log_history"]
    metrics = train_tiny(tiny_base_model, reviews_dir, output, "--epochs", "2", "--resume")
    states = sorted((output / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert int(states[-1].name.split("-")[1]) == 2 * 12  # 96 reviews / batch 8 = 12 steps per epoch
    history = json.loads((states[-1] / "trainer_state.json").read_text())["log_history"]
    # epoch 1 is the first run's own (a fresh 2-epoch run would have another learning-rate
    # schedule and so another epoch-1 loss): the second run continued from its checkpoint
    evals = [entry for entry in history if "eval_loss" in entry]
    assert [entry["epoch"] for entry in evals] == [1.0, 2.0]
    assert evals[0] == next(entry for entry in first if "eval_loss" in entry)
    assert metrics["epochs"] == 2 and metrics["split_sizes"]["train"] == 96


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("case", ["missing-dir", "wrong-columns", "bad-labels", "unknown-model",
                                  "unwritable-output"])
def test_training_cli_rejects_bad_input(case, tiny_base_model, reviews_dir, tmp_path):
    data, base, output = str(reviews_dir), str(tiny_base_model), str(tmp_path / "out")
    if case == "missing-dir":
        data = str(tmp_path / "no-such-dir")
    elif case in ("wrong-columns", "bad-labels"):
        frame = (pd.DataFrame({"review": ["x"] * 8, "label": [0, 1] * 4}) if case == "wrong-columns"
                 else pd.DataFrame({"text": ["x"] * 8, "label": [0, 1, 2, 5] * 2}))
        frame.to_parquet(tmp_path / "train.parquet")
        data = str(tmp_path)
    elif case == "unknown-model":
        base = str(tmp_path / "no-such-model")
    else:
        (tmp_path / "a-file").write_text("x")
        output = str(tmp_path / "a-file" / "out")
    result = run_cli("training", "--data", data, "--base-model", base, "--output-dir", output,
                     "--max-length", "32", "--validation-size", "4", "--precision", "fp32")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    expected = {"missing-dir": "does not exist", "wrong-columns": "lacks column",
                "bad-labels": "expected 0=negative", "unknown-model": "cannot load base model",
                "unwritable-output": "not writable"}[case]
    assert last.startswith("error:") and expected in last, result.stderr[-2000:]


def test_archive_rejects_incomplete_run_dir(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    result = run_cli("training.archive", str(tmp_path), "--model-store", str(tmp_path / "store"))
    assert result.returncode != 0
    assert "incomplete" in result.stderr and "model.safetensors" in result.stderr
