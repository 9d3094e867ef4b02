"""Backbone pretraining: the paper recipe (AdamW, label smoothing, warm-up then cosine).

pretrain() in named steps: the data (training/data.py: batches from the prepared-image store
as uint8, resident on the device for small sets, streamed otherwise, augmented and normalised on
the device), the model and its optimisation, resuming (training/resume.py), the epochs, the
checkpoint kept and the outputs written.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tunnelscope.data.loader import SplitReader
from tunnelscope.data.splits import epoch_order
from tunnelscope.data.store import ImageStore
from tunnelscope.data.transforms import Normaliser
from tunnelscope.io import file_sha256, write_csv, write_json
from tunnelscope.joblog import progress_bar
from tunnelscope.models.build import build_model, check_forward_order, probe_points
from tunnelscope.models.checkpoints import read_checkpoint, save_backbone
from tunnelscope.models.evaluation import accuracy
from tunnelscope.registry import (
    CELL_VARIABLES,
    cell_id,
)
from tunnelscope.runtime import JobRuntime, autocast, device_info, resolve_compute
from tunnelscope.training.backbones import backbone_info, paper_parameter_count
from tunnelscope.training.data import TrainingData, training_data
from tunnelscope.training.resume import load_train_state, save_train_state
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


def _initial_model(params: dict, num_classes: int, device, cell: str, init_checkpoint: str | None):
    """The cell's model on the device, its probe points checked, from ``init_checkpoint``'s
    weights if given (its initialisation draws from torch's generator either way)."""
    size = params["resolution"]
    model = build_model(
        params["arch"],
        num_classes,
        params["model"]["width"],
        size,
        drop_path=params["training"]["drop_path"],
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
    return model


@dataclass
class _Optimisation:
    """The optimisation step's result: what each training step uses."""

    compute: dict  # precision and channels_last as resolved
    frozen_modules: list
    trainable: list
    optimizer: torch.optim.Optimizer
    scheduler: object
    mixer: object  # timm's Mixup, or None
    loss_fn: torch.nn.Module
    steps_per_epoch: int
    per_batch: bool  # the schedule steps every batch, else every epoch


def _optimisation(params, model, device, runtime: JobRuntime, data: TrainingData, num_classes: int, frozen, cell: str):
    """Resolve the compute settings (the model turned channels_last in place where they say so),
    freeze the ``frozen`` modules, and set up AdamW, the schedule, mixing and the loss."""
    cfg = params["training"]
    compute = resolve_compute(runtime.compute(params["compute"]), device, model)
    log.info("%s: %s, %s", cell, compute["precision"], "channels_last (NHWC)" if compute["channels_last"] else "NCHW")
    if compute["channels_last"]:
        model.to(memory_format=torch.channels_last)
    frozen_modules = _freeze(model, frozen, cell)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"cell {cell}: every parameter is frozen; nothing to train")
    lr = cfg["lr"] * (cfg["batch_size"] / cfg["lr_scaling_batch"] if cfg["lr_scaling_batch"] else 1.0)
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=cfg["weight_decay"])
    mixer = _mixer(cfg, len(range(num_classes)[data.columns]))  # as many classes as logits
    # Mixup pairs each batch with its reverse, so it needs even batches: the incomplete last
    # batch of an epoch is dropped, as timm's training loader does.
    n_fit = len(data.fit_idx)
    steps_per_epoch = n_fit // cfg["batch_size"] if mixer else math.ceil(n_fit / cfg["batch_size"])
    if mixer and (steps_per_epoch == 0 or cfg["batch_size"] % 2):
        raise ValueError(
            f"cell {cell}: mixup / CutMix need an even training.batch_size of at most the {n_fit} training images, got {cfg['batch_size']}"
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
    if mixer:
        from timm.loss import SoftTargetCrossEntropy

        loss_fn = SoftTargetCrossEntropy()
    else:
        loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg["label_smoothing"])
    return _Optimisation(
        compute, frozen_modules, trainable, optimizer, scheduler, mixer, loss_fn, steps_per_epoch, per_batch
    )


@dataclass
class _Run:
    """One training run's fixed parts, for its epochs and its end."""

    params: dict
    cell: str
    device: torch.device
    model: torch.nn.Module
    data: TrainingData
    opt: _Optimisation
    gen: torch.Generator  # orders and crops
    freeze_norm_stats: bool
    to_model: Normaliser

    def evaluate(self, reader: SplitReader, indices: np.ndarray, y: torch.Tensor) -> float:
        """Top-1 in training-sized batches: memory stays what training needs."""
        norm, cfg = self.params["normalization"], self.params["training"]
        return accuracy(self.model, reader, indices, y, norm["mean"], norm["std"], cfg["batch_size"], self.data.columns)


