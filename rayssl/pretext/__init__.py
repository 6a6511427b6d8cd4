"""Tasks by name: the pretexts, and supervised fine-tuning as one more task (a plain
dict; the training loop never branches on names)."""

from rayssl.pretext.base import ClipPlan, Pretext
from rayssl.pretext.multitask import MultitaskPretext
from rayssl.pretext.pace import PacePretext
from rayssl.pretext.pace_contrastive import PaceContrastivePretext
from rayssl.pretext.statistics import StatisticsPretext
from rayssl.pretext.supervised import SupervisedTask
from rayssl.pretext.videomae import VideoMAEPretext
from rayssl.pretext.vjepa import VJEPAPretext

PRETEXTS: dict[str, type[Pretext]] = {
    "multitask": MultitaskPretext,
    "pace": PacePretext,
    "pace_contrastive": PaceContrastivePretext,
    "statistics": StatisticsPretext,
    "supervised": SupervisedTask,
    "videomae": VideoMAEPretext,
    "vjepa": VJEPAPretext,
}


def build_pretext(cfg, clip_len: int, short_video: str = "resample_pace") -> Pretext:
    """Instantiate the pretext named by `cfg.name` (a PretextConfig)."""
    try:
        cls = PRETEXTS[cfg.name]
    except KeyError:
        raise ValueError(f"unknown pretext {cfg.name!r}; one of {sorted(PRETEXTS)}") from None
    return cls(cfg, clip_len=clip_len, short_video=short_video)


__all__ = [
    "PRETEXTS",
    "ClipPlan",
    "MultitaskPretext",
    "PaceContrastivePretext",
    "PacePretext",
    "Pretext",
    "StatisticsPretext",
    "SupervisedTask",
    "VJEPAPretext",
    "VideoMAEPretext",
    "build_pretext",
]
