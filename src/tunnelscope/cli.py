"""Command-line entry point: ``tunnelscope validate | layers | best-layers | analyze | verify | adopt | profile install``."""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from importlib import resources
from pathlib import Path

import yaml

from tunnelscope import __version__
from tunnelscope.registry import CAPTURE_SIDES, POOLINGS, PROBE_POINT_RULES, parse_python_arch
from tunnelscope.study.config import Study
from tunnelscope.study.schema import SCHEMA_PATH, ConfigError, load_schema

REPO = Path(__file__).resolve().parents[2]
# The Snakemake profiles shipped in the package; profiles/ at the repository root links here.
PROFILES = resources.files("tunnelscope").joinpath("profiles")


def _read_study(path: str, schema: str) -> tuple[Study | None, int]:
    """(the study, 0), or (None, exit code) once its one-line error is printed."""
    try:
        with open(path) as fh:
            return Study(yaml.safe_load(fh), load_schema(schema)), 0
    except (OSError, yaml.YAMLError) as exc:
        print(f"tunnelscope: cannot read {path}: {exc}", file=sys.stderr)
        return None, 2
    except ConfigError as exc:
        print(f"tunnelscope: config error in {path}: {exc}", file=sys.stderr)
        return None, 1


def _validate(args) -> int:
    """Everything that would stop the run is an error (exit 1) before "valid" is printed; data
    that may still arrive, and settings that differ from a model's own, are warnings."""
    from tunnelscope import budget

    study, code = _read_study(args.config, args.schema)
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
    lines, warnings = budget.preprocessing_report(study) if study.pretrained else ([], [])
    warnings = [
        *budget.data_warnings(study, sizes),
        *budget.training_overlap_warnings(study),
        *budget.weights_warnings(study),
        *warnings,
        *budget.patch_warnings(study, budgets),
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


def _layers(args) -> int:
    from tunnelscope.models.build import check_forward_order, count_parameters, probe_points
    from tunnelscope.models.capture import layer_shapes, module_output_shapes, pooled_dims

    try:
        model = _layers_model(args)
    except (ValueError, RuntimeError) as exc:
        print(f"tunnelscope: {exc}", file=sys.stderr)
        return 1
    if args.all_modules:
        return _print_modules(args, model, module_output_shapes(model, args.resolution))
    rule = args.modules or args.probe_points
    try:
        points = probe_points(model, args.side, rule)
        check_forward_order(model, rule, args.resolution)  # listed names: as validate and the jobs check them
    except ValueError as exc:
        if rule == "default" and parse_python_arch(args.arch) is not None:  # no blocks: show what to name
            if not args.json:
                print(f"{args.arch} has no block modules, so no default probe points; name some of its modules:")
            return _print_modules(args, model, module_output_shapes(model, args.resolution))
        message = str(exc) if str(exc).startswith(args.arch) else f"{args.arch}: {exc}"
        print(f"tunnelscope: {message}", file=sys.stderr)
        return 1
    shapes = layer_shapes(model, points, args.resolution)
    layers = [
        {"index": p.index, "name": p.name, "side": p.side, "shape": list(shapes[p.index]), "dim": dim}
        for p, dim in zip(points, pooled_dims(shapes, points, args.pooling))
    ]
    report = {"arch": args.arch, "params": count_parameters(model), "layers": layers}
    if args.json:
        print(json.dumps(report))
        return 0
    named = "the listed modules" if args.modules else args.probe_points
    built = (
        f"{args.resolution}px"
        if parse_python_arch(args.arch)
        else f"{args.classes} classes, {args.resolution}px, width {args.width}"
    )
    print(
        f"{args.arch}: {report['params']:,} parameters ({built}); {len(layers)} probe points ({named}), pooling {args.pooling}"
    )
    rows = [[r["index"], r["name"], r["side"], "x".join(map(str, r["shape"])), r["dim"]] for r in layers]
    _print_columns(["index", "module", "side", "shape", "dim"], rows)
    names = yaml.safe_dump([row["name"] for row in layers], default_flow_style=True, width=10**6).strip()
    print(f"as names: probe_points: {names}")
    return 0


def _layers_model(args):
    """The model ``tunnelscope layers`` lists: a python: model gets ``--kwargs`` and, as in a grid
    cell, num_classes = --classes, unless --kwargs names num_classes or its function takes none
    (then --kwargs as they are, as a pretrained entry's kwargs)."""
    from tunnelscope.models.build import build_model, build_python_model, python_function

    kwargs = _parse_kwargs(args.kwargs)
    if parse_python_arch(args.arch) is not None and args.width != 1.0:
        raise ValueError(f"--width: {args.arch} is built as its function builds it; give it an argument in --kwargs")
    if parse_python_arch(args.arch) is not None:
        takes = inspect.signature(python_function(args.arch)).parameters
        if "num_classes" in kwargs or not (
            "num_classes" in takes or any(p.kind is p.VAR_KEYWORD for p in takes.values())
        ):
            return build_python_model(args.arch, kwargs)
    elif kwargs:
        raise ValueError(f"--kwargs: only a python:FILE.py:FUNCTION model takes keyword arguments, not {args.arch}")
    return build_model(args.arch, args.classes, args.width, args.resolution, kwargs=kwargs)


def _parse_kwargs(items: list[str]) -> dict:
    """--kwargs: one JSON object, or KEY=VALUE pairs whose values are read as YAML (8, 0.5, true, [1, 2], text)."""
    if len(items) == 1 and items[0].lstrip().startswith("{"):
        try:
            value = json.loads(items[0])
        except json.JSONDecodeError as exc:
            raise ValueError(f"--kwargs: {items[0]!r} is not a JSON object ({exc})") from None
        return value
    kwargs = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--kwargs: {item!r} is not KEY=VALUE or one JSON object")
        kwargs[key] = yaml.safe_load(text)
    return kwargs


def _print_modules(args, model, shapes: dict) -> int:
    modules = dict(model.named_modules())
    if args.json:
        rows = [{"name": n, "type": type(modules[n]).__name__, "shape": s and list(s)} for n, s in shapes.items()]
        print(json.dumps({"arch": args.arch, "modules": rows}))
        return 0
    print(
        f"{args.arch}: {len(shapes)} modules; any name below may be listed in probe_points (captured at its output for one {args.resolution}px image)"
    )
    rows = [
        [name, type(modules[name]).__name__, "x".join(map(str, shape)) if shape is not None else "(not run)"]
        for name, shape in shapes.items()
    ]
    _print_columns(["module", "type", "output"], rows)
    return 0


def _print_columns(header: list[str], rows: list[list]) -> None:
    """A plain-text table: each column as wide as its widest entry, numbers right-aligned."""
    widths = [max(len(str(v)) for v in column) for column in zip(header, *rows)]
    numeric = [bool(rows) and all(isinstance(row[i], int) for row in rows) for i in range(len(header))]
    for line in [header, *rows]:
        cells = [f"{v!s:>{w}}" if num else f"{v!s:<{w}}" for v, w, num in zip(line, widths, numeric)]
        print("  ".join(cells).rstrip())


def _is_release(path: str) -> bool:
    import pandas as pd

    from tunnelscope.analysis.release import is_release_table

    try:
        return path.endswith(".csv") and is_release_table(pd.read_csv(path, nrows=0))
    except (OSError, ValueError):
        return False


def _best_layers(args) -> int:
    """Print a study's best layers (aggregate/best_layers.parquet), one block per (backbone, OOD
    set): what the figure and the report show, readable in a terminal."""
    from tunnelscope.figures.best_layers import summary_table
    from tunnelscope.io import read_table

    path = Path(args.results) / "aggregate" / "best_layers.parquet"
    if not path.is_file():
        print(
            f"tunnelscope: {path} not found; build it with: snakemake --cores N --configfile CONFIG {path}",
            file=sys.stderr,
        )
        return 1
    table = summary_table(read_table(path))
    for _, row in table.iterrows():
        print(f"{row['backbone']} -> {row['OOD set']}")
        width = max(map(len, row.index))
        for key, value in row.drop(["backbone", "OOD set"]).items():
            print(f"  {key:<{width}}  {value}")
    return 0


def _analyze(args) -> int:
    import logging

    from tunnelscope.analysis.comparisons import (
        DEFAULT_SETTINGS,
        TableError,
        analyze,
        read_table,
    )
    from tunnelscope.analysis.release import paper_analysis, release_path

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if (args.table is None) == (not args.paper):
        print("tunnelscope: analyze needs a TABLE or --paper (the paper's released table), not both", file=sys.stderr)
        return 2
    table_path = str(release_path()) if args.paper else args.table
    settings = dict(DEFAULT_SETTINGS)
    source = "auto"
    if args.config:
        study, code = _read_study(args.config, args.schema)
        if study is None:
            return code
        settings, source = study.config["analysis"], f"from {args.config}"
    elif args.paper or _is_release(table_path):
        # The paper's released table is analysed with the paper's comparisons unless told otherwise.
        settings, source = paper_analysis(), "the paper's, from config/paper.yaml"
    try:
        results = analyze(read_table(table_path), args.out, settings)
    except (TableError, ValueError) as exc:
        print(f"tunnelscope: {table_path}: {exc}", file=sys.stderr)
        return 1
    fit = results["shap_fit"].set_index("target").r2
    paired = results["paired_tests"]
    n = paired.comparison.nunique()
    print(
        f"wrote {', '.join(f'{k}.csv' for k in results)} to {args.out}; {n} comparisons ({source}); in-sample R2: "
        + ", ".join(f"{t} {r:.2f}" for t, r in fit.items())
    )
    verdicts = paired.verdict[paired.verdict.fillna("") != ""].value_counts()
    print(
        f"verdicts at the {settings['unit']} level (analysis.unit): "
        + (", ".join(f"{verdict} {count}" for verdict, count in verdicts.items()) or "none")
    )
    return 0


def _adopt(args) -> int:
    """Record CONFIG, run from this directory, as the study that owns its results directory."""
    from tunnelscope.study import manifest

    study, code = _read_study(args.config, str(SCHEMA_PATH))
    if study is None:
        return code
    results = Path(study.results)
    if not results.is_dir():
        print(f"tunnelscope: {results.resolve()}: no such directory; a study's first run records it", file=sys.stderr)
        return 1
    owner = manifest.Owner.here([args.config])
    settings = manifest.study_settings(study.config)
    lock = manifest.ResultsLock(results)
    try:
        note = lock.acquire(owner)  # not while a run works there
        try:
            previous = manifest.read(results)
        except manifest.ManifestError:
            previous = None  # an unreadable record is what adopt replaces
        manifest.record(results, owner, settings)
    except (manifest.ManifestError, OSError) as exc:
        print(f"tunnelscope: {exc}", file=sys.stderr)
        return 1
    finally:
        lock.release()
    if note:
        print(f"tunnelscope: {note}")
    was = f" (was: {manifest.Owner.from_record(previous['owner'])})" if previous else ""
    print(f"{results.resolve()}: recorded as the results of {owner}{was}")
    moved = previous and previous["owner"]["workdir"] != owner.workdir
    difference = moved and manifest.first_difference(previous["settings"], settings)
    if difference:
        # Snakemake's params records of the old files are in the old working directory.
        print(
            f"warning: the settings differ at {difference}; the files there were made with the old ones and "
            "Snakemake here does not know it: rebuild them with snakemake --forceall (or --forcerun RULE)"
        )
    return 0


def _verify(args) -> int:
    """Check every file the study wrote; list the damaged, missing or incomplete ones with the
    command that rebuilds them (exit 1), or one line when all is well."""
    from tunnelscope.integrity import rebuild_base
    from tunnelscope.verify import report

    study, code = _read_study(args.config, args.schema)
    if study is None:
        return code
    base = rebuild_base("all", REPO / "Snakefile", [args.config])
    status, lines = report(study, args.config, base)
    print("\n".join(lines), file=sys.stderr if status else sys.stdout)
    return status


def _profile_names() -> list[str]:
    return sorted(entry.name for entry in PROFILES.iterdir() if entry.joinpath("config.yaml").is_file())


def _snakemake_profile_dirs() -> tuple[Path, Path]:
    """(user, site) directories in which ``snakemake --profile NAME`` looks for NAME/ (after the
    working directory): $XDG_CONFIG_HOME/snakemake or ~/.config/snakemake, and /etc/xdg/snakemake
    on Linux. Asked of Snakemake itself, so they are the ones it searches on every platform."""
    from snakemake.common import get_appdirs

    dirs = get_appdirs()
    return Path(dirs.user_config_dir), Path(dirs.site_config_dir)


def _profile_install(args) -> int:
    shipped = PROFILES.joinpath(args.name, "config.yaml").read_bytes()
    user_dir, site_dir = _snakemake_profile_dirs()
    target = Path(args.dest or user_dir) / args.name / "config.yaml"
    if target.exists() and target.read_bytes() == shipped:
        print(f"{target}: the {args.name} profile is already installed")
        return 0
    if target.exists() and not args.force:
        print(
            f"tunnelscope: {target} exists and differs from the shipped {args.name} profile; pass --force to overwrite it",
            file=sys.stderr,
        )
        return 1
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(shipped)
    except OSError as exc:
        print(f"tunnelscope: cannot write {target}: {exc}", file=sys.stderr)
        return 2
    # Snakemake finds a profile by name only in its own directories; elsewhere it needs the path.
    found = target.parent.parent.resolve() in (user_dir.resolve(), site_dir.resolve())
    print(
        f"installed the {args.name} profile as {target}; use it with: snakemake --profile {args.name if found else target.parent}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    from tunnelscope.budget import RATE_SETS

    parser = argparse.ArgumentParser(prog="tunnelscope", description="Layer-wise OOD transfer of image networks.")
    parser.add_argument("--version", action="version", version=f"tunnelscope {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    val = sub.add_parser(
        "validate",
        help="check a study config; list its cells with their budget estimate",
        description="Check a study config, then list its cells with their eval sets, training image-epochs, TFLOPs "
        "and estimated job-minutes, and the study's total time and disk per stage (with the embeddings kept and with "
        "embed.keep false). Rates come from the benchmark files of a run of the same "
        "config where there are some (RESULTS/benchmarks), else from --rates (default: the reference machine, a 2-core "
        "CPU). What the run "
        "would fail on is an error (exit 1, one line naming the key); data or weights not there yet, published models' "
        "preprocessing that differs from their own, patch grids under 4x4, and OOD sets whose probe trains on "
        "images the cell's backbone trained on are 'warning:' lines.",
    )
    val.add_argument("config", help="YAML config file, e.g. config.yaml")
    val.add_argument(
        "--schema", default=str(SCHEMA_PATH), help="JSON schema (default: the one shipped with tunnelscope)"
    )
    val.add_argument(
        "--jobs", type=_positive_int, default=2, help="jobs that run at a time, for the wall-time estimate (default 2)"
    )
    val.add_argument(
        "--rates",
        choices=sorted(RATE_SETS),
        default="cpu",
        help="the rates of stages without measured jobs: cpu, the measured 2-core reference CPU (default), or a100, "
        "an ESTIMATE for one NVIDIA A100 per job from published ResNet-50 throughput (see tunnelscope.budget.RATE_SETS)",
    )
    val.add_argument(
        "--rate",
        type=_stage_rate,
        action="append",
        default=[],
        metavar="STAGE=VALUE",
        help="a stage's rate per job in its units per second (prepare images, pretrain and embed FLOP, probe "
        "products), e.g. embed=2e13; overrides measured rates too; repeat for several stages",
    )
    val.add_argument(
        "--no-budget",
        action="store_true",
        help="list the cells without the budget estimate (building only python: models and models with listed probe points, to check them)",
    )
    val.set_defaults(func=_validate)
    lay = sub.add_parser(
        "layers",
        help="list an architecture's probe points (or every module), shapes and pooled dims",
        description="List an architecture's probe points with their shapes and pooled dims, ending with their names "
        "as a probe_points list to copy into a config; --all-modules lists every module name instead (any of them "
        "may be a probe point).",
    )
    lay.add_argument(
        "arch",
        help="a paper architecture (vggm11, resnet18, vit-t, ...), mlpDEPTH-wWIDTH, timm/NAME, torchvision/NAME or "
        "python:FILE.py:FUNCTION (a model of your own: FUNCTION from FILE returns the nn.Module)",
    )
    lay.add_argument(
        "--kwargs",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="python: models: FUNCTION's keyword arguments, KEY=VALUE pairs (values read as YAML) or one JSON object; "
        "num_classes = --classes is added as in a grid cell unless given here or FUNCTION takes none",
    )
    lay.add_argument("--resolution", type=int, default=224, help="input resolution in pixels (default 224)")
    lay.add_argument(
        "--classes", type=int, default=100, help="classifier outputs, for the parameter count (default 100)"
    )
    lay.add_argument(
        "--width", type=float, default=1.0, help="channel multiplier of the paper architectures (default 1.0)"
    )
    lay.add_argument(
        "--pooling", default="avg2x2", choices=POOLINGS, help="pooling for the reported dims (default avg2x2)"
    )
    lay.add_argument(
        "--side", default="default", choices=CAPTURE_SIDES, help="capture side (default: the paper's per architecture)"
    )
    lay.add_argument(
        "--probe-points",
        default="default",
        choices=PROBE_POINT_RULES,
        help="enumeration: the architecture's own (default; blocks for timm, torchvision and python: models), blocks, paper (Harun et al. Sec. 4.2: every transformer block, every Conv2d but projection shortcuts, ConvNeXt's stem and each block's depthwise conv), or activations (post-ReLU outputs of the paper CNNs)",
    )
    lay.add_argument(
        "--modules",
        nargs="+",
        metavar="NAME",
        help="probe these modules (names as --all-modules prints them), in this order, instead of a rule: what a list in probe_points does",
    )
    lay.add_argument(
        "--all-modules",
        action="store_true",
        help="list every named module with its type and output shape instead of the probe points",
    )
    lay.add_argument("--json", action="store_true", help="print one JSON object: arch, params, layers")
    lay.set_defaults(func=_layers)
    best = sub.add_parser(
        "best-layers",
        help="print a study's best layer per (backbone, OOD set), with its intervals",
        description="Print RESULTS/aggregate/best_layers.parquet of a finished study, one block per (backbone, OOD "
        "set): the best layer by index and module name with its OOD accuracy and interval over the test images, the "
        "layers not distinguishable from it, the layer chosen on the probe's validation split, the last layer's "
        "accuracy, the gap and the tunnel verdict.",
    )
    best.add_argument("results", nargs="?", default="results", help="the study's results directory (default: results)")
    best.set_defaults(func=_best_layers)
    ana = sub.add_parser(
        "analyze",
        help="SHAP slopes, paired comparisons and level means of a (backbone x OOD set) table",
        description="SHAP slopes, paired comparisons and level means of a (backbone x OOD set) table: "
        "results/aggregate/metrics.csv of a study, any table with the same columns, or the paper's "
        "released experiments_results.csv exactly as published (backbones and OOD sets recovered from its row order).",
    )
    ana.add_argument(
        "table",
        nargs="?",
        help="CSV or Parquet: ood_retained, pearson, alignment, family, stem, spatial_reduction, augmentation, resolution, id_classes, gamma, depth (plus arch, id_dataset, seed, ood_set, ood_index for the comparisons)",
    )
    ana.add_argument(
        "--paper",
        action="store_true",
        help="analyse the paper's released table (shipped with tunnelscope) with the comparisons of config/paper.yaml",
    )
    ana.add_argument(
        "--config",
        help="a study config whose analysis section (comparisons, unit, SHAP slope normalisation, alpha) to use (default: automatic comparisons at the backbone unit; config/paper.yaml's for the released table, at the row unit)",
    )
    ana.add_argument(
        "--schema", default=str(SCHEMA_PATH), help="JSON schema of --config (default: the one shipped with tunnelscope)"
    )
    ana.add_argument(
        "--out",
        required=True,
        help="output directory for shap_slopes.csv, shap_fit.csv, paired_tests.csv, level_means.csv",
    )
    ana.set_defaults(func=_analyze)
    adopt = sub.add_parser(
        "adopt",
        help="record CONFIG, run from this directory, as the study that owns its results directory",
        description="A results directory belongs to the study whose first run recorded it there (RESULTS/study.json): "
        "the config file and working directory of that run. A run of another config, or from another working "
        "directory, is refused unless its settings are identical. adopt records CONFIG, run from the current "
        "directory, as the owner: after moving the project or renaming the config. Refused while a run works there.",
    )
    adopt.add_argument("config", help="the YAML config file that owns the results directory from now on")
    adopt.set_defaults(func=_adopt)
    ver = sub.add_parser(
        "verify",
        help="check every file a study wrote against its checksum; print the commands that rebuild damaged ones",
        description="Check every file the study of CONFIG wrote (prepared stores chunk by chunk, checkpoints, "
        "embeddings, probe and metric tables, probe weights) against the checksum recorded when it was written, as "
        "the jobs that read them do. Lists the damaged, missing or incomplete ones and the snakemake command that "
        "rebuilds them and everything made from them (exit 1); one line and exit 0 when all is intact. Run it in the "
        "study's working directory.",
    )
    ver.add_argument("config", nargs="?", default="config.yaml", help="the study's config (default: config.yaml)")
    ver.add_argument(
        "--schema", default=str(SCHEMA_PATH), help="JSON schema (default: the one shipped with tunnelscope)"
    )
    ver.set_defaults(func=_verify)
    prof = sub.add_parser(
        "profile", help="install a shipped Snakemake profile (local, slurm) where snakemake --profile NAME finds it"
    )
    prof_sub = prof.add_subparsers(dest="action", required=True)
    inst = prof_sub.add_parser(
        "install",
        help="copy profiles/NAME/config.yaml to DEST/NAME/config.yaml",
        description="Copy the shipped profile NAME to DEST/NAME/config.yaml, by default Snakemake's user profile "
        "directory ($XDG_CONFIG_HOME/snakemake, else ~/.config/snakemake), so that `snakemake --profile NAME` uses it. "
        "An existing different file is left alone unless --force is given.",
    )
    inst.add_argument("name", choices=_profile_names(), help="the profile")
    inst.add_argument(
        "--dest",
        help="the profile directory to install into (default: Snakemake's user profile directory; /etc/xdg/snakemake for every user)",
    )
    inst.add_argument("--force", action="store_true", help="overwrite an existing, different DEST/NAME/config.yaml")
    inst.set_defaults(func=_profile_install)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
