"""Continual learning with swapped tunnels (Harun et al. 2024, Table 2; after Masarczyk et al. 2023).

A run trains a network on task 1 (E1+T1), then goes on training it on task 2 (E2+T2, started
from the E1+T1 weights). The tunnel is located on an ID probe curve by Masarczyk's rule
(``metrics.tunnel.id_tunnel_start``): it starts at the first layer whose probe accuracy reaches a
threshold times the last layer's. The extractor E is every module that runs before that
layer's representation is captured, the tunnel T every other module, classifier included, so
a split at the input of a ResNet block's conv2 puts the block's conv1 and bn1 in E and its
conv2, bn2 and shortcut (which runs after conv2) in T, and the final LayerNorm that ViT probe
points apply belongs to T, where it runs. Swapping the parts gives E1+T2 and E2+T1; the finetune
configurations train some parts of one of the four on one task. Every configuration is scored
on both tasks: a linear probe on its last probed layer, and its own classifier over the task's
classes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tunnelscope.data.loader import SplitReader, loader_workers
from tunnelscope.data.store import ImageStore
from tunnelscope.features.embed import embed_eval_set
from tunnelscope.io import read_table, write_json
from tunnelscope.metrics.tunnel import id_tunnel_start
from tunnelscope.models.build import probe_points
from tunnelscope.models.checkpoints import Backbone, load_backbone, save_backbone
from tunnelscope.models.evaluation import accuracy
from tunnelscope.probe.job import probe_layers
from tunnelscope.registry import ARCHS, CELL_VARIABLES, TRAINED
from tunnelscope.runtime import JobRuntime

log = logging.getLogger("tunnelscope.continual")

PARTS = ("extractor", "tunnel")


def _owners(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Modules holding parameters or buffers of their own, by name."""
    return {
        name: m
        for name, m in model.named_modules()
        if next(m.parameters(recurse=False), None) is not None or next(m.buffers(recurse=False), None) is not None
    }


