import numpy as np
import pandas as pd
import pytest
import torch
from test_reliability import PARAMS, TRAINING, toy_store

from tunnelscope.data.loader import random_resized_crop_flip, rrc_boxes
from tunnelscope.data.splits import epoch_order, stratified_split
from tunnelscope.models.build import build_model, count_parameters
from tunnelscope.training.checkpoints import paper_parameter_count, paper_params_m
from tunnelscope.training.loop import pretrain
from tunnelscope.training.schedule import lr_schedule


def test_random_resized_crop_is_per_image_and_seeded():
    x = torch.randint(0, 256, (8, 16, 16, 3), dtype=torch.uint8)
    sizes = torch.full((8, 2), 16)
    a = random_resized_crop_flip(x, sizes, 16, torch.Generator().manual_seed(0))
    b = random_resized_crop_flip(x, sizes, 16, torch.Generator().manual_seed(0))
    c = random_resized_crop_flip(x, sizes, 16, torch.Generator().manual_seed(1))
    assert a.shape == (8, 3, 16, 16) and torch.equal(a, b) and not torch.equal(a, c)


def test_full_crop_without_flip_is_identity():
    # scale (1, 1) and ratio (1, 1) force the whole image; flips are undone by comparing both.
    x = torch.randint(0, 256, (4, 8, 8, 3), dtype=torch.uint8)
    out = random_resized_crop_flip(
        x, torch.full((4, 2), 8), 8, torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0)
    )
    ref = x.permute(0, 3, 1, 2).float()
    for i in range(4):
        assert torch.allclose(out[i], ref[i], atol=1e-4) or torch.allclose(out[i], ref[i].flip(-1), atol=1e-4)


def test_crops_read_only_their_own_image_in_a_padded_batch():
    """A small image beside a large one in one canvas: its crops are what it gives alone,
    whatever fills the padding."""
    small = torch.randint(0, 256, (1, 20, 14, 3), dtype=torch.uint8)
    canvas = torch.randint(0, 256, (2, 40, 30, 3), dtype=torch.uint8)
    canvas[0, :20, :14] = small[0]
    # The draws depend on the batch size only, so image 0 gets the same box in both batches: the
    # whole image (scale 1, its own aspect), so the resize samples right up to its last row and column.
    whole = {"scale": (1.0, 1.0), "ratio": (0.7, 0.7)}
    unpadded = random_resized_crop_flip(
        small.repeat(2, 1, 1, 1), torch.tensor([[20, 14], [20, 14]]), 12, torch.Generator().manual_seed(3), **whole
    )
    padded = random_resized_crop_flip(
        canvas, torch.tensor([[20, 14], [40, 30]]), 12, torch.Generator().manual_seed(3), **whole
    )
    assert torch.equal(padded[0], unpadded[0])


