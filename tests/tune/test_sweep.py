"""`rayssl sweep`: the grid, the up-front checks, the resources, and the debug study for
real: submitted with `ray job submit` to a local head, two trials at once, its driver
killed (SIGKILL) while one trial waits between logging its results and reporting them
to Tune, submitted again: it resumes without running any trial's work again, and
MLflow holds one parent, one child per trial with the downstream metric, and the
scaling-law report."""

from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path

import mlflow
import pytest

from rayssl import testhooks
from rayssl.config import ConfigError
from rayssl.tune.sweep import (
    NONRETRYABLE_FILE,
    Trial,
    check_evaluation_world,
    check_sweep,
    check_trials_world,
    error_summary,
    eval_budget,
    evaluation_suite,
    load_sweep,
    max_concurrent,
    size_suite,
    trial_config,
    trials,
)
from tests.conftest import ROOT, make_dataset, settle_jobs

SWEEP = ROOT / "configs" / "sweep_debug.yaml"


def test_grid_names_and_overrides(tiny_manifest):
    cfg = load_sweep(SWEEP, [f"manifest={tiny_manifest}"])
    grid = trials(cfg)
    assert [t.slug for t in grid] == [
        "fraction-0.5_backbone-c3d_seed-0",
        "fraction-0.5_backbone-r21d_seed-0",
        "fraction-1.0_backbone-c3d_seed-0",
        "fraction-1.0_backbone-r21d_seed-0",
    ]
    tc = trial_config(cfg, grid[1], parent_run_id="abc")
    assert (tc.data.fraction, tc.model.backbone, tc.run.seed) == (0.5, "r21d", 0)
    assert tc.run.name == "sweep_debug-fraction-0.5_backbone-r21d_seed-0"
    assert tc.run.parent_run_id == "abc" and tc.optim.epochs == 2
    assert tc.data.manifest == str(tiny_manifest)
    assert len(check_sweep(cfg)) == 4
    # the study's typed fields: its storage folder, and the suite's manifest and seed
    assert tc.run.storage_path.endswith("/sweep_debug/trials")
    suite = evaluation_suite(cfg, tc)
    assert suite.data.manifest == str(tiny_manifest) and suite.run.seed == tc.run.seed
    # an axis over data.manifest wins over the study's manifest, as an override would
    axis = Trial("manifest-other", {"data.manifest": "/data/other.parquet"})
    assert trial_config(cfg, axis).data.manifest == "/data/other.parquet"


def test_what_trials_name_is_checked_before_ray_starts(tiny_manifest, tmp_path):
    base = [f"study.storage_path={tmp_path / 'study'}"]
    cfg = load_sweep(SWEEP, [f"manifest={tiny_manifest}", *base])
    check_trials_world(cfg, check_sweep(cfg))
    gone = load_sweep(SWEEP, [f"manifest={tmp_path / 'gone.parquet'}", *base])
    with pytest.raises(ConfigError, match=r"trial fraction-0.5_backbone-c3d_seed-0: data.manifest"):
        check_trials_world(gone, check_sweep(gone))
    long = load_sweep(
        SWEEP, [f"manifest={tiny_manifest}", *base, "pretrain_overrides=['pretext.paces=[4]']"]
    )
    with pytest.raises(ConfigError, match=r"pretext.paces: no training video is long enough"):
        check_trials_world(long, check_sweep(long))


def test_bad_sweeps_fail_before_any_work(tiny_manifest, tmp_path):
    m = f"manifest={tiny_manifest}"
    with pytest.raises(ConfigError, match=r"trial backbon-c3d: model.backbon: unknown key"):
        check_sweep(load_sweep(SWEEP, [m, "axes=[{key: model.backbon, values: [c3d]}]"]))
    with pytest.raises(ConfigError, match=r"trial fraction-2.*data.fraction"):
        check_sweep(load_sweep(SWEEP, [m, "axes=[{key: data.fraction, values: [2]}]"]))
    with pytest.raises(ConfigError, match="axes: expected at least one axis"):
        load_sweep(SWEEP, [m, "axes=[]"])
    with pytest.raises(ConfigError, match="evaluation: .* does not exist"):
        load_sweep(SWEEP, [m, "evaluation=nope.yaml"])
    with pytest.raises(ConfigError, match="study.max_failures"):
        load_sweep(SWEEP, [m, "study.max_failures=-1"])


