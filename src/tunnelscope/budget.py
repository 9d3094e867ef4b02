"""A study's compute budget before it runs: per cell, the work of its pretrain, embed and probe
jobs in machine-independent units, and a time estimate from per-stage rates.

Units: pretrain and embed in forward FLOPs (torch's FlopCounterMode on one image; a training
step counts 3x its forward), probe in feature x image x class products summed over the layers
(what one L-BFGS step multiplies), prepare in images. Rates come from the benchmark files of a
finished run where there are some (``{results}/benchmarks``, written by Snakemake for every job),
else from the reference machine (REFERENCE_RATES)."""

from __future__ import annotations

import csv
import functools
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from tunnelscope.data.sources import load_source, split_sizes
from tunnelscope.data.splits import SPLITS
from tunnelscope.data.store import DatasetError
from tunnelscope.registry import IMAGENET_MEAN, IMAGENET_STD, TRAINED, network_slug
from tunnelscope.study.config import Study

STAGES = ("prepare", "pretrain", "embed", "probe")
UNIT = {"prepare": "images", "pretrain": "FLOP", "embed": "FLOP", "probe": "products"}
# Units per second of one single-threaded CPU job on the reference machine (2-core AMD EPYC, two
# jobs side by side): the medians over the 312 jobs of a config/claims.yaml run, prepare timed
# alone (benchmarks/RESULTS.md, "Budget estimate").
REFERENCE_RATES = {"prepare": 700.0, "pretrain": 6.1e10, "embed": 3.3e10, "probe": 7.6e7}
# That run's pretrain and embed jobs were float32 NCHW. What compute auto resolves to on such a CPU
# (AVX512-BF16) is faster by these factors, per (stage, model family, precision, channels_last):
# CPU-second ratios of bench_compute.py on the reference machine (VGGm-11 for cnn, ViT-T for vit;
# CPU seconds rather than images/s: the machine was loaded by other processes, RESULTS.md).
REFERENCE_SPEEDUP = {
    ("pretrain", "cnn", "bf16", True): 1.58,
    ("embed", "cnn", "bf16", True): 1.43,
    ("pretrain", "vit", "bf16", False): 1.00,
    ("embed", "vit", "bf16", False): 1.18,
}
TRAIN_STEP_FLOPS = 3  # forward + backward (two products per forward one)


def job_kind(stage: str, job: str, arch: str) -> str:
    """What sets a job's speed beyond its units: the solver of a probe job (named CELL_SET_SOLVER),
    the architecture of pretrain and embed jobs (the FLOPs of small maps run slower than those of
    large ones); nothing for prepare."""
    return {"prepare": "", "probe": job.rsplit("_", 1)[-1]}.get(stage, arch)


@dataclass
class Rates:
    """Units per second of one job: per (stage, kind) where a run measured that kind (job_kind),
    else the stage's median over every measured job, else the reference machine's."""

    by_kind: dict[tuple[str, str], float]
    by_stage: dict[str, float]
    measured: dict[tuple[str, str], float] = field(default_factory=dict)  # (stage, job) -> seconds taken
    # (stage, arch) -> factor on a stage's reference rate for the compute settings of that arch
    speedup: dict[tuple[str, str], float] = field(default_factory=dict)

    @property
    def jobs(self) -> dict[str, int]:
        """Measured jobs per stage."""
        return {stage: sum(s == stage for s, _ in self.measured) for stage in STAGES}

    def of(self, stage: str, job: str, arch: str) -> float:
        measured = self.by_kind.get((stage, job_kind(stage, job, arch)))
        return measured or self.by_stage[stage] * self.speedup.get((stage, arch), 1.0)


class BudgetError(ValueError):
    """A cell whose model cannot be built: the run would fail (one line naming the cell)."""


