"""Tests for rayssl.config: defaults, YAML files, dotted overrides and strict validation."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args, get_type_hints

import pytest

from rayssl.config import (
    AugmentSettings,
    Config,
    ConfigError,
    config_from_dict,
    load_config,
    parse_override,
    typed_from_dict,
)

REPO = Path(__file__).resolve().parents[1]


def _error(overrides: list[str], values: dict | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(values or {}, overrides)
    return str(info.value)


def _assert_names(message: str, key: str) -> None:
    assert message.startswith(key), f"error {message!r} should start with the key {key!r}"


# --------------------------------------------------------------------------- loading


def test_defaults_load():
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.pretext.paces == [1.0, 2.0, 3.0, 4.0]
    assert cfg.data.augment.resize == [128, 171]
    assert cfg.data.augment.crop == [112, 112]
    assert cfg.model.backbone == "r21d"
    assert cfg.train.batch_size == 30
    flat = cfg.flat()
    assert flat["data.augment.hue"] == 0.2
    assert flat["optim.lr"] == 1e-3


def test_yaml_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "data:\n"
        "  clip_len: 8\n"
        "  augment:\n"
        "    resize: [64, 86]\n"
        "    crop: [48, 48]\n"
        "train:\n"
        "  num_workers: 1\n"
        "  batch_size: 4\n"
        "optim:\n"
        "  lr: 0.05\n"
    )
    cfg = load_config(
        path,
        ["train.num_workers=2", "pretext.paces=[1,2]", "data.augment.crop=[56,56]"],
    )
    # YAML values that no override touches survive.
    assert cfg.data.clip_len == 8
    assert cfg.data.augment.resize == [64, 86]
    assert cfg.optim.lr == pytest.approx(0.05)
    assert cfg.train.batch_size == 4
    # Overrides win over YAML.
    assert cfg.train.num_workers == 2
    assert cfg.data.augment.crop == [56, 56]
    assert cfg.pretext.paces == [1.0, 2.0]
    assert all(isinstance(p, float) for p in cfg.pretext.paces)
    # Defaults for keys neither sets.
    assert cfg.data.augment.hue == AugmentSettings().hue
    assert cfg.model.backbone == "r21d"


def test_override_values_are_yaml():
    cfg = config_from_dict(
        {},
        ["optim.lr=0.01", "train.use_gpu=true", "run.name=abc", "pretext.paces=[0.5, 1, 2]"],
    )
    assert cfg.optim.lr == pytest.approx(0.01)
    assert cfg.train.use_gpu is True
    assert cfg.run.name == "abc"
    assert cfg.pretext.paces == [0.5, 1.0, 2.0]


@pytest.mark.parametrize("text, value", [("1e-3", 1e-3), ("5e-3", 5e-3), ("1E-4", 1e-4)])
def test_override_scientific_notation(text, value):
    # parse_override documents "3, 1e-3, [1,2], true work"; PyYAML's YAML 1.1 resolver
    # reads 1e-3 (no dot) as a string, so the override must still give the float.
    cfg = config_from_dict({}, [f"optim.lr={text}"])
    assert cfg.optim.lr == pytest.approx(value)


def test_int_is_accepted_for_float():
    cfg = config_from_dict({}, ["optim.lr=1", "data.augment.hue=0"])
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.data.augment.hue == 0.0


def test_missing_file_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


# --------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    "override, key",
    [
        ("bogus=1", "bogus"),
        ("train.bogus=1", "train.bogus"),
        ("data.augment.bogus=1", "data.augment.bogus"),
        ("data.augment.crop_size=[56,56]", "data.augment.crop_size"),
    ],
)
def test_unknown_key_names_dotted_key(override, key):
    msg = _error([override])
    _assert_names(msg, key)
    assert "unknown key" in msg


def test_unknown_key_in_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  augment:\n    hue: 0.1\n    blur: 0.5\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    _assert_names(str(info.value), "data.augment.blur")


def test_unknown_top_level_section_in_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trainer:\n  num_workers: 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    _assert_names(str(info.value), "trainer")


# --------------------------------------------------------------------------- wrong types


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.num_workers=two", "train.num_workers"),  # string for int
        ("train.num_workers='2'", "train.num_workers"),  # quoted number is a string
        ("train.num_workers=1.5", "train.num_workers"),  # float for int
        ("train.num_workers=2.0", "train.num_workers"),  # float for int, even integral
        ("train.use_gpu=1", "train.use_gpu"),  # int for bool
        ("data.augment.enabled=0", "data.augment.enabled"),  # int for bool, nested
        ("train.num_workers=true", "train.num_workers"),  # bool for int
        ("optim.lr=fast", "optim.lr"),  # string for float
        ("data.augment.crop=56", "data.augment.crop"),  # scalar for list
        ("pretext.paces=[1, x]", "pretext.paces"),  # bad list item
        ("run.name=3", "run.name"),  # int for str
        ("data.short_video=drop", "data.short_video"),  # not one of the Literal choices
        ("data=3", "data"),  # scalar for a section
    ],
)
def test_wrong_type_names_key(override, key):
    _assert_names(_error([override]), key)


def test_wrong_type_in_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  batch_size: '8'\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    _assert_names(str(info.value), "train.batch_size")


# --------------------------------------------------------------------------- ranges


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.augment.hue=0.7", "data.augment.hue"),
        ("data.augment.hue=-0.1", "data.augment.hue"),
        ("data.augment.flip_prob=1.5", "data.augment.flip_prob"),
        ("optim.lr=0", "optim.lr"),
        ("optim.lr=-1", "optim.lr"),
        ("pretext.paces=[1.5]", "pretext.paces"),
        ("pretext.paces=[1,1]", "pretext.paces"),
        ("pretext.paces=[0.4]", "pretext.paces"),  # slow pace not 1/k
        ("pretext.paces=[0]", "pretext.paces"),
        ("pretext.paces=[]", "pretext.paces"),
        ("data.clip_len=0", "data.clip_len"),
        ("data.fraction=0", "data.fraction"),
        ("data.fraction=1.5", "data.fraction"),
        ("train.num_workers=-1", "train.num_workers"),
        ("model.dropout=1", "model.dropout"),
        ("data.augment.resize=[128]", "data.augment.resize"),
        ("run.name=a/b", "run.name"),
    ],
)
def test_out_of_range_names_key(override, key):
    _assert_names(_error([override]), key)


def test_valid_slow_paces_accepted():
    cfg = config_from_dict({}, ["pretext.paces=[0.25, 0.5, 1, 2]"])
    assert cfg.pretext.paces == [0.25, 0.5, 1.0, 2.0]
    cfg = config_from_dict({"pretext": {"paces": [1 / 3, 1]}})
    assert cfg.pretext.paces[0] == pytest.approx(1 / 3)


def test_crop_larger_than_resize():
    msg = _error(["data.augment.resize=[64,86]", "data.augment.crop=[72,72]"])
    _assert_names(msg, "data.augment.crop")
    msg = _error(["data.augment.crop=[112,200]"])  # default resize is [128, 171]
    _assert_names(msg, "data.augment.crop")
    # Equal to the resize is fine; so is any crop when frames keep their native size.
    assert config_from_dict({}, ["data.augment.resize=[64,86]", "data.augment.crop=[64,86]"])
    assert config_from_dict({}, ["data.augment.resize=[]", "data.augment.crop=[300,300]"])


def test_batch_smaller_than_workers():
    msg = _error(["train.num_workers=4", "train.batch_size=2"])
    _assert_names(msg, "train.batch_size")


def test_endpoint_url_with_credentials():
    msg = _error(["data.endpoint_url=http://user:secret@minio:9000"])
    _assert_names(msg, "data.endpoint_url")
    assert "secret" not in msg
    cfg = config_from_dict({}, ["data.endpoint_url=http://minio:9000"])
    assert cfg.data.endpoint_url == "http://minio:9000"


# --------------------------------------------------------------------------- choices


def test_unknown_backbone_lists_choices():
    from rayssl.models import BACKBONES

    msg = _error(["model.backbone=vgg16"])
    _assert_names(msg, "model.backbone")
    assert "vgg16" in msg
    for name in BACKBONES:
        assert name in msg


def test_unknown_pretext_lists_choices():
    from rayssl.pretext import PRETEXTS

    msg = _error(["pretext.name=jigsaw"])
    _assert_names(msg, "pretext.name")
    assert "jigsaw" in msg
    for name in PRETEXTS:
        assert name in msg


# --------------------------------------------------------------------------- YAML syntax


def test_duplicate_key_in_yaml_mapping(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("train:\n  num_workers: 1\n  batch_size: 8\n  num_workers: 2\n")
    with pytest.raises(ConfigError, match="num_workers"):
        load_config(path)


def test_duplicate_section_in_yaml(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("train:\n  num_workers: 1\noptim:\n  lr: 0.1\ntrain:\n  batch_size: 8\n")
    with pytest.raises(ConfigError, match="train"):
        load_config(path)


def test_invalid_yaml_is_config_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError):
        load_config(path)


def test_non_mapping_yaml_is_config_error(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError):
        load_config(path)


def test_empty_yaml_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    assert load_config(path) == Config()


# --------------------------------------------------------------------------- overrides


@pytest.mark.parametrize("text", ["train.num_workers", "train.num_workers 2", ""])
def test_override_without_equals(text):
    with pytest.raises(ConfigError):
        config_from_dict({}, [text])
    with pytest.raises(ConfigError):
        parse_override(text)


@pytest.mark.parametrize("text", ["=2", "train..num_workers=2", ".x=1"])
def test_override_with_empty_key(text):
    with pytest.raises(ConfigError):
        parse_override(text)


def test_override_value_may_contain_equals():
    path, value = parse_override("run.name=a=b")
    assert path == ["run", "name"] and value == "a=b"


def test_override_through_load_config_cli_errors_name_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  num_workers: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["train.num_wrokers=2"])
    _assert_names(str(info.value), "train.num_wrokers")


# --------------------------------------------------------------------------- shipped configs


def test_every_shipped_config_loads():
    from rayssl.evaluate.suite import load_suite

    files = sorted((REPO / "configs").glob("*.yaml"))
    assert files, "configs/ holds no YAML file"
    for path in files:
        if path.name.startswith("eval_"):  # evaluation suites (rayssl evaluate --suite)
            load_suite(path).validate()
            continue
        if path.name.startswith("sweep_"):  # Tune studies (rayssl sweep), every trial
            from rayssl.tune.sweep import check_sweep, load_sweep

            assert len(check_sweep(load_sweep(path))) >= 2, path
            continue
        cfg = load_config(path)
        assert isinstance(cfg, Config), path
        # Re-validating the loaded object must not fail either.
        cfg.validate()


def test_cli_takes_overrides_anywhere(tmp_path):
    """`rayssl preview SRC --out DIR key=value` used to fail with 'unrecognized arguments'."""
    from rayssl.cli import build_parser, parse_args

    parser = build_parser()
    args = parse_args(
        parser,
        ["preview", "m.parquet", "--out", "D", "data.clip_len=8", "--no-augment", "run.seed=2"],
    )
    assert args.src == "m.parquet" and args.out == "D" and args.no_augment
    assert args.overrides == ["data.clip_len=8", "run.seed=2"]
    args = parse_args(parser, ["pretrain", "a=1", "--config", "c.yaml", "b=2"])
    assert args.overrides == ["a=1", "b=2"]
    args = parse_args(
        parser, ["evaluate", "--checkpoint", "random", "x.y=1", "--suite", "s", "--out", "o"]
    )
    assert args.overrides == ["x.y=1"]
    with pytest.raises(SystemExit):
        parse_args(parser, ["pretrain", "--config", "c.yaml", "--bogus"])
    with pytest.raises(SystemExit):
        parse_args(parser, ["synth", "--out", "o", "a=1"])  # synth takes no overrides


def test_progress_line():
    from rayssl.train.loop import progress_line

    m = {
        "epoch": 2,
        "train/loss": 1.25,
        "train/pace_acc": 0.5,
        "train/clips_per_s": 38.04,
        "train/data_wait_frac": 0.051,
        "val/loss": 1.5,
        "val/pace_acc": 0.625,
        "monitor/retrieval_top1": 0.4,
    }
    line = progress_line(m, 14, "pace_acc")
    assert line == (
        "[rayssl] epoch 3/14 | train loss 1.250 pace_acc 0.500 | val loss 1.500 pace_acc 0.625"
        " | 38.0 clips/s, data wait 5% | retrieval top1 0.400"
    )
    # a task without an accuracy (masked modelling): the losses only
    line = progress_line({k: v for k, v in m.items() if "acc" not in k}, 14, None)
    assert line.startswith("[rayssl] epoch 3/14 | train loss 1.250 | val loss 1.500 | 38.0")


def test_epoch_metrics_log_an_accuracy_only_for_a_task_that_has_one():
    from rayssl.train.loop import _epoch_metrics

    sums = {"loss_sum": 6.0, "correct": 0.0, "num_valid": 4.0, "num_samples": 4.0}
    assert _epoch_metrics("train", sums, "pace_acc")["train/pace_acc"] == 0.0
    masked = _epoch_metrics("train", sums, None)
    assert masked["train/loss"] == 1.5 and not any("acc" in k for k in masked)


def test_resource_mappings_are_typed_and_checked():
    cfg = load_config(
        None,
        [
            "data.decode_resources={decode: 1}",
            "train.worker_resources.trainer=0.5",
            "train.num_workers=4",
            "train.batch_size=8",
            "train.min_workers=2",
        ],
    )
    assert cfg.data.decode_resources == {"decode": 1.0}
    assert cfg.train.worker_resources == {"trainer": 0.5}
    assert cfg.train.min_workers == 2
    with pytest.raises(ConfigError, match=r"data\.decode_resources\.decode: expected a number"):
        load_config(None, ["data.decode_resources={decode: lots}"])
    with pytest.raises(ConfigError, match=r"data\.decode_resources: expected a mapping"):
        load_config(None, ["data.decode_resources=[decode]"])
    with pytest.raises(ConfigError, match=r"train\.worker_resources\.GPU: a custom resource"):
        load_config(None, ["train.worker_resources={GPU: 1}"])
    with pytest.raises(ConfigError, match=r"data\.decode_resources\.decode: .*>= 0"):
        load_config(None, ["data.decode_resources={decode: -1}"])
    with pytest.raises(ConfigError, match=r"train\.min_workers"):
        load_config(None, ["train.num_workers=2", "train.min_workers=3"])


def test_checkpoint_intervals_are_checked():
    cfg = load_config(
        None, ["train.checkpoint_every_steps=500", "train.checkpoint_every_minutes=7.5"]
    )
    assert (cfg.train.checkpoint_every_steps, cfg.train.checkpoint_every_minutes) == (500, 7.5)
    with pytest.raises(ConfigError, match=r"train\.checkpoint_every_steps"):
        load_config(None, ["train.checkpoint_every_steps=-1"])


def test_speed_settings_are_checked():
    """The GPU speed keys: a backend torch does not know, a conv formulation or compile
    mode that does not exist, and an lr scaling without a batch are config errors."""
    with pytest.raises(ConfigError, match="train.compile_backend.*inductr"):
        load_config(None, ["train.compile=true", "train.compile_backend=inductr"])
    # an unused backend name is not checked (nor is torch imported for it)
    assert load_config(None, ["train.compile_backend=inductr"]).train.compile is False
    with pytest.raises(ConfigError, match="train.conv_impl"):
        load_config(None, ["train.conv_impl=conv1d"])
    with pytest.raises(ConfigError, match="train.compile_mode"):
        load_config(None, ["train.compile_mode=fastest"])
    with pytest.raises(ConfigError, match="optim.lr_scaling"):
        load_config(None, ["optim.lr_scaling=quadratic"])
    with pytest.raises(ConfigError, match="optim.lr_batch_size"):
        load_config(None, ["optim.lr_batch_size=0"])
    cfg = load_config(None, ["optim.lr_scaling=linear", "train.batch_size=120"])
    assert cfg.optim.scaled_lr(cfg.train.batch_size) == pytest.approx(4 * cfg.optim.lr)


# --------------------------------------------------------------------------- parsing (pydantic)


@dataclass
class _Inner:
    x: int = 1
    y: float = 0.5


def _custom_inner() -> _Inner:
    return _Inner(x=5)


@dataclass
class _Outer:
    inner: _Inner = field(default_factory=_custom_inner)
    items: list[_Inner] = field(default_factory=list)

    def validate(self) -> _Outer:
        return self


def test_section_default_from_factory_survives_partial_override():
    """A section whose default is not its class's (default_factory=_custom_inner) keeps
    that default's values for the keys a YAML or override leaves out."""
    obj = typed_from_dict(_Outer, {"inner": {"y": 2}})
    assert obj.inner == _Inner(x=5, y=2.0) and isinstance(obj.inner.y, float)
    obj = typed_from_dict(_Outer, {}, ["inner.y=3"])
    assert obj.inner == _Inner(x=5, y=3.0)
    # The evaluation suite's `run` section is one of these (name "eval").
    from rayssl.evaluate.suite import load_suite

    run = load_suite(None, ["run.seed=3", "data.manifest=m.parquet"]).run
    assert (run.name, run.experiment, run.seed) == ("eval", "rayssl-eval", 3)


