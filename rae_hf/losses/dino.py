"""DINOv2 self-distillation losses: DINO cross-entropy on CLS tokens, iBOT on masked patch tokens, KoLeo.

Teacher targets are either softmax-centred (a centre updated as an EMA of the teacher logits, momentum 0.9) or
Sinkhorn-Knopp normalized (3 iterations). Every statistic that crosses the batch (the centre's batch mean, the
Sinkhorn sums) is all-reduced over processes, so DDP equals one process with the global batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DINOLoss",
    "IBOTPatchLoss",
    "dino_cross_entropy",
    "koleo_loss",
    "sinkhorn_knopp",
]


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over processes (identity without an initialized process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temperature: float, num_iterations: int = 3) -> torch.Tensor:
    """Teacher targets `[B, K]` whose rows sum to 1 and whose columns (prototypes) are balanced over the global batch.

    `Q = exp(logits / T)` in fp32 is divided by its global sum, then `num_iterations` times: every prototype's mass
    (all-reduced over processes) is set to 1/K, then every sample's to 1/B_total; finally multiplied by B_total.
    B_total is the number of rows over all processes.
    """
    q = torch.exp(logits.float() / temperature).t()  # [K, B]
    num_prototypes = q.shape[0]
    total_rows = torch.full((), float(q.shape[1]), device=q.device)  # filled on the device: no host copy (sync)
    _all_reduce_sum(total_rows)
    q /= _all_reduce_sum(q.sum())
    for _ in range(num_iterations):
        q /= _all_reduce_sum(q.sum(dim=1, keepdim=True))
        q /= num_prototypes
        q /= q.sum(dim=0, keepdim=True)
        q /= total_rows
    q *= total_rows
    return q.t()


def dino_cross_entropy(
    student_logits: Sequence[torch.Tensor], teacher_probs: Sequence[torch.Tensor], student_temperature: float = 0.1
) -> torch.Tensor:
    """Mean over (student view, teacher view) pairs of different views of `-sum(t * log_softmax(s / T_s))`, batch-mean.

    `student_logits` lists the views in order: the global crops first (their indices match `teacher_probs`, whose
    same-view pairs are skipped), then the local crops. With 2 globals and 8 locals that is 2 + 16 = 18 pairs.
    """
    total = student_logits[0].new_zeros((), dtype=torch.float32)
    num_pairs = 0
    for s_index, student in enumerate(student_logits):
        log_probs = F.log_softmax(student.float() / student_temperature, dim=-1)
        for t_index, teacher in enumerate(teacher_probs):
            if s_index == t_index:
                continue
            total = total - (teacher * log_probs).sum(dim=-1).mean()
            num_pairs += 1
    if num_pairs == 0:
        raise ValueError("dino_cross_entropy needs at least one pair of different views.")
    return total / num_pairs


class _CenteredTargets(nn.Module):
    """Holds the centre `[1, K]` (a buffer, so it is saved with `state_dict`) and turns teacher logits into targets."""

    def __init__(self, out_dim: int, student_temperature: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        if not 0.0 <= center_momentum < 1.0:
            raise ValueError(f"center_momentum must be in [0, 1), got {center_momentum}.")
        if student_temperature <= 0:
            raise ValueError(f"student_temperature must be positive, got {student_temperature}.")
        self.student_temperature = student_temperature
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def softmax_center(self, teacher_logits: torch.Tensor, teacher_temperature: float) -> torch.Tensor:
        """`softmax((t - c) / T_t)` with the current centre (update it afterwards with `update_center`)."""
        return F.softmax((teacher_logits.float() - self.center) / teacher_temperature, dim=-1)

    @torch.no_grad()
    def sinkhorn_knopp(self, teacher_logits: torch.Tensor, teacher_temperature: float, num_iterations: int = 3):
        """Sinkhorn-Knopp targets (see :func:`sinkhorn_knopp`)."""
        return sinkhorn_knopp(teacher_logits, teacher_temperature, num_iterations)

    @torch.no_grad()
    def _momentum_update(self, batch_center: torch.Tensor) -> None:
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1.0 - self.center_momentum)


class DINOLoss(_CenteredTargets):
    """DINO loss on CLS-head logits (see :func:`dino_cross_entropy`) with its centre."""

    def forward(self, student_logits: Sequence[torch.Tensor], teacher_probs: Sequence[torch.Tensor]) -> torch.Tensor:
        return dino_cross_entropy(student_logits, teacher_probs, self.student_temperature)

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """`c = m c + (1 - m) mean`, the mean over the teacher rows of all processes (both global crops)."""
        batch_sum = _all_reduce_sum(teacher_logits.float().sum(dim=0, keepdim=True))
        rows = torch.full((), float(teacher_logits.shape[0]), device=batch_sum.device)  # no host copy (sync)
        self._momentum_update(batch_sum / _all_reduce_sum(rows))


class IBOTPatchLoss(_CenteredTargets):
    """iBOT loss on the masked patches: `-sum_i w_i sum(t_i * log_softmax(s_i / T_s)) / num_global_crops`.

    `w_i = 1 / (masked patches of the crop of patch i)`, so each masked crop weighs 1 and the division by the number
    of global crops (masked or not) makes the loss the mean over crops.
    """

    def forward(
        self,
        student_patch_logits: torch.Tensor,
        teacher_patch_probs: torch.Tensor,
        patch_weights: torch.Tensor,
        num_global_crops: int,
    ) -> torch.Tensor:
        log_probs = F.log_softmax(student_patch_logits.float() / self.student_temperature, dim=-1)
        per_patch = (teacher_patch_probs * log_probs).sum(dim=-1)
        return -(per_patch * patch_weights).sum() / num_global_crops

    @torch.no_grad()
    def update_center(self, teacher_patch_logits: torch.Tensor) -> None:
        """Centre EMA of the per-process mean over masked patches, averaged over processes."""
        local_mean = teacher_patch_logits.float().mean(dim=0, keepdim=True)
        if teacher_patch_logits.shape[0] == 0:
            local_mean = torch.zeros_like(self.center)
        self._momentum_update(_all_reduce_sum(local_mean) / _world_size())


def koleo_loss(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Kozachenko-Leonenko entropy estimator: `-mean_i log(||x_i - x_nn(i) + eps|| + eps)` on L2-normalized rows.

    The nearest neighbour (self excluded) is the row of largest cosine similarity; per process, per call. As in the
    DINOv2 code, eps also sits inside the norm (`F.pairwise_distance`), so duplicated rows give a finite loss and
    gradient: their distance is `eps * sqrt(D)`.
    """
    x = F.normalize(features.float(), dim=-1, eps=eps)
    with torch.no_grad():
        similarity = x @ x.t()
        similarity.fill_diagonal_(-2.0)
        neighbour = similarity.argmax(dim=1)
    distances = F.pairwise_distance(x, x[neighbour], p=2, eps=eps)
    return -torch.log(distances + eps).mean()
