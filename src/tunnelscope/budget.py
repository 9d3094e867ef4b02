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
import hashlib
import json
import math
import os
import statistics
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from tunnelscope.data.sources import load_source, split_sizes
from tunnelscope.data.splits import SPLITS
from tunnelscope.data.store import DatasetError
from tunnelscope.registry import IMAGENET_MEAN, IMAGENET_STD, TRAINED, network_slug
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


def _patch_grid(model, resolution: int) -> int | None:
    """Tokens per side of a patch-embedding model (timm's patch_embed, torchvision's ViT), else None."""
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None) or getattr(model, "patch_size", None)
    if patch is None:
        return None
    return resolution // (patch[0] if isinstance(patch, (tuple, list)) else int(patch))


@dataclass(frozen=True)
class ModelFacts:
    """What the budget needs of one model setting: forward FLOPs of one image, the pooled dim of
    every probe point per pooling, the parameter count and the patch grid (None: no patches)."""

    flops: float
    dims: dict[str, tuple[int, ...]]
    params: int
    patch_grid: int | None

    def to_json(self) -> dict:
        return {
            "flops": self.flops,
            "dims": {k: list(v) for k, v in self.dims.items()},
            "params": self.params,
            "patch_grid": self.patch_grid,
        }

    @classmethod
    def from_json(cls, entry: dict) -> ModelFacts:
        return cls(
            entry["flops"], {k: tuple(v) for k, v in entry["dims"].items()}, entry["params"], entry["patch_grid"]
        )


# Model facts of every setting the shipped presets use, so that validating them builds no model
# (config/paper.yaml: 23 settings, ~0.5 s of CPU each on the meta device). Valid only for the
# fingerprint it records (costs_fingerprint); regenerate with ``python -m tunnelscope.budget``.
COSTS_TABLE = resources.files("tunnelscope").joinpath("resources", "model_costs.json")
_COST_SOURCES = ("models",)  # the package folders whose code decides FLOPs, dims and parameters


_SEEN: dict[str, ModelFacts] = {}  # every cacheable setting this process looked up (write_costs_table)


def costs_fingerprint() -> str:
    """SHA-256 of what the shipped facts depend on: the model code, the poolings, torch's minor
    version (its FLOP counter) and timm's version (its models), read without importing either."""
    from importlib.metadata import PackageNotFoundError, version

    from tunnelscope.registry import POOLINGS

    digest = hashlib.sha256(repr(POOLINGS).encode())
    root = Path(__file__).parent
    for folder in _COST_SOURCES:
        for path in sorted((root / folder).glob("*.py")):
            digest.update(path.name.encode() + path.read_bytes())
    for package, parts in (("torch", 2), ("timm", 3)):
        try:
            digest.update(".".join(version(package).split("+")[0].split(".")[:parts]).encode())
        except PackageNotFoundError:
            digest.update(b"-")
    return digest.hexdigest()


@functools.cache
def _shipped_facts() -> dict[str, dict]:
    """The shipped table's entries, or none where its fingerprint is not this installation's."""
    try:
        table = json.loads(COSTS_TABLE.read_text())
    except (OSError, ValueError):
        return {}
    return table["facts"] if table.get("fingerprint") == costs_fingerprint() else {}


def facts_key(
    arch, classes, width, resolution, enumeration, poolings, side, kwargs_json, pretrained_json
) -> str | None:
    """The table key of a model setting; None for a python: model (its file may change any time).
    A published model is keyed by what builds it (its arch and head), not by where its weights are."""
    pretrained = json.loads(pretrained_json)
    source = pretrained["arch"] if pretrained else arch
    if source.startswith("python:"):
        return None
    built = {"arch": pretrained["arch"], "num_classes": pretrained["num_classes"]} if pretrained else None
    enumeration = list(enumeration) if isinstance(enumeration, tuple) else enumeration
    return json.dumps(
        [arch, classes, width, resolution, enumeration, sorted(poolings), side, json.loads(kwargs_json), built]
    )


def model_facts(
    arch: str,
    classes: int,
    width: float,
    resolution: int,
    enumeration: str | tuple[str, ...],
    poolings: tuple[str, ...],
    side: str,
    kwargs_json: str = "{}",
    pretrained_json: str = "null",
) -> ModelFacts:
    """ModelFacts of one setting (``enumeration``: a rule or a tuple of module names;
    ``kwargs_json``: a python: model's model.kwargs; ``pretrained_json``: a published backbone's
    entry; as JSON so that the cache can key on them): from the shipped table where it holds the
    setting, else measured once per process."""
    args = (arch, classes, width, resolution, enumeration, tuple(sorted(poolings)), side, kwargs_json, pretrained_json)
    key = facts_key(*args)
    entry = _shipped_facts().get(key)
    facts = ModelFacts.from_json(entry) if entry else _measure_facts(*args)
    if key is not None:
        _SEEN[key] = facts
    return facts