@dataclass
class CellBudget:
    cell: str
    arch: str
    patch_grid: int | None = None  # tokens per side of a patch-based model at the cell's resolution
    train_images: int = 0
    image_epochs: int = 0  # training images x epochs of every training job
    eval_sets: int = 0
    jobs: dict[tuple[str, str], float] = field(default_factory=dict)  # (stage, job) -> units
    missing: list[str] = field(default_factory=list)  # datasets whose files are not there to count
    nominal: list[str] = field(default_factory=list)  # datasets sized from their published sizes

    def units(self, stage: str) -> float:
        return sum(u for (s, _), u in self.jobs.items() if s == stage)

    def predicted(self, rates: Rates) -> dict[tuple[str, str], float]:
        return {(stage, job): units / rates.of(stage, job, self.arch) for (stage, job), units in self.jobs.items()}

    def seconds(self, rates: Rates) -> float:
        """Predicted seconds of every job (what a fresh run takes)."""
        return sum(self.predicted(rates).values())

    def remaining(self, rates: Rates) -> float:
        """Predicted seconds of the jobs a run has not finished yet."""
        return sum(s for key, s in self.predicted(rates).items() if key not in rates.measured)


def _sizes(spec: dict) -> tuple[dict[str, int], int, bool] | None:
    """``split_sizes``, or None where the files are not there to count."""
    try:
        return split_sizes(spec)
    except (DatasetError, OSError):
        return None


def _patch_grid(model, resolution: int) -> int | None:
    """Tokens per side of a patch-embedding model (timm's patch_embed, torchvision's ViT), else None."""
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None) or getattr(model, "patch_size", None)
    if patch is None:
        return None
    return resolution // (patch[0] if isinstance(patch, (tuple, list)) else int(patch))


