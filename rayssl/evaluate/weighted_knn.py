"""The weighted kNN classifier on frozen features (Wu et al. 2018, InstDisc; DINO's
protocol): every video of `query_split` is classified by its k most cosine-similar videos
of `gallery_split`, each voting for its class with weight exp(sim / temperature); top-1
(and top-5) accuracy per layer and per k. The maths are in `rayssl.knn`.

Unlike retrieval (a hit when ANY of the k nearest shares the class), this is a
classifier: one predicted class per query, so it compares with a linear probe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rayssl.config import ConfigError, _check_clips, _check_layers, _in_range
from rayssl.evaluate.registry import (
    Evaluation,
    Outcome,
    RunContext,
    clips_or,
    layers_or,
    register,
    vectors,
)
from rayssl.knn import weighted_knn_accuracy


@dataclass
class KnnSettings:
    """Weighted kNN classifier: `query_split` classified from `gallery_split` (DINO:
    k 20, temperature 0.07, on L2-normalised features)."""

    enabled: bool = False
    layers: list[str] = field(default_factory=list)
    """'' / [] = features.layers."""
    ks: list[int] = field(default_factory=lambda: [10, 20])
    """Neighbours that vote (one result per k)."""
    temperature: float = 0.07
    """Votes are weighted exp(cosine similarity / temperature)."""
    query_split: str = "test"
    gallery_split: str = "train"
    clips: str = ""
    """Clip protocol; '' = features.inference.clips."""

    def validate(self, prefix: str) -> None:
        _check_layers(f"{prefix}.layers", self.layers, allow_empty=True)
        if not self.ks or min(self.ks) < 1 or len(set(self.ks)) != len(self.ks):
            raise ConfigError(f"{prefix}.ks: expected distinct k values >= 1, got {self.ks}")
        _in_range(f"{prefix}.temperature", self.temperature, 1e-6, None)
        if self.query_split == self.gallery_split:
            raise ConfigError(f"{prefix}.query_split: must differ from {prefix}.gallery_split")
        if self.clips:
            _check_clips(f"{prefix}.clips", self.clips)


@register
class WeightedKnn(Evaluation):
    """Weighted kNN accuracy per layer and k: "knn/<layer>/k<k>_top1" (and _top5)."""

    name = "knn"
    settings = KnnSettings
    order = 15
    files = ("knn.txt",)

    def features(self, s: KnnSettings, suite: Any) -> dict[str, list[str]]:
        return {clips_or(s.clips, suite): layers_or(s.layers, suite)}

    def splits(self, s: KnnSettings) -> set[str]:
        return {s.query_split, s.gallery_split}

    def labels(self, s: KnnSettings) -> list[tuple[str, str | None]]:
        return [("knn (query)", s.query_split), ("knn (gallery)", s.gallery_split)]

    def run(self, s: KnnSettings, ctx: RunContext) -> Outcome:
        f = ctx.features.get(clips_or(s.clips, ctx.suite))
        q, g = f.split_mask(s.query_split), f.split_mask(s.gallery_split)
        results: dict[str, float] = {}
        lines = []
        for layer in layers_or(s.layers, ctx.suite):
            cells = []
            for k in s.ks:
                acc = weighted_knn_accuracy(
                    vectors(f, layer)[q],
                    f.labels[q],
                    vectors(f, layer)[g],
                    f.labels[g],
                    k,
                    s.temperature,
                )
                results[f"knn/{layer}/k{k}_top1"] = acc["top1"]
                results[f"knn/{layer}/k{k}_top5"] = acc["top5"]
                cells.append(f"k={k}: top1 {acc['top1']:.3f}, top5 {acc['top5']:.3f}")
            lines.append(f"  {layer}: " + "; ".join(cells))
        head = (
            f"weighted kNN (T={s.temperature}; {int(q.sum())} queries of {s.query_split}, "
            f"{int(g.sum())} of {s.gallery_split} vote)"
        )
        ctx.out.path("knn.txt").write_text("\n".join([head, *lines]) + "\n")
        return Outcome(results, [head, *lines])
