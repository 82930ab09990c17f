"""Recipe parsing and validation: a good recipe's structure, and each broken recipe as one line naming its line."""

from __future__ import annotations

from pathlib import Path

import pytest
from pipeline_helpers import setup, write_recipe

from onnxsq.errors import InvalidOptionError
from onnxsq.passes.threshold import ThresholdConfig
from onnxsq.pipeline.recipe import load_recipe
from onnxsq.pipeline.stages import build_options

GOOD = """\
description = "all kinds"
model = "model.onnx"

[data]
train = "train.npz"
val = "val.npz"
size = [6, 6]

[[stage]]
kind = "train"
stage = "l2"
iters = 5
lr_schedule = "cosine"

[[stage]]
kind = "train"
stage = "l1"
iters = 5
l1 = 1e-5

[[stage]]
kind = "threshold"
threshold_fraction_mid = 0.7
layer = ["conv*=0.5"]

[[stage]]
kind = "train"
stage = "sparse"
name = "fine-tune"
iters = 5

[[stage]]
kind = "optimize"
no_verify = true

[[stage]]
kind = "quantize"
per_channel = true
exclude = "fc"
"""


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return setup(tmp_path)


def test_good_recipe(files, tmp_path):
    r = load_recipe(write_recipe(tmp_path, GOOD))
    assert r.model == files["model"]
    assert r.data.train == files["train"] and r.data.val == files["val"]
    assert r.data.preprocess == {"size": (6, 6)}
    assert [s.label for s in r.stages] == ["01-l2", "02-l1", "03-threshold", "04-fine-tune", "05-optimize",
                                           "06-quantize"]
    assert [s.line for s in r.stages] == [9, 15, 21, 26, 32, 36]
    assert r.stages[2].options == {"threshold_fraction_mid": 0.7, "layer": ["conv*=0.5"]}
    assert r.stage("fine-tune").index == 4 and r.stage("05-optimize").kind == "optimize" and r.stage("6").index == 6
    with pytest.raises(InvalidOptionError, match="no stage 'nope'"):
        r.stage("nope")


def test_threshold_keys_map_to_config():
    cfg = build_options("threshold", {"threshold_fraction_mid": 0.7, "layer": {"conv*": 0.5}, "global": None,
                                      "exclude": ["fc*"], "channelwise": True})
    assert cfg == ThresholdConfig(fraction_mid=0.7, layers=(("conv*", 0.5),), excludes=("fc*",), channelwise=True)
    assert build_options("optimize", {"no_verify": True, "keep_standalone": True}) == {
        "verify": False, "standalone": "keep"}


def test_relative_paths_resolve_against_the_recipe_folder(files, tmp_path, monkeypatch):
    sub = tmp_path / "recipes"
    sub.mkdir()
    recipe = write_recipe(sub, GOOD.replace('"model.onnx"', '"../model.onnx"')
                          .replace('"train.npz"', '"../train.npz"').replace('"val.npz"', '"../val.npz"'))
    monkeypatch.chdir(sub.parent.parent)  # somewhere else entirely
    r = load_recipe(recipe)
    assert r.model.resolve() == files["model"].resolve()


BASE = 'model = "model.onnx"\n[data]\ntrain = "train.npz"\n'

BROKEN = [  # (recipe text, line the error must name, words it must contain)
    ('model = "model.onnx"\n[[stage]]\nkind = "optimize\n', 3, "not valid TOML"),
    ('model = "model.onnx"\nmodle = 1\n[[stage]]\nkind = "optimize"\n', 2, "unknown top-level key 'modle'"),
    ('model = "missing.onnx"\n[[stage]]\nkind = "optimize"\n', 1, "no such file"),
    (BASE + '[[stage]]\nkind = "optimise"\n', 5, "unknown stage kind 'optimise'"),
    (BASE + '[[stage]]\nkind = "threshold"\n\nthreshold_fraction_mud = 0.5\n', 7,
     "unknown key 'threshold_fraction_mud'"),
    (BASE + '[[stage]]\nkind = "threshold"\nthreshold_fraction_mid = 1.5\n', 6, "fraction"),
    (BASE + '[[stage]]\nkind = "train"\nstage = "l2"\nbatch_size = 4\niters = -3\n', 8, "iters"),
    (BASE + '[[stage]]\nkind = "train"\nstage = "l2"\nlr = "fast"\n', 4, "bad value"),
    (BASE + '[[stage]]\nkind = "train"\nstage = "l3"\n', 6, "unknown training stage 'l3'"),
    (BASE + '[[stage]]\nkind = "train"\niters = 3\n', 4, "needs `stage`"),
    (BASE + '[[stage]]\nkind = "optimize"\nno_verify = "yes"\n', 6, "true or false"),
    (BASE + '[[stage]]\nkind = "quantize"\ncalib = "nowhere/"\n', 6, "no such file or directory"),
    (BASE + '[[stage]]\nkind = "quantize"\nparams_out = "p.json"\n', 6, "cannot be set in a recipe"),
    ('model = "model.onnx"\n[data]\ntrain = "train.npz"\nval = "gone.npz"\n[[stage]]\nkind = "optimize"\n', 4,
     "data.val 'gone.npz': no such file"),
    ('model = "model.onnx"\n[data]\ntrian = "train.npz"\n[[stage]]\nkind = "optimize"\n', 3,
     "unknown key 'trian' in [data]"),
    ('model = "model.onnx"\n[data]\nsource = "mnist"\n[[stage]]\nkind = "optimize"\n', 3, "unknown data source"),
    ('model = "model.onnx"\n[data]\nsource = { name = "sklearn-digits", sed = 1 }\n[[stage]]\nkind = "optimize"\n',
     3, "no parameter 'sed'"),
    ('model = "model.onnx"\n[data]\nchannel_order = "gbr"\n[[stage]]\nkind = "optimize"\n', 3, "channel"),
    ('model = "model.onnx"\n[[stage]]\nkind = "train"\nstage = "l2"\n', 2, "needs training data"),
    (BASE + '[[stage]]\nkind = "optimize"\n[[stage]]\nkind = "threshold"\n', 6, "the flow runs"),
    (BASE + '[[stage]]\nkind = "optimize"\n[[stage]]\nkind = "optimize"\n', 6, "a second stage named 'optimize'"),
    (BASE + '[[stage]]\nkind = "optimize"\nname = "bad name"\n', 6, "name must be"),
    ('model = "model.onnx"\n', None, "no [[stage]]"),
]