def test_list_of_sections_is_checked_item_by_item():
    obj = typed_from_dict(_Outer, {"items": [{"x": 2}, {}]})
    assert obj.items == [_Inner(x=2), _Inner()]
    with pytest.raises(ConfigError) as info:
        typed_from_dict(_Outer, {"items": [{}, {"z": 1}]})
    assert str(info.value) == "items[1].z: unknown key; valid keys here: ['x', 'y']"
    with pytest.raises(ConfigError, match=r"^items\[0\]: expected a mapping of _Inner"):
        typed_from_dict(_Outer, {"items": [3]})


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lr=.nan", "optim.lr: expected a finite number, got nan"),
        ("optim.lr=.inf", "optim.lr: expected a finite number, got inf"),
        ("train.num_workers=2.5", "train.num_workers: expected an integer, got 2.5"),
        ("train.use_gpu=1", "train.use_gpu: expected true/false, got 1"),
        ("run.name=null", "run.name: expected a string, got None"),
        ("data=3", "data: expected a mapping of DataConfig fields, got 3"),
        (
            "data.short_video=cut",
            "data.short_video: expected one of ['resample_pace', 'skip'], got 'cut'",
        ),
        ("data.decode_resources={1: 2}", "data.decode_resources (a key): expected a string"),
        ("run.name=2024-01-01", "run.name: expected a number, string, true/false, list or"),
        ("pretext.paces=!!set {1: null}", "pretext.paces: expected a number, string,"),
    ],
)
def test_error_messages_exact(override, message):
    """The messages docs/training.md shows; NaN and inf are not numbers a config means,
    and YAML values JSON cannot carry (dates, sets, non-string keys) are refused, not
    turned into something else."""
    msg = _error([override])
    assert msg.startswith(message), msg
    assert "\n" not in msg


