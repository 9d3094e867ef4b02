"""A study's compute budget before it runs: per cell, the work of its pretrain, embed and probe
jobs in machine-independent units, and a time estimate from per-stage rates.

Units: pretrain and embed in forward FLOPs (torch's FlopCounterMode on one image; a training
step counts 3x its forward), probe in feature x image x class products summed over the layers
(what one L-BFGS step multiplies), prepare in images. Rates come from the benchmark files of a
finished run where there are some (``{results}/benchmarks``, written by Snakemake for every job),
else from the reference machine (REFERENCE_RATES)."""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from tunnelscope.data.sources import split_sizes
from tunnelscope.data.splits import SPLITS
from tunnelscope.data.store import DatasetError
from tunnelscope.model_facts import COSTS_TABLE, SEEN, ModelFacts, costs_fingerprint, hashable, model_facts
from tunnelscope.registry import TRAINED, network_slug
from tunnelscope.study import paths
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
# Named rate sets for --rates, each with where its numbers come from. "cpu" is the measured
# reference. "a100" is an ESTIMATE, unmeasured here: pretrain from NVIDIA DeepLearningExamples'
# ResNet-50 v1.5 PyTorch README (one A100 80GB, mixed precision: 2,470 training images/s; 8.2
# GFLOP a forward pass, counted as here: 3 x 8.2e9 x 2,470 = 6.1e13 FLOP/s); embed at the same
# FLOP rate (inference runs faster, but these models are far smaller than ResNet-50 at 224 px);
# probe 100x the reference (benchmarks/RESULTS.md expects 2-3 orders of magnitude on CUDA);
# prepare is CPU work (decoding, resizing) and keeps the reference's rate.
RATE_SETS = {
    "cpu": (
        REFERENCE_RATES,
        "from the reference machine (measured: a 2-core CPU, one thread per job; benchmarks/RESULTS.md)",
    ),
    "a100": (
        {"prepare": 700.0, "pretrain": 6.1e13, "embed": 6.1e13, "probe": 7.6e9},
        "an ESTIMATE for one NVIDIA A100 per job (published ResNet-50 training throughput in these units, "
        "tunnelscope.budget.RATE_SETS; small models at 32-128 px reach a fraction of it: run one cell, then "
        "validate again)",
    ),
}
TRAIN_STEP_FLOPS = 3  # forward + backward (two products per forward one)

# Disk per stage, in bytes: prepare's stores (uint8 pixels, each image's shorter side resized to
# resolution / crop_pct; square images assumed, wider ones take more), pretrain's checkpoints
# (float32 parameters), embed's Parquet files (the vectors in embed.dtype plus sample id, split and
# label: EMBED_ROW_BYTES a row and layer, the measured overhead of the 1,797-image digits set's
# files over their vectors, 1.6 %) and probe's outputs (float32 weights per feature and class, an
# int64 prediction per test image and layer).
DISK_STAGES = {"prepare": "stores", "pretrain": "checkpoints", "embed": "embeddings", "probe": "probes"}
EMBED_BYTES = {"float16": 2, "float32": 4}
EMBED_ROW_BYTES = 5
PARAM_BYTES = PROBE_WEIGHT_BYTES = 4
PREDICTION_BYTES = 8


@dataclass(frozen=True)
class Job:
    """One job of a budget. ``kind``: what sets its speed beyond its units (the solver of a probe
    job; the architecture of pretrain and embed jobs, as the FLOPs of small maps run slower than
    those of large ones; nothing for prepare). ``benchmark``: the Snakemake benchmark file a run of
    it leaves, under the results directory (None where its work is part of another job's: a
    continual run's embeddings and probes are its evaluate job's)."""

    stage: str
    name: str
    kind: str = ""
    benchmark: str | None = None


