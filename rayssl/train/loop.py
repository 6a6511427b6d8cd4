"""The per-worker training loop run by Ray Train (`TorchTrainer`).

Each worker builds ONE Ray Data pipeline for the run over its shard of every remaining
epoch's draw rows (`rayssl.clips.pipeline.DrawPlan`, `build_run_dataset`), and takes each
epoch's batches from it in turn (`RunStream`): every draw is a function of (seed, video,
epoch, draw), every worker takes the same number of steps, and resuming at epoch e
rebuilds exactly the stream from epoch e on. Metrics are summed over workers with
all-reduce, so epoch numbers are exact, not rank-0 samples.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from rayssl import checkpoint as checkpoint_format
from rayssl import testhooks
from rayssl.checkpoint import (
    BackboneSource,
    EpochProgress,
    backbone_file_payload,
    epoch_progress,
    load_state_strict,
    load_training_state,
    restore_training_state,
    save_training_state,
)
from rayssl.clips.pipeline import (
    SKIP_REASONS,
    TRAIN,
    VAL,
    DrawPlan,
    RunStream,
    build_run_dataset,
    sampler_spec,
)
from rayssl.config import Config
from rayssl.io import storage
from rayssl.pretext import build_pretext
from rayssl.raystart import quiet_ray_data
from rayssl.train.curriculum import EpochVideos, stage_at
from rayssl.train.memory import FullStateModel, FullStateOptimizer, full_state, shard_model
from rayssl.train.monitor import RetrievalMonitor
from rayssl.train.plan import RunPlan
from rayssl.train.prefetch import device_batches
from rayssl.train.schedule import current_lr
from rayssl.train.step import (
    DeviceSettings,
    PretextModel,
    batch_to_device,
    build_model,
    build_optimizer,
    eval_step,
    input_converter,
    place_model,
    train_step,
    unwrap,
)
from rayssl.train.sysmetrics import FIELDS, SystemSampler, as_metrics
from rayssl.train.tracking import PRETRAIN_RUN_TAG, Tracker

#: Rank 0 prints one line per epoch starting with this (the demo shows only these).
PROGRESS_PREFIX = "[rayssl]"


class SkipRateError(RuntimeError):
    """Too many of an epoch's training clips were skipped (`data.max_skip_fraction`)."""


def _check_skip_rate(
    cfg: Config, epoch: int, sums: dict[str, float], skips: dict[str, float], tracker
) -> None:
    """Stop the run when the share of skipped clips passes `data.max_skip_fraction`
    (every worker sees the same reduced sums, so all stop together). The epoch's
    metrics, skip reasons included, are already logged and checkpointed."""
    total = sums.get("num_samples", 0.0)
    skipped = sums.get("num_skipped", 0.0)
    if total <= 0 or skipped / total <= cfg.data.max_skip_fraction:
        return
    reasons = ", ".join(f"{r} {int(n)}" for r, n in sorted(skips.items()) if n)
    tracker.set_tags({"failure": "skip_rate"})
    tracker.finish("FAILED")
    raise SkipRateError(
        f"epoch {epoch + 1}: {int(skipped)} of {int(total)} training clips skipped "
        f"({skipped / total:.0%} > data.max_skip_fraction {cfg.data.max_skip_fraction:.0%}); "
        f"reasons: {reasons or 'unknown'}. Fix or drop those videos (rayssl manifest lists "
        "unreadable ones) or raise data.max_skip_fraction."
    )


def _all_reduce(
    values: dict[str, float], device: torch.device, op: str = "sum"
) -> dict[str, float]:
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return dict(zip(keys, t.tolist(), strict=True))


class _Sums:
    """Per-epoch sums over this worker's batches (reduced over workers at the end)."""

    def __init__(self) -> None:
        # a Counter (missing keys read 0) of float sums; typeshed types Counter values as int
        self.values = cast("dict[str, float]", Counter())
        self.skips: Counter[str] = Counter()

    def add_batch(self, batch: dict[str, np.ndarray], metrics: dict[str, torch.Tensor]) -> None:
        for k, v in metrics.items():
            self.values[k] += float(v)
        valid = np.asarray(batch["valid"], dtype=bool)
        # pad rows only even out the workers' shards: neither samples nor skips
        real = ~np.asarray(batch["pad"], dtype=bool) if "pad" in batch else np.ones_like(valid)
        self.values["num_samples"] += int(real.sum())
        self.values["num_skipped"] += int((~valid & real).sum())
        self.values["num_resampled"] += int(np.asarray(batch["resampled"], dtype=bool).sum())
        for reason in np.asarray(batch["skip_reason"])[~valid & real]:
            self.skips[str(reason)] += 1


