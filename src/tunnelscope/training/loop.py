"""Backbone pretraining: the paper recipe (AdamW, label smoothing, warm-up then cosine).

Batches come from the prepared-image store as uint8 (resident on the device for small sets,
streamed by data-loader workers otherwise) and are augmented and normalised on the device.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tunnelscope.data.loader import SplitReader, loader_workers
from tunnelscope.data.splits import epoch_order, stratified_split
from tunnelscope.data.store import ImageStore
from tunnelscope.data.transforms import Normaliser
from tunnelscope.io import atomic_path, file_sha256, write_csv, write_json
from tunnelscope.joblog import progress_bar
from tunnelscope.models.build import build_model, check_forward_order, probe_points
from tunnelscope.models.checkpoints import read_checkpoint, save_backbone
from tunnelscope.models.evaluation import accuracy
from tunnelscope.registry import (
    CELL_VARIABLES,
    cell_id,
)
from tunnelscope.runtime import autocast, device_info, job_device, resolve_compute
from tunnelscope.training.backbones import backbone_info, paper_parameter_count
from tunnelscope.training.schedule import lr_schedule

log = logging.getLogger("tunnelscope.train")


# Steps between reads of an epoch's running loss by the host (a GPU sync each): a non-finite loss
# stops training within this many steps (it is caught, not saved: the state is written at epoch
# ends), and the progress bar's loss is this fresh.
CHECK_EVERY = 25


class _EpochTotals:
    """An epoch's loss sum and correct count, accumulated on the device and read by the host
    only when asked (every ``CHECK_EVERY`` steps and at the epoch's end), so a training step never
    waits for the GPU. The loss sum is float64 as the Python float it replaces: CPU logs are
    bitwise what per-step ``.item()`` calls gave."""

    def __init__(self, device, cell: str, epoch: int):
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.cell, self.epoch, self.read_steps = cell, epoch, 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.loss_sum += loss.detach().double() * len(y)
        self.correct += (logits.argmax(1) == y).sum()

    def read(self, steps: int) -> tuple[float, int]:
        """(loss sum, correct) after ``steps`` steps, in one copy to the host; a FloatingPointError
        naming the steps since the last read when a loss among them was not finite."""
        loss_sum, correct = torch.stack([self.loss_sum, self.correct.double()]).tolist()
        if not math.isfinite(loss_sum):
            raise FloatingPointError(
                f"cell {self.cell}: non-finite training loss ({loss_sum}) in epoch {self.epoch}, steps {self.read_steps + 1}-{steps}"
            )
        self.read_steps = steps
        return loss_sum, int(correct)


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
        raise ValueError(
            f"task {task['index']}: classes [{first}, {stop}) exceed the {num_classes} classes of the dataset"
        )
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

    return Mixup(
        mixup_alpha=cfg["mixup_alpha"],
        cutmix_alpha=cfg["cutmix_alpha"],
        prob=cfg["mix_prob"],
        switch_prob=cfg["mix_switch_prob"],
        mode="batch",
        label_smoothing=cfg["label_smoothing"],
        num_classes=num_classes,
    )


def _numpy_rng() -> dict:
    """numpy's global generator (timm's Mixup draws from it) as tensors and numbers, so a resume
    state holding it still loads with ``weights_only``."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "gauss": float(gauss),
    }


