"""Contrastive objectives of the pace chapter (thesis sec. 4.2.3, Eq. 4.3, 4.4, Fig. 4.4).

Plain torch, no Ray. The authors never released this part; what follows is the
thesis's text, then every reading this module had to make.

What the thesis says
--------------------
Same context (Eq. 4.3, "content-aware"): each of N videos gives n = 2 clips at
different paces, x~_i and x~'_i; the two clips of one video are a positive pair,
clips of different videos are negative pairs; features z_i = f(x~_i):

    L_ctr_sc = -1/(2N) sum_{i,J} log( exp(sim(z_i, z_i'))
               / ( sum_i exp(sim(z_i, z_i')) + sum_{i,J} exp(sim(z_i, z_J)) ) )

Same pace (Eq. 4.4, "content-agnostic"): N clips with pace labels p_i; (z_i, z_j)
is positive if p_i = p_j, (z_i, z_k) negative if p_i != p_k:

    L_ctr_sp = -1/N sum_{i,j,k} log( exp(sim(z_i, z_j))
               / ( sum_{i,j} exp(sim(z_i, z_j)) + sum_{i,k} exp(sim(z_i, z_k)) ) )

with sim(z_i, z_j) = z_i^T z_j (dot product), no temperature. Fig. 4.4: from the
similarity map of the batch, "the denominator ... can be computed by the sum of the
similarity map" and a mask keeps the positives for the numerator: for clips
A, A', B, B' only (A,A'), (A',A), (B,B'), (B',B) are positive; for clips A, B, C, D
with pace(B) = pace(C) = pace(D) only the six ordered pairs among B, C, D are.
The thesis calls the objective "similar to SimCLR".

What is implemented (`masked_info_nce`)
---------------------------------------
Both equations are one masked InfoNCE over the batch similarity matrix; they differ
only in the positive mask (`same_context_mask`, `same_pace_mask`). With
s_ik = sim(z_i, z_k) / tau, candidates C(i) = {k valid, k != i}, positives
P(i) = {p in C(i) : mask[i, p]} and anchors A = {i valid : |P(i)| > 0}:

    l_ip   = -log( exp(s_ip) / sum_{k in C(i)} exp(s_ik) )
    loss_i = 1/|P(i)| sum_{p in P(i)} l_ip          positive_reduction="mean" (default)
    L      = 1/|A| sum_{i in A} loss_i
or
    loss_i = sum_{p in P(i)} l_ip                     positive_reduction="sum"
    L      = 1/N_valid sum_{i in A} loss_i

Interpretations:
  1. The anchor index i is bound by the outer sum, so the inner "sum_i" / "sum_{i,j}"
     in the denominators is read as "over i's positives": the denominator of anchor i
     is (its positives) + (its negatives) = every other clip of the batch, i.e. the
     row sum of the similarity map without the diagonal (SimCLR's NT-Xent). The
     literal reading of Fig. 4.4's text, ONE denominator for the whole map shared by
     every pair, is not an InfoNCE over a group of negatives and is not implemented.
     The outer "sum_J" of Eq. 4.3 and "sum_k" of Eq. 4.4 run over an index that only
     occurs in the denominator; they are read as notation, not as a multiplicity.
  2. Eq. 4.3 has exactly one positive per anchor (n = 2), where both reductions are
     the same: L = 1/(2N) sum_i l_{i,i'}. Eq. 4.4 has several: its literal
     normalisation, 1/N with the outer sum over i AND j, sums over positives and
     divides by the number of clips; that is `positive_reduction="sum"` (A clips
     without positives, like A in Fig. 4.4(b), count in N and add 0). The default
     "mean" averages over each anchor's positives and over anchors (SupCon's
     L_out), whose scale does not grow with the number of positives, i.e. with the
     batch and with the number of ranks; "sum" is |P(i)| times larger per anchor.
  3. sim: the thesis uses the raw dot product and no temperature (normalize=False,
     temperature=1.0 is that literal form). The default L2-normalises z first
     (cosine similarity, as in SimCLR, which the thesis cites as the model) and
     divides by `temperature`; the thesis gives no value for it.
  4. Invalid rows (the pipeline's masked placeholders for clips that failed to decode)
     are neither anchors nor candidates (their features are zeroed first, so even
     NaN there cannot leak); an anchor whose positives are all invalid has none and
     is left out (mean) or adds 0 (sum).
  5. Under DDP the "mini-batch" is the global batch: `gather_for_contrastive` gathers
     features (with gradients), labels and validity from every rank; every rank then
     computes the SAME global loss L. `gather_with_grad`'s backward all-reduces (sum)
     the gradient of the gathered tensor and returns this rank's slice, so rank r's
     local gradient is W * dL/dz_r (W ranks); DDP averages parameter gradients over
     the W ranks, giving sum_r dL/dtheta|_{z_r} = dL/dtheta, exactly the gradient of
     one process holding the whole batch. So each rank's loss must be the full,
     un-rescaled L (not L/W, not its local anchors only).
     Metrics are reported for `metric_rows` only (a rank's own rows), so summing them
     over ranks (the training loop's all-reduce) counts each anchor once.
  6. Clip identity for same context: positives are clips with equal video ids. Ids
     must be unique per video across the global batch: either globally unique
     integers (e.g. the dataset's video index: two samples of the same video in one
     batch then count as the same context) or rank-local ids (e.g. the sample's
     index in the local batch, repeated for its two clips) with
     `gather_for_contrastive(..., rank_local_ids=True)`, which offsets each rank's
     ids past the previous ranks'.

Metrics (detached, summed over the anchors of `metric_rows`, like
`rayssl.pretext.base.masked_cross_entropy`): `loss_sum` (sum of loss_i), `correct`
(retrieval: the most similar candidate is a positive), `num_anchors`, `num_valid`
(valid rows; the divisor of the "sum" reduction).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

PositiveReduction = Literal["mean", "sum"]


# ---------------------------------------------------------------------------- masks
def _equal_label_mask(labels: Tensor) -> Tensor:
    labels = labels.reshape(-1)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(labels.numel(), dtype=torch.bool, device=labels.device)
    return same & ~eye


def same_context_mask(video_ids: Tensor) -> Tensor:
    """(N,) video ids -> (N, N) bool: clips of the same video are positives (Eq. 4.3),
    a clip is not its own positive."""
    return _equal_label_mask(video_ids)


def same_pace_mask(paces: Tensor) -> Tensor:
    """(N,) pace labels -> (N, N) bool: clips of equal pace are positives (Eq. 4.4),
    a clip is not its own positive."""
    return _equal_label_mask(paces)


# ----------------------------------------------------------------------------- loss
def masked_info_nce(
    z: Tensor,
    positives: Tensor,
    temperature: float,
    valid: Tensor | None = None,
    *,
    normalize: bool = True,
    positive_reduction: PositiveReduction = "mean",
    metric_rows: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """InfoNCE of embeddings z (N, D) with positive mask (N, N) over the valid rows (N,).

    See the module docstring for the formula. Returns the loss (0, still connected to
    the graph, when there is no anchor) and detached summed metrics over the rows of
    `metric_rows` (default: all): `loss_sum`, `correct`, `num_anchors`, `num_valid`.
    Half-precision inputs are computed in float32, autocast is off inside.
    """
    if z.dim() != 2:
        raise ValueError(f"z must be (N, D), got {tuple(z.shape)}")
    n = z.shape[0]
    if positives.shape != (n, n):
        raise ValueError(f"positives must be ({n}, {n}), got {tuple(positives.shape)}")
    if positive_reduction not in ("mean", "sum"):
        raise ValueError(f"positive_reduction must be 'mean' or 'sum', got {positive_reduction!r}")
    device = z.device
    v = (
        torch.ones(n, dtype=torch.bool, device=device)
        if valid is None
        else valid.to(device=device, dtype=torch.bool).reshape(n)
    )
    rows = (
        torch.ones(n, dtype=torch.bool, device=device)
        if metric_rows is None
        else metric_rows.to(device=device, dtype=torch.bool).reshape(n)
    )

    if z.dtype in (torch.float16, torch.bfloat16):
        z = z.float()
    z = torch.where(v[:, None], z, torch.zeros_like(z))  # placeholders cannot leak
    with torch.autocast(device_type=device.type, enabled=False):  # no half matmul
        if normalize:
            z = F.normalize(z, dim=1)
        sim = (z @ z.t()) / temperature

    eye = torch.eye(n, dtype=torch.bool, device=device)
    candidates = v[:, None] & v[None, :] & ~eye
    pos = positives.to(device=device, dtype=torch.bool) & candidates
    num_pos = pos.sum(1)
    anchors = num_pos > 0

    # A finite fill (not -inf) keeps rows without any candidate NaN-free in backward.
    logits = sim.masked_fill(~candidates, torch.finfo(sim.dtype).min)
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos_log_prob = torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(1)
    per_anchor = -pos_log_prob
    if positive_reduction == "mean":
        per_anchor = per_anchor / num_pos.clamp(min=1)
    per_anchor = torch.where(anchors, per_anchor, torch.zeros_like(per_anchor))

    divisor = anchors.sum() if positive_reduction == "mean" else v.sum()
    loss = per_anchor.sum() / divisor.clamp(min=1)

    with torch.no_grad():
        top1 = logits.argmax(1)
        hit = pos.gather(1, top1[:, None]).squeeze(1) & anchors
        metrics = {
            "loss_sum": (per_anchor.detach() * rows).sum(),
            "correct": (hit & rows).sum().float(),
            "num_anchors": (anchors & rows).sum().float(),
            "num_valid": (v & rows).sum().float(),
        }
    return loss, metrics


# ---------------------------------------------------------------------- distributed
def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_gather_rows(x: Tensor) -> tuple[list[Tensor], list[int]]:
    """All-gather x (n_r, ...) from every rank; n_r may differ between ranks."""
    n = torch.tensor([x.shape[0]], dtype=torch.long, device=x.device)
    sizes_t = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes_t, n)
    sizes = [int(s.item()) for s in sizes_t]
    is_bool = x.dtype == torch.bool
    y = x.to(torch.uint8) if is_bool else x
    longest = max(sizes)
    if y.shape[0] < longest:
        y = torch.cat([y, y.new_zeros((longest - y.shape[0], *y.shape[1:]))])
    y = y.contiguous()
    out = [torch.empty_like(y) for _ in sizes]
    dist.all_gather(out, y)
    chunks = [o[:s] for o, s in zip(out, sizes, strict=True)]
    if is_bool:
        chunks = [c.bool() for c in chunks]
    return chunks, sizes


class _GatherWithGrad(torch.autograd.Function):
    """All-gather of unequal row counts with gradients (backward: the all-reduced sum,
    this rank's slice). Kept by hand on purpose: `torch.distributed.nn.functional.all_gather`
    needs equal shapes (it would need the same padding as `_all_gather_rows`) and is
    deprecated in torch 2.13 in favour of the private `_functional_collectives`; checked
    on gloo, its backward gives the same sums, so this is only a choice of API."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        chunks, sizes = _all_gather_rows(x)
        rank = dist.get_rank()
        ctx.start = sum(sizes[:rank])
        ctx.n = x.shape[0]
        return torch.cat(chunks)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        # Every rank's loss uses every rank's rows: this rank's rows get the sum of
        # the gradients all ranks computed for them.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start : ctx.start + ctx.n]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate x (n_r, ...) of all ranks in rank order, gradients flowing back to
    each rank's own slice (summed over the ranks' losses); identity when not
    distributed. A collective: every rank must call it."""
    if not _is_distributed():
        return x
    return _GatherWithGrad.apply(x)


def _offset_rank_local_ids(chunks: list[Tensor]) -> list[Tensor]:
    out, offset = [], 0
    for c in chunks:
        if c.numel() and int(c.min()) < 0:
            raise ValueError("rank-local ids must be >= 0")
        out.append(c + offset)
        if c.numel():
            offset += int(c.max()) + 1
    return out


def gather_for_contrastive(
    z: Tensor,
    labels: Tensor,
    valid: Tensor | None = None,
    *,
    rank_local_ids: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Build the global batch a mask needs: (z_all, labels_all, valid_all, local_rows).

    z (n, D) is gathered with gradients, labels (n,) (video ids or paces) and
    valid (n,) bool (default all True) without; local_rows (N,) bool marks this
    rank's rows (pass it as `metric_rows`). With rank_local_ids=True labels are
    non-negative ids unique only within a rank; each rank's ids are shifted past the
    largest id of the ranks before it, making them globally unique (use it for video
    ids, never for paces). Without torch.distributed: the inputs, all rows local.
    """
    n = z.shape[0]
    v = torch.ones(n, dtype=torch.bool, device=z.device) if valid is None else valid.bool()
    if not _is_distributed():
        return z, labels, v, torch.ones(n, dtype=torch.bool, device=z.device)
    z_all = gather_with_grad(z)
    label_chunks, sizes = _all_gather_rows(labels.detach())
    if rank_local_ids:
        label_chunks = _offset_rank_local_ids(label_chunks)
    valid_chunks, _ = _all_gather_rows(v)
    rank = dist.get_rank()
    local = [
        torch.full((s,), r == rank, dtype=torch.bool, device=z.device) for r, s in enumerate(sizes)
    ]
    return z_all, torch.cat(label_chunks), torch.cat(valid_chunks), torch.cat(local)
