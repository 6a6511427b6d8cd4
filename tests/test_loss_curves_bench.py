"""benchmarks/loss_curves.py: the procedural pace data, the runs per setting and seed, and
the verdict it draws from them (one tiny CPU run of every setting, compiled with dynamo's
eager backend so no compiler runs)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import load_benchmark

STEPS, WINDOW, BATCH, CLIP_LEN, SIZE = 4, 2, 8, 8, 32


lc = load_benchmark("loss_curves")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One run of every setting x seeds 0 and 1, read back from its JSON."""
    out = tmp_path_factory.mktemp("loss_curves")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: 2 threads each can stall
    try:
        returned = lc.main(
            [
                "--device", "cpu", "--model", "r21d", "--width", "0.125",
                "--size", str(SIZE), "--clip-len", str(CLIP_LEN),
                "--batch-size", str(BATCH), "--steps", str(STEPS), "--window", str(WINDOW),
                "--compile-backend", "eager",
                "--json", str(out / "report.json"), "--plot", str(out / "curves.png"),
            ]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    loaded = json.loads((out / "report.json").read_text())
    assert loaded["runs"].keys() == returned["runs"].keys()
    return loaded, out


def test_every_setting_and_seed_has_finite_per_step_records(report):
    data, _ = report
    assert list(data["runs"]) == ["fp32/0", "fp32/1", "bf16/0", "bf16/1", "best/0", "best/1"]
    for name, run in data["runs"].items():
        assert len(run["losses"]) == STEPS and len(run["accs"]) == STEPS, name
        assert all(math.isfinite(x) for x in run["losses"]), name
        assert all(0.0 <= a <= 1.0 for a in run["accs"]), name
        assert math.isfinite(run["eval_loss"]) and 0.0 <= run["eval_acc"] <= 1.0
        assert len(run["window_means"]) == STEPS // WINDOW
        assert run["first_step_s"] > 0 and run["elapsed_s"] >= run["first_step_s"]
    best = data["runs"]["best/0"]["applied"]
    assert best["bf16"] and best["channels_last"] and best["fused_sgd"]
    assert best["conv2d"] > 0 and best["compiled"] == 1  # the backbone, as train.compile
    assert data["runs"]["fp32/0"]["applied"] == {
        "bf16": False,
        "channels_last": False,
        "fused_sgd": False,
    }
    assert data["args"]["compile_backend"] == "eager"


def test_same_seed_means_same_init_and_data(report):
    """The first loss comes before any update: same seed => same init and batch, so the
    settings agree up to bf16 rounding, while the other seed's first loss does not."""
    runs = report[0]["runs"]
    first = {name: run["losses"][0] for name, run in runs.items()}
    for seed in (0, 1):
        for setting in ("bf16", "best"):
            assert first[f"{setting}/{seed}"] == pytest.approx(first[f"fp32/{seed}"], abs=0.03)
    assert abs(first["fp32/0"] - first["fp32/1"]) > 1e-4


def test_batches_are_deterministic_in_seed_and_index():
    shape = (BATCH, CLIP_LEN, SIZE)
    clips, labels = lc.make_batch(0, 3, *shape)
    again, again_labels = lc.make_batch(0, 3, *shape)
    assert torch.equal(clips, again) and torch.equal(labels, again_labels)
    assert clips.shape == (BATCH, 3, CLIP_LEN, SIZE, SIZE) and clips.dtype == torch.float32
    for other in (lc.make_batch(1, 3, *shape), lc.make_batch(0, 4, *shape)):
        assert not torch.equal(clips, other[0])
    held_out = lc.make_batch(-1, 0, *shape)[0]
    for seed in (0, 1, 4096):  # the held-out stream is none of the training streams
        assert not torch.equal(held_out, lc.make_batch(seed, 0, *shape)[0])
    seeds = {lc.batch_seed(seed, index) for seed in (-1, 0, 1, 4096) for index in range(200)}
    assert len(seeds) == 800 and max(seeds) < 2**32  # mt19937 keeps 32 bits of a seed


def test_labels_are_balanced_and_motion_grows_with_pace():
    clips, labels = lc.make_batch(5, 0, 64, CLIP_LEN, SIZE)
    assert torch.bincount(labels, minlength=4).tolist() == [16, 16, 16, 16]
    assert abs(clips.mean().item()) < 0.1 and 0.8 < clips.std().item() < 1.2
    diff = (clips[:, :, 1:] - clips[:, :, :-1]).abs().mean((1, 2, 3, 4))
    per_pace = [diff[labels == p].mean().item() for p in range(4)]
    assert per_pace == sorted(per_pace), per_pace
    assert per_pace[3] > 2 * per_pace[0], per_pace


def test_verdict_follows_from_the_recorded_losses(report):
    data, _ = report
    runs = data["runs"]
    means = {n: lc.window_means(r["losses"], WINDOW) for n, r in runs.items()}
    for name, run in runs.items():
        assert run["window_means"] == pytest.approx(means[name])

    def distance(a, b):
        return max(abs(x - y) for x, y in zip(means[a], means[b], strict=True))

    noise = distance("fp32/0", "fp32/1")
    assert data["noise"]["curve"] == pytest.approx(noise)
    tolerance = data["tolerance"]
    assert tolerance == 2.0 == data["args"]["tolerance"]
    for setting in ("bf16", "best"):
        verdict = data["settings"][setting]
        d = [distance(f"{setting}/{s}", f"fp32/{s}") for s in (0, 1)]
        assert [verdict["distances"][s]["curve"] for s in ("0", "1")] == pytest.approx(d)
        assert verdict["max_curve_distance"] == pytest.approx(max(d))
        assert verdict["within_noise"] is (max(d) <= tolerance * noise)
        eval_gap = abs(runs[f"{setting}/0"]["eval_acc"] - runs["fp32/0"]["eval_acc"])
        assert verdict["distances"]["0"]["eval_acc"] == pytest.approx(eval_gap)
        for key in ("final_loss", "eval_acc"):
            gaps = [verdict["distances"][s][key] for s in ("0", "1")]
            expected = max(gaps) <= tolerance * data["noise"][key]
            assert verdict[f"{key}_within_noise"] is expected, key
    limit = lc.LEARNED_FRACTION * math.log(4)
    assert data["learned"] == {n: m[-1] < limit for n, m in means.items()}
    assert data["fp32_learned"] is (data["learned"]["fp32/0"] and data["learned"]["fp32/1"])


def test_plot_is_written_when_matplotlib_is_installed(report):
    _, out = report
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not (out / "curves.png").exists()
    else:
        assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_window_means_and_one_seed_without_noise():
    assert lc.window_means([1, 2, 3, 4, 5, 6, 7], 3) == [2, 5]  # the short tail is left out
    assert lc.window_means([1, 3], 10) == [2]  # fewer steps than a window: one window
    args = lc.parse_args(["--seeds", "0", "--settings", "bf16", "--window", "2"])
    assert args.settings == ["fp32", "bf16"]  # fp32 always runs: it is the reference
    runs = {
        "fp32/0": {"window_means": [1.4, 1.2], "eval_acc": 0.5},
        "bf16/0": {"window_means": [1.3, 0.9], "eval_acc": 0.25},
    }
    result = lc.compare(runs, args)
    assert result["noise"]["curve"] is None
    assert result["settings"]["bf16"]["within_noise"] is None
    assert result["settings"]["bf16"]["max_curve_distance"] == pytest.approx(0.3)
    assert result["settings"]["bf16"]["distances"]["0"]["eval_acc"] == pytest.approx(0.25)
    assert result["learned"] == {"fp32/0": False, "bf16/0": True}
    lines = lc.verdict_lines(result, args)
    assert any("NO VERDICT" in line for line in lines)
    assert any("DID NOT LEARN" in line for line in lines)


def test_fp32_learns_on_the_procedural_data():
    """40 fp32 steps at the default lr already move the loss well off chance (ln 4): in
    trials the window of steps 30-39 was 0.28-0.67 below the first in each of 4 seeds."""
    argv = "--device cpu --width 0.25 --size 32 --clip-len 8 --batch-size 16 --steps 40"
    args = lc.parse_args(argv.split(" "))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = lc.train_run("fp32", 0, args, torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    first, *_, last = lc.window_means(run["losses"], 10)
    assert first > 1.3  # starts at chance
    assert last < first - 0.15, (first, last)


def test_a_setting_that_fails_is_reported_and_the_others_still_compared(tmp_path, capsys):
    """A compile failure on the GPU machine (here: a backend torch does not know) must not
    cost the fp32/bf16 comparison of the same one-shot run."""
    out = tmp_path / "failing.json"
    argv = ["--device", "cpu", "--width", "0.125", "--size", "16", "--clip-len", "8"]
    argv += ["--batch-size", "4", "--steps", "2", "--window", "1", "--seeds", "0", "1"]
    argv += ["--settings", "fp32", "bf16", "best", "--compile-backend", "nope"]
    report = lc.main([*argv, "--json", str(out)])
    assert "InvalidBackend" in report["failures"]["best"]
    assert sorted(report["settings"]) == ["bf16"]
    assert sorted(report["runs"]) == ["bf16/0", "bf16/1", "fp32/0", "fp32/1"]
    assert json.loads(out.read_text())["failures"] == report["failures"]
    assert "verdict best: FAILED to run (InvalidBackend" in capsys.readouterr().out
