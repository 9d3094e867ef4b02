"""Continual learning with swapped tunnels (Harun et al. 2024, Table 2; after Masarczyk et al. 2023).

A run trains a network on task 1 (E1+T1), then goes on training it on task 2 (E2+T2, started
from the E1+T1 weights). The tunnel is located on an ID probe curve by Masarczyk's rule
(``metrics.id_tunnel_start``): it starts at the first layer whose probe accuracy reaches a
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

from .config import ARCHS, CELL_VARIABLES, TRAINED
from .embed_job import embed_eval_set
from .io import read_table, write_json
from .loader import SplitReader, loader_workers
from .metrics import id_tunnel_start
from .models import probe_points
from .probe import probe_layers
from .store import Store
from .seeds import CONFIDENCE
from .tables import _fmt_ci, seed_spread
from .train import accuracy, load_backbone, pick_device, save_backbone

log = logging.getLogger("tunnelscope.continual")

PARTS = ("extractor", "tunnel")


def _owners(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Modules holding parameters or buffers of their own, by name."""
    return {name: m for name, m in model.named_modules() if next(m.parameters(recurse=False), None) is not None or next(m.buffers(recurse=False), None) is not None}


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
    starts = {f"task{t}": id_tunnel_start(curve, threshold) for t, curve in curves.items()}
    start = min(starts.values()) if rule == "earlier" else starts[rule]
    return {"threshold": threshold, "curve": rule, "starts": starts, "start_layer": start}


def swap(params: dict, networks: dict[str, str], evaluations: dict[str, str], tunnel_path: str, outputs: dict[str, str]) -> dict:
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
    log.info("tunnel: layers %d-%d (%s %s), starts %s; extractor %d modules, tunnel %d", tunnel["start_layer"], len(points), point.side, point.name, tunnel["starts"], len(parts["extractor"]), len(parts["tunnel"]))
    return tunnel


def frozen_modules(tunnel: dict, train: list[str]) -> list[str]:
    """Modules a finetune configuration keeps as they are: those of the parts it does not train."""
    if not any(tunnel[part] for part in train):
        raise ValueError(f"nothing to fine-tune: the tunnel starts at layer {tunnel['start_layer']} of {tunnel['num_layers']}, so {' and '.join(train)} hold no module")
    return [name for part in PARTS if part not in train for name in tunnel[part]]


@torch.no_grad()
def head_accuracy(model, store: Store, first: int, stop: int, params: dict, batch_size: int, resident_mb: float, threads: int) -> float:
    """Top-1 of the model's own classifier on the test images of classes [first, stop), the
    argmax over those classes' logits."""
    test = store.splits["test"]
    rows = np.flatnonzero((test.labels >= first) & (test.labels < stop))
    device = next(model.parameters()).device
    reader = SplitReader(test, "center", params["resolution"], device, resident_mb, workers=min(loader_workers(device, threads), 1))
    labels = torch.from_numpy(test.labels[rows]).to(device) - first
    norm = params["normalization"]
    return accuracy(model, reader, rows, labels, norm["mean"], norm["std"], batch_size, slice(first, stop))


def evaluate(params: dict, checkpoint: str, data_path: str, out_dir: str, batch_size: int = 256, threads: int = 1, channels_last: bool = False, resident_mb: float = 1024) -> pd.DataFrame:
    """One configuration on both tasks: embeddings of every layer (its own task's curve) or of
    the last one, a probe per embedded layer, and its classifier's accuracy. One row per
    (task, layer) with the probe's results, ``network``, ``task`` and ``head_acc``."""
    family = ARCHS[params["arch"]]["family"]
    store = Store(data_path)
    model, _ = load_backbone(checkpoint, pick_device())
    tables = []
    for task, (first, stop) in enumerate(params["tasks"], start=1):
        where = Path(out_dir) / f"task{task}"
        embed = {**params, "eval_set": f"task{task}", "classes": [first, stop], "layers": params["layers"][str(task)]}
        embed_eval_set(embed, checkpoint, data_path, str(where), batch_size, threads, channels_last, resident_mb)
        probe = {**params["probe"], **{k: params[k] for k in CELL_VARIABLES}, "eval_set": f"task{task}", "role": "task"}
        table, _ = probe_layers(str(where), probe, family, threads)  # weights are not kept here
        head = head_accuracy(model, store, first, stop, params, batch_size, resident_mb, threads)
        log.info("%s task %d: probe at layer %d %.4f, head %.4f", params["network"], task, table.layer.max(), table.sort_values("layer").test_acc.iloc[-1], head)
        tables.append(table.assign(network=params["network"], task=task, head_acc=head))
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
            rows.append({"run": run, **{k: last[k] for k in CELL_VARIABLES}, "network": network, "task": int(task), "probe_acc": float(last.test_acc), "head_acc": float(last.head_acc),
                         "layer": int(last.layer), "tunnel_start": tunnel["start_layer"], "num_layers": tunnel["num_layers"]})
    return pd.DataFrame(rows)


