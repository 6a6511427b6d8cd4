"""Contrastive objectives of the pace chapter (thesis Eq. 4.3, 4.4, Fig. 4.4): masks,
the masked InfoNCE against a loop over the formula, gradients, and the cross-rank
gather against one process holding the whole batch."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from rayssl.pretext.contrastive_loss import (
    gather_for_contrastive,
    gather_with_grad,
    masked_info_nce,
    same_context_mask,
    same_pace_mask,
)


def _pairs(mask: torch.Tensor) -> set[tuple[int, int]]:
    return {(int(i), int(j)) for i, j in mask.nonzero().tolist()}


# ------------------------------------------------------------------------ Fig. 4.4
def test_same_context_mask_fig_4_4a():
    # clips A, A', B, B' (A, A' from video A_ori; B, B' from B_ori)
    A, A2, B, B2 = range(4)
    mask = same_context_mask(torch.tensor([7, 7, 3, 3]))
    assert mask.dtype == torch.bool and mask.shape == (4, 4)
    assert _pairs(mask) == {(A, A2), (A2, A), (B, B2), (B2, B)}


def test_same_pace_mask_fig_4_4b():
    # clips A, B, C, D of four videos, pace(B) = pace(C) = pace(D) != pace(A)
    A, B, C, D = range(4)
    mask = same_pace_mask(torch.tensor([1, 3, 3, 3]))
    assert _pairs(mask) == {(B, C), (B, D), (C, B), (C, D), (D, B), (D, C)}
    assert not mask[A].any() and not mask[:, A].any()  # A: no positive
    assert not mask.diagonal().any()


def test_fig_4_4b_loss_by_hand():
    """Fig. 4.4(b): A is no anchor; B, C, D each have two positives among three others."""
    z = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    s = z @ z.t()  # the thesis's sim: dot product, no temperature
    mask = same_pace_mask(torch.tensor([1, 3, 3, 3]))
    terms = {
        (i, p): -(s[i, p] - torch.logsumexp(s[i, [k for k in range(4) if k != i]], 0))
        for i, p in _pairs(mask)
    }
    per_anchor = {i: [t for (a, _), t in terms.items() if a == i] for i in (1, 2, 3)}
    mean = sum(sum(ts) / 2 for ts in per_anchor.values()) / 3
    literal = sum(terms.values()) / 4  # Eq. 4.4: 1/N sum_{i,j}, N = 4 clips
    for reduction, expected in (("mean", mean), ("sum", literal)):
        loss, m = masked_info_nce(z, mask, 1.0, normalize=False, positive_reduction=reduction)
        torch.testing.assert_close(loss, expected)
        assert m["num_anchors"] == 3 and m["num_valid"] == 4


# ------------------------------------------------------------- loop-based reference
def _reference(z, pos, tau, valid, normalize, reduction):
    """The formula, term by term, in Python floats."""
    n = len(z)
    rows = [list(map(float, r)) for r in z]
    if normalize:
        rows = [[x / max(math.sqrt(sum(y * y for y in r)), 1e-12) for x in r] for r in rows]

    def s(i, k):
        return sum(a * b for a, b in zip(rows[i], rows[k], strict=True)) / tau

    total, correct, anchors = 0.0, 0, 0
    for i in range(n):
        if not valid[i]:
            continue
        cands = [k for k in range(n) if k != i and valid[k]]
        positives = [p for p in cands if pos[i][p]]
        if not positives:
            continue
        anchors += 1
        denom = sum(math.exp(s(i, k)) for k in cands)
        terms = [-math.log(math.exp(s(i, p)) / denom) for p in positives]
        total += sum(terms) / len(terms) if reduction == "mean" else sum(terms)
        correct += int(max(cands, key=lambda k: s(i, k)) in positives)
    num_valid = sum(bool(v) for v in valid)
    loss = total / max(anchors if reduction == "mean" else num_valid, 1)
    return loss, total, correct, anchors, num_valid


def _random_case(seed: int, n: int = 12, d: int = 6):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    ids = torch.randint(0, 4, (n,), generator=g)
    ids[0], ids[1] = 100, 100  # row 0's only positive is row 1 ...
    valid = torch.rand(n, generator=g) > 0.2
    valid[0], valid[1] = True, False  # ... which is a placeholder: row 0 has none
    ids[2] = 101  # row 2: no positive at all
    valid[2] = True
    return z, ids, valid


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    ("tau", "normalize"), [(0.07, True), (0.5, True), (1.0, True), (1.0, False)]
)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("mask_fn", [same_context_mask, same_pace_mask])
def test_masked_info_nce_matches_formula(seed, tau, normalize, reduction, mask_fn):
    z, ids, valid = _random_case(seed)
    mask = mask_fn(ids)
    loss, m = masked_info_nce(
        z, mask, tau, valid, normalize=normalize, positive_reduction=reduction
    )
    ref_loss, ref_total, ref_correct, ref_anchors, ref_valid = _reference(
        z, mask.tolist(), tau, valid.tolist(), normalize, reduction
    )
    assert ref_anchors < int(valid.sum())  # the case has valid non-anchors
    assert loss.item() == pytest.approx(ref_loss, rel=1e-9)
    assert m["loss_sum"].item() == pytest.approx(ref_total, rel=1e-9)
    assert m["correct"].item() == ref_correct
    assert m["num_anchors"].item() == ref_anchors
    assert m["num_valid"].item() == ref_valid
    # float32 and bfloat16 inputs give the same loss (computed in float32)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 5e-2)):
        lo, _ = masked_info_nce(
            z.to(dtype), mask, tau, valid, normalize=normalize, positive_reduction=reduction
        )
        assert lo.dtype == torch.float32
        assert lo.item() == pytest.approx(ref_loss, rel=tol)


def test_float32_under_autocast():
    z, ids, valid = _random_case(6)
    z = z.float()
    mask = same_context_mask(ids)
    ref, _ = masked_info_nce(z, mask, 0.07, valid)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = masked_info_nce(z, mask, 0.07, valid)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)


def test_placeholders_do_not_leak():
    z, ids, valid = _random_case(3)
    mask = same_pace_mask(ids)
    z1 = z.clone().requires_grad_(True)
    loss1, _ = masked_info_nce(z1, mask, 0.2, valid)
    loss1.backward()
    z2 = z.clone()
    z2[~valid] = float("nan")
    z2.requires_grad_(True)
    loss2, _ = masked_info_nce(z2, mask, 0.2, valid)
    loss2.backward()
    assert loss2.item() == pytest.approx(loss1.item(), rel=1e-12)
    torch.testing.assert_close(z2.grad, z1.grad)
    assert (z1.grad[~valid] == 0).all() and torch.isfinite(z1.grad).all()


def test_no_anchor_is_zero_and_differentiable():
    z = torch.randn(4, 3, requires_grad=True)
    loss, m = masked_info_nce(z, same_context_mask(torch.arange(4)), 0.1)
    assert loss.item() == 0.0 and m["num_anchors"] == 0
    loss.backward()
    assert z.grad is not None and (z.grad == 0).all()


def test_metric_rows_partition_sums_to_total():
    z, ids, valid = _random_case(4)
    mask = same_context_mask(ids)
    _, full = masked_info_nce(z, mask, 0.3, valid)
    half = torch.arange(len(z)) < 5
    _, a = masked_info_nce(z, mask, 0.3, valid, metric_rows=half)
    _, b = masked_info_nce(z, mask, 0.3, valid, metric_rows=~half)
    for k in full:
        torch.testing.assert_close(a[k] + b[k], full[k])


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("normalize", [True, False])
def test_gradcheck(reduction, normalize):
    z, ids, valid = _random_case(5, n=7, d=3)
    mask = same_pace_mask(ids)
    z.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: masked_info_nce(
            x, mask, 0.5, valid, normalize=normalize, positive_reduction=reduction
        )[0],
        (z,),
    )


def test_not_distributed_is_identity():
    z = torch.randn(3, 2)
    assert gather_with_grad(z) is z
    z_all, labels, valid, local = gather_for_contrastive(z, torch.tensor([0, 1, 0]))
    assert z_all is z and labels.tolist() == [0, 1, 0]
    assert valid.all() and local.all()


# ------------------------------------------------------------- two ranks, gloo, CPU
# Rank 0 holds 3 videos, rank 1 holds 2 (unequal shards); each video gives two clips
# (same context) and every clip has a pace label (same pace).
_SIZES = (3, 2)
_DIM_IN, _DIM_OUT = 5, 4


def _shards(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in _SIZES:
        x = torch.randn(2 * n, _DIM_IN, generator=g, dtype=torch.float64)
        paces = torch.randint(0, 2, (2 * n,), generator=g)
        valid = torch.ones(2 * n, dtype=torch.bool)
        out.append((x, paces, valid))
    out[0][2][1] = False  # a placeholder on rank 0
    return out


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(_DIM_IN, _DIM_OUT).double()


def _local_ids(n: int) -> torch.Tensor:
    return torch.arange(n).repeat(2)  # clip, clip2 of local sample j -> id j


def _rank_main(rank: int, world: int, port: int, out_dir: str, use_ddp: bool) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        x, paces, valid = _shards()[rank]
        if use_ddp:
            from torch.nn.parallel import DistributedDataParallel as DDP

            model: torch.nn.Module = DDP(_model())
        else:
            model = _model()
        results = {}
        for kind in ("context", "pace"):
            model.zero_grad()
            xr = x.clone().requires_grad_(True)
            z = model(xr)
            if kind == "context":
                labels, local_ids = _local_ids(_SIZES[rank]), True
            else:
                labels, local_ids = paces, False
            z_all, lab_all, valid_all, local = gather_for_contrastive(
                z, labels, valid, rank_local_ids=local_ids
            )
            mask = same_context_mask(lab_all) if kind == "context" else same_pace_mask(lab_all)
            # Every rank's loss is the full global loss (see the module docstring).
            loss, metrics = masked_info_nce(z_all, mask, 0.5, valid_all, metric_rows=local)
            loss.backward()
            if not use_ddp:  # what DDP does to parameter gradients: all-reduce, average
                for p in model.parameters():
                    dist.all_reduce(p.grad)
                    p.grad /= world
            results[kind] = {
                "loss": loss.detach(),
                "metrics": metrics,
                "labels": lab_all,
                "x_grad": xr.grad,
                "param_grads": [p.grad.clone() for p in model.parameters()],
            }
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "use_ddp",
    [
        False,  # DDP's gradient averaging done by hand: the same arithmetic, seconds faster
        pytest.param(True, marks=pytest.mark.slow),  # DDP itself: its constructor imports
        # torch._dynamo, 3 s alone and ~10 s with two ranks on two busy cores
    ],
    ids=["averaged", "ddp"],
)
def test_two_rank_gather_matches_single_process(tmp_path, use_ddp):
    world = len(_SIZES)
    mp.spawn(
        _rank_main,
        args=(world, _free_port(), str(tmp_path), use_ddp),
        nprocs=world,
        join=True,
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]

    shards = _shards()
    x = torch.cat([s[0] for s in shards]).requires_grad_(True)
    valid = torch.cat([s[2] for s in shards])
    # global ids: rank 1's local ids shifted past rank 0's
    ids = torch.cat([_local_ids(_SIZES[0]), _local_ids(_SIZES[1]) + _SIZES[0]])
    paces = torch.cat([s[1] for s in shards])
    bounds = [0, 2 * _SIZES[0], 2 * sum(_SIZES)]
    for kind, labels, mask_fn in (
        ("context", ids, same_context_mask),
        ("pace", paces, same_pace_mask),
    ):
        model = _model()
        x.grad = None
        loss, metrics = masked_info_nce(model(x), mask_fn(labels), 0.5, valid)
        loss.backward()
        for r, res in enumerate(ranks):
            got = res[kind]
            assert torch.equal(got["labels"], labels)
            torch.testing.assert_close(got["loss"], loss.detach())  # same L on every rank
            # rank r's input gradient is W * dL/dx_r (the gather sums all ranks' L) ...
            torch.testing.assert_close(got["x_grad"], world * x.grad[bounds[r] : bounds[r + 1]])
            # ... and DDP's average over ranks of the parameter gradients is dL/dtheta
            for p_ddp, p in zip(got["param_grads"], model.parameters(), strict=True):
                torch.testing.assert_close(p_ddp, p.grad)
        for k, v in metrics.items():  # metrics of local rows sum to the global ones
            torch.testing.assert_close(sum(res[kind]["metrics"][k] for res in ranks), v)