def _resume(run: _Run, state_file: Path, fingerprint: str) -> tuple[list[dict], int, dict]:
    """(history, epochs done, best) from a saved state made with the same settings, else a fresh start."""
    fresh = [], 0, {"score": -1.0, "epoch": 0, "weights": None}  # best: the kept epoch under best_val / best_test
    if not state_file.exists():
        return fresh
    opt = run.opt
    resumed = load_train_state(state_file, run.device, fingerprint, run.model, opt.optimizer, opt.scheduler, run.gen)
    if resumed is None:
        log.info("ignoring saved state %s: it was made with other settings", state_file)
        return fresh
    log.info("resuming %s from saved state after epoch %d", run.cell, resumed[1])
    return resumed


def _fit_epoch(run: _Run, epoch: int) -> tuple[float, int, int]:
    """One pass over the epoch's order: (loss sum, correct, images seen)."""
    cfg, data, opt, model = run.params["training"], run.data, run.opt, run.model
    batch_size, augment = cfg["batch_size"], run.params["augmentation"] == "rrc_flip"
    model.train()
    if run.freeze_norm_stats:
        for module in opt.frozen_modules:
            module.eval()
    order = data.fit_idx[epoch_order(len(data.fit_idx), cfg["repeated_augmentation"], run.gen).numpy()][
        : opt.steps_per_epoch * batch_size
    ]
    # The labels of the epoch's order go to the device once, not in a copy per step; from
    # pageable memory a non-blocking copy is staged before it returns, with no wait for the GPU.
    epoch_labels = data.labels[torch.from_numpy(order).to(run.device, non_blocking=True)]
    totals = _EpochTotals(run.device, run.cell, epoch + 1)
    bar = progress_bar(
        total=opt.steps_per_epoch, desc=f"{run.cell} epoch {epoch + 1}/{cfg['epochs']}", leave=False, mininterval=1.0
    )
    for step, batch in enumerate(data.fit.batches(order, batch_size, run.gen)):
        y = epoch_labels[step * batch_size : (step + 1) * batch_size]
        x = run.to_model(batch if augment else batch.permute(0, 3, 1, 2))
        target = y
        if opt.mixer:
            x, target = opt.mixer(x, y)
        with autocast(run.device, opt.compute["precision"]):
            logits = model(x)[:, data.columns]
            loss = opt.loss_fn(logits, target)
        opt.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        opt.optimizer.step()
        if opt.per_batch:
            opt.scheduler.step()
        totals.add(loss, logits, y)
        bar.update()
        if (step + 1) % CHECK_EVERY == 0 and step + 1 < opt.steps_per_epoch:
            total_loss, _ = totals.read(step + 1)
            bar.set_postfix(loss=f"{total_loss / ((step + 1) * batch_size):.3f}")  # the epoch's mean so far
    total_loss, correct = totals.read(opt.steps_per_epoch)
    bar.close()
    return total_loss, correct, len(order)


def _epoch(run: _Run, epoch: int, best: dict) -> tuple[dict, dict]:
    """Train one epoch and score it: (its log row, the best epoch so far)."""
    cfg, data, opt = run.params["training"], run.data, run.opt
    t0 = time.perf_counter()
    total_loss, correct, seen = _fit_epoch(run, epoch)
    row = {
        "epoch": epoch + 1,
        "train_loss": total_loss / seen,
        "train_acc": correct / seen,
        "val_acc": run.evaluate(data.train_eval, data.val_idx, data.y_val),
        "lr": opt.optimizer.param_groups[0]["lr"],
    }
    if cfg["checkpoint"] == "best_test":
        row["test_acc"] = run.evaluate(data.test_eval, data.test_idx, data.y_test)
    if not opt.per_batch:
        opt.scheduler.step()
    row["seconds"] = time.perf_counter() - t0
    score = {"best_val": row["val_acc"], "best_test": row.get("test_acc")}.get(cfg["checkpoint"])
    if score is not None and score > best["score"]:
        weights = {k: v.detach().cpu().clone() for k, v in run.model.state_dict().items()}
        best = {"score": score, "epoch": epoch + 1, "weights": weights}
    log.info(
        "%s epoch %d/%d loss %.4f train %.3f val %.3f (%.1fs)",
        run.cell,
        row["epoch"],
        cfg["epochs"],
        row["train_loss"],
        row["train_acc"],
        row["val_acc"],
        row["seconds"],
    )
    return row, best


def _kept_epoch(run: _Run, history: list[dict], best: dict) -> dict:
    """The log row of the epoch whose weights are kept, those weights loaded into the model."""
    selection = run.params["training"]["checkpoint"]
    if selection == "last":
        return history[-1]
    if best["weights"] is None:
        raise RuntimeError(
            f"cell {run.cell}: checkpoint {selection} found no epoch with a score (is the {selection.removeprefix('best_')} split empty?)"
        )
    run.model.load_state_dict(best["weights"])
    log.info("%s: kept the weights of epoch %d (%s %.4f)", run.cell, best["epoch"], selection, best["score"])
    return history[best["epoch"] - 1]