def _set_numpy_rng(state: dict) -> None:
    np.random.set_state(
        ("MT19937", state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"], state["gauss"])
    )


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
    store: ImageStore,
    checkpoint: str,
    train_log: str,
    info_path: str,
    state_path: str,
    threads: int = 1,
    channels_last: bool | str | None = None,
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
    pre-emption) and deletes it at the end. ``params['compute']``'s precision and channels_last
    (``auto`` when missing; ``channels_last`` given here overrides it, for benchmarks) are resolved
    for the device and model (``runtime.resolve_compute``), logged and recorded in the cell info.
    ``training.checkpoint`` picks the weights kept: the
    last epoch's, or the best epoch's on the held-out split (best_val) or on the ID test split
    (best_test, the paper's choice).

    Continual learning: ``params['task']`` (index, classes [first, stop), head) trains and scores
    on those classes only; ``init_checkpoint`` starts from a saved backbone's weights; the
    ``frozen`` modules (names) keep their parameters, and with ``freeze_norm_stats`` stay in eval
    mode, so their normalisation statistics stay too.
    """
    torch.set_num_threads(max(1, threads))
    device = job_device(params["compute"])  # the job's: set up by its script, or here outside a workflow
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
        split = (
            "held-out split (training.val_fraction holds out no image of any class)"
            if selection == "best_val"
            else "test split"
        )
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
    log.info(
        "%s: %d train images (%s), %d test (%s)",
        cell,
        len(rows),
        where[fit.resident],
        len(test_idx),
        where[test_eval.resident],
    )

    def evaluate(reader, indices, y):  # in training-sized batches: memory stays what training needs
        return accuracy(model, reader, indices, y, norm["mean"], norm["std"], cfg["batch_size"], columns)

    model = build_model(
        params["arch"],
        store.num_classes,
        params["model"]["width"],
        size,
        drop_path=cfg["drop_path"],
        kwargs=params["model"].get("kwargs"),
        key=f"cell {cell}: grid.arch",
    ).to(device)
    rule = params["model"].get("probe_points", "default")
    probe_points(model, "default", rule)  # a bad name fails before training
    check_forward_order(model, rule, size)
    if init_checkpoint:
        _, weights = read_checkpoint(init_checkpoint)  # checked: a damaged one is named, never used
        try:
            model.load_state_dict(weights)
        except Exception as exc:  # a missing, corrupt or mismatched checkpoint
            raise RuntimeError(
                f"cell {cell}: initial weights {init_checkpoint} do not load into {params['arch']} ({exc})"
            ) from exc
    requested = params["compute"] if channels_last is None else {**params["compute"], "channels_last": channels_last}
    compute = resolve_compute(requested, device, model)
    log.info("%s: %s, %s", cell, compute["precision"], "channels_last (NHWC)" if compute["channels_last"] else "NCHW")
    if compute["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    frozen_modules = _freeze(model, frozen, cell)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"cell {cell}: every parameter is frozen; nothing to train")
    precision = compute["precision"]
    lr = cfg["lr"] * (cfg["batch_size"] / cfg["lr_scaling_batch"] if cfg["lr_scaling_batch"] else 1.0)
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=cfg["weight_decay"])
    mixer = _mixer(cfg, len(range(store.num_classes)[columns]))  # as many classes as logits
    # Mixup pairs each batch with its reverse, so it needs even batches: the incomplete last
    # batch of an epoch is dropped, as timm's training loader does.
    steps_per_epoch = len(tr_idx) // cfg["batch_size"] if mixer else math.ceil(len(tr_idx) / cfg["batch_size"])
    if mixer and (steps_per_epoch == 0 or cfg["batch_size"] % 2):
        raise ValueError(
            f"cell {cell}: mixup / CutMix need an even training.batch_size of at most the {len(tr_idx)} training images, got {cfg['batch_size']}"
        )
    per_batch = cfg["schedule_step"] == "batch"
    units = steps_per_epoch if per_batch else 1
    milestones = [m * units for m in cfg["step_milestones"]] if cfg["schedule"] == "step" else None
    scheduler = lr_schedule(
        optimizer,
        cfg["warmup_epochs"] * units,
        cfg["epochs"] * units,
        cfg["warmup_start_factor"],
        cfg["min_lr"],
        milestones,
        cfg["step_gamma"],
    )
    gen = torch.Generator().manual_seed(seed)
    if mixer:
        np.random.seed(seed)
    history: list[dict] = []
    start_epoch = 0
    best = {"score": -1.0, "epoch": 0, "weights": None}  # the kept epoch under best_val / best_test
    # A resume state is only valid for the same settings (auto resolved the same way: a state
    # moved to another machine), starting weights and frozen parts.
    fingerprint = _fingerprint(
        {
            **params,
            "resolved": compute,
            "init": file_sha256(init_checkpoint) if init_checkpoint else None,
            "frozen": sorted(frozen),
            "freeze_norm_stats": freeze_norm_stats,
        }
    )

    state_file = Path(state_path)
    if state_file.exists():
        resumed = load_train_state(state_file, device, fingerprint, model, optimizer, scheduler, gen)
        if resumed is None:
            log.info("ignoring saved state %s: it was made with other settings", state_file)
        else:
            history, start_epoch, best = resumed
            log.info("resuming %s from saved state after epoch %d", cell, start_epoch)

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
        order = tr_idx[epoch_order(len(tr_idx), cfg["repeated_augmentation"], gen).numpy()][
            : steps_per_epoch * cfg["batch_size"]
        ]
        # The labels of the epoch's order go to the device once, not in a copy per step; from
        # pageable memory a non-blocking copy is staged before it returns, with no wait for the GPU.
        epoch_labels = labels[torch.from_numpy(order).to(device, non_blocking=True)]
        totals = _EpochTotals(device, cell, epoch + 1)
        bar = progress_bar(
            total=steps_per_epoch, desc=f"{cell} epoch {epoch + 1}/{cfg['epochs']}", leave=False, mininterval=1.0
        )
        for step, batch in enumerate(fit.batches(order, cfg["batch_size"], gen)):
            y = epoch_labels[step * cfg["batch_size"] : (step + 1) * cfg["batch_size"]]
            x = to_model(batch if augment else batch.permute(0, 3, 1, 2))
            target = y
            if mixer:
                x, target = mixer(x, y)
            with autocast(device, precision):
                logits = model(x)[:, columns]
                loss = loss_fn(logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if per_batch:
                scheduler.step()
            totals.add(loss, logits, y)
            bar.update()
            if (step + 1) % CHECK_EVERY == 0 and step + 1 < steps_per_epoch:
                total_loss, _ = totals.read(step + 1)
                bar.set_postfix(loss=f"{total_loss / ((step + 1) * cfg['batch_size']):.3f}")  # the epoch's mean so far
        total_loss, correct = totals.read(steps_per_epoch)
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
            best = {
                "score": score,
                "epoch": epoch + 1,
                "weights": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            }
        history.append(row)
        log.info(
            "%s epoch %d/%d loss %.4f train %.3f val %.3f (%.1fs)",
            cell,
            row["epoch"],
            cfg["epochs"],
            row["train_loss"],
            row["train_acc"],
            row["val_acc"],
            row["seconds"],
        )
        save_train_state(state_file, device, model, optimizer, scheduler, gen, fingerprint, history, epoch + 1, best)

    kept = history[-1]
    if selection != "last" and best["weights"] is None:
        raise RuntimeError(
            f"cell {cell}: checkpoint {selection} found no epoch with a score (is the {selection.removeprefix('best_')} split empty?)"
        )
    if selection != "last":
        model.load_state_dict(best["weights"])
        kept = history[best["epoch"] - 1]
        log.info("%s: kept the weights of epoch %d (%s %.4f)", cell, best["epoch"], selection, best["score"])
    test_acc = evaluate(test_eval, test_idx, y_te)
    info = {
        **backbone_info(
            model,
            params,
            params["arch"],
            store.num_classes,
            len(rows),
            paper_parameter_count(params["arch"], params["model"]["width"], size, params["model"].get("kwargs")),
        ),
        "n_fit": len(tr_idx),
        "checkpoint_rule": selection,
        "checkpoint_epoch": kept["epoch"],
        "final_train_acc": kept["train_acc"],
        "final_val_acc": kept["val_acc"],
        "test_acc": test_acc,
        **compute,
        **device_info(device),
    }
    if params.get("task") is not None:
        info |= {
            "task": params["task"],
            "init_checkpoint": init_checkpoint,
            "trainable_params": sum(p.numel() for p in trainable),
        }
    save_backbone(model, checkpoint, {"params": params, "num_classes": store.num_classes})
    write_csv(pd.DataFrame(history), train_log)
    write_json(info, info_path)
    state_file.unlink(missing_ok=True)
    log.info("%s done: test accuracy %.3f, %d parameters", cell, test_acc, info["params"])
    return info


def save_train_state(path: Path, device, model, optimizer, scheduler, gen, fingerprint: str, history, epoch, best):
    """Everything a rerun needs to continue bitwise after ``epoch``: weights, optimiser and
    schedule, the kept best weights (on the CPU), the history, and every generator the training
    draws from: ``gen`` (orders, crops), torch's and numpy's global ones (timm's Mixup), and on a
    CUDA device its generator (drop_path's draws). Generator states are CPU byte tensors."""
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
    if torch.device(device).type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_train_state(
    path: Path, device, fingerprint: str, model, optimizer, scheduler, gen
) -> tuple[list[dict], int, dict] | None:
    """Restore what ``save_train_state`` wrote into the training objects: (history, epochs done,
    best) or None when the state was made with other settings (``fingerprint``). Whatever device
    wrote it, the file is read onto the CPU: generator states must stay CPU byte tensors (set_state
    refuses others), weights and AdamW's moments are copied onto the model's device by
    ``load_state_dict``, and AdamW's ``step`` counts stay on the CPU, where AdamW keeps them when
    neither fused nor capturable (on a device each step would read them back to the host).
    A RuntimeError naming the file when it cannot be read or restored."""
    try:
        # weights_only: a state file is data; a crafted pickle is refused, never executed.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (truncated zip), EOFError, ...
        raise RuntimeError(
            f"{path}: resume state cannot be loaded safely ({type(exc).__name__}); delete it to train from scratch"
        ) from exc
    try:
        if state["fingerprint"] != fingerprint:
            return None
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        _set_numpy_rng(state["numpy_rng"])
        _set_cuda_rng(state.get("cuda_rng"), torch.device(device), path)
        best = {
            "score": float(state["best_score"]),
            "epoch": int(state["best_epoch"]),
            "weights": state["best_weights"] or None,
        }
        return json.loads(state["history"]), int(state["epoch"]), best
    except Exception as exc:  # a key missing, a tensor of another shape or type, ...
        first_line = str(exc).strip().split("\n")[0]  # load_state_dict lists every key on lines of its own
        reason = f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__
        raise RuntimeError(
            f"{path}: resume state cannot be restored ({reason}); delete it to train from scratch"
        ) from exc


def _set_cuda_rng(state: torch.Tensor | None, device: torch.device, path: Path) -> None:
    """Restore the CUDA generator of ``device`` (the job's GPU, whatever its index)."""
    if device.type != "cuda":
        return  # a GPU run's state resumed elsewhere: nothing draws from CUDA here
    if state is None:
        log.warning("%s was written off CUDA: the CUDA generator (drop_path) restarts from the seed", path)
        return
    torch.cuda.set_rng_state(state, device)
