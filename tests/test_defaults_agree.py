"""Defaults live in the config dataclasses only: the CLI's options, the recipe's keys and the Python API
start from the same values, and QAT starts from quantize's."""

from __future__ import annotations

import dataclasses

import click
import pytest

from onnxsq.passes import PASSES
from onnxsq.passes.quantize.config import QuantizeConfig
from onnxsq.passes.threshold.config import ThresholdConfig, options_with_original_spelling
from onnxsq.pipeline.stages import KINDS, build_options
from onnxsq.training.config import QAT_DEFAULTS


def _cli_defaults(command_name: str) -> dict[str, object]:
    from onnxsq.cli.main import cli

    command = cli.get_command(click.Context(cli), command_name)
    # options without a default (click's UNSET, None, flags) take the dataclass's by not being passed
    return {p.name: p.default for p in command.params
            if isinstance(p, click.Option) and isinstance(p.default, (int, float, str)) and not p.is_flag}


@pytest.mark.parametrize(("command", "cls"), [("quantize", QuantizeConfig), ("threshold", ThresholdConfig)])
def test_cli_recipe_and_api_defaults_agree(command, cls):
    cli = _cli_defaults(command)
    api = cls()
    recipe = build_options(command, {})
    checked = 0
    for f in dataclasses.fields(cls):
        if f.name in cli:
            value = getattr(api, f.name)
            want = ",".join(sorted(value)) if isinstance(value, frozenset) else value
            assert cli[f.name] == want, f"--{f.name}: the CLI says {cli[f.name]!r}, {cls.__name__} {want!r}"
            assert getattr(recipe, f.name) == value, f"recipe {f.name}"
            checked += 1
    assert checked >= 4  # the numeric and choice options at least


def test_the_registry_names_the_config_classes():
    assert PASSES["quantize"].config_class() is QuantizeConfig
    assert PASSES["threshold"].config_class() is ThresholdConfig
    assert KINDS["quantize"].config.endswith(":QuantizeConfig") and KINDS["optimize"].pass_name == "fold-batchnorm"


def test_qat_starts_from_quantize_defaults():
    ptq = QuantizeConfig()
    assert (QAT_DEFAULTS["bits"], QAT_DEFAULTS["weight_bits"], QAT_DEFAULTS["quant_method"],
            QAT_DEFAULTS["weight_method"], QAT_DEFAULTS["percentile"]) == (
        ptq.bits, ptq.weight_bits, ptq.method, ptq.weight_method, ptq.percentile)


def test_original_spellings_come_from_the_field_metadata():
    spellings = options_with_original_spelling(ThresholdConfig)
    assert spellings["threshold_fraction_low"] == "fraction_low" and len(spellings) == 6
    assert set(spellings) <= set(KINDS["threshold"].aliases)  # the recipe takes them
    assert build_options("threshold", {"threshold_fraction_low": 0.3}).fraction_low == 0.3


def test_training_takes_threshold_caps_and_shows_its_own_defaults():
    from onnxsq.training.config import TrainConfig

    train, threshold = TrainConfig(), ThresholdConfig()
    assert (train.threshold_value_max, train.threshold_value_maxratio) == (threshold.value_max,
                                                                           threshold.value_maxratio)
    from onnxsq.cli.main import cli

    command = cli.get_command(click.Context(cli), "train")
    helps = {p.name: p.help for p in command.params if isinstance(p, click.Option)}
    assert f"[default: {train.batch_size}]" in helps["batch_size"] and f"[default: {train.lr}]" in helps["lr"]
    assert f"[default: {QAT_DEFAULTS['bits']}]" in helps["bits"]
