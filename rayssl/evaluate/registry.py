"""What an evaluation of the suite is, and the registry of them by section name.

An evaluation (`Evaluation`) declares:
  * `name`: its section of the suite YAML (`retrieval:`, `linear:`, ...) and the first
    part of its result keys; `settings`: the dataclass that section parses into (with an
    `enabled` flag and a `validate(prefix)` method, like every config section);
  * what it needs before anything is extracted: the features (`features`: clip protocol
    -> layers), the manifest splits (`splits`; None = every video), the labelled splits
    (`labels`), and the other paths it reads (`paths`, checked to exist first);
  * how it runs (`run`, given a `RunContext`) and the files it writes (`files`), each
    named through `RunFiles.path` so only this run's files are logged;
  * optionally, how its settings depend on the backbone (`bind`: e.g. the attentive
    probe's default token layer) and which config keys name its layers (`layer_keys`:
    the suite checks them against the backbone's `feature_layers` first).

`register` adds one to `EVALUATIONS`; `rayssl.evaluate.suite` builds the suite's config
class from the registry and loops over it (it never branches on an evaluation's name).
Adding an evaluation: one module with its settings and its `Evaluation`, registered, and
the section in the suite YAMLs.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from rayssl.config import ModelConfig
from rayssl.io import storage

if TYPE_CHECKING:  # types only: the registry stays importable without torch or Ray
    import pyarrow as pa

    from rayssl.checkpoint import BackboneSource


class RunFiles:
    """The files one evaluation writes in its output folder DIR: each is named through
    `path`, which keeps it inside DIR (`storage.child`) and records it, so only the files
    this run wrote are logged to MLflow (not whatever else DIR holds)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.written: list[Path] = []

    def path(self, name: str) -> Path:
        """DIR/`name`, recorded as written by this run."""
        path = Path(storage.child(str(self.root), name))
        if path not in self.written:
            self.written.append(path)
        return path


@dataclass
class Outcome:
    """What one evaluation returns: results ("<name>/<layer>/<metric>" -> number in
    [0, 1]) and the lines of its part of the report."""

    results: dict[str, float] = field(default_factory=dict)
    report: list[str] = field(default_factory=list)


#: Runs a training job of a config: (summary, the config as run). `rayssl.launch.run_training`,
#: passed down by the entry point (the launcher sits above the evaluations).
TrainingRunner = Callable[[Any], tuple[dict[str, Any], Any]]


@dataclass
class RunContext:
    """Everything an evaluation may use while it runs."""

    suite: Any
    """The whole `EvalSuite` (data, model, run, features and every section)."""
    features: Any
    """`features.get(clips) -> VideoOutputs`: extracted once per clip protocol, with the
    union of the layers the evaluations declared."""
    backbone: Any
    table: pa.Table
    """The manifest rows some enabled evaluation needs (`needed_videos`)."""
    source: BackboneSource
    out: RunFiles
    suite_dir: Path | None = None
    """The suite file's folder (resolves relative configs named in it)."""
    train: TrainingRunner | None = None
    """Launches a training job (fine-tuning); None where the entry point cannot."""


class Evaluation(abc.ABC):
    """One evaluation of the suite (see the module doc). Subclasses set `name` and
    `settings`, and override `run` and what they need."""

    name: ClassVar[str]
    settings: ClassVar[type]
    order: ClassVar[int] = 100
    """Evaluations run (and their sections are listed) by increasing order."""
    files: ClassVar[tuple[str, ...]] = ()
    """The files `run` may write in DIR (besides the features Parquet of the suite)."""

    def features(self, s: Any, suite: Any) -> dict[str, list[str]]:
        """Clip protocol -> the layers `run` reads through `RunContext.features`."""
        return {}

    def splits(self, s: Any) -> set[str] | None:
        """The manifest splits whose videos `run` uses (None = every video)."""
        return set()

    def labels(self, s: Any) -> list[tuple[str, str | None]]:
        """(what, split) pairs that must hold labelled videos (split None = any)."""
        return []

    def paths(self, s: Any, suite_dir: Path | None) -> dict[str, str]:
        """Other paths `run` reads, by key of its section (checked before extraction)."""
        return {}

    def bind(self, s: Any, backbone: Any) -> Any:
        """Settings `s` made concrete for `backbone` (e.g. a default layer chosen from its
        `feature_layers`), before its layers are checked; unchanged by default."""
        return s

    def layer_keys(self, s: Any, suite: Any) -> dict[str, list[str]]:
        """Config key -> the layers `run` reads under it, each checked against the
        backbone's `feature_layers` before anything is extracted. By default the layers
        of `features`, under "<name>.layers" (or "features.layers" when the section has
        an empty `layers`, the suite's default)."""
        layers = list(dict.fromkeys(x for ls in self.features(s, suite).values() for x in ls))
        own = getattr(s, "layers", None)
        key = "features.layers" if own is not None and not own else f"{self.name}.layers"
        return {key: layers} if layers else {}

    @abc.abstractmethod
    def run(self, s: Any, ctx: RunContext) -> Outcome:
        """Run on the suite's features (`ctx`): the results and report lines."""


#: Section name -> evaluation, in registration order (`ordered()` sorts by `order`).
EVALUATIONS: dict[str, Evaluation] = {}

#: Top-level suite sections that are not evaluations.
RESERVED = ("data", "model", "run", "features")


def register(cls: type[Evaluation]) -> type[Evaluation]:
    """Class decorator: add an evaluation under its `name` (one name, one class)."""
    name = getattr(cls, "name", "")
    if not name.isidentifier() or name in RESERVED:
        raise ValueError(f"evaluation {cls.__name__}: bad section name {name!r}")
    if not hasattr(cls, "settings") or not hasattr(cls.settings(), "enabled"):
        raise ValueError(f"evaluation {name}: its settings need an `enabled` field")
    known = EVALUATIONS.get(name)
    if known is not None and type(known) is not cls:
        raise ValueError(f"evaluation {name!r} is already registered ({type(known).__name__})")
    EVALUATIONS[name] = cls()
    return cls


def ordered() -> list[Evaluation]:
    """The registered evaluations by `order` (then registration)."""
    return sorted(EVALUATIONS.values(), key=lambda e: e.order)


def vectors(f: Any, layer: str) -> Any:
    """Per-video vectors (N, D) of `layer` in features `f` (`VideoOutputs`): a token
    layer's (N, G, D) is averaged over its tokens, so the vector evaluations (retrieval,
    kNN, linear probe, similarity) take any layer."""
    x = f.outputs[layer]
    return x.mean(axis=1) if x.ndim == 3 else x


def layers_or(own: list[str], suite: Any) -> list[str]:
    """An evaluation's own layers, or the suite's `features.layers`."""
    return list(own) or list(suite.features.layers)


def clips_or(own: str, suite: Any) -> str:
    """An evaluation's own clip protocol, or the suite's `features.inference.clips`."""
    return own or suite.features.inference.clips


def config_path(path: str, suite_dir: Path | None) -> Path:
    """A config named in a suite: as given (absolute, or relative to the current folder),
    else relative to the suite file's folder, else to the repository root."""
    p = Path(path)
    candidates = [p]
    if not p.is_absolute():
        if suite_dir is not None:
            candidates += [suite_dir / p, suite_dir.parent / p]
        candidates.append(Path(__file__).resolve().parents[2] / p)
    return next((c for c in candidates if c.exists()), p)


def backbone_fields(model: ModelConfig) -> dict[str, Any]:
    """The fields of a model config that make its backbone (for random-init baselines)."""
    return {"backbone": model.backbone, "width": model.width}
