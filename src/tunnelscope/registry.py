"""The registry of names: every enumerable choice the config, the CLI, the code and the schema share.

Architectures with their facts, cell variables, dataset sources, poolings, solvers and the keys
each reads, the tunnel metrics later stages name, probe-point rules, corruptions, the
transform-tag and cell-id formats. Pure Python and free of heavy imports: the Snakefile and the
CLI read it while the DAG is built, and tests/test_registry.py checks every enum of the config schema against it.
"""

from __future__ import annotations

import re
from typing import NamedTuple

# Facts about each architecture needed before any model is built (cell variables, analysis),
# coded as Harun et al. code them in their released results table: stem = first conv kernel or
# ViT patch size; spatial_reduction = phi = s_out / s_in of the stem and first stage (ViTs are
# coded 1.0 there although the patch embedding downsamples by 8); depth = nominal depth;
# params_m = the parameter count (millions, 100-class head) the paper quotes and its gamma uses:
# the ResNet counts cut to two decimals, the ViT counts with the unused gate MLP of its code.
# One architecture per line, a table to read across: left as written by the formatter.
# fmt: off
ARCHS = {
    "vggm11": {"label": "VGGm-11", "family": "cnn", "arch_family": "vggm", "depth": 11, "stem": 3, "spatial_reduction": 0.5, "params_m": 9.46},
    "vggm17": {"label": "VGGm-17", "family": "cnn", "arch_family": "vggm", "depth": 17, "stem": 3, "spatial_reduction": 0.5, "params_m": 20.08},
    "vggm11-dagger": {"label": "VGGm†-11", "family": "cnn", "arch_family": "vggm", "depth": 11, "stem": 3, "spatial_reduction": 1.0, "params_m": 9.46},
    "vggm17-dagger": {"label": "VGGm†-17", "family": "cnn", "arch_family": "vggm", "depth": 17, "stem": 3, "spatial_reduction": 1.0, "params_m": 20.08},
    "resnet18": {"label": "ResNet-18", "family": "cnn", "arch_family": "resnet", "depth": 18, "stem": 7, "spatial_reduction": 0.25, "params_m": 11.22},
    "resnet34": {"label": "ResNet-34", "family": "cnn", "arch_family": "resnet", "depth": 34, "stem": 7, "spatial_reduction": 0.25, "params_m": 21.33},
    "vit-t": {"label": "ViT-T", "family": "vit", "arch_family": "vit", "depth": 12, "stem": 8, "spatial_reduction": 1.0, "params_m": 5.61},
    "vit-t-plus": {"label": "ViT-T+", "family": "vit", "arch_family": "vit", "depth": 18, "stem": 8, "spatial_reduction": 1.0, "params_m": 8.39},
    # Masarczyk et al.'s VGG-19 on CIFAR: VGGm-17's 16 convs and pools with VGG's three-layer
    # classifier (512-512-C), so 19 weight layers; counted here, no paper quotes a count.
    "vgg19": {"label": "VGG-19", "family": "cnn", "arch_family": "vgg", "depth": 19, "stem": 3, "spatial_reduction": 0.5, "params_m": 20.61},
}
# fmt: on

# MLPs are named mlpDEPTH-wWIDTH (mlp12-w512), so that depth and width are separate levels of the
# arch variable and every MLP gets its own cell id. DEPTH counts the linear layers with the
# classifier, as the nominal depths above count weight layers: DEPTH - 1 hidden layers of WIDTH
# units are probed. Their facts are coded to fit the variables above: family "mlp" (neither
# convolutional nor a token model); stem 0 (no convolution or patch; as describe() codes models
# without a conv); spatial_reduction 1.0, as the paper codes its ViTs, since the first layer is a
# linear map of every pixel with nothing pooled away; params_m None, since the count grows with
# the input size (3 x R^2 x WIDTH in the first layer): it is counted on the built model.
MLP_NAME = re.compile(r"mlp([1-9][0-9]*)-w([1-9][0-9]*)")
MLP_FORMAT = "mlpDEPTH-wWIDTH, e.g. mlp12-w512 (DEPTH linear layers with the classifier, at least 2; WIDTH units per hidden layer)"