def test_evaluation_suite_is_checked_against_the_manifest_before_any_trial(tmp_path):
    """A manifest without the evaluation's `val` split: refused before Ray starts (the
    issue: every trial pre-trained, then failed in evaluation and was retried)."""
    manifest = make_dataset(tmp_path / "data", num_videos=8, num_frames=40, val_fraction=0.0)
    cfg = load_sweep(SWEEP, [f"manifest={manifest}", f"study.storage_path={tmp_path / 'r'}"])
    with pytest.raises(ConfigError) as err:
        check_evaluation_world(cfg, check_sweep(cfg))
    assert str(err.value) == (
        "evaluation eval_debug.yaml: knn (query): split 'val' has no usable video in the "
        "manifest (splits present: ['train'])"
    )
    pairs = load_sweep(
        SWEEP,
        [f"manifest={manifest}", "evaluation_overrides=[similarity.pairs=s3://YOUR-BUCKET/p.csv]"],
    )
    with pytest.raises(ConfigError, match="similarity.pairs: s3://YOUR-BUCKET/p.csv is a placeh"):
        check_evaluation_world(pairs, check_sweep(pairs))


def test_evaluation_is_sized_to_the_trial_share(tiny_manifest):
    """The reproduced hang: on a 2-CPU head a trial holds 0.05 CPU; its model actor and
    decode task must fit in what is left, with fractional CPUs."""
    cfg = load_sweep(SWEEP, [f"manifest={tiny_manifest}"])
    tcfg = trial_config(cfg, trials(cfg)[0])
    from rayssl.tune.sweep import evaluation_suite

    budget = eval_budget(cfg, tcfg, {"CPU": 2.0})
    assert budget == pytest.approx(0.5 + 1.0 - 0.05)  # 1 worker x 0.5 + data CPU - trial
    suite = size_suite(evaluation_suite(cfg, tcfg), budget)
    inf = suite.features.inference
    assert inf.num_actors == 1 and inf.decode_tasks == 1
    assert inf.cpus_per_actor > 0 and suite.data.num_cpus_per_task > 0
    assert 0.05 + inf.cpus_per_actor + suite.data.num_cpus_per_task <= 2.0
    roomy = size_suite(evaluation_suite(cfg, tcfg), 8.0)  # fits as configured
    assert roomy.features.inference.cpus_per_actor == 1.0 and roomy.data.num_cpus_per_task == 1.0


def test_failed_trial_is_one_line_of_its_root_exception(ray_local):
    """Tune hands back Ray's wrapper (`ray::ImplicitFunc.train() (pid=...)`); the RESULT
    shows the user's exception and where the traceback is."""
    from rayssl.io.manifest import ManifestError

    @ray_local.remote
    def trial():
        raise ManifestError("linear (test): split 'val' has no usable video\nmore detail")

    with pytest.raises(Exception) as err:
        ray_local.get(trial.remote())
    assert "ray::trial()" in str(err.value)  # the header the RESULT used to show
    assert error_summary(err.value, "/runs/s/t") == (
        "ManifestError: linear (test): split 'val' has no usable video "
        "(full traceback: /runs/s/t/error.txt)"
    )


def test_concurrency_fits_the_cluster(tiny_manifest):
    cfg = load_sweep(SWEEP, [f"manifest={tiny_manifest}", "study.max_concurrent=0"])
    grid = trials(cfg)
    # a trial: 1 worker x 0.5 CPU + 1 data CPU
    assert max_concurrent(cfg, grid, {"CPU": 4.0}) == 2
    assert max_concurrent(cfg, grid, {"CPU": 1.0}) == 1
    assert max_concurrent(cfg, grid, {"CPU": 64.0}) == 4  # never more than the trials
    gpu = load_sweep(
        SWEEP,
        [
            f"manifest={tiny_manifest}",
            "study.max_concurrent=0",
            "pretrain_overrides=[train.use_gpu=true]",
        ],
    )
    assert max_concurrent(gpu, grid, {"CPU": 64.0, "GPU": 2.0}) == 2


def test_cli_hands_compare_its_options(tmp_path, capsys):
    from rayssl.cli import main as cli

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    assert cli(["compare", "--tracking-uri", uri, "--runs", "0123456789abcdef"]) == 2
    assert "error" in capsys.readouterr().err


def _children(tracking: str, parent: str) -> list:
    client = mlflow.MlflowClient(tracking)
    exp = client.get_run(parent).info.experiment_id
    return client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent}'")


