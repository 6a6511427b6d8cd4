"""`rayssl export`, exported folders, MLflow LoggedModels and `models:/` checkpoints.

Real files everywhere: safetensors written by the exporter, a real MLflow sqlite store,
a fresh Python process for the "take it away" reloads (only torch, safetensors and
rayssl's model classes imported there), and one real pre-training run (slow).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rayssl.checkpoint import (
    CheckpointError,
    backbone_file_payload,
    build_backbone_from,
    resolve_checkpoint,
    save,
)
from rayssl.cli import main as cli
from rayssl.config import Config, load_config
from rayssl.export import (
    FORMATS,
    SETTINGS_FILE,
    WEIGHTS_FILE,
    ExportError,
    export_backbone,
    load_exported,
    read_exported,
)
from rayssl.models import BACKBONES, build_backbone
from tests.conftest import ROOT, tiny_overrides

GEOMETRY = {"clip_len": 8, "crop": [40, 40], "resize": [48, 64]}
SIZE = [
    f"data.clip_len={GEOMETRY['clip_len']}",
    "data.augment.crop=[40,40]",
    "data.augment.resize=[48,64]",
    "model.width=0.0625",
]


def _config(backbone: str = "r21d", width: float = 0.0625) -> Config:
    return load_config(None, [f"model.backbone={backbone}", *SIZE, f"model.width={width}"])


def _trained_file(path: Path, backbone: str = "r21d", run_id: str = "abc123") -> Path:
    """A backbone.pt as pre-training writes it, with weights moved off their init (and
    the BatchNorm statistics too, which only a trained model has)."""
    cfg = _config(backbone)
    torch.manual_seed(1)
    net = build_backbone(backbone, width=cfg.model.width)
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.add_(0.01 * torch.randn_like(t))
                if t.dim() == 1:
                    t.abs_().add_(0.1)
    extra = {"mlflow_run_id": run_id, "config": cfg.to_dict()}
    return save(backbone_file_payload(net, cfg.model, extra), path)


def _clips(batch: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    return torch.randn(batch, 3, GEOMETRY["clip_len"], 40, 40, generator=gen)


def _features(backbone: torch.nn.Module, x: torch.Tensor) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = backbone.eval().forward_features(x, ["pool3", "pool5"])
    return {k: v.numpy() for k, v in out.items()}


# the README's three lines, run in a fresh process: only torch, safetensors, rayssl.models
PLAIN_LOAD = """
import json, sys, numpy as np, torch, safetensors.torch
from rayssl.models import build_backbone
d, clips, out = sys.argv[1:4]
s = json.load(open(f"{d}/rayssl_model.json"))
m = build_backbone(s["backbone"], width=s["width"])
m.load_state_dict(safetensors.torch.load_file(f"{d}/model.safetensors")); m.eval()
with torch.no_grad():
    f = m.forward_features(torch.load(clips), ["pool3", "pool5"])
np.savez(out, **{k: v.numpy() for k, v in f.items()})
heavy = [n for n in ("ray", "mlflow", "rayssl.checkpoint", "rayssl.export") if n in sys.modules]
print(json.dumps({"heavy": heavy}))
"""

HUB_LOAD = """
import json, sys, numpy as np, torch
d, repo, clips, out = sys.argv[1:5]
m = torch.hub.load(repo, "r21d", weights=d, source="local")
with torch.no_grad():
    f = m.forward_features(torch.load(clips), ["pool3", "pool5"])