def parse_mlp(arch: str) -> tuple[int, int] | None:
    """(depth, width) of an MLP name, None for any other architecture name.

    A name that starts with ``mlp`` but does not spell a valid MLP raises ValueError."""
    if not arch.startswith("mlp"):
        return None
    match = MLP_NAME.fullmatch(arch)
    if match is None or int(match.group(1)) < 2:
        raise ValueError(f"{arch!r} is not a valid MLP name; write {MLP_FORMAT}")
    return int(match.group(1)), int(match.group(2))


# A model of the researcher's own: python:FILE.py:FUNCTION, a Python file (absolute or relative to
# the working directory) and a function in it that returns the nn.Module (models.build.build_model).
PYTHON_ARCH = re.compile(r"python:(?P<file>[^:]+\.py):(?P<function>[A-Za-z_][A-Za-z0-9_]*)")
PYTHON_ARCH_FORMAT = "python:FILE.py:FUNCTION (a Python file and a function in it that returns the nn.Module)"


def parse_python_arch(arch: str) -> tuple[str, str] | None:
    """(file, function) of a ``python:FILE.py:FUNCTION`` architecture, None for any other name.

    A name that starts with ``python:`` but does not spell one raises ValueError."""
    if not arch.startswith("python:"):
        return None
    match = PYTHON_ARCH.fullmatch(arch)
    if match is None:
        raise ValueError(f"{arch!r} is not a valid model of your own; write {PYTHON_ARCH_FORMAT}")
    return match.group("file"), match.group("function")


def arch_facts(arch: str) -> dict | None:
    """The ARCHS facts of a built-in architecture (the paper's, VGG-19 and the MLPs), or None
    for a timm/torchvision model or a published backbone."""
    if arch in ARCHS:
        return dict(ARCHS[arch])
    match = MLP_NAME.fullmatch(arch)
    if match is None or int(match.group(1)) < 2:
        return None
    depth, width = map(int, match.groups())
    return {
        "label": f"MLP-{depth} (w{width})",
        "family": "mlp",
        "arch_family": "mlp",
        "depth": depth,
        "stem": 0,
        "spatial_reduction": 1.0,
        "params_m": None,
    }


CELL_VARIABLES = ("arch", "id_dataset", "resolution", "augmentation", "seed")
# Variables of a cell derived from its architecture and ID data, and the cell variables that
# determine each: a comparison of one of them lets those vary and matches on the others.
DERIVED_VARIABLES = {
    "family": ("arch",),
    "arch_family": ("arch",),
    "stem": ("arch",),
    "spatial_reduction": ("arch",),
    "depth": ("arch",),
    "id_classes": ("id_dataset",),
    "gamma": ("arch", "id_dataset"),
}
AUGMENTATIONS = ("none", "rrc_flip")
# Variables a comparison may name: the cell's own and the derived ones.
COMPARISON_VARIABLES = (*CELL_VARIABLES, *DERIVED_VARIABLES)
# Columns that also identify an analysis row (one per backbone and OOD set).
ROW_VARIABLES = (*COMPARISON_VARIABLES, "ood_set", "ood_index")

# Dataset sources (data.sources.load_source, data.prepare.prepare): generated or derived ones,
# then those read from files in their official on-disk layout.
GENERATED_SOURCES = ("synthetic", "sklearn_digits", "corrupted")
FILE_SOURCES = (
    "imagefolder",
    "imagenet",
    "imagenet100",
    "cifar10",
    "cifar100",
    "stl10",
    "cub200",
    "flowers102",
    "fgvc_aircraft",
    "oxford_pets",
    "ninco",
    "imagenet_r",
)
SOURCES = (*GENERATED_SOURCES, *FILE_SOURCES)
SYNTHETIC_FAMILIES = ("shapes", "glyphs")  # data.synthetic
CORRUPTIONS = ("gaussian_noise", "gaussian_blur", "contrast", "brightness", "jpeg", "pixelate")  # data.corruptions