def _driver_pids(marker: str) -> list[int]:
    """Pids of this machine's `jobs/sweep.py` processes whose command line has `marker`."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        cmd = " ".join(argv)
        # the interpreter itself, not the `/bin/sh -c` the job agent runs it with
        if Path(argv[0]).name.startswith("python") and "jobs/sweep.py" in cmd and marker in cmd:
            pids.append(int(proc.name))
    return pids


def _tiny_sweep(path: Path, manifest: Path, storage: Path, study: str) -> Path:
    """configs/sweep_debug.yaml at the test's tiny sizes (1 epoch, 32 px, 1/16 width)."""
    import yaml

    values = yaml.safe_load(SWEEP.read_text())
    size = ["data.augment.resize=[32,43]", "data.augment.crop=[32,32]", "model.width=0.0625"]
    values.update(
        pretrain=str(ROOT / "configs" / values["pretrain"]),
        evaluation=str(ROOT / "configs" / values["evaluation"]),
        manifest=str(manifest),
        pretrain_overrides=[
            "optim.epochs=1",
            "data.val_split=",
            "data.clips_per_video=1",
            "train.batch_size=4",
            *size,
        ],
        evaluation_overrides=[
            *values["evaluation_overrides"][:5],  # the debug sweep's: linear probe only
            "features.inference.clips=uniform:1",
            *size,
        ],
    )
    values["axes"] = [  # two trials: one finishes, the other waits when the driver dies
        {"key": "data.fraction", "values": [0.5, 1.0]},
        {"key": "model.backbone", "values": ["c3d"]},
        {"key": "run.seed", "values": [0]},
    ]
    values["study"].update(name=study, storage_path=str(storage), max_concurrent=2)
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.slow
def test_sweep_job_killed_and_resubmitted_resumes_without_redoing_trials(
    ray_head, tiny_manifest, tmp_path
):
    """On the session's head: the hook and the tracking URI reach the trials through the
    job's runtime env."""
    from rayssl.cli import main as cli
    from rayssl.localhead import job_status, submit_job

    manifest = tiny_manifest  # 12 videos of 40 frames, 9 of them for training
    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    pause = tmp_path / "pause"
    pause.mkdir()
    study = "sweep_kill"
    last = "fraction-1.0_backbone-c3d_seed-0"
    sweep = _tiny_sweep(tmp_path / "sweep.yaml", manifest, tmp_path / "runs", study)
    entry = ["python", "jobs/sweep.py", "--config", str(sweep)]
    # The last trial waits after its results reached MLflow, before Tune hears of them:
    # the worst moment for a driver to die (Tune's saved state lags MLflow).
    env = {"MLFLOW_TRACKING_URI": tracking, testhooks.SWEEP_PAUSE: f"{pause}:{last}:logged"}
    head = ray_head
    submit_job(head, entry, ROOT, env_vars=env, submission_id="sweep-1", wait=False)
    deadline = time.monotonic() + 500
    polls = 0
    first = "fraction-0.5_backbone-c3d_seed-0"
    reported = tmp_path / "runs" / study / first / "result.json"  # Tune writes it
    while time.monotonic() < deadline and not (
        (pause / "paused").exists() and reported.exists() and reported.stat().st_size
    ):
        time.sleep(1)
        polls += 1
        if polls % 15 == 0:  # `ray job status` costs a CLI start: rarely
            state = job_status(head, "sweep-1")
            assert state in ("PENDING", "RUNNING", ""), f"the sweep job ended: {state}"
    assert (pause / "paused").exists(), "the last trial never finished its work"
    pids = _driver_pids(str(sweep))
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGKILL)  # the driver dies; the paused trial with it
    settle_jobs(head)  # the job has ended and its trials' actors are gone
    mlflow.set_tracking_uri(tracking)
    parent = mlflow.search_runs(
        experiment_names=["rayssl-sweeps"], filter_string="tags.`rayssl.sweep.role` = 'study'"
    )
    assert len(parent) == 1
    parent_id = parent.iloc[0]["run_id"]
    before = {
        r.data.tags["rayssl.sweep.trial"]: r.info.run_id for r in _children(tracking, parent_id)
    }
    assert sorted(before) == [first, last]  # both trials' work is in MLflow

    second = submit_job(head, entry, ROOT, env_vars=env, log_path=tmp_path / "job2.log")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming" in second.stdout
    # Tune restored the paused trial as unfinished (the other too, if its state
    # lagged): MLflow says both are done, so nothing is trained or evaluated again.
    assert f"trial {last}: finished earlier" in second.stdout

    children = _children(tracking, parent_id)
    by_trial = {r.data.tags["rayssl.sweep.trial"]: r for r in children}
    assert len(children) == 2 and set(by_trial) == {t.slug for t in trials(load_sweep(sweep))}
    for slug, run_id in before.items():  # not run again: the same run, evaluated once
        assert by_trial[slug].info.run_id == run_id
        assert len(_children(tracking, run_id)) == 1, f"{slug} was evaluated again"
    for r in children:
        assert r.info.status == "FINISHED"
        assert math.isfinite(r.data.metrics["downstream/linear/pool5/accuracy"])
        assert r.data.metrics["compute/clips_seen"] > 0
        assert r.data.tags["rayssl.sweep.fraction"] in ("0.5", "1.0")
        assert r.data.tags["rayssl.sweep.backbone"] == "c3d"
    client = mlflow.MlflowClient(tracking)
    assert client.get_run(parent_id).info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(parent_id, "scaling_law")}
    assert {"scaling_law/scaling_law.png", "scaling_law/scaling_law.md"} <= artifacts
    report = tmp_path / "runs" / study / "report"
    assert (report / "scaling_law.png").stat().st_size > 1000
    assert "c3d" in (report / "scaling_law.md").read_text()
    exp = client.get_experiment(client.get_run(parent_id).info.experiment_id)
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"

    out = Path(tmp_path / "compare.txt")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli(["compare", "--tracking-uri", tracking, "--parent", parent_id]) == 0
    out.write_text(buf.getvalue())
    text = buf.getvalue()
    assert all(slug in text or by_trial[slug].info.run_name in text for slug in by_trial)