def _reduced_progress(state: EpochState, device: torch.device) -> EpochProgress:
    """The epoch's progress over all workers: the draws any of them trained (a max over
    workers) and the metric sums so far (a sum; rank 0 holds what was carried)."""
    done = torch.from_numpy(state.done.astype(np.uint8)).to(device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(done, op=dist.ReduceOp.MAX)
    sums = _all_reduce(
        {**state.sums.values, "wait_s": state.wait_s, "total_s": state.total_s}, device
    )
    skips = _all_reduce({r: state.sums.skips.get(r, 0) for r in SKIP_REASONS}, device)
    return EpochProgress(state.epoch, state.steps, done.cpu().numpy().astype(bool), sums, skips)


def _all_gather_one(value: float, device: torch.device, world: int) -> list[float]:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    out = [torch.zeros_like(t) for _ in range(world)]
    dist.all_gather(out, t)
    return [float(x.item()) for x in out]


def _epoch_metrics(prefix: str, sums: dict[str, float], acc_name: str | None) -> dict[str, float]:
    """An epoch's means; `acc_name` None: the task has no accuracy (masked modelling),
    none is logged (not a flat 0)."""
    n = max(sums.get("num_valid", 0.0), 1.0)
    out = {
        f"{prefix}/loss": sums.get("loss_sum", 0.0) / n,
        **({f"{prefix}/{acc_name}": sums.get("correct", 0.0) / n} if acc_name else {}),
        f"{prefix}/clips": sums.get("num_samples", 0.0),
        f"{prefix}/videos_skipped": sums.get("num_skipped", 0.0),
        f"{prefix}/pace_resampled": sums.get("num_resampled", 0.0),
    }
    # A task's own per-sample sums ("motion_loss_sum" -> "train/motion_loss").
    for key, value in sums.items():
        if key.endswith("_sum") and key != "loss_sum":
            out[f"{prefix}/{key[: -len('_sum')]}"] = value / n
    return out


class EpochState:
    """One worker's progress through an epoch: steps taken (counting those before a
    mid-epoch restart), the draw places it trained since the last checkpoint, its
    metric sums, and the data-wait and wall time. Rank 0 starts from the sums a
    mid-epoch checkpoint carried, so the epoch's reduced sums cover all of it."""

    def __init__(self, epoch: int, n_draws: int, rank: int, resumed: EpochProgress | None):
        self.epoch = epoch
        self.sums = _Sums()
        self.steps = 0
        self.done = np.zeros(n_draws, dtype=bool)
        self.wait_s = 0.0
        self.total_s = 0.0
        if resumed is not None and resumed.epoch == epoch:
            self.steps = resumed.steps
            self.done = resumed.done.copy()
            if rank == 0:
                for k, v in resumed.sums.items():
                    if k == "wait_s":
                        self.wait_s = v
                    elif k == "total_s":
                        self.total_s = v
                    else:
                        self.sums.values[k] += v
                for r, n in resumed.skips.items():
                    self.sums.skips[r] += int(n)
        self.resumed_done = self.done.copy()

    def mark(self, batch: dict[str, np.ndarray]) -> None:
        if "pos" in batch:
            pad = np.asarray(batch.get("pad", np.zeros(len(batch["pos"]), bool)), dtype=bool)
            self.done[np.asarray(batch["pos"])[~pad]] = True


class CheckpointSchedule:
    """When to checkpoint inside an epoch (`train.checkpoint_every_steps` / `_minutes`).

    Every worker must take part in a checkpoint (ray.train.report is collective), so the
    time-based decision is rank 0's clock, shared by an all-reduce each step.
    """

    def __init__(self, cfg: Config, device: torch.device) -> None:
        self.every_steps = cfg.train.checkpoint_every_steps
        self.every_s = cfg.train.checkpoint_every_minutes * 60.0
        self.device = device
        self.last = time.monotonic()

    @property
    def enabled(self) -> bool:
        return bool(self.every_steps or self.every_s)

    def due(self, steps_in_epoch: int) -> bool:
        if self.every_steps and steps_in_epoch % self.every_steps == 0:
            return True
        if not self.every_s:
            return False
        flag = {"due": float(time.monotonic() - self.last >= self.every_s)}
        return _all_reduce(flag, self.device, op="max")["due"] > 0

    def reset(self) -> None:
        self.last = time.monotonic()


def _gather_system(
    sampler: SystemSampler, device: torch.device, world: int, data_wait_frac: float
) -> dict:
    """Every worker's system sample and data-wait share so far this epoch, gathered to
    all (rank 0 logs them)."""
    sample = {**sampler.sample(), "data_wait_frac": data_wait_frac}
    row = torch.tensor([sample[k] for k in FIELDS], dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        rows = [torch.zeros_like(row) for _ in range(world)]
        dist.all_gather(rows, row)
    else:
        rows = [row]
    return as_metrics([r.tolist() for r in rows])


def evaluate(model, batches, settings: DeviceSettings) -> _Sums:
    sums = _Sums()
    for batch in batches:
        sums.add_batch(batch, eval_step(model, batch_to_device(batch, settings), settings))
    return sums


def _initial_backbone(plan: RunPlan, model: PretextModel) -> BackboneSource | None:
    """Load `model.init` (fine-tuning's pre-trained weights, resolved once in the run plan)
    into the backbone. Every worker loads them (DDP would broadcast rank 0's anyway); a
    resumed run then overwrites them with its checkpoint."""
    source, cfg = plan.init, plan.cfg
    if source is None:
        return None
    if source.backbone_state is not None:
        what = f"model.init {cfg.model.init!r} does not fit backbone {cfg.model.backbone}"
        load_state_strict(model.backbone, source.backbone_state, what)
    return source


def init_tags(source: BackboneSource) -> dict[str, str]:
    """MLflow tags of a run initialised from a checkpoint (found with its pre-training)."""
    tags = {"init_checkpoint": storage.redact(source.spec), "init_kind": source.kind}
    if source.pretrain_run_id:
        tags[PRETRAIN_RUN_TAG] = source.pretrain_run_id
    return tags


def progress_line(metrics: dict[str, Any], epochs: int, acc_name: str | None) -> str:
    """One line per epoch for a human watching the job log (rank 0 prints it)."""

    def part(prefix: str) -> str:
        loss = metrics.get(f"{prefix}/loss")
        if loss is None:
            return ""
        acc = metrics.get(f"{prefix}/{acc_name}") if acc_name else None
        return f" | {prefix} loss {loss:.3f}" + (
            f" {acc_name} {acc:.3f}" if acc is not None else ""
        )

    text = f"{PROGRESS_PREFIX} epoch {int(metrics['epoch']) + 1}/{epochs}"
    if "curriculum/stage" in metrics:
        text += (
            f" (curriculum stage {int(metrics['curriculum/stage'])}: "
            f"{int(metrics['curriculum/videos'])} videos)"
        )
    text += part("train") + part("val")
    text += (
        f" | {metrics['train/clips_per_s']:.1f} clips/s, data wait "
        f"{100 * metrics['train/data_wait_frac']:.0f}%"
    )
    if "monitor/retrieval_top1" in metrics:
        text += f" | retrieval top1 {metrics['monitor/retrieval_top1']:.3f}"
    skipped = metrics.get("train/videos_skipped", 0)
    if skipped:
        text += f" | {int(skipped)} clips skipped"
    return text


@dataclass(frozen=True)
class Worker:
    """Where this worker trains: its rank, the world size and its device settings."""

    rank: int
    world: int
    settings: DeviceSettings

    @property
    def device(self) -> torch.device:
        return self.settings.device


def _start_worker(cfg: Config) -> Worker:
    """This Ray Train worker's rank, world and device, with torch set up for them."""
    ctx = ray.train.get_context()
    device = ray.train.torch.get_device()
    if cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)
    if device.type == "cuda":
        # fixed clip shapes: let cuDNN pick the fastest 3D convolution algorithms once
        torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark
    quiet_ray_data(cfg.data.progress_logs)
    torch.manual_seed(cfg.run.seed)
    return Worker(
        ctx.get_world_rank(), ctx.get_world_size(), DeviceSettings.for_device(device, cfg)
    )


class CheckpointManager:
    """Restores the run from Ray Train's checkpoint and reports new ones (after an epoch,
    or in the middle of one: `ray.train.report` is collective, every worker calls it)."""

    def __init__(self, cfg: Config, worker: Worker) -> None:
        self.cfg = cfg
        self.worker = worker
        self.start_epoch = 0
        self.global_step = 0
        self.mlflow_run_id: str | None = None
        self.resumed: EpochProgress | None = None

    def restore(self, model: Any, optimizer, scheduler) -> None:
        """Load Ray Train's checkpoint, if it has one, into the (unwrapped) model."""
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return
        with checkpoint.as_directory() as d:
            saved = load_training_state(d)
        self.start_epoch = restore_training_state(saved, model, optimizer, scheduler)
        self.mlflow_run_id = saved["extra"].get("mlflow_run_id")
        self.global_step = int(saved["extra"].get("global_step", 0))
        self.resumed = epoch_progress(saved)

    def report(
        self, trainer: Trainer, epoch: int, metrics: dict[str, Any], state: EpochState | None
    ) -> None:
        """Report a checkpoint: after epoch `epoch` finished (state None), or in the middle
        of `state.epoch`."""
        sampler_state: dict[str, Any] = {"seed": self.cfg.run.seed, "next_epoch": epoch + 1}
        if state is not None:
            sampler_state["in_epoch"] = _reduced_progress(state, self.worker.device).to_state()
        run_id = trainer.tracker.run_id
        model: Any = unwrap(trainer.model)
        optimizer: Any = trainer.optimizer
        if self.cfg.train.fsdp:  # every worker takes part in gathering the whole state
            model_state, optim_state = full_state(trainer.model, trainer.optimizer)
            model = FullStateModel(trainer.model, model_state)
            optimizer = FullStateOptimizer(trainer.model, trainer.optimizer, optim_state)
        with tempfile.TemporaryDirectory() as d:
            ckpt = None
            if self.worker.rank == 0:
                save_training_state(
                    d,
                    model=model,
                    optimizer=optimizer,
                    scheduler=trainer.scheduler,
                    epoch=epoch,
                    sampler=sampler_state,
                    extra={"mlflow_run_id": run_id, "global_step": trainer.global_step},
                    config=self.cfg.to_dict(),
                )
                ckpt = ray.train.Checkpoint.from_directory(d)
                if state is None and self.cfg.run.log_models == "checkpoints":
                    encoder = cast(PretextModel, unwrap(trainer.model)).encoder
                    trainer.tracker.log_model(encoder, self.cfg, step=epoch + 1)
            ray.train.report({**metrics, "mlflow_run_id": run_id or ""}, checkpoint=ckpt)


class StepMetrics:
    """Every `train.log_every_steps` steps: loss, accuracy, clips/s, data wait and lr
    (rank 0 logs them) with every worker's system sample (a collective: every worker
    samples at the same steps)."""

    def __init__(self, cfg: Config, worker: Worker, tracker: Tracker, acc_name: str | None) -> None:
        self.every = cfg.train.log_every_steps
        self.worker = worker
        self.tracker = tracker
        self.acc_name = acc_name
        self.sampler = SystemSampler(worker.device)
        self.clips, self.t0 = 0, time.perf_counter()

    def start(self) -> None:
        self.clips, self.t0 = 0, time.perf_counter()

    def after_step(
        self, state: EpochState, batch, metrics, global_step: int, lr: float, now: float
    ) -> bool:
        """Count the step's clips; log when due (returns whether it logged)."""
        self.clips += len(batch["valid"]) - int(np.asarray(batch.get("pad", []), bool).sum())
        if global_step % self.every:
            return False
        wait = state.wait_s / max(state.total_s, 1e-9)
        system = _gather_system(self.sampler, self.worker.device, self.worker.world, wait)
        if self.worker.rank == 0:
            n = max(float(metrics["num_valid"]), 1.0)
            step = {
                "step/loss": float(metrics["loss_sum"]) / n,
                **(
                    {f"step/{self.acc_name}": float(metrics["correct"]) / n}
                    if self.acc_name
                    else {}
                ),
                # rank 0's rate times the worker count: an estimate of the global rate
                "step/clips_per_s": self.clips * self.worker.world / max(now - self.t0, 1e-9),
                "step/data_wait_frac": wait,
                "step/lr": lr,
            }
            self.tracker.log_metrics({**step, **system}, step=global_step)
        self.clips, self.t0 = 0, now
        return True


class EpochMetrics:
    """An epoch's metrics: the workers' sums reduced, the training and validation
    figures, skip counts, the node's Ray memory; rank 0 logs them and prints a line."""

    def __init__(self, cfg: Config, worker: Worker, tracker: Tracker, acc_name: str | None) -> None:
        self.cfg = cfg
        self.worker = worker
        self.tracker = tracker
        self.acc_name = acc_name

    def train(self, state: EpochState, lr: float) -> tuple[dict[str, Any], dict, dict]:
        """(metrics, reduced sums, reduced skips) of the epoch's training part."""
        device, world = self.worker.device, self.worker.world
        sums = {**state.sums.values, "wait_s": state.wait_s, "total_s": state.total_s}
        reduced = _all_reduce(sums, device)
        metrics: dict[str, Any] = _epoch_metrics("train", reduced, self.acc_name)
        metrics.update(
            {
                "epoch": state.epoch,
                "lr": lr,
                "train/clips_per_s": reduced["num_samples"] / max(reduced["total_s"] / world, 1e-9),
                "train/data_wait_frac": reduced["wait_s"] / max(reduced["total_s"], 1e-9),
            }
        )
        skips = _all_reduce({r: state.sums.skips.get(r, 0) for r in SKIP_REASONS}, device)
        metrics.update({f"train/skipped_{r}": n for r, n in skips.items() if n})
        return metrics, reduced, skips

    def validation(self, sums: _Sums) -> dict[str, float]:
        return _epoch_metrics(
            "val", _all_reduce(dict(sums.values), self.worker.device), self.acc_name
        )

    def node_memory(self, sampler: SystemSampler) -> dict[str, float]:
        rss = _all_gather_one(sampler.ray_node_rss_mb(), self.worker.device, self.worker.world)
        return {f"system/worker{r}/node_ray_rss_mb": v for r, v in enumerate(rss) if v >= 0}

    def publish(self, epoch: int, metrics: dict[str, Any]) -> None:
        if self.worker.rank != 0:
            return
        self.tracker.log_metrics(metrics, step=epoch)
        # Not print(): Ray Train's patched print both logs and tees, doubling the line.
        sys.stdout.write(progress_line(metrics, self.cfg.optim.epochs, self.acc_name) + "\n")
        sys.stdout.flush()


class Validator:
    """The validation part of each epoch (`data.val_split`): the same draws every epoch,
    taken from the run's stream after the epoch's training draws."""

    def __init__(self, plan: DrawPlan, worker: Worker) -> None:
        self.rows = plan.val_rows()
        self.worker = worker

    @property
    def enabled(self) -> bool:
        return self.rows is not None

    def run(self, model, stream: RunStream, epoch: int) -> _Sums:
        assert self.rows is not None
        return evaluate(model, stream.batches(epoch, VAL, self.rows.num_rows), self.worker.settings)


#: A worker's pipeline is rebuilt at the first epoch boundary after this many draw rows:
#: one Ray Data execution keeps per-block state for as long as it runs (measured: the
#: train worker grew ~20 MB per 216-row epoch when one execution lasted the whole run,
#: docs/PERFORMANCE.md section 6), and an execution that ends frees it.
ROWS_PER_STREAM = 2048


class TrainData:
    """A worker's data for the run: the manifest's usable videos, the curriculum order,
    the draw plan of the remaining epochs and the stream that delivers them (one Ray
    Data execution for as many whole epochs as fit in `ROWS_PER_STREAM` rows)."""

    def __init__(self, plan: RunPlan, worker: Worker, pretext, checkpoints: CheckpointManager):
        cfg = self.cfg = plan.cfg
        self.videos = plan.videos  # in curriculum order when the curriculum is on
        self.ordered = plan.videos if cfg.curriculum.enabled else None
        self.batch_size = max(1, cfg.train.batch_size // worker.world)
        self.plan = _draw_plan(cfg, worker, self, checkpoints, plan.val_videos)
        self.spec = sampler_spec(cfg.data, pretext, cfg.run.seed, True, plan.options)
        self.stream: RunStream | None = None
        self.stream_end = -1  # the first epoch the current stream does not cover

    def stream_for(self, epoch: int) -> RunStream:
        """The stream that delivers `epoch` (a new one after the current one's last)."""
        if self.stream is None or epoch >= self.stream_end:
            self.close()
            self.stream_end = self._segment_end(epoch)
            segment = replace(self.plan, start_epoch=epoch, epochs=self.stream_end)
            val_spec = replace(self.spec, train=False)
            dataset = build_run_dataset(segment, self.spec, val_spec, self.cfg.data)
            prefetch = self.cfg.data.prefetch_batches * self.batch_size
            self.stream = RunStream(dataset, self.batch_size, prefetch)
        return self.stream

    def _segment_end(self, epoch: int) -> int:
        val_rows = self.plan.val_rows()
        per_epoch_val = val_rows.num_rows if val_rows is not None else 0
        rows, end = 0, epoch
        while end < self.plan.epochs and (end == epoch or rows < ROWS_PER_STREAM):
            rows += self.plan.train_rows(end).num_rows + per_epoch_val
            end += 1
        return end

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
        self.stream = None

    def stage_metrics(self, cfg: Config, epoch: int) -> dict[str, float]:
        """The curriculum's stage of `epoch` (a function of the epoch: a resumed run
        lands in its stage)."""
        if self.ordered is None:
            return {}
        stage, fraction = stage_at(cfg.curriculum, epoch)
        return {
            "curriculum/stage": stage,
            "curriculum/fraction": fraction,
            "curriculum/videos": self.plan.epoch_videos(epoch).num_rows,
        }


def _draw_plan(
    cfg: Config, worker: Worker, data: TrainData, checkpoints: CheckpointManager, val_videos
) -> DrawPlan:
    resumed, ordered = checkpoints.resumed, data.ordered
    return DrawPlan(
        ordered if ordered is not None else data.videos,
        cfg.data.clips_per_video,
        cfg.run.seed,
        worker.rank,
        worker.world,
        checkpoints.start_epoch,
        cfg.optim.epochs,
        curriculum=EpochVideos(ordered, cfg.curriculum) if ordered is not None else None,
        resumed_epoch=resumed.epoch if resumed is not None else -1,
        resumed_done=resumed.done if resumed is not None else None,
        resumed_steps=resumed.steps if resumed is not None else 0,
        max_steps=cfg.train.max_steps_per_epoch,
        batch_size=data.batch_size,
        val_videos=val_videos,
        val_clips_per_video=cfg.data.val_clips_per_video,
    )


class Trainer:
    """One Ray Train worker's pre-training: the model and optimizer, and the named parts
    that train it — `checkpoints` (restore, report), `data` (the run's one stream),
    `steps` and `epochs` (metrics), `validator`, `monitor` (retrieval, rank 0) and
    `schedule` (mid-epoch checkpoints)."""

    def __init__(self, plan: RunPlan, commit: str = "") -> None:
        self.run_plan = plan
        self.cfg = cfg = plan.cfg
        self.worker = _start_worker(cfg)
        self.pretext = build_pretext(cfg.pretext, cfg.data.clip_len, cfg.data.short_video)
        self.acc_name = self.pretext.accuracy_name
        model: torch.nn.Module = build_model(cfg, self.pretext)
        self.checkpoints = CheckpointManager(cfg, self.worker)
        if cfg.train.fsdp:
            init = _initial_backbone(plan, cast(PretextModel, model))
            self.model: torch.nn.Module = _sharded(
                cast(PretextModel, model), self.worker.settings, cfg
            )
            # the optimiser over the sharded parameters; the state restored whole
            self.optimizer, self.scheduler = build_optimizer(self.model, cfg)
            self.checkpoints.restore(
                FullStateModel(self.model),
                FullStateOptimizer(self.model, self.optimizer),
                self.scheduler,
            )
        else:
            self.optimizer, self.scheduler = build_optimizer(model, cfg)
            init = _initial_backbone(plan, cast(PretextModel, model))
            self.checkpoints.restore(model, self.optimizer, self.scheduler)
            model = place_model(cast(PretextModel, model), self.worker.settings, cfg)
            self.model = ray.train.torch.prepare_model(model, move_to_device=False)
        self.global_step = self.checkpoints.global_step
        rank0 = self.worker.rank == 0
        run_id = self.checkpoints.mlflow_run_id
        self.tracker = Tracker(cfg, enabled=rank0, run_id=run_id, commit=commit)
        if run_id is None and init is not None:
            self.tracker.set_tags(init_tags(init))
        monitored = plan.monitor_videos
        self.monitor = RetrievalMonitor(cfg, monitored) if monitored is not None and rank0 else None
        self.data = TrainData(plan, self.worker, self.pretext, self.checkpoints)
        self.validator = Validator(self.data.plan, self.worker)
        self.steps = StepMetrics(cfg, self.worker, self.tracker, self.acc_name)
        self.epochs = EpochMetrics(cfg, self.worker, self.tracker, self.acc_name)
        self.schedule = CheckpointSchedule(cfg, self.worker.device)
        self.steps_in_epoch = 1  # set by run_epoch

    def fit(self) -> None:
        """Train the remaining epochs, then log the backbone (rank 0)."""
        self._log_start()
        try:
            for epoch in range(self.checkpoints.start_epoch, self.cfg.optim.epochs):
                self.run_epoch(epoch)
        finally:
            self.data.close()  # the run's pipeline stops with the loop, however it ends
        if self.cfg.train.fsdp:  # the whole state, gathered from every worker
            model_state, _ = full_state(self.model, self.optimizer)
            if self.worker.rank == 0:
                plain = build_model(self.cfg, self.pretext)
                plain.load_state_dict(model_state)
                self._log_backbone(plain.encoder)
        elif self.worker.rank == 0:
            self._log_backbone(cast(PretextModel, unwrap(self.model)).encoder)

    def _log_start(self) -> None:
        if self.worker.rank != 0:
            return
        start = {
            "data/videos": self.data.videos.num_rows,
            "data/start_epoch": self.checkpoints.start_epoch,
            **(self.run_plan.bad_counts or {}),
        }
        if self.checkpoints.resumed is not None:
            start["data/start_step_in_epoch"] = self.checkpoints.resumed.steps
        self.tracker.log_metrics(start, step=self.checkpoints.start_epoch)

    def _log_backbone(self, backbone: torch.nn.Module) -> None:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "backbone.pt"
            extra = {"mlflow_run_id": self.tracker.run_id or "", "config": self.cfg.to_dict()}
            checkpoint_format.save(backbone_file_payload(backbone, self.cfg.model, extra), path)
            self.tracker.log_file(path, "weights")
        if self.cfg.run.log_models == "end":  # "checkpoints": the last one logged it
            self.tracker.log_model(backbone, self.cfg, step=self.cfg.optim.epochs)
        self.tracker.finish()

    def run_epoch(self, epoch: int) -> None:
        """Train, validate, monitor, log and checkpoint one epoch."""
        state = self._epoch_state(epoch)
        lr = current_lr(self.optimizer)
        n_rows = self.data.plan.train_rows(epoch).num_rows
        end_step = state.steps + -(-n_rows // self.data.batch_size)
        if self.cfg.train.max_steps_per_epoch:
            end_step = min(end_step, self.cfg.train.max_steps_per_epoch)
        self.steps_in_epoch = max(end_step, 1)  # a per-step schedule's epoch length
        if not state.done.all():
            batches = self.data.stream_for(epoch).batches(epoch, TRAIN, n_rows)
            self.train(state, batches, end_step=end_step)
        self.scheduler.step()
        metrics, reduced, skips = self.epochs.train(state, lr)
        metrics.update(self.data.stage_metrics(self.cfg, epoch))
        if self.validator.enabled:
            vsums = self.validator.run(self.model, self.data.stream_for(epoch), epoch)
            metrics.update(self.epochs.validation(vsums))
        if self.monitor is not None and self.monitor.due(epoch):
            encoder = cast(PretextModel, unwrap(self.model)).encoder
            metrics.update(self.monitor.run(encoder, self.worker.device))
        metrics.update(self.epochs.node_memory(self.steps.sampler))
        self.epochs.publish(epoch, metrics)
        self.checkpoints.report(self, epoch, metrics, None)
        self.schedule.reset()
        testhooks.maybe_pause_after_epoch(epoch, self.worker.rank)
        _check_skip_rate(self.cfg, epoch, reduced, skips, self.tracker)

    def _epoch_state(self, epoch: int) -> EpochState:
        n_draws = self.data.plan.epoch_videos(epoch).num_rows * self.cfg.data.clips_per_video
        resumed = self.checkpoints.resumed
        state = EpochState(epoch, n_draws, self.worker.rank, resumed)
        if resumed is not None and resumed.epoch == epoch and self.worker.rank == 0:
            sys.stdout.write(
                f"{PROGRESS_PREFIX} epoch {epoch + 1}: resuming after "
                f"{int(resumed.done.sum())} of {n_draws} draws ({resumed.steps} steps)\n"
            )
        return state

    def train(self, state: EpochState, host_batches, end_step: int) -> None:
        """Train over one epoch's batches, updating `state` (mid-epoch checkpoints when
        `schedule` says one is due, but not at the epoch's last step: the epoch-end one
        follows at once)."""
        cap = self.cfg.train.max_steps_per_epoch
        if cap:
            end_step = min(end_step, cap)
        t_epoch = time.perf_counter() - state.total_s
        t_last = time.perf_counter()
        self.steps.start()
        settings = self.worker.settings
        batches = device_batches(
            host_batches, settings.device, input_converter(settings), self.cfg.train.device_prefetch
        )
        for batch, on_device in batches:
            if cap and state.steps >= cap:
                break
            state.wait_s += time.perf_counter() - t_last
            metrics = self._step(state, batch, on_device)
            t_last = time.perf_counter()
            state.total_s = t_last - t_epoch
            lr = current_lr(self.optimizer)
            if self.steps.after_step(state, batch, metrics, self.global_step, lr, t_last):
                t_last = time.perf_counter()  # logging's time is not data wait
            due = self.schedule.enabled and state.steps < end_step
            if due and self.schedule.due(state.steps):
                self._mid_epoch_checkpoint(state)
                t_last = time.perf_counter()  # the checkpoint's time is not data wait
        state.total_s = time.perf_counter() - t_epoch

    def _step(self, state: EpochState, batch, on_device) -> dict[str, torch.Tensor]:
        """One training step on `batch`; counts it in `state` and the trace hook."""
        testhooks.maybe_kill_worker(state.epoch, state.steps, self.worker.rank)
        if getattr(self.scheduler, "per_step", False):  # warmup_cosine: lr set every step
            self.scheduler.at(state.epoch, state.steps, self.steps_in_epoch)
        metrics = train_step(self.model, on_device, self.optimizer, self.worker.settings)
        if self.worker.device.type == "cuda":
            torch.cuda.synchronize(self.worker.device)
        state.sums.add_batch(batch, metrics)
        state.mark(batch)
        if testhooks.tracing():
            node = ray.get_runtime_context().get_node_id()
            testhooks.trace_step(
                batch, node, state.epoch, state.steps, self.global_step, self.worker.rank
            )
        state.steps += 1
        self.global_step += 1
        return metrics

    def _mid_epoch_checkpoint(self, state: EpochState) -> None:
        t0 = time.perf_counter()
        # epoch = the last finished one: resuming starts at state.epoch, with its progress
        progress = {"epoch_in_progress": state.epoch, "step": self.global_step}
        self.checkpoints.report(self, state.epoch - 1, progress, state)
        self.schedule.reset()
        if self.worker.rank == 0:
            self.tracker.log_metrics(
                {
                    "checkpoint/steps_in_epoch": state.steps,
                    "checkpoint/seconds": time.perf_counter() - t0,
                },
                step=self.global_step,
            )


def _sharded(model: PretextModel, settings: DeviceSettings, cfg: Config) -> PretextModel:
    """`model` placed on the device and sharded over the workers (`train.fsdp`)."""
    model = place_model(model, settings, cfg)
    return cast(PretextModel, shard_model(model, settings.device))


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry: `loop_config` = {"plan": RunPlan (or its object ref), "commit": str}."""
    plan = loop_config["plan"]
    if isinstance(plan, ray.ObjectRef):
        plan = ray.get(plan)
    Trainer(plan, commit=loop_config.get("commit", "")).fit()