# Probe-point rules (models.build.probe_points) and where each point is captured.
PROBE_POINT_RULES = ("default", "blocks", "paper", "activations")
CAPTURE_SIDES = ("default", "input", "output")
POOLINGS = ("avg2x2", "avg1x1", "avg4x4", "token_mean", "cls")  # models.capture.pool
EMBED_DTYPES = ("float16", "float32")

# Probe solvers (one module each under probe/) and the probe settings each reads, so that
# changing another solver's settings reruns nothing; every solver also reads PROBE_COMMON_KEYS.
PROBE_COMMON_KEYS = ("solver", "pooling", "seed")
SOLVERS = {
    "lbfgs": ("standardize", "max_iter", "l2_grid", "val_fraction", "select_max_iter", "tol", "precision"),
    "sklearn": ("standardize", "max_iter", "C"),
    "paper": ("paper",),
}
# Each solver's module under probe/: it defines ``fit_layer`` (one layer at a time) or
# ``fit_layers`` (every layer at once), which probe.job calls.
SOLVER_MODULES = {"lbfgs": "lbfgs", "sklearn": "sklearn_logistic", "paper": "paper_recipe"}


class Metric(NamedTuple):
    """What the later stages do with a tunnel metric (``METRICS``)."""

    label: str | None  # the column heading the paper tables print; None where no table prints one
    seed_summarised: bool  # the aggregate's seed summary carries it (metrics.seeds)
    analysis_target: bool  # the cross-grid analysis compares it (analysis/); it needs a label
    solver_compared: bool  # protocols.solver_comparison sets the solvers side by side on it


# The tunnel metrics (columns of metrics.tunnel.cell_metrics, one row per cell and OOD set) that
# later stages name, in the order their tables list them. One metric per line, a table to read
# across: left as written by the formatter.
# fmt: off
METRICS = {
    "ood_retained": Metric("% retained", seed_summarised=True, analysis_target=True, solver_compared=True),
    "pearson": Metric("Pearson", seed_summarised=True, analysis_target=True, solver_compared=True),
    "alignment": Metric("alignment", seed_summarised=True, analysis_target=True, solver_compared=True),
    "tunnel": Metric(None, seed_summarised=True, analysis_target=False, solver_compared=False),
    "tunnel_start": Metric(None, seed_summarised=True, analysis_target=False, solver_compared=True),
    "tunnel_length": Metric(None, seed_summarised=True, analysis_target=False, solver_compared=False),
    "ood_best_layer": Metric(None, seed_summarised=True, analysis_target=False, solver_compared=True),
    "ood_best_acc": Metric(None, seed_summarised=True, analysis_target=False, solver_compared=False),
    "ood_last_acc": Metric(None, seed_summarised=True, analysis_target=False, solver_compared=True),
    "id_last_acc": Metric(None, seed_summarised=True, analysis_target=False, solver_compared=False),
    "backbone_test_acc": Metric(None, seed_summarised=True, analysis_target=False, solver_compared=False),
}
# fmt: on
SEED_SUMMARISED_METRICS = tuple(name for name, metric in METRICS.items() if metric.seed_summarised)
ANALYSIS_TARGETS = tuple(name for name, metric in METRICS.items() if metric.analysis_target)
SOLVER_COMPARED_METRICS = tuple(name for name, metric in METRICS.items() if metric.solver_compared)
LABELLED_METRICS = tuple(name for name, metric in METRICS.items() if metric.label is not None)


def metric_label(name: str) -> str:
    """The column heading tables print for metric ``name``; a name METRICS does not label is an error."""
    label = METRICS[name].label if name in METRICS else None
    if label is None:
        raise ValueError(f"metric {name!r} has no label in registry.METRICS (labelled: {', '.join(LABELLED_METRICS)})")
    return label


