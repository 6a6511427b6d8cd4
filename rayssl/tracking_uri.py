"""Which MLflow store a run talks to: `run.tracking_uri`, else $MLFLOW_TRACKING_URI, else
`sqlite:///<cwd>/mlruns.db`. A config holds the URI redacted; the credentials come back
from $MLFLOW_TRACKING_URI where it is used (see `rayssl.train.tracking`).

`run_view` builds the address of a run's page in the MLflow UI's model-training view
(and the `mlflow ui` command a file or database store needs first), which `rayssl
pretrain`, `evaluate`, `sweep` and scripts/demo.py print as their last line.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO
from urllib.parse import quote, urlsplit, urlunsplit

from rayssl.config import Config, ConfigError
from rayssl.io.storage import redact

REDACTED_USERINFO = "://***@"


def real_tracking_uri(uri: str) -> str:
    """`uri` as MLflow needs it: a redacted one (`scheme://***@host...`, what a config
    holds) gets its credentials from $MLFLOW_TRACKING_URI, which must be the same URI."""
    if REDACTED_USERINFO not in uri:
        return uri
    env = os.environ.get("MLFLOW_TRACKING_URI", "")
    if env and redact(env) == uri:
        return env
    raise ConfigError(
        f"run.tracking_uri {uri}: a config never holds tracking credentials; set "
        "MLFLOW_TRACKING_URI to the full URI (with them) where rayssl runs"
    )


def default_tracking_uri(cfg: Config) -> str:
    """The tracking URI to connect to, credentials included (never store it: see
    `stored_tracking_uri`)."""
    if cfg.run.tracking_uri:
        return real_tracking_uri(cfg.run.tracking_uri)
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path.cwd().resolve() / 'mlruns.db'}"


def stored_tracking_uri(cfg: Config) -> str:
    """The tracking URI as a config, checkpoint or log may hold it: redacted."""
    return redact(default_tracking_uri(cfg))


# ------------------------------------------------------------------ the run's page in the UI

#: Where `mlflow ui` serves by default (what a file or database store is opened with).
DEFAULT_UI_ADDRESS = "http://127.0.0.1:5000"
#: MLflow 3.17 opens every experiment in its GenAI view (traces) in a fresh browser; its
#: UI reads this query parameter (`workflowType`: genai | machine_learning) to open the
#: model-training view instead (checked in MLflow 3.17.2's UI bundle).
TRAINING_VIEW_QUERY = "workflowType=machine_learning"
_SERVER_SCHEMES = ("http", "https")


@dataclass(frozen=True)
class RunView:
    """Where to see a run: `url` (the model-training view of the run's page) and, for a
    store no server serves (sqlite, file, a database), `command` (the `mlflow ui` to start
    first). Neither holds credentials."""

    url: str
    command: str = ""

    def line(self) -> str:
        """One line for the end of a command's output."""
        if self.command:
            return f"MLflow run: {self.url} (start the UI first: {self.command})"
        return f"MLflow run: {self.url}"


def run_view(tracking_uri: str, experiment_id: str, run_id: str) -> RunView:
    """The page of run `run_id` (experiment `experiment_id`) in the MLflow UI's
    model-training view: `<server>/#/experiments/<exp>/runs/<run>?workflowType=
    machine_learning`. An http(s) tracking URI is the server (its user:password is dropped:
    the browser asks for it); any other store (sqlite:///, file:, a path, postgresql://)
    is served by `mlflow ui --backend-store-uri <uri>` on 127.0.0.1:5000, a URI with
    credentials given as "$MLFLOW_TRACKING_URI" so the command never shows them."""
    uri = str(tracking_uri).strip()
    exp, run = quote(str(experiment_id), safe=""), quote(str(run_id), safe="")
    page = f"/#/experiments/{exp}/runs/{run}?{TRAINING_VIEW_QUERY}"
    parts = urlsplit(uri)
    if parts.scheme.lower() in _SERVER_SCHEMES and parts.hostname:
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        netloc = f"{host}:{parts.port}" if parts.port else host
        base = urlunsplit((parts.scheme.lower(), netloc, parts.path.rstrip("/"), "", ""))
        return RunView(base + page)
    if redact(uri) != uri or parts.password or parts.username:
        store = '"$MLFLOW_TRACKING_URI"'
    else:
        store = shlex.quote(uri)
    return RunView(DEFAULT_UI_ADDRESS + page, f"mlflow ui --backend-store-uri {store}")


def run_view_of(tracking_uri: str, run_id: str) -> RunView | None:
    """`run_view` of MLflow run `run_id` in the store `tracking_uri` (its experiment looked
    up there); None when there is no run id or the store does not know it."""
    if not run_id:
        return None
    import mlflow  # lazy: a heavy import that only the end of a tracked command needs
    from mlflow.exceptions import MlflowException  # lazy: as above

    try:
        experiment_id = mlflow.MlflowClient(tracking_uri).get_run(run_id).info.experiment_id
    except (MlflowException, OSError):
        return None
    return run_view(tracking_uri, experiment_id, run_id)


def print_run_view(tracking_uri: str, run_id: str, file: TextIO | None = None) -> None:
    """Print `RunView.line` of the run to `file` (default stdout; nothing when the store
    does not know the run)."""
    view = run_view_of(tracking_uri, run_id)
    if view is not None:
        print(view.line(), file=file or sys.stdout, flush=True)