@dataclass
class Rates:
    """Units per second of one job: per (stage, kind) where a run measured that kind (Job.kind),
    else the stage's median over every measured job, else the reference machine's."""

    by_kind: dict[tuple[str, str], float]
    by_stage: dict[str, float]
    measured: dict[Job, float] = field(default_factory=dict)  # seconds each finished job took
    # (stage, arch) -> factor on a stage's reference rate for the compute settings of that arch
    speedup: dict[tuple[str, str], float] = field(default_factory=dict)
    # stage -> where its rate comes from: "measured", "given" (--rate) or a RATE_SETS name
    origin: dict[str, str] = field(default_factory=dict)

    @property
    def jobs(self) -> dict[str, int]:
        """Measured jobs per stage."""
        return {stage: sum(job.stage == stage for job in self.measured) for stage in STAGES}

    def of(self, job: Job, arch: str) -> float:
        measured = self.by_kind.get((job.stage, job.kind))
        return measured or self.by_stage[job.stage] * self.speedup.get((job.stage, arch), 1.0)


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
    jobs: dict[Job, float] = field(default_factory=dict)  # job -> units
    disk: dict[str, float] = field(default_factory=dict)  # stage -> bytes written (DISK_STAGES)
    missing: list[str] = field(default_factory=list)  # datasets whose files are not there to count
    nominal: list[str] = field(default_factory=list)  # datasets sized from their published sizes

    def add_disk(self, stage: str, size: float) -> None:
        self.disk[stage] = self.disk.get(stage, 0.0) + size

    def units(self, stage: str) -> float:
        return sum(u for job, u in self.jobs.items() if job.stage == stage)

    def predicted(self, rates: Rates) -> dict[Job, float]:
        return {job: units / rates.of(job, self.arch) for job, units in self.jobs.items()}

    def seconds(self, rates: Rates) -> float:
        """Predicted seconds of every job (what a fresh run takes)."""
        return sum(self.predicted(rates).values())

    def remaining(self, rates: Rates) -> float:
        """Predicted seconds of the jobs a run has not finished yet."""
        return sum(s for job, s in self.predicted(rates).items() if job not in rates.measured)


def _sizes(spec: dict) -> tuple[dict[str, int], int, bool] | None:
    """``split_sizes``, or None where the files are not there to count."""
    try:
        return split_sizes(spec)
    except (DatasetError, OSError):
        return None


def dataset_sizes(study: Study) -> dict[str, tuple[dict[str, int], int, bool] | None]:
    """``split_sizes`` of every set a cell or continual run reads; None where neither files nor a
    published size exist."""
    read = {d for cid in study.cells for d in study.eval_sets(cid)} | {r.id_dataset for r in study.runs.values()}
    return {d: _sizes(study.config["datasets"][d]) for d in sorted(read)}


def _job(rule: str, kind: str = "", **values) -> Job:
    """A job of ``rule`` (a continual training counts as a pretrain job) and its benchmark file."""
    stage = "pretrain" if rule.startswith("continual_") else rule
    name = paths.JOB_NAMES[rule].format(**values)
    return Job(stage, name, kind, paths.benchmark_file(rule, **values))