@functools.cache
def _model_costs(
    arch: str,
    classes: int,
    width: float,
    resolution: int,
    enumeration: str | tuple[str, ...],
    pooling: str,
    side: str,
    kwargs_json: str = "{}",
    pretrained_json: str = "null",
) -> tuple[float, tuple[int, ...], int | None]:
    """Forward FLOPs of one image, the pooled dim of every probe point and the patch grid; one
    model build per distinct setting (``enumeration``: a rule or a tuple of module names;
    ``kwargs_json``: a python: model's model.kwargs; ``pretrained_json``: a published backbone's
    entry; as JSON so that the cache can key on them)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from tunnelscope.models.build import build_cell_model, probe_points
    from tunnelscope.models.capture import layer_shapes, pooled_dims

    def measure(device: str):
        with torch.device(device):
            settings = {"width": width, "kwargs": json.loads(kwargs_json)}
            model = build_cell_model(arch, settings, classes, resolution, json.loads(pretrained_json)).eval()
            points = probe_points(model, side, enumeration)
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                model(torch.zeros(1, 3, resolution, resolution))
            dims = tuple(pooled_dims(layer_shapes(model, points, resolution), points, pooling))
        return float(counter.get_total_flops()), dims, _patch_grid(model, resolution)

    try:  # shapes only, no weights initialised or multiplied: a tenth of the time
        return measure("meta")
    except NotImplementedError:  # an operation without a meta kernel
        return measure("cpu")


def _hashable(points):
    """A probe-point rule, or its list of module names as a tuple (a cache key)."""
    return tuple(points) if isinstance(points, list) else points


def dataset_sizes(study: Study) -> dict[str, tuple[dict[str, int], int, bool] | None]:
    """``split_sizes`` of every set a cell or continual run reads; None where neither files nor a
    published size exist."""
    read = {d for cid in study.cells for d in study.eval_sets(cid)} | {r.id_dataset for r in study.runs.values()}
    return {d: _sizes(study.config["datasets"][d]) for d in sorted(read)}


def data_warnings(study: Study, sizes: dict) -> list[str]:
    """One line per dataset whose files are not there (yet), naming its root: the run stops
    before any job until they are, and the budget falls back on published sizes."""
    out, seen = [], set()
    for name in sorted(sizes):
        spec, key = study.config["datasets"][name], name
        if "base" in spec:  # a corrupted copy reads its clean set's files
            spec, key = spec["base"], spec["of"]
        if "root" not in spec or key in seen or (sizes[name] and sizes[name][2]):
            continue
        seen.add(key)
        root = Path(spec["root"])
        fallback = "published sizes used" if sizes[name] else "no published size: no estimate"
        if not root.is_dir():
            fetch = "; download: true fetches it when preparing" if spec.get("download") else ""
            out.append(f"datasets.{key}.root: directory {root} not found ({fallback}){fetch}")
            continue
        try:
            load_source({**spec, "download": False})
            continue
        except (DatasetError, OSError) as exc:
            out.append(f"datasets.{key}.root: {exc} ({fallback})")
    return out


def weights_warnings(study: Study) -> list[str]:
    """One line per published model of the grid whose weights are not where its entry says (the
    run stops at its import job until they are)."""
    out = []
    for name, spec in study.pretrained.items():
        if spec.get("weights") and not Path(spec["weights"]).is_file():
            out.append(f"pretrained.{name}.weights: file {spec['weights']} not found")
        elif spec.get("hf_cache") and not spec.get("weights") and not Path(spec["hf_cache"]).is_dir():
            fetch = "; download: true fetches the weights" if spec["download"] else ""
            out.append(f"pretrained.{name}.hf_cache: directory {spec['hf_cache']} not found{fetch}")
    return out


def cell_budgets(study: Study, sizes: dict | None = None) -> list[CellBudget]:
    """Every cell's units per stage, then every continual run's (run_budgets); prepare is charged
    to the first that reads a store. Raises BudgetError where a cell's model cannot be built."""
    sizes = dataset_sizes(study) if sizes is None else sizes
    side = study.config["embed"]["side"]
    prepared = set()
    out = []
    for cid, cell in study.cells.items():
        budget = CellBudget(cid, cell.arch, eval_sets=len(study.eval_sets(cid)))
        id_sizes = sizes[cell.id_dataset]
        eval_sizes = {d: sizes[d] for d in study.eval_sets(cid)}
        budget.missing = [d for d, s in eval_sizes.items() if s is None]
        budget.nominal = [d for d, s in eval_sizes.items() if s and not s[2]]
        if id_sizes is None and not cell.pretrained:
            out.append(budget)
            continue
        arch = cell.pretrained["arch"] if cell.pretrained else cell.arch
        try:
            flops, dims, budget.patch_grid = _model_costs(
                cell.arch,
                id_sizes[1] if id_sizes else 0,
                cell.model["width"],
                cell.resolution,
                _hashable(cell.model.get("probe_points", "default")),
                cell.probe["pooling"],
                side,
                json.dumps(cell.model.get("kwargs", {}), sort_keys=True),
                json.dumps(cell.pretrained, sort_keys=True),
            )
        except (ValueError, RuntimeError, TypeError, KeyError, AssertionError) as exc:  # builders of many libraries
            raise BudgetError(
                f"cell {cid}: {arch} cannot be built or run at {cell.resolution} px ({type(exc).__name__}: {exc})"
            ) from None
        if id_sizes is None:
            out.append(budget)
            continue
        budget.train_images = id_sizes[0]["train"]
        if cell.pretrained is None:
            budget.image_epochs = budget.train_images * cell.training["epochs"]
        images = {d: sum(s[0][k] for k in SPLITS) for d, s in eval_sizes.items() if s}
        for d in images:
            store = (d, study.transform(cid, d))
            if store not in prepared:
                prepared.add(store)
                budget.jobs["prepare", "/".join(store)] = float(images[d])
        if cell.pretrained is None:
            budget.jobs["pretrain", cid] = TRAIN_STEP_FLOPS * flops * budget.train_images * cell.training["epochs"]
        for d in images:
            budget.jobs["embed", f"{cid}_{d}"] = flops * images[d]
            for solver in study.solvers(cid):
                budget.jobs["probe", f"{cid}_{d}_{solver}"] = float(sum(dims) * images[d] * eval_sizes[d][1])
        out.append(budget)
    return out + run_budgets(study, sizes, prepared)


