"""``tunnelscope layers``: an architecture's probe points (or every module), shapes and pooled dims."""

from __future__ import annotations

import argparse
import inspect
import json
import sys

import yaml

from tunnelscope.registry import CAPTURE_SIDES, POOLINGS, PROBE_POINT_RULES, parse_python_arch

HELP = "list an architecture's probe points (or every module), shapes and pooled dims"
DESCRIPTION = (
    "List an architecture's probe points with their shapes and pooled dims, ending with their names "
    "as a probe_points list to copy into a config; --all-modules lists every module name instead (any of them "
    "may be a probe point)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "arch",
        help="a paper architecture (vggm11, resnet18, vit-t, ...), mlpDEPTH-wWIDTH, timm/NAME, torchvision/NAME or "
        "python:FILE.py:FUNCTION (a model of your own: FUNCTION from FILE returns the nn.Module)",
    )
    parser.add_argument(
        "--kwargs",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="python: models: FUNCTION's keyword arguments, KEY=VALUE pairs (values read as YAML) or one JSON object; "
        "num_classes = --classes is added as in a grid cell unless given here or FUNCTION takes none",
    )
    parser.add_argument("--resolution", type=int, default=224, help="input resolution in pixels (default 224)")
    parser.add_argument(
        "--classes", type=int, default=100, help="classifier outputs, for the parameter count (default 100)"
    )
    parser.add_argument(
        "--width", type=float, default=1.0, help="channel multiplier of the paper architectures (default 1.0)"
    )
    parser.add_argument(
        "--pooling", default="avg2x2", choices=POOLINGS, help="pooling for the reported dims (default avg2x2)"
    )
    parser.add_argument(
        "--side", default="default", choices=CAPTURE_SIDES, help="capture side (default: the paper's per architecture)"
    )
    parser.add_argument(
        "--probe-points",
        default="default",
        choices=PROBE_POINT_RULES,
        help="enumeration: the architecture's own (default; blocks for timm, torchvision and python: models), blocks, paper (Harun et al. Sec. 4.2: every transformer block, every Conv2d but projection shortcuts, ConvNeXt's stem and each block's depthwise conv), or activations (post-ReLU outputs of the paper CNNs)",
    )
    parser.add_argument(
        "--modules",
        nargs="+",
        metavar="NAME",
        help="probe these modules (names as --all-modules prints them), in this order, instead of a rule: what a list in probe_points does",
    )
    parser.add_argument(
        "--all-modules",
        action="store_true",
        help="list every named module with its type and output shape instead of the probe points",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object: arch, params, layers")


def run(args) -> int:
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
    print_columns(["index", "module", "side", "shape", "dim"], rows)
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
    print_columns(["module", "type", "output"], rows)
    return 0


def print_columns(header: list[str], rows: list[list]) -> None:
    """A plain-text table: each column as wide as its widest entry, numbers right-aligned."""
    widths = [max(len(str(v)) for v in column) for column in zip(header, *rows)]
    numeric = [bool(rows) and all(isinstance(row[i], int) for row in rows) for i in range(len(header))]
    for line in [header, *rows]:
        cells = [f"{v!s:>{w}}" if num else f"{v!s:<{w}}" for v, w, num in zip(line, widths, numeric)]
        print("  ".join(cells).rstrip())
