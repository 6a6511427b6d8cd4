"""The evaluation registry: a toy evaluation registered from outside the package becomes a
suite section (strict config, labels, splits, paths) and runs through the suite without
any edit of suite.py (real Ray, videos and sqlite MLflow); the fine-tuning evaluation's
typed overrides give the config the old `key=value` strings gave."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pytest

from rayssl.config import ConfigError, _in_range, load_config
from rayssl.evaluate.features import read_features
from rayssl.evaluate.finetune import suite_finetune_config
from rayssl.evaluate.registry import (
    EVALUATIONS,
    Evaluation,
    Outcome,
    RunContext,
    RunFiles,
    config_path,
    register,
)
from rayssl.evaluate.suite import (
    FeatureStore,
    check_labels,
    evaluate_checkpoint,
    load_suite,
    needed_videos,
    suite_paths,
)
from rayssl.io.manifest import ManifestError, read_manifest
from tests.conftest import ROOT

SUITE = ROOT / "configs" / "eval_debug.yaml"
OTHERS_OFF = [f"{name}.enabled=false" for name in EVALUATIONS]


@dataclass
class ToySettings:
    enabled: bool = True
    split: str = "train"
    clips: str = "uniform:2"
    scale: float = 1.0
    notes: str = ""
    """A file the toy reads ('' = none): checked before extraction like every path."""

    def validate(self, prefix: str) -> None:
        _in_range(f"{prefix}.scale", self.scale, 0.0, None)


class Toy(Evaluation):
    """Mean L2 norm of the pool5 features of one split's videos, times `scale`."""

    name = "toy"
    settings = ToySettings
    files = ("toy.txt",)

    def features(self, s: ToySettings, suite) -> dict[str, list[str]]:
        return {s.clips: ["pool5"]}

    def splits(self, s: ToySettings) -> set[str]:
        return {s.split}

    def labels(self, s: ToySettings) -> list[tuple[str, str | None]]:
        return [("toy", s.split)]

    def paths(self, s: ToySettings, suite_dir: Path | None) -> dict[str, str]:
        return {"notes": s.notes} if s.notes else {}

    def run(self, s: ToySettings, ctx: RunContext) -> Outcome:
        f = ctx.features.get(s.clips)
        rows = f.outputs["pool5"][f.split_mask(s.split)]
        value = s.scale * float(np.linalg.norm(rows, axis=1).mean())
        ctx.out.path("toy.txt").write_text(f"{value}\n")
        return Outcome({"toy/pool5/mean_norm": value}, [f"toy: {len(rows)} videos"])


@pytest.fixture
def toy():
    register(Toy)
    yield Toy
    EVALUATIONS.pop("toy")


def test_a_registered_evaluation_is_a_strict_suite_section(toy, tiny_manifest, tmp_path):
    suite = load_suite(SUITE, ["data.manifest=m", "toy.scale=2.5"])
    assert suite.toy.scale == 2.5 and suite.retrieval.query_split == "val"
    assert [e.name for e, _ in suite.enabled()][-1] == "toy"  # default order: last
    with pytest.raises(ConfigError, match=r"toy.bogus: unknown key; valid keys here: \['clips'"):
        load_suite(SUITE, ["data.manifest=m", "toy.bogus=1"])
    with pytest.raises(ConfigError, match="toy.scale"):
        load_suite(SUITE, ["data.manifest=m", "toy.scale=-1"])
    with pytest.raises(ConfigError, match="toy.scale: expected a number, got 'x'"):
        load_suite(SUITE, ["data.manifest=m", "toy.scale=x"])
    with pytest.raises(ConfigError, match=r"unknown key; valid keys here: \[.*'toy'"):
        load_suite(SUITE, ["data.manifest=m", "toyy.scale=1"])
    only = load_suite(SUITE, ["data.manifest=m", *OTHERS_OFF, "toy.split=val"])
    table = pa.table({"video_id": ["a", "b", "c"], "split": ["pretrain", "train", "val"]})
    assert needed_videos(only, table)["video_id"].to_pylist() == ["c"]
    notes = tmp_path / "notes.txt"
    with_notes = load_suite(SUITE, ["data.manifest=m", f"toy.notes={notes}"])
    assert suite_paths(with_notes)["toy.notes"] == str(notes)
    manifest = read_manifest(str(tiny_manifest))
    check_labels(only, manifest)
    unlabelled = manifest.set_column(
        manifest.schema.get_field_index("label"),
        "label",
        pa.array([-1] * manifest.num_rows, pa.int64()),
    )
    with pytest.raises(ManifestError, match="toy: the manifest has no class labels"):
        check_labels(only, unlabelled)


