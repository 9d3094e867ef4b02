"""Backbone pretraining: the paper recipe (AdamW, label smoothing, warm-up then cosine).

Batches come from the prepared-image store as uint8 (resident on the device for small sets,
streamed by data-loader workers otherwise) and are augmented and normalised on the device.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from .config import CELL_VARIABLES, IMAGENET_MEAN, IMAGENET_STD, arch_facts, cell_id
from .datasets import epoch_order, stratified_split
from .io import atomic_path, file_sha256, write_json
from .loader import SplitReader, loader_workers
from .models import build_model, count_parameters, describe, probe_points
from .store import Store

log = logging.getLogger("tunnelscope.train")


_HELD_LOCKS: list = []  # open lock files keep their GPU claimed until the process exits


def claim_slot(count: int, lock_dir: str) -> int | None:
    """Index of the first of ``count`` slots whose lock file this process could lock, else None."""
    import fcntl

    for index in range(count):
        handle = open(os.path.join(lock_dir, f"tunnelscope-gpu{index}.lock"), "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _HELD_LOCKS.append(handle)
        return index
    return None


@functools.cache
def pick_device() -> torch.device:
    """CUDA when present, else CPU. On a multi-GPU workstation each job locks a free GPU, so
    concurrent jobs (at most the profile's ``gpu`` count) never share one; under SLURM the
    scheduler's CUDA_VISIBLE_DEVICES already isolates the job. Once per process: a job that
    asks again (a continual-learning evaluation embeds twice) keeps the GPU it claimed."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if count == 1 or "SLURM_JOB_ID" in os.environ:
        return torch.device("cuda:0")
    index = claim_slot(count, os.environ.get("TUNNELSCOPE_GPU_LOCK_DIR", tempfile.gettempdir()))
    if index is None:
        log.warning("all %d GPUs are claimed by other jobs; sharing cuda:0", count)
        index = 0
    return torch.device(f"cuda:{index}")


def autocast(device: torch.device, precision: str):
    """bf16 autocast when asked for (meant for GPUs); a no-op context for fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


class Normaliser:
    """(x / 255 - mean) / std of (n, 3, H, W) batches in [0, 255] (uint8 or float, any layout),
    as float32 channels-last, written into one buffer reused from batch to batch: on CPUs a
    fresh 38 MB batch (64 at 224 px) costs several times the arithmetic in page faults (0.33 vs
    0.05 ms per image, measured). A result is valid until the next call."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        mean, std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
        self._scale, self._shift = torch.from_numpy(1 / (255 * std)).float(), torch.from_numpy(-mean / std).float()
        self._buffer: torch.Tensor | None = None
        self._rows: tuple | None = None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        n, channels, h, w = images.shape
        buffer = self._buffer
        if buffer is None or buffer.shape[1:] != images.shape[1:] or len(buffer) < n or buffer.device != images.device:
            buffer = self._buffer = torch.empty((n, h, w, channels), dtype=torch.float32, device=images.device).permute(0, 3, 1, 2)
            # Per-element factors of one channels-last row (w pixels x 3 channels): a plain
            # vectorised multiply-add, where broadcasting over a size-3 inner axis is not.
            self._rows = (self._scale.repeat(w).to(images.device), self._shift.repeat(w).to(images.device))
        out = buffer[:n]
        out.copy_(images)
        scale, shift = self._rows
        out.permute(0, 2, 3, 1).view(-1, w * channels).mul_(scale).add_(shift)
        return out


def to_input(images_uint8: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> normalised float (N, 3, H, W), channels-last, freshly allocated."""
    return Normaliser(mean, std)(images_uint8.permute(0, 3, 1, 2))


def lr_schedule(optimizer, warmup_steps: int, total_steps: int, start_factor: float = 1e-3, min_lr: float = 0.0, milestones: list[int] | None = None, gamma: float = 0.1):
    """Linear warm-up from ``start_factor`` x the base lr to it, then cosine to ``min_lr``, or,
    given ``milestones`` (steps counted from the start), the lr times ``gamma`` at each of them
    (torch's MultiStepLR); the caller steps it once per batch or once per epoch
    (``training.schedule_step``)."""
    if milestones is None:
        after = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup_steps), eta_min=min_lr)
    else:  # SequentialLR restarts the count of the scheduler after the warm-up
        after = torch.optim.lr_scheduler.MultiStepLR(optimizer, [m - warmup_steps for m in milestones], gamma)
    if warmup_steps == 0:
        return after
    warm = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=start_factor, end_factor=1.0, total_iters=warmup_steps)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warm, after], milestones=[warmup_steps])


@torch.no_grad()
def accuracy(model, reader: SplitReader, indices: np.ndarray, labels: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD, batch_size: int = 512, columns: slice = slice(None)) -> float:
    """Top-1 of ``model`` on the eval crops of ``indices`` of a split (``labels`` aligned), the
    argmax taken over the logits in ``columns`` (a task's classes; labels counted from its first)."""
    if len(indices) == 0:
        return float("nan")
    model.eval()
    correct, seen = 0, 0
    to_model = Normaliser(mean, std)
    for crops in reader.batches(indices, batch_size):
        logits = model(to_model(crops.permute(0, 3, 1, 2)))[:, columns]
        correct += (logits.argmax(1) == labels[seen : seen + len(crops)]).sum().item()
        seen += len(crops)
    return correct / len(indices)


def _fingerprint(params: dict) -> str:
    return json.dumps(params, sort_keys=True)


def task_view(task: dict | None, num_classes: int) -> tuple[int, int, int, slice]:
    """(first, stop, label offset, logit columns) of a continual-learning task's classes: with a
    shared head the softmax spans every class and labels stay as they are; with a head per task
    it spans the task's classes, labels counted from its first. No task: every class. (AdamW's
    decay still shrinks the other tasks' rows of the classifier, but uniformly, so the argmax
    over their own logits stays as it was.)"""
    if task is None:
        return 0, num_classes, 0, slice(None)
    first, stop = task["classes"]
    if stop > num_classes:
        raise ValueError(f"task {task['index']}: classes [{first}, {stop}) exceed the {num_classes} classes of the dataset")
    if task["head"] == "per_task":
        return first, stop, first, slice(first, stop)
    return first, stop, 0, slice(None)


def _rows(labels: np.ndarray, first: int, stop: int) -> np.ndarray:
    return np.flatnonzero((labels >= first) & (labels < stop))


def _mixer(cfg: dict, num_classes: int):
    """timm's Mixup / CutMix with the recipe's label smoothing, or None when both are off."""
    if cfg["mixup_alpha"] == 0 and cfg["cutmix_alpha"] == 0:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=cfg["mixup_alpha"], cutmix_alpha=cfg["cutmix_alpha"], prob=cfg["mix_prob"], switch_prob=cfg["mix_switch_prob"], mode="batch", label_smoothing=cfg["label_smoothing"], num_classes=num_classes)


def _numpy_rng() -> dict:
    """numpy's global generator (timm's Mixup draws from it) as tensors and numbers, so a resume
    state holding it still loads with ``weights_only``."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _set_numpy_rng(state: dict) -> None:
    np.random.set_state(("MT19937", state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"], state["gauss"]))


def _freeze(model, frozen, cell: str) -> list:
    """Stop the gradients of the named modules' own parameters; returns those modules."""
    modules = dict(model.named_modules())
    unknown = [name for name in frozen if name not in modules]
    if unknown:
        raise ValueError(f"cell {cell}: frozen modules {unknown[:3]} are not modules of the model")
    for name in frozen:
        for p in modules[name].parameters(recurse=False):
            p.requires_grad_(False)
    return [modules[name] for name in frozen]


def pretrain(
    params: dict,
    store: Store,
    checkpoint: str,
    train_log: str,
    info_path: str,
    state_path: str,
    threads: int = 1,
    channels_last: bool = False,
    resident_mb: float = 1024,
    init_checkpoint: str | None = None,
    frozen: tuple[str, ...] | list[str] = (),
    freeze_norm_stats: bool = True,
) -> dict:
    """Train one cell's backbone; write checkpoint, per-epoch log and cell info.

    Images come from the prepared ``store``: kept on the device when a split has one image size
    and fits ``resident_mb``, else streamed batch by batch (``loader.SplitReader``); either way
    the same crops, so results do not depend on it. ``state_path`` holds the full training state
    after every epoch; a rerun with the same params resumes from it (after a crash or a cluster
    pre-emption) and deletes it at the end. ``training.checkpoint`` picks the weights kept: the
    last epoch's, or the best epoch's on the held-out split (best_val) or on the ID test split
    (best_test, the paper's choice).

    Continual learning: ``params['task']`` (index, classes [first, stop), head) trains and scores
    on those classes only; ``init_checkpoint`` starts from a saved backbone's weights; the
    ``frozen`` modules (names) keep their parameters, and with ``freeze_norm_stats`` stay in eval
    mode, so their normalisation statistics stay too.
    """
    torch.set_num_threads(max(1, threads))
    device = pick_device()
    cfg, seed = params["training"], params["seed"]
    torch.manual_seed(seed)
    cell = cell_id(**{k: params[k] for k in CELL_VARIABLES})
    norm, size = params["normalization"], params["resolution"]
    augment = params["augmentation"] == "rrc_flip"
    selection = cfg["checkpoint"]

    store.check_resolution(size)
    train, test = store.splits["train"], store.splits["test"]
    try:
        first, stop, offset, columns = task_view(params.get("task"), store.num_classes)
    except ValueError as exc:
        raise ValueError(f"cell {cell}: {exc}") from exc
    rows = _rows(train.labels, first, stop)
    tr_idx, val_idx = (rows[i] for i in stratified_split(train.labels[rows], cfg["val_fraction"], seed, stream=7919))
    test_idx = _rows(test.labels, first, stop)
    if selection != "last" and len({"best_val": val_idx, "best_test": test_idx}[selection]) == 0:
        split = "held-out split (training.val_fraction holds out no image of any class)" if selection == "best_val" else "test split"
        raise ValueError(f"cell {cell}: training.checkpoint {selection} selects on an empty {split}")
    # Data-loader processes when a split streams: as many as the device wants for training's
    # batches, at most one each for the (short) evaluation passes.
    workers = loader_workers(device, threads)
    fit = SplitReader(train, "whole" if augment else "center", size, device, resident_mb, workers)
    train_eval = SplitReader(train, "center", size, device, resident_mb, min(workers, 1)) if augment else fit
    test_eval = SplitReader(test, "center", size, device, resident_mb, min(workers, 1))
    labels = torch.from_numpy(train.labels).to(device) - offset
    y_val = labels[torch.from_numpy(val_idx).to(device)]
    y_te = torch.from_numpy(test.labels[test_idx]).to(device) - offset
    where = {True: "on the device", False: "streamed"}
    log.info("%s: %d train images (%s), %d test (%s)", cell, len(rows), where[fit.resident], len(test_idx), where[test_eval.resident])

    def evaluate(reader, indices, y):  # in training-sized batches: memory stays what training needs
        return accuracy(model, reader, indices, y, norm["mean"], norm["std"], cfg["batch_size"], columns)

    model = build_model(params["arch"], store.num_classes, params["model"]["width"], size, drop_path=cfg["drop_path"]).to(device)
    if init_checkpoint:
        try:
            model.load_state_dict(load_file(init_checkpoint, device=str(device)))
        except Exception as exc:  # a missing, corrupt or mismatched checkpoint
            raise RuntimeError(f"cell {cell}: initial weights {init_checkpoint} do not load into {params['arch']} ({exc})") from exc
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    frozen_modules = _freeze(model, frozen, cell)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"cell {cell}: every parameter is frozen; nothing to train")
    precision = params["compute"]["precision"]
    lr = cfg["lr"] * (cfg["batch_size"] / cfg["lr_scaling_batch"] if cfg["lr_scaling_batch"] else 1.0)
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=cfg["weight_decay"])
    mixer = _mixer(cfg, len(range(store.num_classes)[columns]))  # as many classes as logits
    # Mixup pairs each batch with its reverse, so it needs even batches: the incomplete last
    # batch of an epoch is dropped, as timm's training loader does.
    steps_per_epoch = len(tr_idx) // cfg["batch_size"] if mixer else math.ceil(len(tr_idx) / cfg["batch_size"])
    if mixer and (steps_per_epoch == 0 or cfg["batch_size"] % 2):
        raise ValueError(f"cell {cell}: mixup / CutMix need an even training.batch_size of at most the {len(tr_idx)} training images, got {cfg['batch_size']}")
    per_batch = cfg["schedule_step"] == "batch"
    units = steps_per_epoch if per_batch else 1
    milestones = [m * units for m in cfg["step_milestones"]] if cfg["schedule"] == "step" else None
    scheduler = lr_schedule(optimizer, cfg["warmup_epochs"] * units, cfg["epochs"] * units, cfg["warmup_start_factor"], cfg["min_lr"], milestones, cfg["step_gamma"])
    gen = torch.Generator().manual_seed(seed)
    if mixer:
        np.random.seed(seed)
    history: list[dict] = []
    start_epoch = 0
    best = {"score": -1.0, "epoch": 0, "weights": None}  # the kept epoch under best_val / best_test
    # A resume state is only valid for the same settings, starting weights and frozen parts.
    fingerprint = _fingerprint({**params, "init": file_sha256(init_checkpoint) if init_checkpoint else None, "frozen": sorted(frozen), "freeze_norm_stats": freeze_norm_stats})

    state_file = Path(state_path)
    if state_file.exists():
        try:
            # weights_only: a state file is data; a crafted pickle is refused, never executed.
            state = torch.load(state_file, map_location=device, weights_only=True)
        except Exception as exc:  # UnpicklingError, RuntimeError (truncated zip), EOFError, ...
            raise RuntimeError(f"{state_file}: resume state cannot be loaded safely ({type(exc).__name__}); delete it to train from scratch") from exc
        if state["fingerprint"] == fingerprint:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            gen.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            _set_numpy_rng(state["numpy_rng"])
            history, start_epoch = json.loads(state["history"]), int(state["epoch"])
            best = {"score": float(state["best_score"]), "epoch": int(state["best_epoch"]), "weights": state["best_weights"] or None}
            log.info("resuming %s from saved state after epoch %d", cell, start_epoch)
        else:
            log.info("ignoring saved state %s: it was made with other settings", state_file)

    if mixer:
        from timm.loss import SoftTargetCrossEntropy

        loss_fn = SoftTargetCrossEntropy()
    else:
        loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg["label_smoothing"])
    to_model = Normaliser(norm["mean"], norm["std"])
    for epoch in range(start_epoch, cfg["epochs"]):
        model.train()
        if freeze_norm_stats:
            for module in frozen_modules:
                module.eval()
        t0 = time.perf_counter()
        order = tr_idx[epoch_order(len(tr_idx), cfg["repeated_augmentation"], gen).numpy()][: steps_per_epoch * cfg["batch_size"]]
        total_loss, correct = 0.0, 0
        bar = tqdm(total=steps_per_epoch, desc=f"{cell} epoch {epoch + 1}/{cfg['epochs']}", leave=False, mininterval=1.0)
        for step, batch in enumerate(fit.batches(order, cfg["batch_size"], gen)):
            y = labels[torch.from_numpy(order[step * cfg["batch_size"] : (step + 1) * cfg["batch_size"]]).to(device)]
            x = to_model(batch if augment else batch.permute(0, 3, 1, 2))
            target = y
            if mixer:
                x, target = mixer(x, y)
            with autocast(device, precision):
                logits = model(x)[:, columns]
                loss = loss_fn(logits, target)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"cell {cell}: non-finite training loss ({loss.item()}) in epoch {epoch + 1}, step {step + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if per_batch:
                scheduler.step()
            total_loss += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.close()
        row = {
            "epoch": epoch + 1,
            "train_loss": total_loss / len(order),
            "train_acc": correct / len(order),
            "val_acc": evaluate(train_eval, val_idx, y_val),
            "lr": optimizer.param_groups[0]["lr"],
        }
        if selection == "best_test":
            row["test_acc"] = evaluate(test_eval, test_idx, y_te)
        if not per_batch:
            scheduler.step()
        row["seconds"] = time.perf_counter() - t0
        score = {"best_val": row["val_acc"], "best_test": row.get("test_acc")}.get(selection)
        if score is not None and score > best["score"]:
            best = {"score": score, "epoch": epoch + 1, "weights": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
        history.append(row)
        log.info("%s epoch %d/%d loss %.4f train %.3f val %.3f (%.1fs)", cell, row["epoch"], cfg["epochs"], row["train_loss"], row["train_acc"], row["val_acc"], row["seconds"])
        _save_state(state_file, model, optimizer, scheduler, gen, fingerprint, history, epoch + 1, best)

    kept = history[-1]
    if selection != "last" and best["weights"] is None:
        raise RuntimeError(f"cell {cell}: checkpoint {selection} found no epoch with a score (is the {selection.removeprefix('best_')} split empty?)")
    if selection != "last":
        model.load_state_dict(best["weights"])
        kept = history[best["epoch"] - 1]
        log.info("%s: kept the weights of epoch %d (%s %.4f)", cell, best["epoch"], selection, best["score"])
    test_acc = evaluate(test_eval, test_idx, y_te)
    info = {
        **backbone_info(model, params, params["arch"], store.num_classes, len(rows), paper_parameter_count(params["arch"], params["model"]["width"], size)),
        "n_fit": len(tr_idx),
        "checkpoint_rule": selection,
        "checkpoint_epoch": kept["epoch"],
        "final_train_acc": kept["train_acc"],
        "final_val_acc": kept["val_acc"],
        "test_acc": test_acc,
        "device": str(device),
    }
    if params.get("task") is not None:
        info |= {"task": params["task"], "init_checkpoint": init_checkpoint, "trainable_params": sum(p.numel() for p in trainable)}
    save_backbone(model, checkpoint, {"params": params, "num_classes": store.num_classes})
    with atomic_path(train_log) as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False)
    write_json(info, info_path)
    state_file.unlink(missing_ok=True)
    log.info("%s done: test accuracy %.3f, %d parameters", cell, test_acc, info["params"])
    return info


