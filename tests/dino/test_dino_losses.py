"""DINO / iBOT / KoLeo losses against hand computations, Sinkhorn-Knopp normalization, and 2-process equality."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rae_hf.losses.dino import DINOLoss, IBOTPatchLoss, dino_cross_entropy, koleo_loss, sinkhorn_knopp


def _softmax(row: list[float]) -> list[float]:
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def _hand_ce(teacher_row: list[float], student_row: list[float], t_temp: float, s_temp: float, center) -> float:
    """-sum softmax((t - c) / T_t) * log softmax(s / T_s) for one row, in plain Python."""
    target = _softmax([(t - c) / t_temp for t, c in zip(teacher_row, center, strict=True)])
    log_probs = [math.log(p) for p in _softmax([s / s_temp for s in student_row])]
    return -sum(a * b for a, b in zip(target, log_probs, strict=True))


def test_dino_loss_equals_hand_computation_with_centering() -> None:
    torch.manual_seed(0)
    batch, dim, t_temp = 2, 5, 0.05
    teacher = torch.randn(2 * batch, dim)
    student_global = torch.randn(2 * batch, dim)
    student_local = torch.randn(3 * batch, dim)
    loss_fn = DINOLoss(dim)
    loss_fn.center.copy_(torch.randn(1, dim) * 0.3)
    center = loss_fn.center[0].tolist()
    probs = loss_fn.softmax_center(teacher, t_temp).chunk(2)
    students = [*student_global.chunk(2), *student_local.chunk(3)]
    loss = loss_fn(students, probs)
    teachers = teacher.chunk(2)
    terms = []
    for s_index, s in enumerate(students):
        for t_index, t in enumerate(teachers):
            if s_index != t_index:
                rows = [_hand_ce(t[i].tolist(), s[i].tolist(), t_temp, 0.1, center) for i in range(batch)]
                terms.append(sum(rows) / batch)
    assert len(terms) == 2 + 3 * 2
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_center_update_is_momentum_average_of_batch_mean() -> None:
    loss_fn = DINOLoss(3, center_momentum=0.9)
    loss_fn.center.fill_(1.0)
    logits = torch.tensor([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])
    loss_fn.update_center(logits)
    torch.testing.assert_close(loss_fn.center, 0.9 * torch.ones(1, 3) + 0.1 * torch.tensor([[2.0, 3.0, 4.0]]))


def _hand_sinkhorn(logits: torch.Tensor, temp: float, iterations: int) -> torch.Tensor:
    q = [[math.exp(v / temp) for v in row] for row in logits.double().tolist()]  # [B][K]
    rows, cols = len(q), len(q[0])
    total = sum(map(sum, q))
    q = [[v / total for v in row] for row in q]
    for _ in range(iterations):
        col_sums = [sum(q[b][k] for b in range(rows)) for k in range(cols)]
        q = [[q[b][k] / col_sums[k] / cols for k in range(cols)] for b in range(rows)]
        q = [[v / sum(row) / rows for v in row] for row in q]
    return torch.tensor([[v * rows for v in row] for row in q], dtype=torch.float32)


def test_sinkhorn_knopp_matches_hand_computation_and_normalizes() -> None:
    torch.manual_seed(1)
    logits = torch.randn(6, 4)
    targets = sinkhorn_knopp(logits, 0.5, 3)
    torch.testing.assert_close(targets, _hand_sinkhorn(logits, 0.5, 3), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(6))  # each sample a distribution
    imbalance = (targets.sum(dim=0) - 6 / 4).abs().max()  # prototypes move towards equal mass B / K
    assert imbalance < 0.5 * (torch.softmax(logits / 0.5, dim=1).sum(dim=0) - 6 / 4).abs().max()
    converged = sinkhorn_knopp(logits, 0.5, 200)
    torch.testing.assert_close(converged.sum(dim=0), torch.full((4,), 6 / 4), rtol=1e-4, atol=1e-5)


def test_ibot_loss_weights_masked_patches_per_crop() -> None:
    torch.manual_seed(2)
    # 3 global crops: crop 0 has 2 masked patches, crop 1 has 1, crop 2 none -> weights 1/2, 1/2, 1
    weights = torch.tensor([0.5, 0.5, 1.0])
    student, teacher_logits = torch.randn(3, 4), torch.randn(3, 4)
    loss_fn = IBOTPatchLoss(4)
    probs = loss_fn.softmax_center(teacher_logits, 0.07)
    loss = loss_fn(student, probs, weights, num_global_crops=3)
    rows = [_hand_ce(teacher_logits[i].tolist(), student[i].tolist(), 0.07, 0.1, [0.0] * 4) for i in range(3)]
    assert loss.item() == pytest.approx((0.5 * rows[0] + 0.5 * rows[1] + rows[2]) / 3, rel=1e-5)
    loss_fn.update_center(teacher_logits)
    torch.testing.assert_close(loss_fn.center, 0.1 * teacher_logits.mean(0, keepdim=True))
    empty = torch.zeros(0, 4)
    assert loss_fn(empty, empty, torch.zeros(0), 3).item() == 0.0


def test_koleo_equals_brute_force_nearest_neighbour() -> None:
    torch.manual_seed(3)
    features = torch.randn(7, 5)
    normed = [row / row.norm() for row in features]
    expected = 0.0
    for i, row in enumerate(normed):
        nearest = min((row - other).norm().item() for j, other in enumerate(normed) if j != i)
        expected -= math.log(nearest + 1e-8)
    assert koleo_loss(features).item() == pytest.approx(expected / 7, rel=1e-5)


def test_dino_cross_entropy_needs_two_views() -> None:
    with pytest.raises(ValueError, match="pair"):
        dino_cross_entropy([torch.zeros(2, 3)], [torch.zeros(2, 3)])


def _distributed_worker(rank: int, port: int, logits: torch.Tensor, patches: torch.Tensor, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        dino, ibot = DINOLoss(logits.shape[1]), IBOTPatchLoss(logits.shape[1])
        local = logits.chunk(2)[rank]
        dino.update_center(local)
        ibot.update_center(patches[rank * 3 : rank * 3 + 3 + rank])  # 3 and 4 masked patches
        out[rank] = (dino.center.clone(), ibot.center.clone(), sinkhorn_knopp(local, 0.1, 3))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_equal_one_process_on_the_global_batch() -> None:
    torch.manual_seed(4)
    logits, patches = torch.randn(8, 6), torch.randn(7, 6)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_distributed_worker, args=(port, logits, patches, out), nprocs=2, join=True)
    single = DINOLoss(6)
    single.update_center(logits)
    for rank in range(2):
        dino_center, ibot_center, targets = out[rank]
        torch.testing.assert_close(dino_center, single.center)
        per_gpu_means = (patches[:3].mean(0) + patches[3:].mean(0)) / 2
        torch.testing.assert_close(ibot_center, 0.1 * per_gpu_means.unsqueeze(0))
        torch.testing.assert_close(targets, sinkhorn_knopp(logits, 0.1, 3).chunk(2)[rank])
