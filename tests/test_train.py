import json
import types

import numpy as np
import pandas as pd
import pytest
import torch
from test_reliability import PARAMS, TRAINING, checkpoint_files, toy_store

from inmemory import random_resized_crop_flip
from tunnelscope.data.loader import rrc_boxes
from tunnelscope.data.splits import epoch_order, stratified_split
from tunnelscope.models.build import build_model, count_parameters
from tunnelscope.training.backbones import paper_parameter_count, paper_params_m
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


def _varied_split(tmp_path):
    """The train split of a store of 70 images of varying sizes (so it streams), the images and
    their shapes."""
    from tunnelscope.data.store import ImageStore, SplitPlan, byte_chunks, write_store

    rng = np.random.default_rng(0)
    shapes = rng.integers(20, 40, (70, 2))
    images = [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for shape in shapes]
    plan = SplitPlan(np.arange(70) % 3, shapes, lambda a, b: images[a:b], byte_chunks(shapes))
    write_store(
        tmp_path / "s",
        {"dataset": "toy", "num_classes": 3, "resolution": 16, "shorter_side": 18, "native": False},
        {"train": plan, "test": plan},
    )
    return ImageStore(tmp_path / "s").splits["train"], images, shapes


def test_a_reader_runs_the_workers_shared_memory_holds(tmp_path, monkeypatch, caplog):
    """Streaming canvases (an accelerator's batches, here on the CPU) with two workers where
    /dev/shm holds the batches of one: the reader runs one, the same batches; the bytes are
    those of the largest canvas of the pass."""
    from tunnelscope.data import loader

    split, _, shapes = _varied_split(tmp_path)
    order = np.random.default_rng(1).permutation(70)
    largest = max(len(c) * shapes[c, 0].max() * shapes[c, 1].max() * 3 for c in np.split(order, [32, 64]))
    reader = loader.SplitReader(split, "whole", 16, "cpu", resident_mb=0, workers=2, crop_in_workers=False)
    alone = loader.SplitReader(split, "whole", 16, "cpu", resident_mb=0, workers=0, crop_in_workers=False)
    monkeypatch.setattr(loader.os, "statvfs", _statvfs(3 * largest + 4096))
    with caplog.at_level("WARNING", logger="tunnelscope.data"):
        batches = [b.clone() for b in reader.batches(order, 32, torch.Generator().manual_seed(4))]
    assert f"2 data-loader workers need {5 * largest / 2**20:.0f} MB: using 1" in caplog.text
    expected = alone.batches(order, 32, torch.Generator().manual_seed(4))
    assert all(torch.equal(a, b) for a, b in zip(batches, expected)) and len(batches) == 3
    monkeypatch.setattr(loader.os, "statvfs", _statvfs(3 * largest - 4096))
    with pytest.raises(RuntimeError, match="^/dev/shm has"):
        next(reader.batches(order, 32, torch.Generator().manual_seed(4)))


def test_streamed_crops_are_the_same_wherever_they_are_made(tmp_path):
    """Crops made in data-loader workers (a CPU run), in this process, or from a canvas of whole
    images (an accelerator run, here on the CPU) are bitwise the same batches."""
    from tunnelscope.data.loader import SplitReader

    split, images, shapes = _varied_split(tmp_path)
    order = np.random.default_rng(0).permutation(70)
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


# resize_crops' stated tolerance against the float32 interpolate per crop, on the 0-255 scale.
BATCHED_TOLERANCE = 2e-4


def _per_crop_float32(canvas, boxes, flips, size):
    from tunnelscope.data.loader import crop_batch

    out = torch.empty((len(boxes), size, size, 3)).permute(0, 3, 1, 2)
    return crop_batch(canvas, boxes, flips, size, out, batched=False)


def _photo_canvas(n: int, seed: int):
    """Canvas of n photo-sized images (shorter side 256, aspect 3:4-4:3, some odd ones) and
    their sizes, as a 224-px store streams them."""
    rng = np.random.default_rng(seed)
    aspect = rng.uniform(3 / 4, 4 / 3, n)
    heights = np.where(aspect >= 1, 256, np.round(256 / aspect)).astype(np.int64)
    widths = np.where(aspect >= 1, np.round(256 * aspect), 256).astype(np.int64)
    heights[:2], widths[:2] = (300, 224), (224, 470)  # narrower than the crops, and a panorama
    canvas = rng.integers(0, 256, (n, heights.max(), widths.max(), 3), dtype=np.uint8)
    return torch.from_numpy(canvas), heights, widths