def cell_budgets(study: Study, sizes: dict | None = None) -> list[CellBudget]:
    """Every cell's units per stage, then every continual run's (run_budgets); prepare is charged
    to the first that reads a store. Raises BudgetError where a cell's model cannot be built."""
    sizes = dataset_sizes(study) if sizes is None else sizes
    side, poolings = study.config["embed"]["side"], embed_poolings(study)
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
            facts = model_facts(
                cell.arch,
                id_sizes[1] if id_sizes else 0,
                cell.model["width"],
                cell.resolution,
                hashable(cell.model.get("probe_points", "default")),
                poolings,
                side,
                json.dumps(cell.model.get("kwargs", {}), sort_keys=True),
                json.dumps(cell.pretrained, sort_keys=True),
            )
        except (ValueError, RuntimeError, TypeError, KeyError, AssertionError) as exc:  # builders of many libraries
            raise BudgetError(
                f"cell {cid}: {arch} cannot be built or run at {cell.resolution} px ({type(exc).__name__}: {exc})"
            ) from None
        flops, dims, budget.patch_grid = facts.flops, facts.dims[cell.probe["pooling"]], facts.patch_grid
        if id_sizes is None:
            out.append(budget)
            continue
        budget.add_disk("pretrain", PARAM_BYTES * facts.params)
        budget.train_images = id_sizes[0]["train"]
        if cell.pretrained is None:
            budget.image_epochs = budget.train_images * cell.training["epochs"]
        images = {d: sum(s[0][k] for k in SPLITS) for d, s in eval_sizes.items() if s}
        for d in images:
            store = (d, study.transform_tag(cid, d))
            if store not in prepared:
                prepared.add(store)
                budget.jobs[_job("prepare", dataset=d, transform=store[1])] = float(images[d])
                budget.add_disk("prepare", store_bytes(store[1], images[d]))
        if cell.pretrained is None:
            units = TRAIN_STEP_FLOPS * flops * budget.train_images * cell.training["epochs"]
            budget.jobs[_job("pretrain", cell.arch, cell=cid)] = units
        for d in images:
            budget.jobs[_job("embed", cell.arch, cell=cid, eval_set=d)] = flops * images[d]
            budget.add_disk("embed", embedding_bytes(facts, images[d], study.config["embed"]["dtype"]))
            for solver in study.solvers(cid):
                units = float(sum(dims) * images[d] * eval_sizes[d][1])
                budget.jobs[_job("probe", solver, cell=cid, eval_set=d, solver=solver)] = units
                test_images = eval_sizes[d][0]["test"]
                budget.add_disk("probe", probe_bytes(dims, eval_sizes[d][1], test_images))
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
        facts = model_facts(
            run.arch,
            classes,
            run.model["width"],
            run.resolution,
            hashable(run.model.get("probe_points", "default")),
            embed_poolings(study),
            side,
        )
        flops, dims, budget.patch_grid = facts.flops, facts.dims[study.config["probe"]["pooling"]], facts.patch_grid
        share = {t: (stop - first) / classes for t, (first, stop) in enumerate(section["tasks"], start=1)}
        store = (run.id_dataset, study.run_transform_tag(rid))
        if store not in prepared:
            prepared.add(store)
            budget.jobs[_job("prepare", dataset=store[0], transform=store[1])] = float(sum(split[k] for k in SPLITS))
            budget.add_disk("prepare", store_bytes(store[1], sum(split[k] for k in SPLITS)))
        trainings = [(network, task, run.training) for network, task in TRAINED.items()]
        trainings += [(e["name"], e["task"], run.finetune_training) for e in section["finetune"]]
        for network, task, recipe in trainings:
            images = split["train"] * share[task] * recipe["epochs"]
            budget.image_epochs += int(images)
            rule = "continual_train" if network in TRAINED else "continual_finetune"
            budget.jobs[_job(rule, run.arch, run=rid, network=network_slug(network))] = (
                TRAIN_STEP_FLOPS * flops * images
            )
            budget.add_disk("pretrain", PARAM_BYTES * facts.params)
        for slug, label in study.continual_networks():
            own = TRAINED.get(label)
            for task, fraction in share.items():
                images = sum(split[k] for k in SPLITS) * fraction
                budget.jobs[Job("embed", f"{rid}_{slug}_task{task}", run.arch)] = flops * images
                budget.add_disk("embed", embedding_bytes(facts, images, study.config["embed"]["dtype"]))
                width = sum(dims) if task == own else dims[-1]
                task_classes = classes * fraction
                units = float(width * images * task_classes)
                budget.jobs[Job("probe", f"{rid}_{slug}_task{task}_{solver}", solver)] = units
    return out


def embed_poolings(study: Study) -> tuple[str, ...]:
    pooling = study.config["embed"]["pooling"]
    return (pooling,) if isinstance(pooling, str) else tuple(pooling)


def store_bytes(transform: str, images: float) -> float:
    """A prepared store's pixels: each image's shorter side resized to resolution / crop_pct."""
    from tunnelscope.registry import parse_transform_tag

    tag = parse_transform_tag(transform)
    side = int(tag["resolution"] / tag.get("crop_pct", 1.0))
    return images * side * side * 3


def embedding_bytes(facts: ModelFacts, images: float, dtype: str) -> float:
    """One eval set's embeddings: every probe point's vector under every pooling, one row each."""
    layers = sum(len(d) for d in facts.dims.values())
    return images * (EMBED_BYTES[dtype] * sum(sum(d) for d in facts.dims.values()) + EMBED_ROW_BYTES * layers)


def probe_bytes(dims: tuple[int, ...], classes: int, test_images: int) -> float:
    """One probe job's weights (a vector per class and layer) and predictions."""
    return PROBE_WEIGHT_BYTES * sum(dims) * classes + PREDICTION_BYTES * test_images * len(dims)