@pytest.mark.parametrize("text,line,words", BROKEN, ids=[w for _, _, w in BROKEN])
def test_broken_recipe_is_one_line_naming_the_line(files, tmp_path, text, line, words):
    recipe = write_recipe(tmp_path, text)
    with pytest.raises(InvalidOptionError) as info:
        load_recipe(recipe)
    msg = str(info.value)
    assert "\n" not in msg
    assert words in msg
    prefix = f"{recipe}:{line}: " if line else f"{recipe}: "
    assert msg.startswith(prefix), msg


def test_missing_recipe_file(tmp_path):
    with pytest.raises(InvalidOptionError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.toml")


def test_unknown_key_suggests_the_close_one(files, tmp_path):
    recipe = write_recipe(tmp_path, BASE + '[[stage]]\nkind = "train"\nstage = "l2"\nweight_decy = 1e-4\n')
    with pytest.raises(InvalidOptionError, match=r":7: .*did you mean 'weight_decay'"):
        load_recipe(recipe)


def test_solver_config_file_is_merged_under_the_stage(files, tmp_path):
    (tmp_path / "solver.toml").write_text("base_lr = 0.5\nsparsity_target = 0.7\nmomentum = 0.8\n")
    r = load_recipe(write_recipe(tmp_path, BASE + '[[stage]]\nkind = "train"\nstage = "sparse"\n'
                                 'config = "solver.toml"\nmomentum = 0.95\n'))
    opts = r.stages[0].options
    assert opts["base_lr"] == 0.5 and opts["sparsity_target"] == 0.7 and opts["momentum"] == 0.95
    (tmp_path / "solver.toml").write_text("sparsity_targett = 0.7\n")
    with pytest.raises(InvalidOptionError, match=r"recipe.toml:7: .*unknown key 'sparsity_targett'"):
        load_recipe(tmp_path / "recipe.toml")


RECIPES = Path(__file__).resolve().parents[2] / "sample_models" / "recipes"


def test_shipped_recipes_parse_and_mirror_the_original():
    digits = load_recipe(RECIPES / "digits.toml")
    assert [s.name for s in digits.stages] == ["l2", "l1", "threshold", "sparse", "optimize", "quantize"]
    assert digits.data.source["name"] == "sklearn-digits" and digits.data.task == "classification"
    seg = load_recipe(RECIPES / "segmentation.toml")
    assert [s.name for s in seg.stages] == ["l2", "l1", "sparse", "optimize", "quantize"]
    assert seg.data.task == "segmentation" and seg.model.name == "jacintonet_seg.onnx"
    l1, sparse = seg.stage("l1").options, seg.stage("sparse").options
    assert l1["l1"] == 1e-5
    assert (sparse["sparsity_target"], sparse["sparsity_start_factor"], sparse["sparsity_step_factor"]) == (
        0.8,
        0.6,
        0.01,
    )


def test_a_bad_stage_option_is_a_user_error_wherever_it_escapes():
    """OptionProblem is an InvalidOptionError: the CLI prints it as one line (exit 1), never as a bug."""
    from onnxsq.errors import OnnxsqError
    from onnxsq.pipeline.stages import OptionProblem

    assert issubclass(OptionProblem, InvalidOptionError) and issubclass(OptionProblem, OnnxsqError)
    with pytest.raises(InvalidOptionError, match="unknown key 'nope'") as info:
        build_options("threshold", {"nope": 1})
    assert info.value.key == "nope"