@torch.no_grad()
def split_modules(model: torch.nn.Module, point, resolution: int) -> dict[str, list[str]]:
    """{"extractor": modules run before ``point``'s representation is captured, "tunnel": the
    rest}, names of modules holding parameters or buffers, found by running one image through
    the model in eval mode: forward order, which registration order need not be."""
    owners = _owners(model)
    events: list[str | None] = []  # owner names in the order they first run; None = the capture
    hooks = []
    captured = dict(model.named_modules())[point.name]
    if point.side == "input":  # before the module's own parameters run
        hooks.append(captured.register_forward_pre_hook(lambda m, args: events.append(None), prepend=True))
    else:
        hooks.append(captured.register_forward_hook(lambda m, args, out: events.append(None)))
    for name, module in owners.items():
        hooks.append(module.register_forward_pre_hook(lambda m, args, n=name: events.append(n)))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        model(torch.zeros(1, 3, resolution, resolution, device=device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    cut = events.index(None)
    extractor = list(dict.fromkeys(events[:cut]))
    return {"extractor": extractor, "tunnel": [n for n in owners if n not in set(extractor)]}


def _owner(key: str) -> str:
    """The module a state-dict entry belongs to ("" for the model itself)."""
    return key.rpartition(".")[0]


def compose(extractor_state: dict, tunnel_state: dict, extractor: list[str]) -> dict:
    """A state dict with the extractor modules' entries of one network and the rest of the other."""
    keep = set(extractor)
    return {k: (extractor_state if _owner(k) in keep else tunnel_state)[k] for k in tunnel_state}


def id_curve(evaluation: pd.DataFrame, task: int) -> np.ndarray:
    """Probe test accuracy per layer of one task from an evaluation table."""
    return evaluation[evaluation.task == task].sort_values("layer").test_acc.to_numpy()


def locate_tunnel(curves: dict[int, np.ndarray], threshold: float, rule: str) -> dict:
    """Tunnel start on each curve (task -> the ID curve of the network trained last on it) and
    the one ``rule`` picks: task1, task2, or the earlier of the two."""
    starts = {}
    for t, curve in curves.items():
        try:
            starts[f"task{t}"] = id_tunnel_start(curve, threshold)
        except ValueError as exc:  # a failed probe: the swap has no layer to cut at
            raise ValueError(f"continual: task {t}'s network: {exc} (see its evaluation's probe log)") from exc
    start = min(starts.values()) if rule == "earlier" else starts[rule]
    return {"threshold": threshold, "curve": rule, "starts": starts, "start_layer": start}


def swap(
    params: dict, networks: dict[str, str], evaluations: dict[str, str], tunnel_path: str, outputs: dict[str, str]
) -> dict:
    """Locate the tunnel on the E1+T1 and E2+T2 ID curves and write E1+T2 and E2+T1.

    ``networks`` / ``evaluations``: checkpoint / evaluation table of E1+T1 and E2+T2;
    ``outputs``: checkpoint path of E1+T2 and E2+T1. tunnel.json records the starts, the
    chosen layer and the modules of each part."""
    curves = {task: id_curve(read_table(evaluations[label]), task) for label, task in TRAINED.items()}
    tunnel = locate_tunnel(curves, params["threshold"], params["curve"])
    (net1, meta), (net2, _) = (load_backbone(networks[label]) for label in TRAINED)
    points = probe_points(net1, params["side"], params["model"].get("probe_points", "default"))
    point = points[tunnel["start_layer"] - 1]
    parts = split_modules(net1, point, params["resolution"])
    tunnel |= {"num_layers": len(points), "layer_name": point.name, "side": point.side, **parts}
    # Copies: loading a composition into net1 writes through its own state dict's tensors.
    states = {1: {k: v.clone() for k, v in net1.state_dict().items()}, 2: net2.state_dict()}
    for label, (e, t) in {"E1+T2": (1, 2), "E2+T1": (2, 1)}.items():
        net1.load_state_dict(compose(states[e], states[t], parts["extractor"]))
        save_backbone(net1, outputs[label], meta)
    write_json(tunnel, tunnel_path)
    log.info(
        "tunnel: layers %d-%d (%s %s), starts %s; extractor %d modules, tunnel %d",
        tunnel["start_layer"],
        len(points),
        point.side,
        point.name,
        tunnel["starts"],
        len(parts["extractor"]),
        len(parts["tunnel"]),
    )
    return tunnel


def frozen_modules(tunnel: dict, train: list[str]) -> list[str]:
    """Modules a finetune configuration keeps as they are: those of the parts it does not train."""
    if not any(tunnel[part] for part in train):
        raise ValueError(
            f"nothing to fine-tune: the tunnel starts at layer {tunnel['start_layer']} of {tunnel['num_layers']}, so {' and '.join(train)} hold no module"
        )
    return [name for part in PARTS if part not in train for name in tunnel[part]]


@torch.no_grad()
def head_accuracy(model, store: ImageStore, classes: tuple[int, int], params: dict, runtime: JobRuntime) -> float:
    """Top-1 of the model's own classifier on the test images of ``classes`` [first, stop), the
    argmax over those classes' logits."""
    first, stop = classes
    test = store.splits["test"]
    rows = np.flatnonzero((test.labels >= first) & (test.labels < stop))
    device = next(model.parameters()).device
    workers = min(loader_workers(device, runtime.threads), 1)
    reader = SplitReader(test, "center", params["resolution"], device, runtime.resident_mb, workers=workers)
    labels = torch.from_numpy(test.labels[rows]).to(device) - first
    norm = params["normalization"]
    return accuracy(model, reader, rows, labels, norm["mean"], norm["std"], runtime.batch_size, slice(first, stop))


def evaluate(
    params: dict, *, checkpoint: str, data_path: str, out_dir: str, runtime: JobRuntime = JobRuntime()
) -> pd.DataFrame:
    """One configuration on both tasks: embeddings of every layer (its own task's curve) or of
    the last one, a probe per embedded layer, and its classifier's accuracy. One row per
    (task, layer) with the probe's results, ``network``, ``task`` and ``head_acc``. The store is
    opened and the backbone loaded once, for every task."""
    family = ARCHS[params["arch"]]["family"]
    store = ImageStore(data_path)
    backbone = Backbone.load(checkpoint, runtime.start(params["compute"]))
    tasks = dict(enumerate(params["tasks"], start=1))
    # The classifier is scored first, on the model as loaded: embedding may turn it channels_last.
    heads = {task: head_accuracy(backbone.model, store, classes, params, runtime) for task, classes in tasks.items()}
    tables = []
    for task, (first, stop) in tasks.items():
        where = str(Path(out_dir) / f"task{task}")
        embed = {**params, "eval_set": f"task{task}", "classes": [first, stop], "layers": params["layers"][str(task)]}
        embed_eval_set(embed, backbone=backbone, store=store, out_dir=where, runtime=runtime)
        probe = {**params["probe"], **{k: params[k] for k in CELL_VARIABLES}, "eval_set": f"task{task}", "role": "task"}
        table, _, _ = probe_layers(where, probe, family, runtime=runtime)  # weights, predictions not kept here
        log.info(
            "%s task %d: probe at layer %d %.4f, head %.4f",
            params["network"],
            task,
            table.layer.max(),
            table.sort_values("layer").test_acc.iloc[-1],
            heads[task],
        )
        tables.append(table.assign(network=params["network"], task=task, head_acc=heads[task]))
    return pd.concat(tables, ignore_index=True)


# ---------------------------------------------------------------- the table


def scores(evaluations: list[pd.DataFrame], tunnels: dict[str, dict], run_of: dict[tuple, str]) -> pd.DataFrame:
    """One row per (run, configuration, task): the probe's test accuracy at the last probed
    layer, the classifier's, and the run's tunnel. ``run_of`` maps a table's cell variables to
    its run id, the key of ``tunnels``."""
    rows = []
    for table in evaluations:
        for (network, task), part in table.groupby(["network", "task"], sort=False):
            last = part.loc[part.layer.idxmax()]
            run = run_of[tuple(last[k] for k in CELL_VARIABLES)]
            tunnel = tunnels[run]
            rows.append(
                {
                    "run": run,
                    **{k: last[k] for k in CELL_VARIABLES},
                    "network": network,
                    "task": int(task),
                    "probe_acc": float(last.test_acc),
                    "head_acc": float(last.head_acc),
                    "layer": int(last.layer),
                    "tunnel_start": tunnel["start_layer"],
                    "num_layers": tunnel["num_layers"],
                }
            )
    return pd.DataFrame(rows)