def _benchmark_seconds(path: Path) -> float | None:
    with open(path) as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return float(rows[-1]["s"]) if rows else None


def reference_speedup(stage: str, arch: str, compute: dict) -> float:
    """REFERENCE_SPEEDUP of ``arch`` under the ``compute`` settings as a CPU job here resolves
    them (``auto`` by this machine's bf16 and the architecture's family; 1 where not measured)."""
    from tunnelscope.registry import arch_facts

    family = (arch_facts(arch) or {}).get("family")
    channels_last = compute.get("channels_last", "auto")
    channels_last = family == "cnn" if channels_last == "auto" else channels_last
    precision = compute.get("precision", "auto")
    if precision == "auto":  # asks torch about this CPU: imported only then (seconds)
        from tunnelscope.runtime import resolve_precision

        precision = resolve_precision(precision, "cpu")
    return REFERENCE_SPEEDUP.get((stage, family, precision, channels_last), 1.0)


def calibrate(
    budgets: list[CellBudget],
    results: str | Path,
    compute: dict | None = None,
    fallback: str = "cpu",
    given: dict[str, float] | None = None,
) -> Rates:
    """Rates from the benchmark files that a run of this study left under ``results/benchmarks``
    (one per job, named as the job), as medians over jobs. A stage without any falls back to the
    ``fallback`` set of RATE_SETS; the reference CPU's ("cpu") scaled for the study's ``compute``
    settings (``reference_speedup``; without them, the reference's float32 NCHW). A stage in
    ``given`` (--rate) takes that rate for every job, measured or not."""
    given = given or {}
    samples, measured = {}, {}
    for budget in budgets:
        for job, units in budget.jobs.items():
            path = Path(results) / job.benchmark if job.benchmark else None
            seconds = _benchmark_seconds(path) if path and path.is_file() else None
            if seconds:
                measured[job] = seconds
                samples.setdefault((job.stage, job.kind), []).append(units / seconds)
    by_stage = {stage: [r for (s, _), rates in samples.items() if s == stage for r in rates] for stage in STAGES}
    speedup = {
        (stage, budget.arch): reference_speedup(stage, budget.arch, compute)
        for budget in budgets
        for stage in ("pretrain", "embed")
        if compute is not None and fallback == "cpu" and not by_stage[stage] and stage not in given
    }
    reference = RATE_SETS[fallback][0]
    return Rates(
        by_kind={key: statistics.median(rates) for key, rates in samples.items() if key[0] not in given},
        by_stage={
            stage: given.get(stage) or (statistics.median(r) if r else reference[stage])
            for stage, r in by_stage.items()
        },
        measured=measured,
        speedup=speedup,
        origin={stage: "given" if stage in given else "measured" if r else fallback for stage, r in by_stage.items()},
    )


def write_costs_table(configs: list[Path], path: Path | None = None) -> int:
    """Every cacheable model setting of ``configs`` (the shipped presets) into the table at ``path``
    (default the shipped one), under this installation's fingerprint; the number of settings. A
    table whose fingerprint differs is not read, so each setting is measured anew."""
    import yaml

    from tunnelscope.study.schema import load_schema

    SEEN.clear()
    for config in configs:
        cell_budgets(Study(yaml.safe_load(config.read_text()), load_schema()))
    table = {"fingerprint": costs_fingerprint(), "facts": {k: SEEN[k].to_json() for k in sorted(SEEN)}}
    Path(path or str(COSTS_TABLE)).write_text(json.dumps(table, indent=1) + "\n")
    return len(SEEN)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m tunnelscope.budget",
        description="Regenerate the shipped table of model facts (FLOPs, pooled dims, parameters) from the presets.",
    )
    parser.add_argument(
        "configs", nargs="*", type=Path, help="configs to cover (default: config.yaml and config/*.yaml)"
    )
    args = parser.parse_args(argv)
    repo = Path(__file__).resolve().parents[2]
    configs = args.configs or [repo / "config.yaml", *sorted((repo / "config").glob("*.yaml"))]
    count = write_costs_table(configs)
    print(f"{COSTS_TABLE}: {count} model settings of {len(configs)} configs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
