"""`rayssl compare` against a real sqlite MLflow store."""

from __future__ import annotations

import math

import matplotlib.image as mpimg
import mlflow
import pandas as pd
import pytest

from rayssl.tune.compare import (
    CompareError,
    comparison_table,
    differing_params,
    human_duration,
    main,
    plot_metric,
    select_runs,
)

T0 = 1_700_000_000_000  # ms


class Store:
    def __init__(self, uri: str, parent: str, small: str, big: str, other: str) -> None:
        self.uri, self.parent, self.small, self.big, self.other = uri, parent, small, big, other


def _run(client, exp, name, params, tags=None, start=T0, minutes=61.0, history=(), **metrics):
    rid = client.create_run(exp, start_time=start, run_name=name, tags=tags or {}).info.run_id
    for k, v in params.items():
        client.log_param(rid, k, v)
    for step, loss in enumerate(history):
        client.log_metric(rid, "train/loss", loss, timestamp=start, step=step)
    for k, v in metrics.items():
        client.log_metric(rid, k.replace("__", "/"), v, timestamp=start)
    client.set_terminated(rid, end_time=int(start + minutes * 60_000))
    return rid


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    """Experiment cmp-a: a parent 'sweep' with children lr-small, lr-big (optim.lr differs);
    experiment cmp-b: 'other', tagged team=x. One store for the module: creating its tables
    takes seconds."""
    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp / 'mlruns.db'}"
    client = mlflow.MlflowClient(uri)
    a = client.create_experiment("cmp-a", artifact_location=str(tmp / "a"))
    b = client.create_experiment("cmp-b", artifact_location=str(tmp / "b"))
    parent = _run(client, a, "sweep", {}, start=T0 - 1000)
    child = {"mlflow.parentRunId": parent}
    common = {"model.backbone": "r21d", "data.fraction": "0.5"}
    small = _run(
        client, a, "lr-small", {**common, "optim.lr": "0.1"}, {**child, "team": "y"},
        history=(2.0, 1.5, 1.0), train__clips_per_s=123.44, val__pace_acc=0.5, train__lr=0.1,
    )  # fmt: skip
    big = _run(
        client, a, "lr-big", {**common, "optim.lr": "0.2"}, child, start=T0 + 1000,
        minutes=0.25, history=(2.0, 1.8, 1.7, 1.6), val__pace_acc=0.25, train__lr=0.2,
    )  # fmt: skip
    other = _run(client, b, "other", {"optim.lr": "0.3"}, {"team": "x"}, val__pace_acc=0.75)
    return Store(uri, parent, small, big, other)


def test_human_duration():
    assert human_duration(7.46) == "7.5s"
    assert human_duration(3661) == "1h 01m"
    assert human_duration(125) == "2m 05s"
    assert human_duration(2 * 86400 + 3 * 3600) == "2d 03h"
    assert human_duration(math.nan) == "-" and human_duration(-1) == "-"


def test_differing_params_on_hand_made_frame():
    df = pd.DataFrame(
        {
            "params.same": ["1", "1", "1"],
            "params.lr": ["0.1", "0.2", "0.1"],
            "params.new": ["x", None, "x"],  # missing in one run: differs
            "metrics.loss": [1.0, 2.0, 3.0],
        }
    )
    assert differing_params(df) == ["lr", "new"]
    assert differing_params(df.iloc[:1]) == []  # one run: nothing differs


def test_table_shows_differing_params_only(store):
    df = select_runs(store.uri, parent=store.parent)
    assert list(df["run_id"]) == [store.small, store.big]  # oldest first
    table = comparison_table(df)
    header, sep, *rows = table.splitlines()
    assert header.split() == ["run", "status", "optim.lr", "val/pace_acc", "train/loss",
                              "wall", "time", "clips/s"]  # fmt: skip
    assert "model.backbone" not in table and "data.fraction" not in table
    assert rows[0].split() == [
        "lr-small", f"({store.small[:8]})", "FINISHED", "0.1", "0.5", "1", "1h", "01m", "123.4"
    ]  # fmt: skip
    assert rows[1].split() == [
        "lr-big", f"({store.big[:8]})", "FINISHED", "0.2", "0.25", "1.6", "15.0s", "-"
    ]  # fmt: skip
    assert rows[2] == "(1 more metrics: choose them with --metrics)"  # train/lr hidden
    chosen = comparison_table(df, ["train/lr", "downstream/missing"])
    assert "train/lr" in chosen and "val/pace_acc" not in chosen and "more metrics" not in chosen
    assert chosen.splitlines()[2].split()[4:6] == ["0.1", "-"]