def test_batched_crops_match_the_per_crop_resize():
    """resize_crops (the accelerators' path, run here on the CPU in float32) against the float32
    interpolate per crop: CIFAR-like resident batches with rrc_flip boxes, photo-sized canvases
    at 224 px, and boxes at the extremes (one pixel, the whole canvas, its far corner)."""
    from tunnelscope.data.loader import crop_batch, crop_plan

    generator = torch.Generator().manual_seed(0)
    cifar = torch.randint(0, 256, (256, 32, 32, 3), dtype=torch.uint8, generator=generator)
    photos, heights, widths = _photo_canvas(12, seed=1)
    cases = [
        (cifar, *crop_plan(np.full(256, 32), np.full(256, 32), generator), 32),
        (photos, *crop_plan(heights, widths, generator), 224),
        (
            cifar[:5],
            np.array([[0, 0, 1, 1], [31, 31, 1, 1], [0, 0, 32, 32], [30, 0, 2, 32], [5, 7, 3, 20]]),
            np.array([False, True, True, False, True]),
            24,
        ),
    ]
    for canvas, boxes, flips, size in cases:
        ours = crop_batch(canvas, boxes, flips, size, batched=True)
        assert ours.dtype == torch.float32 and ours.is_contiguous(memory_format=torch.channels_last)
        reference = _per_crop_float32(canvas, boxes, flips, size)
        assert (ours - reference).abs().max() <= BATCHED_TOLERANCE, size