def run_budgets(study: Study, sizes: dict, prepared: set | None = None) -> list[CellBudget]:
    """Every continual run's units: its two task trainings and the fine-tunings as pretrain jobs,
    each configuration's evaluation (both tasks' images; probes on every layer of its own task's
    curve, else the last) as embed and probe jobs. Task sizes pro rata to their classes."""
    if not study.runs:
        return []
    section, side = study.config["continual"], study.config["embed"]["side"]
    solver = study.config["probe"]["solver"]
    solver = solver[0] if isinstance(solver, list) else solver
    prepared = set() if prepared is None else prepared
    out = []
    for rid, run in study.runs.items():
        budget = CellBudget(rid, run.arch, eval_sets=len(section["tasks"]))
        out.append(budget)
        found = sizes[run.id_dataset]
        if found is None:
            budget.missing = [run.id_dataset]
            continue
        split, classes, counted = found
        budget.nominal = [] if counted else [run.id_dataset]
        flops, dims, budget.patch_grid = _model_costs(
            run.arch,
            classes,
            run.model["width"],
            run.resolution,
            _hashable(run.model.get("probe_points", "default")),
            study.config["probe"]["pooling"],
            side,
        )
        share = {t: (stop - first) / classes for t, (first, stop) in enumerate(section["tasks"], start=1)}
        store = (run.id_dataset, study.run_prepared_path(rid).rsplit("/", 1)[-1])
        if store not in prepared:
            prepared.add(store)
            budget.jobs["prepare", "/".join(store)] = float(sum(split[k] for k in SPLITS))
        trainings = [(network, task, run.training) for network, task in TRAINED.items()]
        trainings += [(e["name"], e["task"], run.finetune_training) for e in section["finetune"]]
        for network, task, recipe in trainings:
            images = split["train"] * share[task] * recipe["epochs"]
            budget.image_epochs += int(images)
            budget.jobs["pretrain", f"{rid}_{network_slug(network)}"] = TRAIN_STEP_FLOPS * flops * images
        for slug, label in study.continual_networks():
            own = TRAINED.get(label)
            for task, fraction in share.items():
                images = sum(split[k] for k in SPLITS) * fraction
                budget.jobs["embed", f"{rid}_{slug}_task{task}"] = flops * images
                width = sum(dims) if task == own else dims[-1]
                task_classes = classes * fraction
                budget.jobs["probe", f"{rid}_{slug}_task{task}_{solver}"] = float(width * images * task_classes)
    return out


def _benchmark_seconds(path: Path) -> float | None:
    with open(path) as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return float(rows[-1]["s"]) if rows else None


def reference_speedup(stage: str, arch: str, compute: dict) -> float:
    """REFERENCE_SPEEDUP of ``arch`` under the ``compute`` settings as a CPU job here resolves
    them (``auto`` by this machine's bf16 and the architecture's family; 1 where not measured)."""
    from tunnelscope.registry import arch_facts
    from tunnelscope.runtime import resolve_precision

    family = (arch_facts(arch) or {}).get("family")
    channels_last = compute.get("channels_last", "auto")
    channels_last = family == "cnn" if channels_last == "auto" else channels_last
    precision = resolve_precision(compute.get("precision", "auto"), "cpu")
    return REFERENCE_SPEEDUP.get((stage, family, precision, channels_last), 1.0)


def calibrate(budgets: list[CellBudget], results: str | Path, compute: dict | None = None) -> Rates:
    """Rates from the benchmark files that a run of this study left under ``results/benchmarks``
    (one per job, named as the job), as medians over jobs. A stage without any falls back to the
    reference machine's rate, scaled for the study's ``compute`` settings (``reference_speedup``;
    without them, the reference's float32 NCHW)."""
    root = Path(results) / "benchmarks"
    samples, measured = {}, {}
    for budget in budgets:
        for (stage, job), units in budget.jobs.items():
            path = root / stage / f"{job}.tsv"
            seconds = _benchmark_seconds(path) if path.is_file() else None
            if seconds:
                measured[stage, job] = seconds
                samples.setdefault((stage, job_kind(stage, job, budget.arch)), []).append(units / seconds)
    by_stage = {stage: [r for (s, _), rates in samples.items() if s == stage for r in rates] for stage in STAGES}
    speedup = {
        (stage, budget.arch): reference_speedup(stage, budget.arch, compute)
        for budget in budgets
        for stage in ("pretrain", "embed")
        if compute is not None and not by_stage[stage]
    }
    return Rates(
        by_kind={key: statistics.median(rates) for key, rates in samples.items()},
        by_stage={stage: statistics.median(r) if r else REFERENCE_RATES[stage] for stage, r in by_stage.items()},
        measured=measured,
        speedup=speedup,
    )


