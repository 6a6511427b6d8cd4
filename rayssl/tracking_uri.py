"""Which MLflow store a run talks to: `run.tracking_uri`, else $MLFLOW_TRACKING_URI, else
`sqlite:///<cwd>/mlruns.db`. A config holds the URI redacted; the credentials come back
from $MLFLOW_TRACKING_URI where it is used (see `rayssl.train.tracking`).
"""

from __future__ import annotations

import os
from pathlib import Path

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
