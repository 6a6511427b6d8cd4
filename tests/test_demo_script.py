"""`make demo` at toy size: scripts/demo.py generates videos, indexes them, submits the
pre-training and then the evaluation with `--baseline` to a local Ray head it starts, and
prints the table of pre-trained vs random init. The same script as `make demo`, with 24
videos, a narrow model and one epoch, and its own MLflow store."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import mlflow
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

ROWS = [
    "retrieval top-1 (pool3)",
    "retrieval top-1 (pool4)",
    "retrieval top-1 (pool5)",
    "linear probe (pool3)",
    "linear probe (pool4)",
    "linear probe (pool5)",
]


def test_demo_runs_both_jobs_and_prints_the_comparison_with_random_init(tmp_path):
    work = tmp_path / "demo"
    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    out = subprocess.run(
        [
            sys.executable,
            "scripts/demo.py",
            "--workdir",
            str(work),
            "--num-videos",
            "24",
            "--tracking-uri",
            tracking,
            "model.width=0.0625",
            "optim.epochs=1",
            "train.batch_size=4",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    # the four steps, one progress line per epoch, both `ray job submit` commands
    for step in ("1/4 generating 24", "2/4 indexing", "3/4 pace pre-training", "4/4 evaluating"):
        assert step in text, text
    assert re.search(r"^  epoch 1/1 \|", text, re.M), text
    assert "ray job submit --working-dir . -- python jobs/pretrain.py" in text
    assert "--baseline" in text and "jobs/evaluate.py" in text
    # the table: held-out pace accuracy, then each row with two numbers in [0, 1]
    assert re.search(r"held-out pace accuracy\s+[01]\.\d{3}", text), text
    for row in ROWS:
        m = re.search(re.escape(row) + r"\s+([01]\.\d{3})\s+([01]\.\d{3})", text)
        assert m, (row, text)
    assert text.rstrip().splitlines()[-1].startswith("demo finished in")
    # the pre-training run in MLflow's model-training view, after the `mlflow ui` command
    view = re.search(
        r"^MLflow run: http://127\.0\.0\.1:5000/#/experiments/\d+/runs/([0-9a-f]{32})"
        r"\?workflowType=machine_learning \(start the UI first: mlflow ui --backend-store-uri "
        r"(\S+)\)$",
        text,
        re.M,
    )
    assert view and view.group(2) == tracking, text
    # what the table was read from: this run's results and the baseline's
    ours = json.loads((work / "eval" / "results.json").read_text())
    base = json.loads((work / "eval" / "baseline" / "results.json").read_text())
    assert set(ours) == set(base) and "linear/pool4/accuracy" in ours
    # both jobs logged to the MLflow store the demo was given
    mlflow.set_tracking_uri(tracking)
    runs = mlflow.search_runs(search_all_experiments=True)
    names = list(runs["tags.mlflow.runName"])
    assert any(n.startswith("demo-local-") and not n.endswith("-eval") for n in names), names
    pretrain = runs[runs["tags.mlflow.runName"].str.match(r"^demo-local-\d{8}-\d{6}$")]
    assert pretrain["metrics.val/pace_acc"].notna().all()
    assert view.group(1) in set(pretrain["run_id"])  # the printed run is the pre-training's
    assert len(runs) >= 3, names  # pre-training, its evaluation, the random-init baseline
