"""handler/settings.py: the shipped model-config.yaml is read into the settings dataclass with
no key unknown, wrong types fail the worker's start with the key named, and the derived values
(time budget, threads) follow TorchServe's own settings."""
import logging

import pytest
import yaml

from handler.settings import HandlerSettings
from tests.conftest import REPO

SHIPPED = yaml.safe_load((REPO / "handler" / "model-config.yaml").read_text())


def test_the_shipped_config_is_read_whole(caplog):
    with caplog.at_level(logging.WARNING, logger="handler.settings"):
        settings = HandlerSettings.from_model_yaml(SHIPPED)
    assert "not known" not in caplog.text
    for name, value in SHIPPED["handler"].items():
        assert getattr(settings, name) == value, name
    assert settings.limits.max_texts_per_request == SHIPPED["handler"]["max_texts_per_request"]


def test_a_stock_config_gets_the_defaults():
    assert HandlerSettings.from_model_yaml({}) == HandlerSettings()
    assert HandlerSettings.from_model_yaml({"handler": None}) == HandlerSettings()


def test_unknown_keys_are_logged_and_wrong_types_refused(caplog):
    with caplog.at_level(logging.WARNING, logger="handler.settings"):
        settings = HandlerSettings.from_model_yaml({"handler": {"token_budgte": 10,
                                                                "token_budget": "4096"}})
    assert "token_budgte" in caplog.text and settings.token_budget == 4096
    with pytest.raises(ValueError, match="handler.micro_batch_size"):
        HandlerSettings.from_model_yaml({"handler": {"micro_batch_size": "many"}})


def test_derived_values_follow_torchserve_settings():
    settings = HandlerSettings()
    assert settings.call_seconds({"responseTimeout": 60}) == 15
    assert settings.call_seconds({}) == 30  # TorchServe's default responseTimeout is 120 s
    assert HandlerSettings(max_call_seconds=5).call_seconds({"responseTimeout": 60}) == 5
    assert settings.threads({"maxWorkers": 2}, usable_cpus=8) == 4
    assert settings.threads({"maxWorkers": 4}, usable_cpus=2) == 1
    assert HandlerSettings(threads_per_worker=3).threads({"maxWorkers": 4}, 2) == 3
    assert HandlerSettings(explain_steps=9).explain_cost() == 30
    assert HandlerSettings(explain_cost_factor=4.5).explain_cost() == 4.5