# ----------------------------------------------- what validate checks beyond the config itself


def preprocessing_report(study: Study) -> tuple[list[str], list[str]]:
    """(one line per published model: each eval-transform setting and where it came from;
    warnings where a setting differs from what the model itself declares, naming the key to set)."""
    from tunnelscope.study.preprocessing import resolve

    lines, warnings = [], []
    own = resolve(sorted({s["arch"] for s in study.pretrained.values() if not s["arch"].startswith("python:")}))
    resolutions = {
        name: sorted({c.resolution for c in study.cells.values() if c.arch == name}) for name in study.pretrained
    }
    for name, used in study.pretrained.items():
        entry, model = study.config["pretrained"][name], own.get(used["arch"])
        if model is None:  # a python: model declares no preprocessing of its own
            lines.append(_own_model_line(name, used, entry, resolutions[name]))
            continue
        fallback = "paper" if entry["preprocessing"] == "paper" else "model's own"
        parts = []
        for key in ("interpolation", "crop_pct"):
            parts.append(f"{key} {used[key]:g} " if key == "crop_pct" else f"{key} {used[key]} ")
            parts[-1] += "(entry)" if key in entry else f"({fallback})"
        given = entry["mean"] is not None
        parts.append(
            "mean/std "
            + (
                "(entry)"
                if given
                else f"{_triple(used['mean'] or model['mean'])} / {_triple(used['std'] or model['std'])} (model's own)"
            )
        )
        parts.append(f"resolution {', '.join(map(str, resolutions[name]))} (grid)")
        lines.append(f"  {name} ({used['arch']}, preprocessing {entry['preprocessing']}): {', '.join(parts)}")
        for key in ("interpolation", "crop_pct"):
            if used[key] != model[key] and not (
                key == "crop_pct" and math.isclose(used[key], model[key], abs_tol=1e-3)
            ):
                advice = f"set pretrained.{name}.{key}" + (" or preprocessing: model" if key not in entry else "")
                warnings.append(
                    f"pretrained.{name}.{key}: {used[key]} ({'entry' if key in entry else fallback}) differs from {model[key]}, what {used['arch']} declares; {advice} to match"
                )
        other = [r for r in resolutions[name] if r != model["resolution"]]
        if other:
            warnings.append(
                f"grid.resolution: {name} runs at {', '.join(map(str, other))} px, the model's own input size is {model['resolution']}"
            )
        if model["crop_mode"] != "center":
            warnings.append(
                f"pretrained.{name}: the model's own crop_mode {model['crop_mode']!r} is not reproduced; its eval sets are centre-cropped"
            )
    return lines, warnings


def _own_model_line(name: str, used: dict, entry: dict, resolutions: list[int]) -> str:
    """The preprocessing line of a python: model, which declares none: the paper's eval transform
    and ImageNet's mean/std where the entry gives none."""
    parts = [
        f"interpolation {used['interpolation']} ({'entry' if 'interpolation' in entry else 'paper'})",
        f"crop_pct {used['crop_pct']:g} ({'entry' if 'crop_pct' in entry else 'paper'})",
        "mean/std (entry)"
        if entry["mean"] is not None
        else f"mean/std {_triple(IMAGENET_MEAN)} / {_triple(IMAGENET_STD)} (ImageNet's)",
        f"resolution {', '.join(map(str, resolutions))} (grid)",
    ]
    return f"  {name} ({used['arch']}, declares no preprocessing): {', '.join(parts)}"


def _triple(values) -> str:
    return "(" + ", ".join(f"{v:.3g}" for v in values) + ")"


def patch_warnings(study: Study, budgets: list[CellBudget]) -> list[str]:
    """Patch models whose token grid at the cell's resolution is smaller than 4x4."""
    return [
        f"grid.resolution: {b.arch} at {study.cells[b.cell].resolution} px sees a {b.patch_grid}x{b.patch_grid} patch grid (cell {b.cell}), fewer than 4x4 tokens"
        for b in budgets
        if b.patch_grid is not None and b.patch_grid < 4
    ]