def test_resize_is_torchvisions_for_the_same_box():
    """Given the box, the crop is resized exactly as torchvision's RandomResizedCrop resizes a tensor."""
    from torchvision.transforms.v2 import functional as TF

    image = torch.randint(0, 256, (1, 37, 53, 3), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(5)
    top, left, h, w = rrc_boxes(torch.tensor([37]), torch.tensor([53]), torch.Generator().manual_seed(5))[0].tolist()
    ours = random_resized_crop_flip(image, torch.tensor([[37, 53]]), 24, gen)[0]
    theirs = TF.resized_crop(image[0].permute(2, 0, 1), top, left, h, w, [24, 24], antialias=True).float()
    assert torch.equal(ours, theirs) or torch.equal(ours, theirs.flip(-1))  # flipped or not


def test_streamed_crops_are_the_same_wherever_they_are_made(tmp_path):
    """Crops made in data-loader workers (a CPU run), in this process, or from a canvas of whole
    images (an accelerator run, here on the CPU) are bitwise the same batches."""
    from tunnelscope.data.loader import SplitReader
    from tunnelscope.data.store import SplitPlan, Store, byte_chunks, write_store

    rng = np.random.default_rng(0)
    shapes = rng.integers(20, 40, (70, 2))
    images = [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for shape in shapes]
    plan = SplitPlan(np.arange(70) % 3, shapes, lambda a, b: images[a:b], byte_chunks(shapes))
    write_store(
        tmp_path / "s",
        {"dataset": "toy", "num_classes": 3, "resolution": 16, "shorter_side": 18, "native": False},
        {"train": plan, "test": plan},
    )
    split = Store(tmp_path / "s").splits["train"]
    order = rng.permutation(70)
    runs = {}
    for name, workers, in_workers in (("workers", 1, True), ("here", 0, True), ("canvas", 1, False)):
        reader = SplitReader(split, "whole", 16, "cpu", resident_mb=0, workers=workers, crop_in_workers=in_workers)
        runs[name] = [b.clone() for b in reader.batches(order, 32, torch.Generator().manual_seed(4))]
    assert [b.shape for b in runs["workers"]] == [(32, 3, 16, 16), (32, 3, 16, 16), (6, 3, 16, 16)]
    for name in ("here", "canvas"):
        assert all(torch.equal(a, b) for a, b in zip(runs["workers"], runs[name])), name
    # And they are the crops of the stored images themselves, as drawn from that generator.
    first = torch.from_numpy(
        np.stack(
            [
                np.pad(images[i], ((0, 40 - images[i].shape[0]), (0, 40 - images[i].shape[1]), (0, 0)))
                for i in order[:32]
            ]
        )
    )
    expected = random_resized_crop_flip(
        first, torch.from_numpy(shapes[order[:32]]), 16, torch.Generator().manual_seed(4)
    )
    assert torch.equal(runs["workers"][0].float(), expected)


@pytest.mark.parametrize("size", [(256, 341), (32, 32), (36, 80)])
def test_crop_boxes_follow_torchvision_random_resized_crop(size):
    """Area fraction, aspect and position of the boxes, against torchvision's get_params on the
    same image size (two-sample Kolmogorov-Smirnov, 4,000 draws each)."""
    from scipy.stats import ks_2samp
    from torchvision.transforms import RandomResizedCrop

    h, w = size
    n = 4000
    ours = rrc_boxes(torch.full((n,), h), torch.full((n,), w), torch.Generator().manual_seed(0)).double().numpy()
    torch.manual_seed(0)
    image = torch.zeros(3, h, w)
    theirs = np.array([RandomResizedCrop.get_params(image, (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(n)], dtype=float)

    def features(boxes):
        top, left, bh, bw = boxes.T
        return {"area": bh * bw / (h * w), "aspect": np.log(bw / bh), "x": (left + bw / 2) / w, "y": (top + bh / 2) / h}

    a, b = features(ours), features(theirs)
    for name in a:
        assert ks_2samp(a[name], b[name]).pvalue > 1e-3, (size, name)
        assert abs(a[name].mean() - b[name].mean()) < 0.02 + 0.05 * abs(b[name].mean()), (size, name)
    assert (ours[:, 2] <= h).all() and (ours[:, 3] <= w).all() and (ours[:, :2] >= 0).all()
    assert (ours[:, 0] + ours[:, 2] <= h).all() and (ours[:, 1] + ours[:, 3] <= w).all()


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


def test_schedule_start_factor_floor_and_per_epoch_stepping():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=1.0)
    sched = lr_schedule(
        opt, warmup_steps=5, total_steps=20, start_factor=0.01, min_lr=0.1
    )  # released CNN code, per epoch
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.01) and lrs[5] == pytest.approx(1.0)
    assert min(lrs[5:]) > 0.1 and opt.param_groups[0]["lr"] == pytest.approx(0.1)  # cosine down to min_lr


def test_repeated_augmentation_order():
    order = epoch_order(12, 3, torch.Generator().manual_seed(0))
    assert len(order) == 12 and len(set(order.tolist())) == 4  # n / k distinct images ...
    assert all(len(set(order[i : i + 3].tolist())) == 1 for i in range(0, 12, 3))  # ... each k times in a row
    assert torch.equal(
        epoch_order(12, 1, torch.Generator().manual_seed(0)),
        torch.randperm(12, generator=torch.Generator().manual_seed(0)),
    )


def _pretrain(tmp_path, **training):
    params = dict(PARAMS, augmentation="none", training=dict(TRAINING, warmup_epochs=0, **training))
    info = pretrain(
        params,
        toy_store(tmp_path, 120),
        tmp_path / "ckpt.safetensors",
        tmp_path / "log.csv",
        tmp_path / "info.json",
        tmp_path / "state.pt",
    )
    return info, pd.read_csv(tmp_path / "log.csv")


def test_best_test_checkpoint_keeps_the_best_epoch(tmp_path):
    info, log = _pretrain(tmp_path, epochs=4, checkpoint="best_test", val_fraction=0.0)
    best = int(log.test_acc.idxmax())
    assert info["checkpoint_rule"] == "best_test" and info["checkpoint_epoch"] == best + 1
    assert info["test_acc"] == pytest.approx(log.test_acc[best])  # the kept weights score what that epoch scored
    assert log.val_acc.isna().all() and info["n_fit"] == info["n_train"] == 120  # no hold-out


def test_best_val_checkpoint_and_lr_scaling(tmp_path):
    info, log = _pretrain(
        tmp_path, epochs=3, checkpoint="best_val", val_fraction=0.2, lr_scaling_batch=64, schedule_step="epoch"
    )
    assert info["checkpoint_epoch"] == int(log.val_acc.idxmax()) + 1 and "test_acc" not in log
    assert log.lr[0] == pytest.approx(0.01 * 32 / 64)  # lr x batch / lr_scaling_batch, no warm-up
    assert info["n_train"] == 120 and info["n_fit"] == 96


def test_gamma_is_coded_as_the_paper(tmp_path):
    info, _ = _pretrain(tmp_path, epochs=1)
    hundred = count_parameters(build_model("vggm11", 100, 0.125, 32))
    assert info["gamma_params"] == round(hundred / 1e4) * 1e4 != info["params"]  # a 100-class head, to 0.01M
    # cell.json: the built model's count; the paper's nominal one only where it describes that model
    assert info["params"] == count_parameters(build_model("vggm11", 4, 0.125, 32))
    assert info["paper_params_m"] is None and "params_m" not in info  # width 0.125, not the paper's VGGm-11
    assert paper_params_m("vggm11", 1.0) == 9.46 and paper_params_m("vggm11", 0.25) is None
    assert paper_params_m("timm/resnet18", 1.0) is None and paper_params_m("mlp3-w16", 1.0) is None
    assert (
        info["gamma"] == info["gamma_params"] / 120
    )  # over the whole train split, not what is left after the hold-out
    # At full width, P is the count the paper quotes, so gamma takes the paper's values (its sec. 2.1 table).
    paper_gamma = {
        "vggm11": 74.67,
        "vggm17": 158.50,
        "resnet18": 88.56,
        "resnet34": 168.37,
        "vit-t": 44.28,
        "vit-t-plus": 66.23,
    }
    for arch, gamma in paper_gamma.items():
        assert round(paper_parameter_count(arch, 1.0, 32) / 126_689, 2) == gamma, arch
    assert round(paper_parameter_count("vggm17-dagger", 1.0, 32) / 50_000, 1) == 401.6  # CIFAR-100
    assert (
        abs(paper_parameter_count("resnet18", 1.0, 32) - count_parameters(build_model("resnet18", 100))) < 1e4
    )  # the model it names


def test_selection_on_an_empty_split_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match="checkpoint best_val selects on an empty held-out split"):
        _pretrain(tmp_path, epochs=1, checkpoint="best_val", val_fraction=0.001)
    assert not (tmp_path / "state.pt").exists()
