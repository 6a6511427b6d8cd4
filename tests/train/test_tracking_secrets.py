"""No secret leaves the process (issue 19, item 4): tracking credentials come only from
the environment, a config holds the URI redacted, `redact` takes the userinfo up to the
last '@', and MLflow filter strings quote their values (a `'` in a run name works)."""

from __future__ import annotations

import io
import json

import mlflow
import pytest
import torch

from rayssl.checkpoint import save_training_state
from rayssl.config import ConfigError, load_config
from rayssl.io.storage import redact
from rayssl.preflight import resolve_paths
from rayssl.pretext import build_pretext
from rayssl.train.step import build_model, build_optimizer
from rayssl.train.tracking import (
    RUN_KEY_TAG,
    Tracker,
    default_tracking_uri,
    filter_literal,
    filter_tag,
)
from tests.conftest import ROOT

DEBUG = ROOT / "configs" / "debug.yaml"
ISSUE_URIS = {
    "postgresql://u:pw@db/mlflow": ("postgresql://***@db/mlflow", ["pw", "u:"]),
    "https://u:tok@host": ("https://***@host", ["tok", "u:"]),
    "https://user:p@ss@host/x": ("https://***@host/x", ["ss@", "p@", "user"]),
}


@pytest.mark.parametrize("uri", sorted(ISSUE_URIS))
def test_redact_takes_the_userinfo_up_to_the_last_at(uri):
    expected, secrets = ISSUE_URIS[uri]
    out = redact(f"tracking at {uri} failed")
    assert out == f"tracking at {expected} failed"
    for secret in secrets:
        assert secret not in out


def test_a_config_never_holds_credentials():
    for uri in ISSUE_URIS:
        with pytest.raises(ConfigError, match="MLFLOW_TRACKING_URI"):
            load_config(DEBUG, [f"run.tracking_uri={uri}"])
    # the redacted form (what a saved config holds) and plain URIs are fine
    load_config(DEBUG, ["run.tracking_uri=https://***@host"])
    load_config(DEBUG, ["run.tracking_uri=sqlite:////data/at@home/mlruns.db"])


@pytest.mark.parametrize("uri", ["postgresql://u:pw@db/mlflow", "https://u:tok@host"])
def test_credentials_come_from_the_environment_and_are_stored_redacted(uri, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = resolve_paths(load_config(DEBUG, ["model.width=0.0625"]))
    assert cfg.run.tracking_uri == ISSUE_URIS[uri][0]
    assert default_tracking_uri(cfg) == uri  # what MLflow connects with
    stored = json.dumps(cfg.to_dict())
    model = build_model(cfg, build_pretext(cfg.pretext, cfg.data.clip_len))
    opt, sched = build_optimizer(model, cfg)
    path = save_training_state(
        tmp_path, model=model, optimizer=opt, scheduler=sched, epoch=0,
        sampler={"seed": 0}, config=cfg.to_dict(),
    )  # fmt: skip
    saved = path.read_bytes()
    userinfo = uri.split("://", 1)[1].rsplit("@", 1)[0] + "@"  # u:pw@ (2 letters alone
    for secret in ISSUE_URIS[uri][1]:  # may occur by chance in the tensors' bytes)
        assert secret not in stored
    assert userinfo.encode() not in saved and uri.encode() not in saved
    assert (
        torch.load(io.BytesIO(saved), weights_only=True)["config"]["run"]["tracking_uri"]
        == (ISSUE_URIS[uri][0])
    )
    # a redacted URI without its credentials in the environment is a clear error
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(ConfigError, match="set MLFLOW_TRACKING_URI"):
        default_tracking_uri(cfg)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://u:tok@elsewhere")
    with pytest.raises(ConfigError, match="set MLFLOW_TRACKING_URI"):
        default_tracking_uri(cfg)


def test_filter_values_are_quoted():
    assert filter_literal("it's") == '"it\'s"'
    assert filter_literal('say "hi"') == "'say \"hi\"'"
    assert filter_tag("a.b", "x") == "tags.`a.b` = 'x'"
    with pytest.raises(ValueError, match="both quote characters"):
        filter_literal('it\'s "both"')
    with pytest.raises(ValueError, match="backtick"):
        filter_tag("a`b", "x")


def test_a_quote_in_the_run_name_finds_the_unfinished_run(tmp_path):
    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    cfg = load_config(
        DEBUG,
        [f"run.tracking_uri={tracking}", "run.name=bob's run", f"run.storage_path={tmp_path}"],
    )
    first = Tracker(cfg, enabled=True, commit="c")
    # a restart that found no checkpoint continues the unfinished run of the same job
    again = Tracker(cfg, enabled=True, commit="c")
    assert again.run_id == first.run_id
    run = mlflow.MlflowClient(tracking).get_run(first.run_id)
    assert run.data.tags[RUN_KEY_TAG].endswith("/bob's run")
