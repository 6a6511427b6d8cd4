"""The address of a run in the MLflow UI's model-training view (`rayssl.tracking_uri`).

MLflow 3.17 opens an experiment in its GenAI view unless the URL asks for
`workflowType=machine_learning`; a file or database store needs `mlflow ui` first.
A real sqlite store for the look-up; no server is started here (benchmarks/mlflow_view.py
opens the printed URL in a headless browser).
"""

from __future__ import annotations

import mlflow
import pytest

from rayssl.tracking_uri import DEFAULT_UI_ADDRESS, print_run_view, run_view, run_view_of

PAGE = "/#/experiments/7/runs/abc123?workflowType=machine_learning"


def test_a_tracking_server_is_the_url_base():
    view = run_view("http://mlflow.example:5000/", "7", "abc123")
    assert view.url == "http://mlflow.example:5000" + PAGE
    assert view.command == ""
    assert view.line() == f"MLflow run: {view.url}"
    prefixed = run_view("https://example.org/mlflow", "7", "abc123")
    assert prefixed.url == "https://example.org/mlflow" + PAGE


def test_a_server_uri_with_credentials_never_shows_them():
    view = run_view("https://alice:s3cr3t-pw@mlflow.example/?x=1", "7", "abc123")
    assert view.url == "https://mlflow.example" + PAGE
    assert "s3cr3t" not in view.line() and "alice" not in view.line()


def test_a_sqlite_store_gets_the_mlflow_ui_command(tmp_path):
    uri = f"sqlite:///{tmp_path}/my runs.db"
    view = run_view(uri, "7", "abc123")
    assert view.url == DEFAULT_UI_ADDRESS + PAGE
    assert view.command == f"mlflow ui --backend-store-uri '{uri}'"  # quoted: a space
    assert view.line().startswith(f"MLflow run: {view.url} (start the UI first: mlflow ui")
    plain = run_view("sqlite:///mlruns.db", "7", "abc123")
    assert plain.command == "mlflow ui --backend-store-uri sqlite:///mlruns.db"


@pytest.mark.parametrize(
    "uri",
    ["postgresql://bob:hunter22@db.example:5432/mlflow", "mysql+pymysql://bob:hunter22@db/ml"],
)
def test_a_database_store_with_credentials_is_named_by_the_environment(uri):
    view = run_view(uri, "7", "abc123")
    assert view.command == 'mlflow ui --backend-store-uri "$MLFLOW_TRACKING_URI"'
    assert "hunter22" not in view.line() and "bob" not in view.line()


def test_odd_ids_are_quoted_into_the_path():
    view = run_view("http://h:5000", "7/../x", "a b")
    assert "/#/experiments/7%2F..%2Fx/runs/a%20b?workflowType=machine_learning" in view.url


def test_the_run_is_looked_up_in_its_store(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("view-test", artifact_location=str(tmp_path / "art"))
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "loss", 0.5)
    view = run_view_of(uri, run.info.run_id)
    assert view is not None
    assert view.url == (
        f"{DEFAULT_UI_ADDRESS}/#/experiments/{exp}/runs/{run.info.run_id}"
        "?workflowType=machine_learning"
    )
    print_run_view(uri, run.info.run_id)
    assert capsys.readouterr().out == view.line() + "\n"
    # no run id, or one the store does not know: nothing printed, nothing raised
    assert run_view_of(uri, "") is None
    assert run_view_of(uri, "0" * 32) is None
    print_run_view(uri, "0" * 32)
    assert capsys.readouterr().out == ""


def test_a_command_prints_the_view_on_stderr(tmp_path, capsys, monkeypatch):
    """stdout's last line stays a command's JSON result; the view goes to stderr."""
    from rayssl.cli import _print_run_view

    uri = f"sqlite:///{tmp_path}/mlruns.db"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("view-cli", artifact_location=str(tmp_path / "art"))
    run = client.create_run(exp).info.run_id
    _print_run_view(lambda: uri, run)
    printed = capsys.readouterr()
    assert printed.out == ""
    last = printed.err.strip().splitlines()[-1]  # (MLflow logs its store's creation first)
    assert last.startswith(f"MLflow run: {DEFAULT_UI_ADDRESS}/#/experiments/{exp}/runs/{run}")
    assert last.endswith(f"mlflow ui --backend-store-uri {uri})")
    # a redacted URI without its credentials in the environment: a hint, so nothing
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from rayssl.tracking_uri import real_tracking_uri

    _print_run_view(lambda: real_tracking_uri("http://***@mlflow.example"), run)
    assert capsys.readouterr().err == ""