def _group_labels(frame: pd.DataFrame) -> pd.Series:
    """A column group per run setting: its resolution, with the arch, ID set and augmentation
    where those vary in the study."""
    varying = [k for k in ("arch", "id_dataset", "augmentation") if frame[k].nunique() > 1]

    def label(row):
        parts = [ARCHS[row.arch]["label"] if k == "arch" else str(row[k]) for k in varying]
        return " ".join([*parts, f"{row.resolution}²"])
    return frame.apply(label, axis=1)


def table(frame: pd.DataFrame, networks: list[str], score: str, confidence: float = CONFIDENCE) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(CSV, LaTeX) laid out like the paper's Table 2: a row per configuration (in ``networks``
    order), per run setting the accuracy (%) on task 1 and task 2, means over seeds (with
    several seeds followed by their t-interval columns, and a ``seeds`` column). LaTeX cells read
    "task 1 / task 2" as in the paper, each "mean ± half-interval" with several seeds."""
    frame = frame.assign(group=_group_labels(frame), value=100.0 * frame[f"{score}_acc"])
    frame["column"] = frame.group + " task " + frame.task.astype(str)
    groups = list(dict.fromkeys(frame.sort_values(["resolution"], kind="stable").group))
    columns = [f"{g} task {t}" for g in groups for t in (1, 2)]
    order = pd.DataFrame({"network": networks})
    spread_frame, with_ci = seed_spread(frame, ["network"], "column", "value", columns, confidence)
    wide = order.merge(spread_frame, on="network", how="left").rename(columns={"network": "configuration"})
    latex = wide[["configuration"]].copy()
    for g in groups:
        latex[g] = [" / ".join(_fmt_ci(row, f"{g} task {t}", 2, with_ci) for t in (1, 2)) for _, row in wide.iterrows()]
    return wide.round(2), latex


def figure(evaluations: list[pd.DataFrame], tunnels: dict[str, dict], run_of: dict[tuple, str], png: str, pdf: str) -> None:
    """Per run: the ID probe curves the tunnel is read from (E1+T1 on task 1, E2+T2 on task 2),
    each with its threshold line and a star at its own tunnel start, and the chosen tunnel shaded."""
    from matplotlib.ticker import MaxNLocator

    from .plots import _save, _style, plt, sns

    _style()
    curves = pd.concat([t[t.network.isin(list(TRAINED)) & (t.task == t.network.map(TRAINED))] for t in evaluations], ignore_index=True)
    curves["run"] = [run_of[tuple(row)] for row in curves[list(CELL_VARIABLES)].itertuples(index=False)]
    runs = list(dict.fromkeys(curves.sort_values("resolution", kind="stable").run))
    fig, axes = plt.subplots(1, len(runs), figsize=(5.2 * len(runs), 3.8), squeeze=False)
    palette = dict(zip(TRAINED, sns.color_palette("colorblind", 2)))
    for ax, run in zip(axes.flat, runs):
        tunnel, part = tunnels[run], curves[curves.run == run]
        ax.axvspan(tunnel["start_layer"] - 0.5, tunnel["num_layers"] + 0.5, color="0.88", zorder=0, label=f"tunnel used: layers {tunnel['start_layer']}-{tunnel['num_layers']}")
        for network, task in TRAINED.items():
            rows = part[part.network == network].sort_values("layer")
            acc = 100.0 * rows.test_acc.to_numpy()
            start = tunnel["starts"][f"task{task}"]
            ax.plot(rows.layer, acc, marker="o", ms=3, color=palette[network], label=f"{network} on task {task}")
            ax.axhline(tunnel["threshold"] * acc[-1], color=palette[network], ls=":", lw=1, label=f"{tunnel['threshold']:.0%} of its last layer")
            ax.plot([start], [acc[start - 1]], marker="*", ms=13, color=palette[network], ls="none", label=f"its tunnel start: layer {start}")
        first = part.iloc[0]
        ax.set_title(f"{ARCHS[first.arch]['label']} on {first.id_dataset}, {first.resolution}², {first.augmentation}, seed {first.seed}", fontsize="small")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("layer (probe point)")
        ax.set_ylabel("ID probe test accuracy (%)")
        ax.legend(fontsize="x-small", loc="lower right")
    fig.tight_layout()
    _save(fig, png, pdf)