def test_batched_crops_are_float32_under_autocast_and_chunked_alike(monkeypatch):
    """bf16 autocast around the data path changes nothing, and neither does the chunking that
    bounds the temporaries."""
    from tunnelscope.data import loader

    canvas, heights, widths = _photo_canvas(6, seed=2)
    boxes, flips = loader.crop_plan(heights, widths, torch.Generator().manual_seed(2))
    plain = loader.resize_crops(canvas, boxes, flips, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(loader.resize_crops(canvas, boxes, flips, 64), plain)
    image_bytes = canvas[0].numel() * 4
    monkeypatch.setattr(loader, "CHUNK_BYTES", 2 * image_bytes)  # chunks of 2 images
    assert torch.equal(loader.resize_crops(canvas, boxes, flips, 64), plain)


def test_accelerators_crop_a_batch_in_a_fixed_number_of_operators(monkeypatch):
    """The batched path launches as many operators for 64 crops as for 8 (the per-crop path:
    several per crop); crop_batch takes it by device type, the CPU keeping the per-crop path."""
    from torch.profiler import ProfilerActivity, profile

    from tunnelscope.data import loader

    def launched(fn):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        return sum(e.cpu_parent is None for e in prof.events())

    canvas = torch.randint(0, 256, (64, 32, 32, 3), dtype=torch.uint8)
    boxes, flips = loader.crop_plan(np.full(64, 32), np.full(64, 32), torch.Generator().manual_seed(0))
    few, many = (launched(lambda n=n: loader.resize_crops(canvas[:n], boxes[:n], flips[:n], 32)) for n in (8, 64))
    assert few == many < 100
    assert launched(lambda: _per_crop_float32(canvas, boxes, flips, 32)) > 3 * 64
    assert not loader.batched_crops("cpu") and loader.batched_crops("cuda") and loader.batched_crops("meta")
    on_meta = loader.crop_batch(canvas.to("meta"), boxes, flips, 32)  # no CPU tensor meets a device one
    assert on_meta.device.type == "meta" and on_meta.shape == (64, 3, 32, 32)
    assert on_meta.is_contiguous(memory_format=torch.channels_last)
    calls = []
    monkeypatch.setattr(loader, "resize_crops", lambda *args: calls.append(args[0].device.type))
    loader.crop_batch(canvas.to("meta"), boxes, flips, 32)
    loader.crop_batch(canvas, boxes, flips, 32)
    assert calls == ["meta"]  # the CPU canvas went through the per-crop uint8 path
    with pytest.raises(TypeError, match="canvas tensor"):
        loader.crop_batch(list(canvas[:2]), boxes[:2], flips[:2], 32, batched=True)


def _statvfs(free: int):
    return lambda path: types.SimpleNamespace(f_bavail=free // 4096, f_frsize=4096)


def test_workers_fit_the_free_shared_memory(monkeypatch, caplog):
    """Two batches per worker and one being handed over must fit /dev/shm: fewer workers when
    they do not (one log line), a one-line error naming /dev/shm, the bytes and the fix when
    not even one does, no check where there is no /dev/shm."""
    from tunnelscope.data import loader

    batch = 90 * 2**20
    monkeypatch.setattr(loader.os, "statvfs", _statvfs(64 * 2**30))
    assert loader.shared_memory_workers(7, batch) == 7 and loader.shared_memory_workers(0, batch) == 0
    monkeypatch.setattr(loader.os, "statvfs", _statvfs(5 * batch + 4096))
    with caplog.at_level("WARNING", logger="tunnelscope.data"):
        assert loader.shared_memory_workers(7, batch) == 2
    assert len(caplog.records) == 1 and "/dev/shm has 450 MB free, 7 data-loader workers need 1350 MB" in caplog.text
    monkeypatch.setattr(loader.os, "statvfs", _statvfs(64 * 2**20))  # docker's default
    with pytest.raises(RuntimeError, match=r"^/dev/shm has 64 MB free but one data-loader worker needs 270 MB .*"):
        loader.shared_memory_workers(7, batch)
    with pytest.raises(RuntimeError, match=r"--shm-size=2g"):  # what all 7 workers need
        loader.shared_memory_workers(7, batch)

    def missing(path):
        raise FileNotFoundError(path)

    monkeypatch.setattr(loader.os, "statvfs", missing)
    assert loader.shared_memory_workers(7, batch) == 7


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
    info = pretrain(params, toy_store(tmp_path, 120), **checkpoint_files(tmp_path))
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


@pytest.mark.parametrize(("bf16_native", "precision"), [(True, "bf16"), (False, "fp32")])
def test_auto_compute_is_resolved_on_the_cpu_and_recorded(tmp_path, monkeypatch, caplog, bf16_native, precision):
    """compute auto on a CPU with and without native bf16 (mocked capability): cell.json and the
    job log say what ran (bf16 autocast or fp32; NHWC for VGGm)."""
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_f": True, "avx512_bf16": bf16_native})
    params = dict(PARAMS, augmentation="none", compute={"precision": "auto", "channels_last": "auto"})
    params["training"] = dict(TRAINING, epochs=1, warmup_epochs=0)
    with caplog.at_level("INFO", logger="tunnelscope.train"):
        pretrain(params, toy_store(tmp_path, 40), **checkpoint_files(tmp_path))
    info = json.loads((tmp_path / "info.json").read_text())
    assert (info["precision"], info["channels_last"]) == (precision, True)
    assert f"vggm11_toy_r32_none_s0: {precision}, channels_last (NHWC)" in caplog.messages


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


# --- resume state: device-independent save and restore ---------------------------------------


def _small_training(seed=0):
    """A model, AdamW with moments, a schedule and a generator, one step into training."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = lr_schedule(optimizer, warmup_steps=1, total_steps=4)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    gen = torch.Generator().manual_seed(seed + 1)
    torch.rand(3, generator=gen)  # advanced, not at its seed
    return model, optimizer, scheduler, gen


def _best(model):
    return {"score": 0.5, "epoch": 1, "weights": {k: v.detach().clone() for k, v in model.state_dict().items()}}


def _rng_draws(gen):
    """The next draws of every generator a resume restores (consumes them)."""
    return torch.rand(4, generator=gen), torch.rand(4), np.random.random_sample(4)


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")
def test_resume_state_restores_onto_the_models_device(tmp_path):
    """The training objects live on another device than the CPU (meta here, standing for a GPU):
    the generators continue exactly where they were saved, AdamW's moments land on the model's
    device and its step counts on the CPU (where AdamW hosts them unless fused or capturable),
    the kept best weights on the CPU. Mapping the file onto the model's device, as the loader
    once did (map_location=device), hands set_state meta tensors: 'RNG state must be a
    torch.ByteTensor', the crash of every GPU resume."""
    from tunnelscope.training.resume import load_train_state, save_train_state

    model, optimizer, scheduler, gen = _small_training()
    np.random.seed(3)
    save_train_state(
        tmp_path / "state.pt", "cpu", model, optimizer, scheduler, gen, "fp", [{"epoch": 1}], 1, _best(model)
    )
    expected = _rng_draws(gen)

    on_meta = _small_training(seed=7)[0].to("meta")
    meta_optimizer = torch.optim.AdamW(on_meta.parameters(), lr=0.1)
    meta_scheduler = lr_schedule(meta_optimizer, warmup_steps=1, total_steps=4)
    fresh = torch.Generator().manual_seed(99)
    torch.manual_seed(99), np.random.seed(99)  # whatever they hold, the resume restores the saved states
    history, epoch, best = load_train_state(
        tmp_path / "state.pt", torch.device("meta"), "fp", on_meta, meta_optimizer, meta_scheduler, fresh
    )
    assert (history, epoch, best["score"], best["epoch"]) == ([{"epoch": 1}], 1, 0.5, 1)
    drawn = _rng_draws(fresh)
    assert torch.equal(drawn[0], expected[0]) and torch.equal(drawn[1], expected[1])
    assert np.array_equal(drawn[2], expected[2])
    moments = meta_optimizer.state[next(on_meta.parameters())]
    assert moments["exp_avg"].is_meta and moments["exp_avg_sq"].is_meta and moments["step"].device.type == "cpu"
    assert all(w.device.type == "cpu" and torch.equal(w, model.state_dict()[k]) for k, w in best["weights"].items())
    assert meta_scheduler.state_dict() == scheduler.state_dict()
    assert (
        load_train_state(
            tmp_path / "state.pt", "meta", "other settings", on_meta, meta_optimizer, meta_scheduler, fresh
        )
        is None
    )


def test_cuda_generator_of_the_jobs_gpu_is_saved_and_restored(tmp_path, monkeypatch, caplog):
    """On a CUDA device the state holds that GPU's generator (drop_path draws from it) and a
    resume restores it there, the GPU named by the job's device (cuda:1 here, a mocked torch.cuda).
    A state written off CUDA leaves it at its seed, said in the log; on the CPU it is not touched."""
    from tunnelscope.training.resume import load_train_state, save_train_state

    calls = []
    saved = torch.arange(16, dtype=torch.uint8)  # what torch.cuda.get_rng_state returns: a CPU ByteTensor
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": calls.append(("get", device)) or saved)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": calls.append(("set", device, state)))
    gpu = torch.device("cuda", 1)

    def save_then_load(saved_on, loaded_on):
        model, optimizer, scheduler, gen = _small_training()
        path = tmp_path / f"{saved_on}-{loaded_on}.pt"
        save_train_state(path, saved_on, model, optimizer, scheduler, gen, "fp", [], 1, _best(model))
        load_train_state(path, loaded_on, "fp", model, optimizer, scheduler, gen)

    save_then_load(gpu, gpu)
    assert calls[0] == ("get", gpu) and calls[1][:2] == ("set", gpu)
    assert calls[1][2].dtype == torch.uint8 and calls[1][2].device.type == "cpu" and torch.equal(calls[1][2], saved)
    calls.clear()
    with caplog.at_level("WARNING", logger="tunnelscope.train"):
        save_then_load(torch.device("cpu"), gpu)
    assert calls == [] and "written off CUDA: the CUDA generator (drop_path) restarts from the seed" in caplog.text
    save_then_load(gpu, torch.device("cpu"))
    assert calls == [("get", gpu)]


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda s: s.update(generator=s["generator"].float()), r"TypeError: RNG state must be a torch.ByteTensor"),
        (lambda s: s.pop("optimizer"), r"KeyError: 'optimizer'"),
        (lambda s: s["model"].pop("0.weight"), r"RuntimeError: Error\(s\) in loading state_dict"),
    ],
)
def test_a_state_that_cannot_be_restored_is_named(tmp_path, damage, reason):
    """A state with the right settings that does not fit the training objects: one line naming
    the file and saying to delete it, not a raw TypeError that every retry repeats."""
    from tunnelscope.training.resume import load_train_state, save_train_state

    model, optimizer, scheduler, gen = _small_training()
    path = tmp_path / "state.pt"
    save_train_state(path, "cpu", model, optimizer, scheduler, gen, "fp", [], 1, _best(model))
    state = torch.load(path, weights_only=True)
    damage(state)
    torch.save(state, path)
    with pytest.raises(
        RuntimeError,
        match=rf"state.pt: resume state cannot be restored \({reason}.*\); delete it to train from scratch$",
    ):
        load_train_state(path, "cpu", "fp", model, optimizer, scheduler, gen)