# The over-parameterisation level gamma = P / N as Harun et al. code it: N = the whole ID training
# split (no hold-out subtracted), P = the count their architecture table quotes for a 100-class
# head whatever the ID set (config.ARCHS params_m); for other widths and models (MLPs, whose count
# grows with the resolution, among them), the count with a 100-class head rounded to 0.01M.
GAMMA_HEAD_CLASSES = 100


def backbone_info(model, params: dict, arch: str, id_classes: int, n_train: int, gamma_params: int | None = None) -> dict:
    """The cell.json fields every backbone has: cell variables, the analysis variables of the
    built ``arch``, size, gamma and the number of probe points. ``gamma_params``: P of gamma
    (default: the model's own count, as for published backbones)."""
    points = probe_points(model, "default", params["model"].get("probe_points", "default"))
    n_params = count_parameters(model)
    gamma_params = n_params if gamma_params is None else gamma_params
    return {
        **{k: params[k] for k in CELL_VARIABLES},
        **describe(model, arch, params["resolution"], points),
        "label": (arch_facts(params["arch"]) or {}).get("label", params["arch"]),  # a published model: its entry's name
        "width": params["model"]["width"],
        "id_classes": id_classes,
        "n_train": int(n_train),
        "params": n_params,
        "gamma_params": gamma_params,
        "gamma": gamma_params / n_train,
        "num_layers": len(points),
    }