@functools.cache
def _measure_facts(arch, classes, width, resolution, enumeration, poolings, side, kwargs_json, pretrained_json):
    """ModelFacts from one model build and one forward pass (on PyTorch's meta device where every
    operation has a meta kernel: shapes only, no weights initialised or multiplied)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from tunnelscope.models.build import build_cell_model, probe_points
    from tunnelscope.models.capture import layer_shapes, pooled_dims

    def measure(device: str) -> ModelFacts:
        with torch.device(device):
            settings = {"width": width, "kwargs": json.loads(kwargs_json)}
            model = build_cell_model(arch, settings, classes, resolution, json.loads(pretrained_json)).eval()
            points = probe_points(model, side, enumeration)
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                model(torch.zeros(1, 3, resolution, resolution))
            shapes = layer_shapes(model, points, resolution)
            dims = {pooling: tuple(pooled_dims(shapes, points, pooling)) for pooling in poolings}
            params = sum(p.numel() for p in model.parameters())
        return ModelFacts(float(counter.get_total_flops()), dims, params, _patch_grid(model, resolution))

    try:
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


def shared_training_images(study: Study, cell: str, ood_set: str, listings: dict | None = None) -> set:
    """Files of ``cell``'s ID train split that the probe of ``ood_set`` also trains on (a corrupted
    copy: its clean set's train split), from the file listings alone: empty where the two read
    different roots, or their files are not there (yet) or are not files (arrays). ``listings``:
    dataset name -> its train files, filled as read, so that a caller checking many pairs lists
    each tree once (an ImageNet listing takes seconds)."""
    listings = {} if listings is None else listings

    def files(name: str) -> set | None:
        if name not in listings:
            listings[name] = _train_files(_files_spec(study, name))
        return listings[name]

    id_set = study.cells[cell].id_dataset
    a, b = (Path(os.path.normpath(_files_spec(study, d).get("root", ""))) for d in (id_set, ood_set))
    if not (a == b or a in b.parents or b in a.parents):
        return set()  # separate trees share no file
    own, probed = files(id_set), files(ood_set)
    return own & probed if own and probed else set()


def _train_files(spec: dict) -> set | None:
    """The image files of a dataset's train split; None where it is not read from files or they
    are not there."""
    if "root" not in spec:
        return None
    try:
        items = load_source({**spec, "download": False})["train"].items
    except (DatasetError, OSError):
        return None
    return set(items) if items and isinstance(items[0], Path) else None


def _files_spec(study: Study, name: str) -> dict:
    """The spec whose files ``name`` reads: its own, or a corrupted copy's clean set's."""
    spec = study.config["datasets"][name]
    return spec.get("base", spec)


def training_overlap_warnings(study: Study) -> list[str]:
    """One line per (ID set, OOD set) whose OOD probe trains on images the cell's backbone trained
    on: a noisy copy of the ID set itself, or a set drawn from the same train images. Such a set
    is near-ID, not OOD. A warning, not an error: the zero-shot protocol scores
    corrupted copies of the ID set on their test split only, as it should."""
    out, seen, listings = [], set(), {}
    for cid in study.trained_cells():
        for ood_set in study.ood_sets(cid):
            key = (study.cells[cid].id_dataset, ood_set)
            if key in seen:
                continue
            seen.add(key)
            if shared := shared_training_images(study, cid, ood_set, listings):
                out.append(
                    f"ood_sets: {ood_set!r} trains its probe on {len(shared)} images that the backbones on "
                    f"{key[0]!r} trained on (cell {cid}): a near-ID set, not OOD; build it from other images, "
                    "e.g. a test tree read with layout: single"
                )
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
                _hashable(cell.model.get("probe_points", "default")),
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
            _hashable(run.model.get("probe_points", "default")),
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


# ----------------------------------------------- the shipped table of model facts


def write_costs_table(configs: list[Path], path: Path | None = None) -> int:
    """Every cacheable model setting of ``configs`` (the shipped presets) into the table at ``path``
    (default the shipped one), under this installation's fingerprint; the number of settings. A
    table whose fingerprint differs is not read, so each setting is measured anew."""
    import yaml

    from tunnelscope.study.schema import load_schema

    _SEEN.clear()
    for config in configs:
        cell_budgets(Study(yaml.safe_load(config.read_text()), load_schema()))
    table = {"fingerprint": costs_fingerprint(), "facts": {k: _SEEN[k].to_json() for k in sorted(_SEEN)}}
    Path(path or str(COSTS_TABLE)).write_text(json.dumps(table, indent=1) + "\n")
    return len(_SEEN)


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