def _train_to(out, params, store, **kwargs):
    return pretrain(params, store, **checkpoint_files(out), **kwargs)


def test_resume_of_a_state_a_gpu_wrote_is_bitwise_an_uninterrupted_run(tmp_path, monkeypatch):
    """A run pre-empted after epoch 2 of 3, its state written as a GPU job writes it (weights and
    AdamW's moments tagged cuda:0; generator states, AdamW's step counts and the kept best weights
    on the CPU), resumes on this machine, which has no CUDA: the loader maps the file onto the CPU
    itself rather than following its tags (torch.load would fail on them) and the run continues
    bitwise as one never interrupted (weights, log, cell info)."""
    from safetensors.torch import load_file

    from tunnelscope.training import loop

    params = dict(PARAMS, training=dict(TRAINING, epochs=3, checkpoint="best_val"))  # rrc_flip crops, best weights kept
    store = toy_store(tmp_path, 120)
    runs = {name: tmp_path / name for name in ("whole", "resumed")}
    for out in runs.values():
        out.mkdir()
    _train_to(runs["whole"], params, store)

    save, tag = loop.save_train_state, torch.serialization.location_tag

    def save_as_a_gpu_job_then_stop(path, device, model, optimizer, scheduler, *args):
        moments = [v for s in optimizer.state.values() for k, v in s.items() if k != "step"]
        on_gpu = {t.untyped_storage().data_ptr() for t in [*model.state_dict().values(), *moments]}
        with monkeypatch.context() as m:
            m.setattr(torch.serialization, "location_tag", lambda s: "cuda:0" if s.data_ptr() in on_gpu else tag(s))
            save(path, device, model, optimizer, scheduler, *args)
        if args[-2] == 2:  # epochs done
            raise KeyboardInterrupt("pre-empted")

    monkeypatch.setattr(loop, "save_train_state", save_as_a_gpu_job_then_stop)
    with pytest.raises(KeyboardInterrupt, match="pre-empted"):
        _train_to(runs["resumed"], params, store)
    monkeypatch.undo()
    locations = []
    torch.load(runs["resumed"] / "state.pt", weights_only=True, map_location=lambda s, loc: locations.append(loc) or s)
    assert {"cuda:0", "cpu"} <= set(locations)  # the file says what a GPU job's file says
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(runs["resumed"] / "state.pt", weights_only=True)  # followed here, its tags fail
    torch.manual_seed(1234), np.random.seed(1234)  # whatever the generators hold now
    _train_to(runs["resumed"], params, store)

    whole, resumed = (load_file(out / "ckpt.safetensors") for out in runs.values())
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)
    logs = [pd.read_csv(out / "log.csv").drop(columns="seconds") for out in runs.values()]
    pd.testing.assert_frame_equal(*logs, check_exact=True)
    infos = [json.loads((out / "info.json").read_text()) for out in runs.values()]
    assert infos[0] == infos[1] and not (runs["resumed"] / "state.pt").exists()


