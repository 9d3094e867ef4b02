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
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from tunnelscope.data.sources import split_sizes
from tunnelscope.data.splits import SPLITS
from tunnelscope.data.store import DatasetError
from tunnelscope.study.config import Study

STAGES = ("prepare", "pretrain", "embed", "probe")
UNIT = {"prepare": "images", "pretrain": "FLOP", "embed": "FLOP", "probe": "products"}
# Units per second of one single-threaded CPU job on the reference machine (2-core AMD EPYC, two
# jobs side by side): the medians over the 312 jobs of a config/claims.yaml run, prepare timed
# alone (benchmarks/RESULTS.md, "Budget estimate").
REFERENCE_RATES = {"prepare": 700.0, "pretrain": 6.1e10, "embed": 3.3e10, "probe": 7.6e7}
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

    @property
    def jobs(self) -> dict[str, int]:
        """Measured jobs per stage."""
        return {stage: sum(s == stage for s, _ in self.measured) for stage in STAGES}

    def of(self, stage: str, job: str, arch: str) -> float:
        return self.by_kind.get((stage, job_kind(stage, job, arch))) or self.by_stage[stage]


@dataclass
class CellBudget:
    cell: str
    arch: str
    train_images: int = 0
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
) -> tuple[float, tuple[int, ...]]:
    """Forward FLOPs of one image and the pooled dim of every probe point (``enumeration``: a
    rule or a tuple of module names; ``kwargs_json``: a python: model's model.kwargs;
    ``pretrained_json``: a published backbone's entry; as JSON so that the cache can key on them)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from tunnelscope.models.build import build_cell_model, probe_points
    from tunnelscope.models.capture import layer_shapes, pooled_dims

    settings = {"width": width, "kwargs": json.loads(kwargs_json)}
    model = build_cell_model(arch, settings, classes, resolution, json.loads(pretrained_json)).eval()
    points = probe_points(model, side, enumeration)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, resolution, resolution))
    return float(counter.get_total_flops()), tuple(
        pooled_dims(layer_shapes(model, points, resolution), points, pooling)
    )


def _hashable(points):
    """A probe-point rule, or its list of module names as a tuple (a cache key)."""
    return tuple(points) if isinstance(points, list) else points


def cell_budgets(study: Study) -> list[CellBudget]:
    """Every cell's units per stage; prepare is charged to the first cell that reads a store."""
    read = {d for cid in study.cells for d in study.eval_sets(cid)}
    sizes = {d: _sizes(study.config["datasets"][d]) for d in read}
    side = study.config["embed"]["side"]
    prepared = set()
    out = []
    for cid, cell in study.cells.items():
        budget = CellBudget(cid, cell.arch)
        id_sizes = sizes[cell.id_dataset]
        eval_sizes = {d: sizes[d] for d in study.eval_sets(cid)}
        budget.missing = [d for d, s in eval_sizes.items() if s is None]
        budget.nominal = [d for d, s in eval_sizes.items() if s and not s[2]]
        if id_sizes is None:
            out.append(budget)
            continue
        flops, dims = _model_costs(
            cell.arch,
            id_sizes[1],
            cell.model["width"],
            cell.resolution,
            _hashable(cell.model.get("probe_points", "default")),
            cell.probe["pooling"],
            side,
            json.dumps(cell.model.get("kwargs", {}), sort_keys=True),
            json.dumps(cell.pretrained, sort_keys=True),
        )
        budget.train_images = id_sizes[0]["train"]
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
    return out


def _benchmark_seconds(path: Path) -> float | None:
    with open(path) as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return float(rows[-1]["s"]) if rows else None


def calibrate(budgets: list[CellBudget], results: str | Path) -> Rates:
    """Rates from the benchmark files that a run of this study left under ``results/benchmarks``
    (one per job, named as the job), as medians over jobs."""
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
    return Rates(
        by_kind={key: statistics.median(rates) for key, rates in samples.items()},
        by_stage={stage: statistics.median(r) if r else REFERENCE_RATES[stage] for stage, r in by_stage.items()},
        measured=measured,
    )