def test_an_unregistered_evaluation_is_an_unknown_key():
    with pytest.raises(ConfigError, match="toy: unknown key"):
        load_suite(SUITE, ["data.manifest=m", "toy.scale=2"])


def test_register_refuses_clashing_names(toy):
    register(Toy)  # the same class again: a no-op

    class Other(Toy):
        pass

    with pytest.raises(ValueError, match="'toy' is already registered"):
        register(Other)
    Other.name = "data"
    with pytest.raises(ValueError, match="bad section name 'data'"):
        register(Other)

    class NoSwitch(Evaluation):
        name = "noswitch"
        settings = dict

    with pytest.raises(ValueError, match="`enabled` field"):
        register(NoSwitch)
    assert "noswitch" not in EVALUATIONS


def test_features_nobody_declared_are_refused(tmp_path):
    """An evaluation reading features of a clip protocol it did not declare gets a clear
    error before anything is extracted (not a silent extraction of other layers)."""
    suite = load_suite(SUITE, ["data.manifest=m"])
    store = FeatureStore(suite, None, pa.table({"video_id": ["a"]}), RunFiles(tmp_path))
    store.want({"uniform:2": ["pool5"]})
    with pytest.raises(KeyError, match="'uniform:3': no evaluation declared them"):
        store.get("uniform:3")
    assert not list(tmp_path.iterdir())


def test_finetune_config_from_typed_overrides_matches_the_strings(tmp_path):
    """The suite's manifest, geometry, storage, tracking and seed go over the fine-tuning
    config as typed fields; the suite's own overrides still win (the same config the
    `key=value` strings of before built)."""
    suite = load_suite(
        SUITE,
        [
            "data.manifest=s3://b/m.parquet",
            "data.clip_len=8",
            "data.augment.resize=[32,43]",
            "data.augment.crop=[32,32]",
            "data.endpoint_url=http://localhost:9",
            f"run.storage_path={tmp_path}",
            "run.seed=7",
            "run.tracking_uri=sqlite:///x.db",
        ],
    )
    path = config_path(suite.finetune.config, None)
    overrides = ["optim.epochs=1", "data.augment.crop=[24,24]"]
    typed = suite_finetune_config(suite, path, overrides, "ev-finetune")
    strings = load_config(
        path,
        [
            "data.manifest=s3://b/m.parquet",
            "data.clip_len=8",
            "data.augment.resize=[32, 43]",
            "data.augment.crop=[32, 32]",
            "run.name=ev-finetune",
            f"run.storage_path={tmp_path}",
            "run.seed=7",
            "run.tracking_uri=sqlite:///x.db",
            "data.endpoint_url=http://localhost:9",
            *overrides,
        ],
    )
    assert typed == strings
    assert typed.data.augment.crop == [24, 24] and typed.optim.epochs == 1
    with pytest.raises(ConfigError, match="optim.bogus: unknown key"):
        suite_finetune_config(suite, path, ["optim.bogus=1"], "x")


def test_a_registered_evaluation_runs_through_the_suite(toy, ray_local, tiny_manifest, tmp_path):
    """Only the toy enabled: its features are extracted (its clips, its layer, its split),
    it runs, its result and file reach results.json, the report and MLflow."""
    tracking = f"sqlite:///{tmp_path / 'm.db'}"
    overrides = [
        f"data.manifest={tiny_manifest}",
        f"run.tracking_uri={tracking}",
        "model.width=0.0625",
        "data.augment.resize=[32,43]",
        "data.augment.crop=[32,32]",
        *OTHERS_OFF,
        "toy.scale=2",
    ]
    suite = load_suite(SUITE, overrides)
    out = tmp_path / "ev"
    ev = evaluate_checkpoint(suite, "random", out)
    feats = read_features(str(out / "features-uniform-2.parquet"))
    assert set(feats.outputs) == {"pool5"} and set(feats.splits) == {"train"}
    expected = 2 * float(np.linalg.norm(feats.outputs["pool5"], axis=1).mean())
    assert ev["results"] == {"toy/pool5/mean_norm": pytest.approx(expected, rel=1e-5)}
    assert json.loads((out / "results.json").read_text()) == ev["results"]
    assert ev["report"][0] == f"toy: {len(feats.video_ids)} videos"
    client = mlflow.MlflowClient(tracking)
    artifacts = {a.path for a in client.list_artifacts(ev["mlflow_run_id"])}
    assert artifacts == {"results.json", "report.txt", "toy.txt"}
    params = client.get_run(ev["mlflow_run_id"]).data.params
    assert params["toy.scale"] == "2.0"