# --- host syncs per training step ---------------------------------------------------------------


class _HostSyncs:
    """Records what makes the host wait for a GPU, done to tensors on the meta device (which
    stands for one): reading values (item, bool, float, int, index, tolist, numpy, cpu, a copy to
    the CPU) and copies from the host that block (``to`` / ``copy_`` without non_blocking, which
    CUDA completes with a stream sync). Reads return ones, so the loop carries on; ``events`` also
    holds the test's markers, in order."""

    READS = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "cpu")

    def __init__(self, monkeypatch):
        self.events = []
        for name in self.READS:
            monkeypatch.setattr(torch.Tensor, name, self._read(name, getattr(torch.Tensor, name)))
        to, copy_ = torch.Tensor.to, torch.Tensor.copy_

        def counted_to(t, *args, **kwargs):
            device, dtype, non_blocking, *_ = torch._C._nn._parse_to(*args, **kwargs)
            if t.is_meta and device is not None and device.type == "cpu":
                self.events.append("to(cpu)")
                return torch.ones(t.shape, dtype=dtype or t.dtype)
            if t.device.type == "cpu" and device is not None and device.type == "meta" and not non_blocking:
                self.events.append("blocking to(device)")
            return to(t, *args, **kwargs)

        def counted_copy(t, src, non_blocking=False):
            if t.is_meta and src.device.type == "cpu" and not non_blocking:
                self.events.append("blocking copy_")
            if src.is_meta and not t.is_meta:
                self.events.append("copy_ to the host")
                return t.fill_(1)
            return copy_(t, src, non_blocking)

        monkeypatch.setattr(torch.Tensor, "to", counted_to)
        monkeypatch.setattr(torch.Tensor, "copy_", counted_copy)

    def _read(self, name, method):
        def counted(t, *args, **kwargs):
            if not t.is_meta:
                return method(t, *args, **kwargs)
            self.events.append(name)
            return method(torch.ones(t.shape, dtype=t.dtype), *args, **kwargs)

        return counted