def test_several_errors_in_one_line():
    msg = _error(["train.num_workers=two", "train.batch_size=x", "bogus=1"])
    assert "\n" not in msg
    assert msg.startswith("train.batch_size: expected an integer, got 'x'")
    assert "(and 2 more: train.num_workers, bogus)" in msg


def test_config_vocabulary_matches_the_registries():
    """config.py names what a config may choose without importing the modules it
    configures; their registries must offer exactly those names."""
    from rayssl import config, vocabulary
    from rayssl.clips.flow import FLOW_ALGORITHMS
    from rayssl.models import BACKBONES
    from rayssl.pretext import PRETEXTS
    from rayssl.pretext.multitask import TASKS
    from rayssl.train.curriculum import PACINGS

    assert sorted(BACKBONES) == sorted(vocabulary.BACKBONE_NAMES)
    assert sorted(PRETEXTS) == sorted(vocabulary.PRETEXT_NAMES)
    labelling = sorted(n for n, cls in PRETEXTS.items() if cls.labels_any_clip)
    combinable = set(vocabulary.PRETEXT_NAMES) - {"multitask", "supervised", "videomae", "vjepa"}
    assert set(TASKS) == combinable  # what check_tasks allows, multitask builds
    assert all(TASKS[n] is PRETEXTS[n] for n in TASKS)
    assert labelling == sorted(vocabulary.CLIP_LABELLING_PRETEXTS)
    assert sorted(FLOW_ALGORITHMS) == sorted(
        get_args(get_type_hints(config.StatisticsSettings)["flow"])
    )
    assert get_args(get_type_hints(config.CurriculumSettings)["pacing"]) == PACINGS


