"""``tunnelscope validate``: check a study config, then list its cells with their budget estimate."""

from __future__ import annotations

import argparse
import json
import sys

from tunnelscope.commands.study_file import read_study
from tunnelscope.registry import parse_python_arch
from tunnelscope.study.config import Study
from tunnelscope.study.schema import SCHEMA_PATH

HELP = "check a study config; list its cells with their budget estimate"
DESCRIPTION = (
    "Check a study config, then list its cells with their eval sets, training image-epochs, TFLOPs "
    "and estimated job-minutes, and the study's total time and disk per stage (with the embeddings kept and with "
    "embed.keep false). Rates come from the benchmark files of a run of the same "
    "config where there are some (RESULTS/benchmarks), else from --rates (default: the reference machine, a 2-core "
    "CPU). What the run "
    "would fail on is an error (exit 1, one line naming the key); data or weights not there yet, published models' "
    "preprocessing that differs from their own, patch grids under 4x4, and OOD sets whose probe trains on "
    "images the cell's backbone trained on are 'warning:' lines."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tunnelscope.budget import RATE_SETS

    parser.add_argument("config", help="YAML config file, e.g. config.yaml")
    parser.add_argument(
        "--schema", default=str(SCHEMA_PATH), help="JSON schema (default: the one shipped with tunnelscope)"
    )
    parser.add_argument(
        "--jobs", type=_positive_int, default=2, help="jobs that run at a time, for the wall-time estimate (default 2)"
    )
    parser.add_argument(
        "--rates",
        choices=sorted(RATE_SETS),
        default="cpu",
        help="the rates of stages without measured jobs: cpu, the measured 2-core reference CPU (default), or a100, "
        "an ESTIMATE for one NVIDIA A100 per job from published ResNet-50 throughput (see tunnelscope.budget.RATE_SETS)",
    )
    parser.add_argument(
        "--rate",
        type=_stage_rate,
        action="append",
        default=[],
        metavar="STAGE=VALUE",
        help="a stage's rate per job in its units per second (prepare images, pretrain and embed FLOP, probe "
        "products), e.g. embed=2e13; overrides measured rates too; repeat for several stages",
    )
    parser.add_argument(
        "--no-budget",
        action="store_true",
        help="list the cells without the budget estimate (building only python: models and models with listed probe points, to check them)",
    )


def run(args) -> int:
    """Everything that would stop the run is an error (exit 1) before "valid" is printed; data
    that may still arrive, and settings that differ from a model's own, are warnings."""
    from tunnelscope import budget, preflight

    study, code = read_study(args.config, args.schema)
    if study is None:
        return code
    problem = _check_own_models(study)
    errors = [problem] if problem else []
    sizes = budget.dataset_sizes(study)
    budgets = []
    if not args.no_budget and not errors:
        try:
            budgets = budget.cell_budgets(study, sizes)
        except budget.BudgetError as exc:
            errors.append(str(exc))
    if errors:
        print(f"tunnelscope: config error in {args.config}: {errors[0]}", file=sys.stderr)
        return 1
    n_eval = sum(len(study.eval_sets(c)) for c in study.cells)
    print(f"{args.config}: valid; {len(study.cells)} cells, {n_eval} probe jobs")
    lines, warnings = preflight.preprocessing_report(study) if study.pretrained else ([], [])
    warnings = [
        *preflight.data_warnings(study, sizes),
        *preflight.training_overlap_warnings(study),
        *preflight.weights_warnings(study),
        *warnings,
        *preflight.patch_warnings(study, budgets),
    ]
    for line in warnings:
        print(f"warning: {line}")
    if lines:
        print("eval preprocessing of the published models:")
        print("\n".join(lines))
    if args.no_budget:
        for cid in study.cells:
            print(f"  {cid}: eval sets {', '.join(study.eval_sets(cid))}")
    else:
        _print_budget(study, budgets, args)
    if study.runs:
        print(
            f"continual learning: {len(study.runs)} runs, each of {', '.join(label for _, label in study.continual_networks())}"
        )
        for run in study.runs:
            print(f"  {run}")
    return 0


def _check_own_models(study: Study) -> str | None:
    """What the config cannot say without torch: every python: model builds, and every list of
    probe points names modules of its model that a forward pass runs, in that order. The first
    problem, in one line, or None."""
    from tunnelscope.study.checks import known_classes

    checked = set()
    for cid, cell in study.cells.items():
        rule = cell.model.get("probe_points", "default")
        source = cell.pretrained["arch"] if cell.pretrained else cell.arch
        if parse_python_arch(source) is None and not isinstance(rule, list):
            continue
        # imported here: torch takes seconds to import, and most studies build no model here
        from tunnelscope.models.build import build_cell_model, check_forward_order, probe_points

        key = json.dumps([cell.arch, cell.model, cell.resolution], sort_keys=True)
        if key in checked:
            continue
        checked.add(key)
        classes = known_classes(study.config["datasets"][cell.id_dataset]) or 2  # the head size changes no name
        where = f"pretrained.{cell.arch}" if cell.pretrained else f"cell {cid}: model"
        try:
            model = build_cell_model(
                cell.arch, cell.model, classes, cell.resolution, cell.pretrained, key=_arch_key(study, cell)
            )
        except ValueError as exc:
            return str(exc)
        try:
            probe_points(model, study.config["embed"]["side"], rule)
            check_forward_order(model, rule, cell.resolution)
        except ValueError as exc:
            return f"{where}.probe_points: {str(exc).removeprefix('probe_points: ')}"
    return None


def _arch_key(study: Study, cell) -> str:
    """The config key of a cell's architecture: pretrained.NAME.arch, or its first grid.arch[i]."""
    if cell.pretrained:
        return f"pretrained.{cell.arch}.arch"
    blocks = study.config["grid"]
    for b, block in enumerate(blocks):
        if cell.arch in block["arch"]:
            where = f"grid[{b}]" if len(blocks) > 1 else "grid"
            return f"{where}.arch[{block['arch'].index(cell.arch)}]"
    return "grid.arch"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be 1 or more")
    return value


def _print_budget(study: Study, budgets: list, args) -> None:
    from tunnelscope import budget

    parallel_jobs = args.jobs
    rates = budget.calibrate(budgets, study.results, study.config["compute"], args.rates, dict(args.rate))
    if budgets:
        print(f"  {'cell':<40} {'eval sets':>9} {'train img-ep':>12} {'TFLOP':>8} {'job-min':>8}")
    backbones = {**study.cells, **study.runs}
    unknown = [b for b in budgets if backbones[b.cell].id_dataset in b.missing]
    for b in budgets:
        if b in unknown:
            id_set = backbones[b.cell].id_dataset
            print(f"  {b.cell:<40} {b.eval_sets:>9}  (no estimate: the files of {id_set} are not there)")
            continue
        tflop = (b.units("pretrain") + b.units("embed")) / 1e12
        notes = [f"continual run, {b.eval_sets} tasks"] * (b.cell in study.runs)
        notes += [f"{', '.join(b.missing)} not counted"] * bool(b.missing)
        notes += [f"published sizes of {', '.join(b.nominal)}"] * bool(b.nominal)
        note = f"  ({'; '.join(notes)})" if notes else ""
        print(
            f"  {b.cell:<40} {b.eval_sets:>9} {b.image_epochs:>12,} {tflop:>8.2f} {b.seconds(rates) / 60:>8.1f}{note}"
        )
    if not budgets:
        return
    if len(unknown) == len(budgets):
        print("budget: no estimate; the ID sets' files are not there and have no published size (see the warnings)")
        return
    total = sum(b.seconds(rates) for b in budgets) / 60
    scope = (
        f" for the {len(budgets) - len(unknown)} cells with an estimate (none for {len(unknown)})" if unknown else ""
    )
    print(
        f"budget: {total:,.0f} job-min of prepare, pretrain, embed and probe jobs{scope}, about {total / parallel_jobs:,.0f} min "
        f"with {parallel_jobs} at a time (--jobs), plus the small per-cell and analysis jobs"
    )
    if rates.measured:
        left = sum(b.remaining(rates) for b in budgets) / 60
        print(
            f"  {len(rates.measured)} of {sum(len(b.jobs) for b in budgets)} of these jobs have run "
            f"({sum(rates.measured.values()) / 60:,.0f} job-min); the rest: about {left:,.0f} job-min, "
            f"{left / parallel_jobs:,.0f} min with {parallel_jobs} at a time"
        )
    print("rates per job:")
    for stage in budget.STAGES:
        n, origin = rates.jobs[stage], rates.origin[stage]
        where = {
            "measured": f"the median of {n} jobs in {study.results}/benchmarks",
            "given": "given (--rate)",
        }.get(origin) or f"--rates {origin}"
        kinds = sorted(k for s, k in rates.by_kind if s == stage and k)
        per_kind = f" (its own for {', '.join(kinds)})" if kinds else ""
        factors = sorted({f"{f:.2f}x for {arch}" for (s, arch), f in rates.speedup.items() if s == stage and f != 1})
        scaled = f" (float32 NCHW; compute {_compute_here(study)}: {', '.join(factors)})" if factors else ""
        print(f"  {stage:<8} {rates.by_stage[stage]:.3g} {budget.UNIT[stage]}/s, {where}{per_kind}{scaled}")
    if args.rates in rates.origin.values():
        print(f"  --rates {args.rates}: {budget.RATE_SETS[args.rates][1]}")
    _print_disk(study, budgets)


def _print_disk(study: Study, budgets: list) -> None:
    """Disk per stage and in all, with the embeddings kept and with embed.keep false."""
    from tunnelscope import budget

    per_stage = {stage: sum(b.disk.get(stage, 0.0) for b in budgets) for stage in budget.DISK_STAGES}
    total, embeddings = sum(per_stage.values()), per_stage["embed"]
    keep = "kept: embed.keep true" if study.config["embed"]["keep"] else "deleted: embed.keep false"
    print(
        f"disk: {_size(total if study.config['embed']['keep'] else total - embeddings)} written to {study.results} "
        f"(embeddings {keep}); {_size(total)} with the embeddings kept, {_size(total - embeddings)} with "
        "embed.keep false (each eval set's deleted once every job reading it has finished)"
    )
    pooling, dtype = ", ".join(budget.embed_poolings(study)), study.config["embed"]["dtype"]
    what = {**budget.DISK_STAGES, "embed": f"embeddings ({dtype}, {pooling})"}
    for stage, size in per_stage.items():
        print(f"  {stage:<8} {_size(size):>9}  {what[stage]}")


def _size(size: float) -> str:
    """Bytes in decimal units (GB = 1e9 bytes), three significant digits."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size:.0f} B"


def _stage_rate(text: str) -> tuple[str, float]:
    """--rate STAGE=VALUE: a stage of the budget and its units per second."""
    from tunnelscope.budget import STAGES, UNIT

    stage, _, value = text.partition("=")
    if stage not in STAGES:
        raise argparse.ArgumentTypeError(f"{text}: STAGE is one of {', '.join(STAGES)}")
    try:
        rate = float(value)
    except ValueError:
        rate = 0.0
    if not rate > 0:
        raise argparse.ArgumentTypeError(f"{text}: VALUE is a positive number of {UNIT[stage]} per second")
    return stage, rate


def _compute_here(study: Study) -> str:
    """The study's compute precision and channels_last, with what auto resolves to on this CPU."""
    from tunnelscope.runtime import resolve_precision

    precision, channels_last = (study.config["compute"][k] for k in ("precision", "channels_last"))
    resolved = f" = {resolve_precision(precision, 'cpu')} here" if precision == "auto" else ""
    return f"precision {precision}{resolved}, channels_last {channels_last}"