@pytest.mark.slow
def test_sweep_on_a_2_cpu_head_finishes_and_a_stage_that_cannot_fit_is_not_retried(tmp_path):
    """(A head of its own: a 2-CPU head is what it tests; the session's has 4 CPUs.)
    The reproduced hang: a 2-CPU head, a trial holding 0.05 CPU, a 1-CPU model actor
    and 1-CPU decode tasks as configured. The evaluation is sized to the trial's share
    and the study finishes. Then a suite asking for 3 model actors cannot fit: the trial
    fails with the stage and its resources in one line, and is not pre-trained again."""
    import json

    from rayssl.localhead import local_ray_head, submit_job

    manifest = make_dataset(tmp_path / "data", num_videos=8, num_frames=40)
    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    env = {"MLFLOW_TRACKING_URI": tracking}
    ok = _tiny_sweep(tmp_path / "ok.yaml", manifest, tmp_path / "runs", "two_cpu")
    import yaml

    values = yaml.safe_load(ok.read_text())
    values["axes"][0]["values"] = [1.0]
    values["study"]["max_concurrent"] = 1
    ok.write_text(yaml.safe_dump(values))
    values["study"]["name"] = "too_big"
    values["evaluation_overrides"].append("features.inference.num_actors=3")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(values))
    with local_ray_head(
        num_cpus=2, env=env, log_path=tmp_path / "head.log", stop_grace_s=2
    ) as head:
        first = submit_job(
            head, ["python", "jobs/sweep.py", "--config", str(ok)], ROOT, env_vars=env
        )
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        done = next(x for x in first.stdout.splitlines() if x.startswith("RESULT "))
        # the best trial's backbone is registered: a weights-only checkpoint by alias
        assert json.loads(done[len("RESULT ") :])["champion"] == "models:/two_cpu@champion"
        second = submit_job(
            head, ["python", "jobs/sweep.py", "--config", str(bad)], ROOT, env_vars=env
        )
    line = next(x for x in second.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    assert result["trials_done"] == 0
    (error,) = result["errors"].values()
    # the retry's error: it failed at once, carrying the first attempt's root line
    assert error.startswith("NonRetryableTrialError: not retried: an earlier attempt failed")
    assert "UnschedulableError: evaluation inference: needs {'CPU': " in error
    assert "model actors (3 x {CPU " in error and error.endswith("error.txt)")
    trial_dir = tmp_path / "runs" / "too_big" / "fraction-1.0_backbone-c3d_seed-0"
    assert (trial_dir / NONRETRYABLE_FILE).read_text().startswith("UnschedulableError")
    mlflow.set_tracking_uri(tracking)
    runs = mlflow.search_runs(
        experiment_names=["rayssl-sweeps"], filter_string="tags.`rayssl.sweep.role` = 'study'"
    )
    parent = runs[runs["tags.mlflow.runName"] == "too_big"].iloc[0]["run_id"]
    assert len(_children(tracking, parent)) == 1  # pre-trained once, not again on retry
    from rayssl.checkpoint import resolve_checkpoint
    from rayssl.config import load_config

    champion = resolve_checkpoint(
        "models:/two_cpu@champion", load_config(None, [f"run.tracking_uri={tracking}"])
    )
    assert champion.kind == "mlflow_model" and champion.model.backbone == "c3d"


@pytest.mark.slow
def test_a_failing_trial_is_reported_not_retried_and_the_study_ends_failed(
    ray_local, tmp_path, capsys, monkeypatch
):
    """The failure path in-process on the session's Ray: a study whose metric the suite
    does not produce. Its trial pre-trains and evaluates, then fails with a ConfigError
    naming the metric and what the suite has (deterministic: the retry fails at once, no
    second pre-training); the parent run ends FAILED with sweep/trials_failed = 1; the
    command exits 1 and its result lists the error."""
    import json

    import yaml

    from rayssl.cli import main as cli

    manifest = make_dataset(tmp_path / "data", num_videos=8, num_frames=40)
    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    path = _tiny_sweep(tmp_path / "bad_metric.yaml", manifest, tmp_path / "runs", "bad_metric")
    values = yaml.safe_load(path.read_text())
    values["metric"] = "linear/pool9/accuracy"
    values["axes"][0]["values"] = [1.0]  # one trial: the path is the same for each
    values["study"]["max_concurrent"] = 1
    path.write_text(yaml.safe_dump(values))
    capsys.readouterr()
    assert cli(["sweep", "--config", str(path)]) == 1
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["trials"] == 1 and result["trials_done"] == 0
    assert set(result["errors"]) == {"fraction-1.0_backbone-c3d_seed-0"}
    for error in result["errors"].values():
        assert "'linear/pool9/accuracy' is not a result of" in error, error
        assert "linear/pool5/accuracy" in error  # what the suite does produce
        assert error.endswith("error.txt)"), error
    mlflow.set_tracking_uri(tracking)
    runs = mlflow.search_runs(
        experiment_names=["rayssl-sweeps"], filter_string="tags.`rayssl.sweep.role` = 'study'"
    )
    parent = runs[runs["tags.mlflow.runName"] == "bad_metric"].iloc[0]
    assert parent["status"] == "FAILED"
    assert parent["metrics.sweep/trials_failed"] == 1 and parent["metrics.sweep/trials_done"] == 0
    # one pre-training: the deterministic error was not retried
    assert len(_children(tracking, parent["run_id"])) == 1


def test_an_axis_over_whole_pretrain_configs_pairs_each_pretext_with_its_backbone(tmp_path):
    """`pretrain` as an axis: each value is a config file (relative to the sweep file),
    crossed with the other axes, whose values reach the trial as typed values."""
    sweep, configs = tmp_path / "sweep.yaml", ROOT / "configs"
    sweep.write_text(
        f"pretrain: {configs / 'debug.yaml'}\n"
        f"evaluation: {configs / 'eval_debug.yaml'}\n"
        "axes:\n"
        "  - key: pretrain\n"
        f"    values: [{configs / 'debug.yaml'}, {configs / 'videomae_vit_debug.yaml'}]\n"
        "  - key: data.fraction\n"
        "    values: [0.5, 1.0]\n"
        f"study: {{storage_path: {tmp_path / 'study'}}}\n"
    )
    cfg = load_sweep(sweep)
    grid = trials(cfg)
    assert [t.slug for t in grid] == [
        "pretrain-debug_fraction-0.5",
        "pretrain-debug_fraction-1.0",
        "pretrain-videomae_vit_debug_fraction-0.5",
        "pretrain-videomae_vit_debug_fraction-1.0",
    ]
    pace, masked = trial_config(cfg, grid[0]), trial_config(cfg, grid[3])
    assert (pace.pretext.name, pace.data.fraction) == ("pace", 0.5)
    assert (masked.pretext.name, masked.model.backbone, masked.data.fraction) == (
        "videomae",
        "vit_tiny",
        1.0,
    )
    assert grid[0].patch == {"data": {"fraction": 0.5}}  # typed values, no key=value text
    gone = sweep.read_text().replace("videomae_vit_debug.yaml", "nowhere.yaml")
    sweep.write_text(gone)
    with pytest.raises(ConfigError, match=r"axes\[0\].values: .*nowhere.yaml does not exist"):
        load_sweep(sweep)