def test_config_imports_nothing_it_configures():
    """Loading and validating a config imports no other rayssl module than the names it
    shares with the models (a fresh interpreter)."""
    code = (
        "import sys; from rayssl.config import load_config; load_config(None, []); "
        "print(sorted(m for m in sys.modules if m.startswith('rayssl.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['rayssl.config', 'rayssl.vocabulary']"


def test_unknown_names_are_config_errors():
    with pytest.raises(ConfigError, match=r"model\.backbone: unknown backbone 'vgg'; one of"):
        load_config(None, ["model.backbone=vgg"])
    with pytest.raises(ConfigError, match=r"pretext\.name: unknown pretext 'jigsaw'; one of"):
        load_config(None, ["pretext.name=jigsaw"])


def test_a_patch_of_typed_values_wins_over_overrides_and_leaves_the_input_alone():
    """Code sets values as a nested mapping of typed values (no `k=v` strings): merged
    into the YAML's mapping after the command line's overrides, validated the same way."""
    values = {"data": {"augment": {"crop": [64, 64]}, "clip_len": 8}}
    cfg = load_config(None, ["data.clip_len=12", "run.seed=3"])
    assert cfg.data.clip_len == 12
    from rayssl.config import Config as _Config
    from rayssl.config import typed_from_dict

    patched = typed_from_dict(
        _Config, values, ["data.clip_len=12", "run.seed=3"], {"data": {"clip_len": 16}}
    )
    assert patched.data.clip_len == 16  # the patch wins over the override
    assert patched.run.seed == 3  # the override stays where the patch is silent
    assert patched.data.augment.crop == [64, 64]  # nested sections are merged, not replaced
    assert values == {"data": {"augment": {"crop": [64, 64]}, "clip_len": 8}}  # untouched
    with pytest.raises(ConfigError, match="data.clip_len"):
        typed_from_dict(_Config, values, (), {"data": {"clip_len": "long"}})