# Choices of single settings, by their dotted config key: the code branches on these strings.
SETTING_CHOICES = {
    "compute.precision": ("auto", "fp32", "bf16"),
    "compute.channels_last": ("auto", True, False),
    "compute.device": ("strict", "auto", "cpu", "cuda"),
    "probe.precision": ("auto", "fp32", "bf16"),
    "probe.paper.report": ("last", "best_test"),
    "layer_stats.split": ("train", "test"),
    "metrics.alignment_layer": ("last", "ood_best"),
    "metrics.alignment_id": ("probe", "backbone"),
    "metrics.tunnel_rule": ("significant", "paper"),
    "analysis.shap_slope_normalisation": ("none", "l1"),
    "analysis.unit": ("backbone", "row"),
    "model.preprocessing": ("dataset", "imagenet"),
    "pretrained.interpolation": ("bicubic", "bilinear", "nearest"),
    "pretrained.preprocessing": ("model", "paper"),
    "training.schedule": ("cosine", "step"),
    "training.schedule_step": ("batch", "epoch"),
    "training.checkpoint": ("last", "best_val", "best_test"),
    "datasets.on_bad_image": ("error", "skip"),
    "datasets.layout": ("split_dirs", "single"),
    "datasets.class_order": ("listed", "sorted"),
    "datasets.splits": ("official", "release"),
    "continual.head": ("shared", "per_task"),
    "continual.score": ("probe", "head"),
    "continual.tunnel_curve": ("task1", "task2", "earlier"),
    "continual.finetune.train": ("extractor", "tunnel"),
    "continual.finetune.task": (1, 2),
}

# Input normalisation of the paper backbones, and of datasets and published models that declare
# no other.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_TRANSFORM = {"interpolation": "bicubic", "crop_pct": 0.875}


def cell_id(arch: str, id_dataset: str, resolution: int, augmentation: str, seed: int) -> str:
    return f"{arch_slug(arch)}_{id_dataset}_r{resolution}_{augmentation}_s{seed}"


def arch_slug(arch: str) -> str:
    """An architecture's part of a cell id, safe as a directory name and a wildcard:
    ``timm/resnet18`` -> ``timm-resnet18``, ``python:models/my net.py:build`` -> ``python-my-net-build``."""
    own = parse_python_arch(arch)
    if own is None:
        return arch.replace("/", "-")
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", own[0].replace("\\", "/").rsplit("/", 1)[-1].removesuffix(".py"))
    return f"python-{stem.strip('-') or 'model'}-{own[1]}"


# The four networks of the continual-learning experiment (E = extractor, T = tunnel; 1 / 2 = of
# the network after task 1 / after task 2), in the order of the paper's Table 2.
COMPOSED = ("E1+T1", "E1+T2", "E2+T2", "E2+T1")
TRAINED = {"E1+T1": 1, "E2+T2": 2}  # the networks the two task trainings produce


def network_slug(label: str) -> str:
    """A configuration's directory name: ``E2+T1 fine-tuned`` -> ``e2-t1-fine-tuned``."""
    return "-".join(re.findall(r"[a-z0-9]+", label.lower()))


# A transform tag as transform_tag writes it: r<resolution>[-<interpolation>-c<crop_pct>][-native]
# (parse_transform_tag reads it; the prepare rule's wildcard constraint is this pattern).
TRANSFORM_TAG = re.compile(r"r(\d+)(?:-([a-z]+)-c([0-9.]+))?(-native)?")


def transform_tag(
    resolution: int,
    interpolation: str = DEFAULT_TRANSFORM["interpolation"],
    crop_pct: float = DEFAULT_TRANSFORM["crop_pct"],
    native: bool = False,
) -> str:
    """Name of a prepared-image cache: ``r224`` for the paper's eval transform, else e.g.
    ``r224-bilinear-c0.95``; ``-native`` when images already at the resolution are kept as they
    are (CIFAR at 32 in the paper's CNN release)."""
    tag = f"r{int(resolution)}"
    if (interpolation, crop_pct) != tuple(DEFAULT_TRANSFORM.values()):
        tag += f"-{interpolation}-c{crop_pct:g}"
    return tag + ("-native" if native else "")


def parse_transform_tag(tag: str) -> dict:
    match = TRANSFORM_TAG.fullmatch(tag)
    if match is None:
        raise ValueError(f"{tag!r} is not a transform tag (r224, r224-bilinear-c0.95, r32-native)")
    resolution, interpolation, crop_pct, native = match.groups()
    out = {"resolution": int(resolution), "native": native is not None}
    if interpolation:
        out.update(interpolation=interpolation, crop_pct=float(crop_pct))
    return out