def test_select_by_tag_experiment_and_ids(store):
    assert list(select_runs(store.uri, tags=["team=x"])["run_id"]) == [store.other]
    assert list(select_runs(store.uri, tags=[("team", "y")])["run_id"]) == [store.small]
    assert len(select_runs(store.uri, experiments=["cmp-a"])) == 3
    assert list(select_runs(store.uri, experiments=["cmp-b"])["run_id"]) == [store.other]
    both = select_runs(store.uri, experiments=["cmp-a", "cmp-b"], parent=store.parent)
    assert set(both["run_id"]) == {store.small, store.big}
    ids = select_runs(store.uri, run_ids=[store.other, store.small])
    assert list(ids["run_id"]) == [store.other, store.small]  # the order given
    assert ids["metrics.val/pace_acc"].tolist() == [0.75, 0.5]
    narrowed = select_runs(store.uri, run_ids=[store.other, store.small], parent=store.parent)
    assert list(narrowed["run_id"]) == [store.small]
    one = comparison_table(select_runs(store.uri, run_ids=[store.other]))
    assert "optim.lr" not in one.splitlines()[0]  # a single run: no param differs


def test_select_errors(store):
    with pytest.raises(CompareError, match="no experiment named 'nope'"):
        select_runs(store.uri, experiments=["nope"])
    with pytest.raises(CompareError, match="no run matches .*tag team=z"):
        select_runs(store.uri, tags=["team=z"])
    with pytest.raises(CompareError, match="no run matches"):
        select_runs(store.uri, experiments=["cmp-b"], parent=store.parent)
    with pytest.raises(CompareError, match="no run '0123456789abcdef'"):
        select_runs(store.uri, run_ids=["0123456789abcdef"])
    with pytest.raises(CompareError, match="key=value"):
        select_runs(store.uri, tags=["team"])
    with pytest.raises(CompareError, match="choose runs"):
        select_runs(store.uri)


def test_plot_metric(store, tmp_path):
    out = tmp_path / "loss.png"
    lines = plot_metric(store.uri, [store.small, store.big, store.other], "train/loss", out)
    assert lines == {  # 'other' logged no train/loss: no line
        "lr-small": [(0, 2.0), (1, 1.5), (2, 1.0)],
        "lr-big": [(0, 2.0), (1, 1.8), (2, 1.7), (3, 1.6)],
    }
    image = mpimg.imread(out)
    assert image.ndim == 3 and image.shape[0] > 100 and image[..., :3].std() > 0.01
    with pytest.raises(CompareError, match="logged metric 'train/nope'"):
        plot_metric(store.uri, [store.small], "train/nope", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_main(store, tmp_path, capsys):
    out = tmp_path / "plot.png"
    argv = ["--tracking-uri", store.uri, "--parent", store.parent, "--plot", "train/loss"]
    assert main([*argv, "--out", str(out), "--metrics", "train/lr"]) == 0
    printed = capsys.readouterr().out
    assert "lr-small" in printed and "lr-big" in printed and "train/lr" in printed
    assert f"wrote {out} (2 runs)" in printed
    assert mpimg.imread(out).ndim == 3
    assert main(["--tracking-uri", store.uri, "--tag", "team=x"]) == 0
    assert "other" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--experiment", "nope"], "no experiment named 'nope'"),
        (["--tag", "team=z"], "no run matches"),
        (["--tag", "novalue"], "key=value"),
        (["--experiment", "cmp-b", "--plot", "train/loss"], "logged metric 'train/loss'"),
        (["--bogus"], "unrecognized arguments"),
        ([], "choose runs"),
    ],
)
def test_main_bad_input(store, capsys, monkeypatch, tmp_path, args, match):
    monkeypatch.chdir(tmp_path)  # the default plot path
    assert main(["--tracking-uri", store.uri, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err and err.count("\n") == 1
