"""The ``paper`` solver: the papers' recipe, AdamW with label smoothing for a fixed number of epochs on
raw features; every layer's head is trained in the same pass over the data each epoch.

Config keys: ``registry.SOLVERS["paper"]``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tunnelscope.data.splits import epoch_order
from tunnelscope.probe.failure import all_finite, failed_result, nonfinite_count


def fit_paper_probes(
    layers: list[tuple], y_train, y_test, n_classes: int, params: dict, family: str = "cnn", device="cpu"
) -> list[dict]:
    """The papers' probe recipe for every layer at once.

    ``layers`` holds (x_train, x_test) per layer. One nn.Linear per layer (weights
    N(0, init_std), bias 0), AdamW (lr 1e-3 / wd 0 for CNNs, 1e-2 / 1e-4 for ViTs unless set),
    label smoothing, minibatches shared by all heads, so the data is read once per epoch for all
    layers; ``reshuffle: false`` keeps one seeded order for every epoch (the released CNN probe
    code shuffles its cached features once); ``repeats`` k > 1 draws n / k rows per epoch, each
    k times (the released ViT probes keep DeiT's repeated-augmentation sampler). Reports the last epoch, or the best test epoch
    with ``report: best_test`` (the paper's optimistic choice), with that epoch's class per test
    row (``test_pred``). The recipe has no validation split, so no ``val_acc``. It runs in float32
    on ``device``; its random draws are made on the CPU, so a seed gives the same initial weights
    and epoch orders on every device.

    A head whose training loss is not finite in some epoch (summed on the device over its
    batches; whether all are finite is read once per epoch), or whose reported weights are not, has
    failed (probe/failure.py: ``converged`` false, ``failure`` the reason, NaN accuracies); the
    recipe has no fallback. The other heads are unaffected: each has its own parameters.
    """
    # A CPU generator, and every draw made on the CPU then moved: the heads' initial weights and
    # the epoch orders are the same numbers on every device (a CUDA tensor refuses a CPU generator).
    gen = torch.Generator().manual_seed(params["probe_seed"])
    lr = params["lr"] or (1e-2 if family == "vit" else 1e-3)
    wd = params["weight_decay"] if params["weight_decay"] is not None else (1e-4 if family == "vit" else 0.0)
    xs_train = [torch.as_tensor(tr, dtype=torch.float32, device=device) for tr, _ in layers]
    xs_test = [torch.as_tensor(te, dtype=torch.float32, device=device) for _, te in layers]
    ytr = torch.as_tensor(y_train, dtype=torch.long, device=device)
    yte = torch.as_tensor(y_test, dtype=torch.long, device=device)
    heads = init_heads([x.shape[1] for x in xs_train], n_classes, params["init_std"], gen).to(device)
    opt = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=wd)
    best = [(-1.0, 0, 0.0, None, None)] * len(heads)  # (test acc, epoch, train acc, weights, test predictions)
    last = best
    order = epoch_order(len(ytr), params["repeats"], gen).to(device)
    diverged = [None] * len(heads)  # per head: the first epoch of non-finite loss
    for epoch in range(params["epochs"]):
        if epoch and params["reshuffle"]:
            order = epoch_order(len(ytr), params["repeats"], gen).to(device)
        losses = train_epoch(heads, opt, xs_train, ytr, order, params["batch_size"], params["label_smoothing"])
        if not all_finite(losses):  # one read per epoch; which heads, only when some diverged
            finite = losses.isfinite().tolist()
            diverged = [first or (None if ok else epoch + 1) for first, ok in zip(diverged, finite)]
        heads.eval()
        with torch.no_grad():  # the host reads: two per head and epoch, none per batch
            last = []
            for h, xtr, xte in zip(heads, xs_train, xs_test):
                pred = h(xte).argmax(1)
                last.append((float((pred == yte).double().mean()), epoch + 1, _head_acc(h, xtr, ytr), h, pred))
        # a head's weights are copied only when its epoch is kept
        keep = params["report"] == "best_test"
        best = [
            (*cur[:3], _head_weights(cur[3]), cur[4]) if keep and (b[3] is None or cur[0] > b[0]) else b
            for b, cur in zip(best, last)
        ]
    chosen = best if params["report"] == "best_test" else [(*row[:3], _head_weights(row[3]), row[4]) for row in last]
    facts = {"n_iter": params["epochs"], "precision": "fp32", "device_type": torch.device(device).type}
    results = []
    for (te, ep, tr, w, pred), first_bad, x in zip(chosen, diverged, xs_train):
        reason = _head_failure(first_bad, w)
        if reason:
            results.append(failed_result(reason, x.shape[1], n_classes, len(yte), epoch=ep, **facts))
            continue
        results.append(
            {
                "train_acc": tr,
                "test_acc": te,
                "test_pred": pred.cpu().numpy(),
                "epoch": ep,
                "converged": True,
                "failure": "",
                "fallback": "",
                "weights": w,
                **facts,
            }
        )
    return results


def _head_failure(diverged_epoch: int | None, weights: np.ndarray) -> str:
    """Why a head's result is no measurement ("" when it is one)."""
    if diverged_epoch is not None:
        return f"train loss not finite in epoch {diverged_epoch}"
    if not all_finite(weights):
        return f"{nonfinite_count(weights)} weights not finite"
    return ""


def init_heads(dims: list[int], n_classes: int, init_std: float, generator: torch.Generator) -> torch.nn.ModuleList:
    """One nn.Linear per layer of ``dims`` features, weights N(0, init_std) drawn from the CPU
    ``generator`` in layer order, bias 0, on the CPU: the caller moves them to its device."""
    heads = torch.nn.ModuleList(torch.nn.Linear(d, n_classes) for d in dims)
    for head in heads:
        torch.nn.init.normal_(head.weight, 0.0, init_std, generator=generator)
        torch.nn.init.zeros_(head.bias)
    return heads


def train_epoch(
    heads, opt, xs_train: list, y: torch.Tensor, order: torch.Tensor, batch_size: int, smoothing: float
) -> torch.Tensor:
    """One pass of every head over ``order`` (on the features' device), minibatches shared by
    all heads; no value is read back to the host. Returns each head's loss summed over the
    batches, on the device (a NaN in any batch stays NaN)."""
    heads.train()
    total = torch.zeros(len(heads), device=order.device)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        losses = [F.cross_entropy(head(x[idx]), y[idx], label_smoothing=smoothing) for head, x in zip(heads, xs_train)]
        loss = sum(losses)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += torch.stack(losses).detach()
    return total


def _head_acc(head, x, y) -> float:
    return float((head(x).argmax(1) == y).float().mean())


def _head_weights(head) -> np.ndarray:
    """An nn.Linear as (d + 1, C) weights with the bias as last row (the other solvers' layout)."""
    return torch.cat([head.weight.detach().t(), head.bias.detach()[None]]).cpu().numpy()


def fit_layers(layers: list[tuple], n_classes: int, settings: dict, family: str, device) -> list[dict]:
    """Every layer's probe as the probe job calls it (probe.job.SolverFit): the recipe
    (``settings["paper"]``) with the probe's seed."""
    return fit_paper_probes(
        [(x_train, x_test) for x_train, _, x_test, _ in layers],
        layers[0][1],
        layers[0][3],
        n_classes,
        {**settings["paper"], "probe_seed": settings["probe_seed"]},
        family,
        device,
    )