np.savez(out, **{k: v.numpy() for k, v in f.items()})
print(json.dumps({"training": m.training, "type": type(m).__name__}))
"""


def _fresh(code: str, *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, cwd="/"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_export_reloads_in_a_fresh_process_with_the_same_features(tmp_path, capsys):
    ckpt = _trained_file(tmp_path / "run" / "backbone.pt")
    out = tmp_path / "exported"
    assert cli(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(printed["files"]) == {SETTINGS_FILE, "config.json", WEIGHTS_FILE}
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    for p in [out, *out.iterdir()]:  # shareable as any new file, not owner-only
        assert stat.S_IMODE(p.stat().st_mode) & 0o044 == 0o044 & ~umask
    settings = json.loads((out / SETTINGS_FILE).read_text())
    assert settings["backbone"] == "r21d" and settings["width"] == 0.0625
    assert settings["clip"]["frames"] == 8 and settings["clip"]["crop"] == [40, 40]
    assert settings["clip"]["resize"] == [48, 64]
    assert settings["normalisation"]["mean"] == [0.45] * 3
    assert settings["pretrain_run_id"] == "abc123"
    assert len(settings["config_hash"]) == 16
    assert "pool5" in settings["feature_layers"] and settings["out_dim"] > 0

    expected = _features(build_backbone_from(resolve_checkpoint(str(ckpt), _config())), _clips())
    torch.save(_clips(), tmp_path / "clips.pt")
    got = _fresh(PLAIN_LOAD, str(out), str(tmp_path / "clips.pt"), str(tmp_path / "f.npz"))
    assert got["heavy"] == []  # plain torch + safetensors + rayssl's model classes
    loaded = np.load(tmp_path / "f.npz")
    for k, v in expected.items():
        np.testing.assert_allclose(loaded[k], v, atol=1e-6, rtol=0)
    # the same through torch.hub, from the repository folder
    hub_info = _fresh(
        HUB_LOAD, str(out), str(ROOT), str(tmp_path / "clips.pt"), str(tmp_path / "h.npz")
    )
    assert hub_info == {"training": False, "type": "ResNet3d"}
    hub = np.load(tmp_path / "h.npz")
    for k, v in expected.items():
        np.testing.assert_allclose(hub[k], v, atol=1e-6, rtol=0)
    # and the exported folder is itself a checkpoint: same backbone, same run id
    again = resolve_checkpoint(str(out), load_config(None, []))
    assert again.kind == "exported" and again.pretrain_run_id == "abc123"
    assert again.model.backbone == "r21d" and again.model.width == 0.0625
    for k, v in _features(build_backbone_from(again), _clips()).items():
        np.testing.assert_allclose(v, expected[k], atol=1e-6, rtol=0)


#: The ViT presets are one class at four sizes: the tiny one stands for them (ViT-L alone
#: would build 300M parameters).
EXPORTED = sorted(n for n in BACKBONES if not n.startswith("vit_") or n == "vit_tiny")


@pytest.mark.slow  # every registered backbone traced: ~5-20 s each on 2 busy cores
@pytest.mark.parametrize("name", EXPORTED)
def test_every_backbone_exports_or_says_why_not(name, tmp_path):
    """TorchScript of every registered backbone at its exported clip geometry: the traced
    output equals the eager one, or the export is refused naming the backbone (and the
    safetensors export still works)."""
    small = ["data.clip_len=16", "data.augment.crop=[48,48]", "data.augment.resize=[48,64]"]
    width = 1.0 if name.startswith("vit_") else 0.0625  # a ViT has no width multiplier
    cfg = load_config(None, [f"model.backbone={name}", f"model.width={width}", *small])
    torch.manual_seed(0)
    backbone = build_backbone(name, width=width)
    try:
        result = export_backbone(
            backbone, name, width, tmp_path / "ts", ["torchscript"], cfg.to_dict()
        )
    except ExportError as e:
        assert name in str(e) and "\n" not in str(e)
        assert not (tmp_path / "ts").exists()  # nothing half-written
        export_backbone(backbone, name, width, tmp_path / "plain", config=cfg.to_dict())
        assert load_exported(tmp_path / "plain") is not None
        return
    assert "backbone.torchscript.pt" in result["files"]
    traced = torch.jit.load(str(tmp_path / "ts" / "backbone.torchscript.pt"))
    x = torch.randn(2, 3, cfg.data.clip_len, *cfg.data.augment.crop)
    with torch.no_grad():
        eager = load_exported(tmp_path / "ts")(x)
        assert torch.allclose(traced(x), eager, atol=1e-4)


def test_onnx_without_its_packages_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    import importlib.util

    # the packages hidden where they are installed, so the test runs on every machine
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("onnx", "onnxscript") else find_spec(name, *a),
    )
    code = cli(
        ["export", "--checkpoint", "random", "--out", str(tmp_path / "o"), "--format", "onnx"]
        + [f"model.backbone={n}" for n in ["c3d"]]
        + ["model.width=0.0625"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert "pip install 'rayssl[onnx]'" in err
    assert not (tmp_path / "o").exists()
    assert "onnx" in FORMATS


# ------------------------------------------------------------------------ hostile input


def _export(tmp_path: Path) -> Path:
    ckpt = _trained_file(tmp_path / "src" / "backbone.pt")
    out = tmp_path / "exp"
    assert cli(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    return out


def test_export_never_writes_into_its_input_or_over_a_folder(tmp_path, capsys):
    ckpt = _trained_file(tmp_path / "src" / "backbone.pt")
    before = sorted(p.name for p in (tmp_path / "src").iterdir())
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    for out in [tmp_path / "src", tmp_path / "src" / "sub", tmp_path, busy, "s3://b/x"]:
        assert cli(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --out") and err.count("\n") == 0, err
    assert sorted(p.name for p in (tmp_path / "src").iterdir()) == before
    assert (busy / "keep.txt").read_text() == "mine"
    tv = f"torchvision:r3d_18={ckpt}"  # the weights file's folder is the input's too
    assert cli(["export", "--checkpoint", tv, "--out", str(tmp_path / "src" / "tv")]) == 2
    assert "never writes into its input" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder may be the target
    assert cli(["export", "--checkpoint", str(ckpt), "--out", str(empty)]) == 0


def test_a_tampered_export_names_the_first_mismatching_key(tmp_path):
    from safetensors.torch import load_file, save_file

    out = _export(tmp_path)
    settings = json.loads((out / SETTINGS_FILE).read_text())
    first = sorted(settings["tensors"])[0]
    # 1. the weights file's shape differs from the settings'
    state = load_file(str(out / WEIGHTS_FILE))
    state[first] = torch.zeros(3)
    bad = tmp_path / "bad_weights"
    bad.mkdir()
    (bad / SETTINGS_FILE).write_text((out / SETTINGS_FILE).read_text())
    save_file(state, str(bad / WEIGHTS_FILE))
    with pytest.raises(ExportError, match=f"key '{first}' has shape \\[3\\]"):
        read_exported(bad)
    with pytest.raises(CheckpointError, match=first):  # and through --checkpoint
        resolve_checkpoint(str(bad), load_config(None, []))
    # 2. settings and weights agree with each other but not with the backbone
    settings["width"] = 0.125
    wide = tmp_path / "wrong_width"
    wide.mkdir()
    (wide / SETTINGS_FILE).write_text(json.dumps(settings))
    (wide / WEIGHTS_FILE).write_bytes((out / WEIGHTS_FILE).read_bytes())
    with pytest.raises(ExportError, match=r"backbone r21d \(width 0.125\): key '"):
        load_exported(wide)
    # 3. a key missing from the weights
    del state[first]
    save_file(state, str(bad / WEIGHTS_FILE))
    with pytest.raises(ExportError, match=f"key '{first}' is in the {SETTINGS_FILE} but not"):
        read_exported(bad)


@pytest.mark.parametrize(
    "settings, weights, message",
    [
        ("not json{", None, "not JSON"),
        ('{"format": "other/1"}', None, "format 'other/1'"),
        ("KEEP", b"\x00" * 64, "not a safetensors file"),
        ("KEEP", b"", "not a safetensors file"),
        ("BACKBONE=os.system", None, "unknown backbone 'os.system'"),
        ("WIDTH=-1", None, r"width -1(\.0)? is not a positive number"),
        ("NOFILE", None, "no model.safetensors"),
    ],
)
def test_a_broken_export_is_a_one_line_error(tmp_path, settings, weights, message):
    out = _export(tmp_path)
    good = json.loads((out / SETTINGS_FILE).read_text())
    if settings.startswith("BACKBONE="):
        settings = json.dumps({**good, "backbone": settings.split("=", 1)[1]})
    elif settings.startswith("WIDTH="):
        settings = json.dumps({**good, "width": float(settings.split("=", 1)[1])})
    elif settings in ("KEEP", "NOFILE"):
        if settings == "NOFILE":
            (out / WEIGHTS_FILE).unlink()
        settings = json.dumps(good)
    (out / SETTINGS_FILE).write_text(settings)
    if weights is not None:
        (out / WEIGHTS_FILE).write_bytes(weights)
    with pytest.raises(ExportError, match=message) as e:
        load_exported(out)
    assert "\n" not in str(e.value)


def test_an_export_is_weights_only(tmp_path):
    """A settings file cannot make loading run anything: every value is checked data,
    and the weights are safetensors (no pickle); a pickle beside them is never read."""
    out = _export(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    import pickle

    (out / "backbone.pt").write_bytes(pickle.dumps(Evil()))
    (out / "config.json").write_text('{"__class__": "os.system", "run": {"seed": 3}}')
    backbone = load_exported(out)
    assert backbone is not None and not marker.exists()
    assert resolve_checkpoint(str(out), load_config(None, [])).seed == 3


# ------------------------------------------------------------------------ MLflow models


def _store(tmp_path: Path) -> tuple[str, object, str]:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("t", artifact_location=str(tmp_path / "artifacts"))
    return uri, client, exp


def _logged(client, exp: str, backbone: str = "r21d", seed: int = 0) -> tuple[str, str, object]:
    from rayssl.train.tracking import MODEL_ID_TAG, log_backbone_model

    cfg = _config(backbone)
    run = client.create_run(exp, run_name=f"pretrain-{seed}")
    torch.manual_seed(seed)
    net = build_backbone(backbone, width=cfg.model.width)
    model_id = log_backbone_model(client, run.info.run_id, net, cfg, step=2)
    assert client.get_run(run.info.run_id).data.tags[MODEL_ID_TAG] == model_id
    return run.info.run_id, model_id, net


def test_a_logged_model_loads_by_id_by_alias_and_carries_evaluation_metrics(tmp_path):

    from rayssl.evaluate.results import log_to_mlflow
    from rayssl.evaluate.suite import load_suite
    from rayssl.train.tracking import MODEL_TYPE, register_logged_model

    uri, client, exp = _store(tmp_path)
    run_id, model_id, net = _logged(client, exp)
    model = client.get_logged_model(model_id)
    assert str(model.status).endswith("READY") and model.model_type == MODEL_TYPE
    assert model.source_run_id == run_id and model.params["step"] == "2"
    names = {f.path for f in client.list_logged_model_artifacts(model_id)}
    assert names == {SETTINGS_FILE, WEIGHTS_FILE, "config.json"}  # no pickle, no code

    cfg = load_config(None, [f"run.tracking_uri={uri}"])
    x = _clips()
    expected = _features(net, x)
    register_logged_model(client, "champ", model_id, "champion")
    for spec in (f"models:/{model_id}", "models:/champ@champion", "models:/champ/1"):
        source = resolve_checkpoint(spec, cfg)
        assert source.kind == "mlflow_model" and source.model_id == model_id, spec
        assert source.pretrain_run_id == run_id and source.config["data"]["clip_len"] == 8
        for k, v in _features(build_backbone_from(source), x).items():
            np.testing.assert_allclose(v, expected[k], atol=1e-6, rtol=0)

    # an evaluation of the run's checkpoint attaches its metrics to the run's model
    suite = load_suite(None, [f"run.tracking_uri={uri}", "data.manifest=m.parquet"])
    source = resolve_checkpoint("models:/champ@champion", cfg)
    eval_run = log_to_mlflow(suite, source, "models:/champ@champion", {"a/b/top1": 0.5}, [])
    metrics = {m.key: (m.value, m.run_id) for m in client.get_logged_model(model_id).metrics}
    assert metrics["a/b/top1"] == (0.5, eval_run)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("models:/", "expected models:/<name>@<alias>"),
        ("models:/nobody@champion", "no such MLflow model"),
        ("models:/m-0000000000000000000000000000dead", "no such MLflow model"),
    ],
)
def test_a_models_uri_that_names_nothing_is_a_one_line_error(tmp_path, spec, message):
    uri, _, _ = _store(tmp_path)
    with pytest.raises(CheckpointError, match=message) as e:
        resolve_checkpoint(spec, load_config(None, [f"run.tracking_uri={uri}"]))
    assert "\n" not in str(e.value)


def test_a_logged_model_that_is_not_a_rayssl_export_is_refused_unread(tmp_path):
    """A model whose artifacts are a pickled module (e.g. mlflow.pytorch's flavour) is
    refused: rayssl loads weights only."""
    import pickle

    uri, client, exp = _store(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    run = client.create_run(exp)
    model = client.create_logged_model(exp, name="evil", source_run_id=run.info.run_id)
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "model.pth").write_bytes(pickle.dumps(Evil()))
    client.log_model_artifacts(model.model_id, str(folder))
    client.finalize_logged_model(model.model_id, "READY")
    with pytest.raises(CheckpointError, match="not a rayssl backbone"):
        resolve_checkpoint(
            f"models:/{model.model_id}", load_config(None, [f"run.tracking_uri={uri}"])
        )
    assert not marker.exists()


def test_the_best_trial_becomes_the_champion_once(tmp_path):
    from rayssl.train.tracking import version_model_id
    from rayssl.tune.scaling_law import TrialRecord
    from rayssl.tune.sweep import load_sweep, register_champion

    uri, client, exp = _store(tmp_path)
    runs = [_logged(client, exp, seed=s) for s in range(2)]

    def record(run_id: str, metric: float, status: str = "FINISHED") -> TrialRecord:
        return TrialRecord(run_id, "r21d", "pace", 1.0, 0, metric, 0.0, 0.0, 0.0, status)

    cfg = load_sweep(ROOT / "configs" / "sweep_debug.yaml", ["study.name=my study:1"])
    records = [record(runs[0][0], 0.4), record(runs[1][0], 0.7), record("x", math.nan, "FAILED")]
    assert register_champion(client, cfg, records) == "models:/my-study-1@champion"
    champion = client.get_model_version_by_alias("my-study-1", "champion")
    assert version_model_id(champion) == runs[1][1]
    assert register_champion(client, cfg, records) == "models:/my-study-1@champion"
    assert len(client.search_model_versions("name = 'my-study-1'")) == 1  # not again
    low = load_sweep(ROOT / "configs" / "sweep_debug.yaml", ["study.name=my study:1", "mode=min"])
    register_champion(client, low, records)
    champion = client.get_model_version_by_alias("my-study-1", "champion")
    assert version_model_id(champion) == runs[0][1]
    assert register_champion(client, cfg, [record("y", math.nan, "FAILED")]) == ""


@pytest.mark.slow
def test_pretraining_logs_its_backbone_as_a_model_that_features_loads(
    ray_local, tiny_manifest, tmp_path, capsys
):
    """A real (tiny) pre-training run: its epoch-end backbones are LoggedModels of the
    run; an export of the run's final weights gives the last one's weights;
    registered as a champion, `rayssl features --checkpoint models:/<name>@champion`
    runs."""
    import os

    from rayssl.evaluate.features import read_features
    from rayssl.launch import pretrain
    from rayssl.train.tracking import MODEL_ID_TAG
    from rayssl.tune.scaling_law import TrialRecord
    from rayssl.tune.sweep import load_sweep, register_champion

    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    cfg = load_config(
        str(ROOT / "configs" / "debug.yaml"),
        [
            *tiny_overrides(tiny_manifest, tmp_path / "runs", "exp", tracking),
            "train.num_workers=0",
            "optim.epochs=2",
            "run.log_models=checkpoints",
        ],
    )
    result = pretrain(cfg)
    import mlflow

    client = mlflow.MlflowClient(tracking)
    run = client.get_run(result["mlflow_run_id"])
    model_id = run.data.tags[MODEL_ID_TAG]
    models = client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
    )
    # one model per epoch-end checkpoint (not again at the end); the tag names the last
    assert sorted(m.params["step"] for m in models) == ["1", "2"]
    assert {m.params["step"] for m in models if m.model_id == model_id} == {"2"}
    out = tmp_path / "exported"
    os.environ["MLFLOW_TRACKING_URI"] = tracking
    try:  # the run's final weights/backbone.pt (local mode keeps no Ray Train checkpoint)
        code = cli(["export", "--checkpoint", f"runs:/{run.info.run_id}", "--out", str(out)])
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    assert code == 0
    _, mine = read_exported(out)
    from_model = resolve_checkpoint(
        f"models:/{model_id}", load_config(None, [f"run.tracking_uri={tracking}"])
    )
    assert from_model.backbone_state is not None
    assert set(mine) == set(from_model.backbone_state)
    for k, v in mine.items():
        assert torch.equal(v, from_model.backbone_state[k]), k

    sweep = load_sweep(ROOT / "configs" / "sweep_debug.yaml", ["study.name=exp"])
    rec = TrialRecord(result["mlflow_run_id"], "c3d", "pace", 1.0, 0, 0.5, 0, 0, 0)
    uri = register_champion(client, sweep, [rec])
    assert uri == "models:/exp@champion"
    capsys.readouterr()
    os.environ["MLFLOW_TRACKING_URI"] = tracking
    try:
        code = cli(
            [
                "features",
                "--checkpoint",
                uri,
                "--manifest",
                str(tiny_manifest),
                "--layers",
                "pool5",
                "--clips",
                "uniform:1",
                "--out",
                str(tmp_path / "f.parquet"),
                "data.augment.resize=[32,43]",
                "data.augment.crop=[32,32]",
            ]
        )
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["checkpoint"].startswith("mlflow_model:")
    assert len(read_features(str(tmp_path / "f.parquet")).video_ids) == 12


def test_onnx_export_when_its_packages_are_installed(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    net = build_backbone("r21d", width=0.0625)
    result = export_backbone(net, "r21d", 0.0625, tmp_path / "o", ["onnx"], _config().to_dict())
    assert "backbone.onnx" in result["files"]
    model = onnx.load(str(tmp_path / "o" / "backbone.onnx"))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["clips"]
