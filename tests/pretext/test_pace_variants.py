"""The pace ablations of thesis 4.4 (tables 4.2-4.4): slow and fast paces, pace steps,
backwards clips as the same class or as extra classes; exact frames from a real
MPEG-4 AVI with B-frames, and what `rayssl preview` shows of them."""

from __future__ import annotations

import numpy as np
import pytest

from rayssl.clips.pipeline import SamplerSpec, sample_row
from rayssl.clips.sampling import PaceDraw, draw_pace_clip, maybe_backwards, pace_indices
from rayssl.config import AugmentSettings, ConfigError, PretextConfig, load_config
from rayssl.io.manifest import build_manifest, list_entries
from rayssl.pretext import build_pretext
from rayssl.tools.synthetic import index_pattern_frames, read_index_pattern, write_video

CLIP_LEN = 16


def _draw(label=1, pace=2.0) -> PaceDraw:
    return PaceDraw(pace_indices(5, CLIP_LEN, pace), label, pace, False)


def test_backwards_same_class_reverses_the_frames_and_keeps_the_label():
    rng = np.random.default_rng(0)
    draws = [maybe_backwards(_draw(), "same_class", 0.5, 4, rng) for _ in range(400)]
    back = [d for d in draws if d.pace < 0]
    assert 150 < len(back) < 250  # ~ backwards_prob of the draws
    for d in draws:
        assert d.label == 1
        expected = pace_indices(5, CLIP_LEN, 2.0)
        assert np.array_equal(d.indices, expected[::-1] if d.pace < 0 else expected)
    assert all(d.pace == -2.0 for d in back)


def test_backwards_extra_classes_are_k_plus_the_label():
    rng = np.random.default_rng(1)
    draws = [maybe_backwards(_draw(label=3, pace=4.0), "extra_classes", 1.0, 4, rng)]
    draws += [maybe_backwards(_draw(label=0, pace=1.0), "extra_classes", 0.0, 4, rng)]
    assert (draws[0].label, draws[0].pace) == (7, -4.0)
    assert np.all(np.diff(draws[0].indices) == -4)
    assert (draws[1].label, draws[1].pace) == (0, 1.0)


def test_forward_only_runs_draw_the_clips_they_drew_before():
    """Mode none consumes no random number: the next draw is the one it always was."""
    a, b = np.random.default_rng(7), np.random.default_rng(7)
    for _ in range(20):
        plain = draw_pace_clip(200, CLIP_LEN, [1, 2, 3, 4], a)
        same = maybe_backwards(draw_pace_clip(200, CLIP_LEN, [1, 2, 3, 4], b), "none", 1.0, 4, b)
        assert plain.label == same.label and np.array_equal(plain.indices, same.indices)
    assert a.random() == b.random()
    with pytest.raises(ValueError, match="backwards"):
        maybe_backwards(_draw(), "sideways", 0.5, 4, a)


@pytest.mark.parametrize(
    ("mode", "classes"), [("none", 4), ("same_class", 4), ("extra_classes", 8)]
)
@pytest.mark.parametrize("name", ["pace", "pace_contrastive"])
def test_heads_have_one_class_per_label(name, mode, classes):
    import torch

    cfg = PretextConfig(name=name, backwards=mode)
    task = build_pretext(cfg, CLIP_LEN)
    head = task.build_head(32)
    out = head(torch.zeros(2, 32))
    logits = out[0] if isinstance(out, tuple) else out
    assert logits.shape == (2, classes)


def test_config_checks_backwards():
    with pytest.raises(ConfigError, match="pretext.backwards"):
        load_config(None, ["pretext.backwards=reverse"])
    with pytest.raises(ConfigError, match="pretext.backwards_prob"):
        load_config(None, ["pretext.backwards=same_class", "pretext.backwards_prob=1.5"])
    # the thesis's pace sets: slow-fast and pace step 2
    assert load_config(None, ["pretext.paces=[0.3333333333,0.5,1,2,3]"]).pretext.paces[0] < 1
    assert load_config(None, ["pretext.paces=[1,3,5,7]"]).pretext.paces == [1, 3, 5, 7]


@pytest.fixture(scope="module")
def bframes_video(tmp_path_factory):
    """One 120-frame MPEG-4 AVI with B-frames whose frames carry their own index."""
    root = tmp_path_factory.mktemp("variants")
    frames = index_pattern_frames(120, 48, 64)
    write_video(root / "c" / "v.avi", frames, fps=25.0, codec="mpeg4-bframes", gop=12)
    table = build_manifest(list_entries(str(root), "folder"), use_ray=False)
    return dict(table.to_pylist()[0], epoch=0)


@pytest.mark.parametrize(
    ("paces", "backwards"),
    [
        ([1, 3, 5, 7], "none"),  # pace step 2 (table 4.3)
        ([1 / 3, 0.5, 1, 2, 3], "none"),  # slow-fast (table 4.2)
        ([1, 2, 3, 4], "same_class"),  # random backwards (table 4.4)
        ([1, 2, 3, 4], "extra_classes"),  # +-p, 8 classes (table 4.4)
    ],
    ids=["step2", "slow-fast", "backwards-same", "backwards-extra"],
)
def test_sampled_clips_hold_exactly_the_frames_of_their_label(bframes_video, paces, backwards):
    cfg = PretextConfig(paces=[float(p) for p in paces], backwards=backwards)
    spec = SamplerSpec(
        pretext=build_pretext(cfg, CLIP_LEN),
        settings=AugmentSettings(enabled=False, resize=[]),
        seed=3,
        train=True,
    )
    seen_back, labels = 0, set()
    for draw in range(24):
        s = sample_row(dict(bframes_video, draw=draw), spec)
        assert s["valid"] is True
        decoded = [read_index_pattern(f) for f in s["clip"]]
        assert decoded == s["indices"].tolist()
        label, pace = int(s["label"]), float(s["pace"])
        labels.add(label)
        k = len(paces)
        forward_label = label - k if label >= k else label
        assert paces[forward_label] == pytest.approx(abs(pace))
        if backwards == "extra_classes":
            assert (label >= k) == (pace < 0)
        else:
            assert label < k
        order = decoded[::-1] if pace < 0 else decoded
        assert order == pace_indices(order[0], CLIP_LEN, abs(pace)).tolist()
        seen_back += pace < 0
    if backwards == "none":
        assert seen_back == 0
    else:
        assert 0 < seen_back < 24


def test_preview_shows_pairs_and_backwards_clips(ray_local, tiny_manifest, tmp_path):
    """`rayssl preview` of a contrastive run with backwards clips: both clips of each
    pair saved and drawn, backwards clips with a negative pace and their extra class."""
    import cv2

    from rayssl.cli import main as cli

    out = tmp_path / "preview"
    argv = ["preview", str(tiny_manifest), "--out", str(out), "--num-clips", "3"]
    overrides = ["pretext.backwards=extra_classes", "pretext.backwards_prob=1.0"]
    assert cli([*argv, "--config", "configs/pace_ctr_debug.yaml", *overrides]) == 0
    saved = np.load(out / "clips.npz")
    assert saved["clips2"].shape == saved["clips"].shape == (3, 16, 40, 40, 3)
    assert np.all(saved["paces"] < 0) and np.all(saved["paces2"] < 0)
    assert np.all(saved["labels"] >= 4) and np.all(saved["labels2"] >= 4)
    assert np.all(np.diff(saved["indices"], axis=1) <= 0)  # played backwards
    sheet = cv2.imread(str(out / "preview.png"))
    assert sheet.shape[0] == 2 * 3 * (18 + 64)  # a caption bar + strip per clip of a pair
