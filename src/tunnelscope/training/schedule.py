"""The learning-rate schedule: linear warm-up, then cosine decay or step milestones (torch schedulers)."""

from __future__ import annotations

import torch


def lr_schedule(
    optimizer,
    warmup_steps: int,
    total_steps: int,
    start_factor: float = 1e-3,
    min_lr: float = 0.0,
    milestones: list[int] | None = None,
    gamma: float = 0.1,
):
    """Linear warm-up from ``start_factor`` x the base lr to it, then cosine to ``min_lr``, or,
    given ``milestones`` (steps counted from the start), the lr times ``gamma`` at each of them
    (torch's MultiStepLR); the caller steps it once per batch or once per epoch
    (``training.schedule_step``)."""
    if milestones is None:
        after = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, total_steps - warmup_steps), eta_min=min_lr
        )
    else:  # SequentialLR restarts the count of the scheduler after the warm-up
        after = torch.optim.lr_scheduler.MultiStepLR(optimizer, [m - warmup_steps for m in milestones], gamma)
    if warmup_steps == 0:
        return after
    warm = torch.optim.lr_scheduler.LinearLR(
        optimizer, start_factor=start_factor, end_factor=1.0, total_iters=warmup_steps
    )
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warm, after], milestones=[warmup_steps])