def _cell_info(run: _Run, kept: dict, test_acc: float, num_classes: int, init_checkpoint: str | None) -> dict:
    """cell.json of a trained backbone."""
    params = run.params
    size, width, kwargs = params["resolution"], params["model"]["width"], params["model"].get("kwargs")
    info = {
        **backbone_info(
            run.model,
            params,
            params["arch"],
            num_classes,
            len(run.data.rows),
            paper_parameter_count(params["arch"], width, size, kwargs),
        ),
        "n_fit": len(run.data.fit_idx),
        "checkpoint_rule": params["training"]["checkpoint"],
        "checkpoint_epoch": kept["epoch"],
        "final_train_acc": kept["train_acc"],
        "final_val_acc": kept["val_acc"],
        "test_acc": test_acc,
        **run.opt.compute,
        **device_info(run.device),
    }
    if params.get("task") is not None:
        info |= {
            "task": params["task"],
            "init_checkpoint": init_checkpoint,
            "trainable_params": sum(p.numel() for p in run.opt.trainable),
        }
    return info


def pretrain(
    params: dict,
    store: ImageStore,
    *,
    checkpoint: str,
    train_log: str,
    info_path: str,
    state_path: str,
    runtime: JobRuntime = JobRuntime(),
    init_checkpoint: str | None = None,
    frozen: tuple[str, ...] | list[str] = (),
    freeze_norm_stats: bool = True,
) -> dict:
    """Train one cell's backbone; write checkpoint, per-epoch log and cell info.

    Images come from the prepared ``store``: kept on the device when a split has one image size
    and fits ``runtime.resident_mb``, else streamed batch by batch (``loader.SplitReader``);
    either way the same crops, so results do not depend on it. ``state_path`` holds the full
    training state after every epoch; a rerun with the same params resumes from it (after a
    crash or a cluster pre-emption) and deletes it at the end. ``params['compute']``'s precision
    and channels_last (``auto`` when missing; ``runtime.channels_last`` overrides it, for
    benchmarks) are resolved for the device and model (``runtime.resolve_compute``), logged and
    recorded in the cell info. ``training.checkpoint`` picks the weights kept: the last epoch's,
    or the best epoch's on the held-out split (best_val) or on the ID test split (best_test, the
    paper's choice).

    Continual learning: ``params['task']`` (index, classes [first, stop), head) trains and scores
    on those classes only; ``init_checkpoint`` starts from a saved backbone's weights; the
    ``frozen`` modules (names) keep their parameters, and with ``freeze_norm_stats`` stay in eval
    mode, so their normalisation statistics stay too.

    The steps draw from the generators in a fixed order (torch's seeded before the model is
    built, the order-and-crop generator and numpy's after the optimisation is set up): a resumed
    run continues bitwise.
    """
    device = runtime.start(params["compute"])  # the job's: set up by its script, or here outside a workflow
    seed = params["seed"]
    torch.manual_seed(seed)
    cell = cell_id(**{k: params[k] for k in CELL_VARIABLES})
    data = training_data(params, store, device, runtime, cell)
    model = _initial_model(params, store.num_classes, device, cell, init_checkpoint)
    opt = _optimisation(params, model, device, runtime, data, store.num_classes, frozen, cell)
    gen, norm = torch.Generator().manual_seed(seed), params["normalization"]
    run = _Run(params, cell, device, model, data, opt, gen, freeze_norm_stats, Normaliser(norm["mean"], norm["std"]))
    if opt.mixer:
        np.random.seed(seed)
    # A resume state is only valid for the same settings (auto resolved the same way: a state
    # moved to another machine), starting weights and frozen parts.
    fingerprint = _fingerprint(
        {
            **params,
            "resolved": opt.compute,
            "init": file_sha256(init_checkpoint) if init_checkpoint else None,
            "frozen": sorted(frozen),
            "freeze_norm_stats": freeze_norm_stats,
        }
    )
    state_file = Path(state_path)
    history, start_epoch, best = _resume(run, state_file, fingerprint)
    for epoch in range(start_epoch, params["training"]["epochs"]):
        row, best = _epoch(run, epoch, best)
        history.append(row)
        save_train_state(
            state_file, device, model, opt.optimizer, opt.scheduler, run.gen, fingerprint, history, epoch + 1, best
        )
    kept = _kept_epoch(run, history, best)
    test_acc = run.evaluate(data.test_eval, data.test_idx, data.y_test)
    info = _cell_info(run, kept, test_acc, store.num_classes, init_checkpoint)
    save_backbone(model, checkpoint, {"params": params, "num_classes": store.num_classes})
    write_csv(pd.DataFrame(history), train_log)
    write_json(info, info_path)
    state_file.unlink(missing_ok=True)
    log.info("%s done: test accuracy %.3f, %d parameters", cell, test_acc, info["params"])
    return info