def paper_parameter_count(arch: str, width: float, resolution: int) -> int:
    """P of gamma for a trained backbone: the paper's count for its architectures at full
    width, else the count with a GAMMA_HEAD_CLASSES-way head rounded to 0.01M."""
    facts = arch_facts(arch)
    if facts and facts["params_m"] and width == 1.0:
        return int(round(facts["params_m"] * 1e6))
    count = count_parameters(build_model(arch, GAMMA_HEAD_CLASSES, width, resolution))
    return int(round(count / 1e4) * 1e4)


def save_backbone(model, checkpoint: str, meta: dict) -> None:
    """Weights as safetensors with ``meta`` (what ``load_backbone`` rebuilds from), atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(checkpoint) as tmp:
        save_file(state, tmp, metadata={"tunnelscope": json.dumps(meta, sort_keys=True)})


def _save_state(path: Path, model, optimizer, scheduler, gen, fingerprint: str, history, epoch, best):
    state = {
        "best_score": best["score"],
        "best_epoch": best["epoch"],
        "best_weights": best["weights"] or {},
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "generator": gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": _numpy_rng(),
        "history": json.dumps(history),
        "epoch": epoch,
        "fingerprint": fingerprint,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def import_pretrained(params: dict, checkpoint: str, train_log: str, info_path: str) -> dict:
    """A published backbone in place of pretraining: load its weights (clear error when they do
    not fit the architecture) and write the same three outputs as ``pretrain``."""
    from .models import load_pretrained, model_preprocessing

    spec = params["pretrained"]
    model = load_pretrained(spec, params["resolution"])
    own = model_preprocessing(model, spec["arch"])
    used = {"mean": spec["mean"] or own["mean"], "std": spec["std"] or own["std"], "interpolation": spec["interpolation"], "crop_pct": spec["crop_pct"], "resolution": params["resolution"]}
    for key in ("interpolation", "crop_pct", "resolution"):
        if used[key] != own[key] and not (key == "crop_pct" and math.isclose(used[key], own[key], abs_tol=1e-3)):
            log.warning("%s: %s %s differs from the model's own %s (set pretrained.%s.%s to match)", params["arch"], key, used[key], own[key], params["arch"], key)
    info = {
        **backbone_info(model, params, spec["arch"], spec["num_classes"], spec["n_train"], spec.get("gamma_params")),
        "final_train_acc": None,
        "final_val_acc": None,
        "test_acc": None,
        "source": spec.get("weights") or spec.get("hf_cache") or "download",
        "preprocessing": used,
    }
    # The checkpoint names the real architecture, so embed rebuilds it like a trained cell's.
    save_backbone(model, checkpoint, {"params": {**params, "arch": spec["arch"]}, "num_classes": spec["num_classes"], "mean": used["mean"], "std": used["std"]})
    with atomic_path(train_log) as tmp:
        pd.DataFrame(columns=["epoch", "train_loss", "train_acc", "val_acc", "lr", "seconds"]).to_csv(tmp, index=False)
    write_json(info, info_path)
    log.info("%s: %s with %d parameters, %d probe points", params["arch"], spec["arch"], info["params"], info["num_layers"])
    return info


def load_backbone(checkpoint: str, device=None):
    """Rebuild a pretrained backbone from its safetensors checkpoint (no pickle involved)."""
    from safetensors import safe_open

    try:
        with safe_open(checkpoint, framework="pt") as fh:
            meta = json.loads(fh.metadata()["tunnelscope"])
        weights = load_file(checkpoint)
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise RuntimeError(f"{checkpoint}: not a readable tunnelscope checkpoint ({exc})") from exc
    p = meta["params"]
    model = build_model(p["arch"], meta["num_classes"], p["model"]["width"], p["resolution"])
    model.load_state_dict(weights)
    return model.to(device or "cpu").eval(), meta