class _Stop(Exception):
    pass


@pytest.mark.parametrize("mixing", [{}, {"mixup_alpha": 0.1, "cutmix_alpha": 1.0, "mix_prob": 1.0}])
def test_a_training_step_waits_for_the_device_at_most_once(tmp_path, monkeypatch, mixing):
    """The training loop on the meta device, where a value cannot be read: every read of a device
    value and every blocking copy to it (each a wait for the GPU on CUDA) is counted, the per-epoch
    evaluation left out. Batches come from the CPU reader by non-blocking copies, as streamed ones
    do. Over each epoch at most one wait per step; after the first epoch (whose first step uploads
    the normaliser's factors: two one-off copies) the only ones are the reads of the running loss
    every CHECK_EVERY steps and at the epoch's end. The loop of issue 32 waited 5 times a step
    (isfinite in an if, three .item(), the step's labels copied to the device)."""
    from contextlib import nullcontext

    from tunnelscope import runtime
    from tunnelscope.data.loader import SplitReader
    from tunnelscope.training import data, loop

    store = toy_store(tmp_path, 120)
    syncs = _HostSyncs(monkeypatch)
    events = syncs.events

    class ReaderFeedingMeta:
        def __init__(self, split, view, size, device, *args, **kwargs):
            self._reader = SplitReader(split, view, size, "cpu", *args, **kwargs)
            self.resident = self._reader.resident

        def batches(self, *args, **kwargs):
            for batch in self._reader.batches(*args, **kwargs):
                events.append("step")
                yield batch.to("meta", non_blocking=True)

    def save_then_stop(*args):
        if args[-2] == 2:  # epochs done
            raise _Stop

    order = loop.epoch_order
    monkeypatch.setattr(runtime, "job_device", lambda *args, **kwargs: torch.device("meta"))
    monkeypatch.setattr(loop, "autocast", lambda *args, **kwargs: nullcontext())  # fp32; torch.autocast has no meta
    monkeypatch.setattr(data, "SplitReader", ReaderFeedingMeta)
    monkeypatch.setattr(loop, "accuracy", lambda *args, **kwargs: events.append("eval") or 0.5)
    monkeypatch.setattr(loop, "epoch_order", lambda *args: events.append("epoch") or order(*args))
    monkeypatch.setattr(loop, "save_train_state", save_then_stop)
    monkeypatch.setattr(loop, "CHECK_EVERY", 4)
    params = dict(PARAMS, training=dict(TRAINING, epochs=3, batch_size=16, **mixing))
    with pytest.raises(_Stop):
        _train_to(tmp_path, params, store)

    epochs = [part[: part.index("eval")] for part in _cut(events, "epoch")[1:]]
    assert len(epochs) == 2
    for epoch in epochs:
        steps = _cut(epoch, "step")  # [before the first step, step 1, step 2, ...]
        waits = sum(len(step) for step in steps)
        assert len(steps) - 1 in (6, 7) and waits <= len(steps) - 1, steps  # 108 images in 16s (mixup drops 12)
    second = _cut(epochs[1], "step")
    assert all(len(step) <= 1 for step in second), second
    assert sum(second, []) == ["tolist", "tolist"]  # at step 4 and at the epoch's end


def _cut(events: list[str], marker: str) -> list[list[str]]:
    """``events`` cut at each ``marker``: what came before the first, after the first, ..."""
    parts = [[]]
    for event in events:
        if event == marker:
            parts.append([])
        else:
            parts[-1].append(event)
    return parts
