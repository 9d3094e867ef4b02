import numpy as np
import pytest
import torch

from tunnelscope.datasets import stratified_split
from tunnelscope.train import lr_schedule, random_resized_crop_flip


def test_random_resized_crop_is_per_image_and_seeded():
    x = torch.randn(8, 3, 16, 16)
    a = random_resized_crop_flip(x, torch.Generator().manual_seed(0))
    b = random_resized_crop_flip(x, torch.Generator().manual_seed(0))
    c = random_resized_crop_flip(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)


def test_full_crop_without_flip_is_identity():
    # scale (1, 1) and ratio (1, 1) force the whole image; flips are undone by comparing both.
    x = torch.randn(4, 3, 8, 8)
    out = random_resized_crop_flip(x, torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    for i in range(4):
        assert torch.allclose(out[i], x[i], atol=1e-5) or torch.allclose(out[i], x[i].flip(-1), atol=1e-5)


def test_schedule_warms_up_then_decays_to_zero():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=1.0)
    sched = lr_schedule(opt, warmup_steps=4, total_steps=12)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < 0.01 and max(lrs) == pytest.approx(1.0)
    assert lrs.index(max(lrs)) == 4
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)


def test_validation_split_is_stratified_and_seeded():
    labels = np.repeat(np.arange(4), 10)
    train, val = stratified_split(labels, 0.2, seed=0, stream=7919)
    assert len(val) == 8 and np.bincount(labels[val]).tolist() == [2, 2, 2, 2]
    assert not set(train) & set(val)
    assert np.array_equal(val, stratified_split(labels, 0.2, seed=0, stream=7919)[1])


def test_gpu_slots_are_claimed_one_job_each(tmp_path):
    from tunnelscope.train import _HELD_LOCKS, claim_slot

    held = len(_HELD_LOCKS)
    try:
        assert claim_slot(2, str(tmp_path)) == 0
        assert claim_slot(2, str(tmp_path)) == 1  # slot 0 is locked by the first claim
        assert claim_slot(2, str(tmp_path)) is None
    finally:
        for handle in _HELD_LOCKS[held:]:
            handle.close()
        del _HELD_LOCKS[held:]
    assert claim_slot(1, str(tmp_path)) == 0  # released locks are free again
    _HELD_LOCKS.pop().close()
