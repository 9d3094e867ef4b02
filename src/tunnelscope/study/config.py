"""The study: a validated config expanded into cells and continual runs, with the exact
parameters of every stage.

Imported by the Snakefile while the DAG is built, so it must stay light: no torch, no data.
Every ``*_params`` function returns a plain, sorted, builtin-typed dict holding exactly the keys
that stage uses; the rules pass them as ``params`` so that Snakemake reruns a job exactly when a
setting that changes its result changes.
"""

from __future__ import annotations

import copy
import functools
import itertools
from dataclasses import dataclass
from pathlib import Path

from tunnelscope.registry import (
    ARCHS,
    CELL_VARIABLES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MLP_FORMAT,
    arch_facts,
    cell_id,
    parse_mlp,
    parse_python_arch,
    parse_transform_tag,
    transform_tag,
)
from tunnelscope.study.checks import (
    PUBLISHED_PREFIXES,
    check_library_names,
    check_training,
    finetune_recipe,
    resolve_pretrained,
    validate,
)
from tunnelscope.study.continual import ContinualStudy
from tunnelscope.study.params import (
    embed_settings,
    probe_settings,
    solver_settings,
    sorted_params,
    source_fingerprint,
    source_sha256,
)
from tunnelscope.study.paths import ResultsLayout
from tunnelscope.study.schema import ConfigError

# SHAP's gradient-boosting fit needs this many (cell, OOD set) rows (analysis.comparisons.shap_slopes).
SHAP_MIN_ROWS = 3


@dataclass(frozen=True)
class Backbone:
    """What a cell and a continual run share: the cell variables and the model and training recipe."""

    id: str
    arch: str
    id_dataset: str
    resolution: int
    augmentation: str
    seed: int
    model: dict
    training: dict

    @property
    def variables(self) -> dict:
        return {k: getattr(self, k) for k in CELL_VARIABLES}


@dataclass(frozen=True)
class Cell(Backbone):
    """One backbone of the grid: its variables, its resolved settings and its eval sets."""

    probe: dict
    ood_sets: tuple = ()
    pretrained: dict | None = None  # the pretrained entry of a published backbone


@dataclass(frozen=True)
class Run(Backbone):
    """One run of the continual-learning experiment; ``training`` is each task's."""

    finetune_training: dict  # the fine-tuning of the finetune configurations
    pretrained = None  # trained from scratch, never a published model


def _own_model(model: dict, arch: str, pretrained: dict | None, cid: str) -> dict:
    """A cell's model settings with what a python: model adds: its file's sha256 (so that editing
    the file reruns the stages that build it) and, in a grid cell, ``kwargs``. ``model.kwargs``
    is dropped from other cells (it changes nothing there) and from published backbones (their
    entry's kwargs, in the import params, are what their function gets)."""
    own = {k: v for k, v in model.items() if k != "kwargs"}
    source = pretrained["arch"] if pretrained else arch
    if parse_python_arch(source) is None:
        return own
    own["source_sha256"] = source_sha256(parse_python_arch(source)[0])
    if pretrained:
        return own
    if "num_classes" in model.get("kwargs", {}):
        raise ConfigError(f"cell {cid}: model.kwargs may not set num_classes; {arch} gets the ID set's class count")
    own["kwargs"] = dict(model.get("kwargs", {}))
    return own


class Study(ContinualStudy):
    """A validated config, expanded into cells (in grid order), with the parameters of every stage."""

    def __init__(self, config: dict, schema: dict):
        self.config = validate(config, schema)
        check_library_names(self.config)
        self.pretrained = resolve_pretrained(self.config)
        self.cells: dict[str, Cell] = {}
        for b, block in enumerate(self.config["grid"]):
            ood_sets = tuple(block.get("ood_sets", self.config.get("ood_sets", [])))
            for combo in itertools.product(*(block[k] for k in CELL_VARIABLES)):
                cell = self._cell(dict(zip(CELL_VARIABLES, combo)), ood_sets)
                if cell.id in self.cells:
                    raise ConfigError(f"grid[{b}]: duplicate cell {cell.id} (already defined by an earlier grid block)")
                self.cells[cell.id] = cell
        # the solver comparison sets every other solver against one reference
        firsts = {c.probe["solver"] for c in self.cells.values() if len(c.probe["solvers"]) > 1}
        if len(firsts) > 1:
            raise ConfigError(
                f"probe.solver: the cells with several solvers must list the same one first (the comparison's reference); overrides give {', '.join(sorted(firsts))}"
            )
        self.runs: dict[str, Run] = {}
        section = self.config.get("continual")
        if section:
            for combo in itertools.product(*(section[k] for k in CELL_VARIABLES)):
                variables = dict(zip(CELL_VARIABLES, combo))
                run = Run(
                    cell_id(**variables),
                    model=section["model"],
                    training=section["training"],
                    finetune_training=finetune_recipe(section),
                    **variables,
                )
                self.runs[run.id] = run

    def _cell(self, variables: dict, ood_sets: tuple) -> Cell:
        model = dict(self.config["model"])
        training = dict(self.config["training"])
        probe = copy.deepcopy(self.config["probe"])
        width_key = "model.width"
        for i, entry in enumerate(self.config["overrides"]):
            if all(variables[k] in (v if isinstance(v, list) else [v]) for k, v in entry["where"].items()):
                model.update(entry.get("model", {}))
                width_key = f"overrides[{i}].model.width" if "width" in entry.get("model", {}) else width_key
                training.update(entry.get("training", {}))
                for key, value in entry.get("probe", {}).items():
                    probe[key] = {**probe[key], **value} if key == "paper" else value
        probe.update(solver_settings(probe))
        cid = cell_id(**variables)
        pretrained = self.pretrained.get(variables["arch"])
        built_as_published = pretrained or variables["arch"].startswith(PUBLISHED_PREFIXES)
        if built_as_published and model["width"] != 1.0:
            raise ConfigError(
                f"{width_key}: {model['width']} does not apply to {variables['arch']} (cell {cid}): timm, torchvision, python: and published models are built as defined; scope the width to the paper architectures with overrides"
            )
        model = _own_model(model, variables["arch"], pretrained, cid)
        if pretrained:
            model = {**model, "width": 1.0, "probe_points": pretrained["probe_points"]}
        facts = arch_facts(variables["arch"])
        if model.get("probe_points") == "activations" and facts is None:
            raise ConfigError(
                f"cell {cid}: model.probe_points activations is defined for the built-in architectures ({', '.join(ARCHS)}, MLPs), not {variables['arch']}"
            )
        if facts and facts["family"] == "mlp":
            if model["width"] != 1.0:
                raise ConfigError(
                    f"cell {cid}: model.width scales the channels of the CNNs and ViTs; an MLP's width is in its name ({MLP_FORMAT})"
                )
            if model.get("probe_points", "default") in ("blocks", "paper"):
                raise ConfigError(
                    f"cell {cid}: model.probe_points {model['probe_points']} is not defined for MLPs; use default (every hidden layer's output)"
                )
        check_training(training, "training", f"cell {cid}: ")
        if probe["pooling"] not in self.config["embed"]["pooling"]:
            raise ConfigError(
                f"cell {cid}: overrides set probe.pooling {probe['pooling']!r}, which embed.pooling ({', '.join(self.config['embed']['pooling'])}) does not write"
            )
        return Cell(
            id=cid, model=model, training=training, probe=probe, ood_sets=ood_sets, pretrained=pretrained, **variables
        )

    @property
    def results(self) -> str:
        return self.config["results"]

    def eval_sets(self, cell: str) -> list[str]:
        """The ID set first, then every OOD set other than the ID set."""
        return [self.cells[cell].id_dataset, *self.ood_sets(cell)]

    def ood_sets(self, cell: str) -> list[str]:
        c = self.cells[cell]
        return [d for d in c.ood_sets if d != c.id_dataset]

    def shifted_sets(self, cell: str) -> list[str]:
        """OOD sets of a cell that are corrupted copies of its ID set: the zero-shot protocol's."""
        c, datasets = self.cells[cell], self.config["datasets"]
        return [d for d in self.ood_sets(cell) if datasets[d].get("of") == c.id_dataset]

    def solvers(self, cell: str) -> list[str]:
        return self.cells[cell].probe["solvers"]

    def trained_cells(self) -> list[str]:
        return sorted(c for c in self.cells if self.cells[c].pretrained is None)

    def pretrained_cells(self) -> list[str]:
        return sorted(c for c in self.cells if self.cells[c].pretrained is not None)

    def transform_tag(self, cell: str, dataset: str) -> str:
        """Tag of the prepared-image cache a cell reads ``dataset`` from."""
        return self._transform_tag(self.cells[cell], dataset)

    def _transform_tag(self, c: Cell | Run, dataset: str) -> str:
        if c.pretrained:
            return transform_tag(c.resolution, c.pretrained["interpolation"], c.pretrained["crop_pct"])
        native = (
            c.model["preprocessing"] == "dataset"
            and self.config["datasets"][dataset].get("native_resolution") == c.resolution
        )
        return transform_tag(c.resolution, native=native)

    def normalization(self, cell: str, dataset: str) -> dict | None:
        """Mean/std a trained cell normalises ``dataset`` with: the dataset's own where it declares
        them and the cell's ``model.preprocessing`` is ``dataset``, else ImageNet's. None for a
        published model, which uses its own (recorded in its checkpoint)."""
        return self._normalization(self.cells[cell], dataset)

    def _normalization(self, c: Cell | Run, dataset: str) -> dict | None:
        if c.pretrained:
            return None
        spec = self.config["datasets"][dataset]
        if c.model["preprocessing"] == "dataset" and "mean" in spec:
            return {"mean": list(spec["mean"]), "std": list(spec["std"])}
        return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}

    def prepared(self) -> list[tuple[str, str]]:
        """Every (dataset, transform tag) pair some cell or continual run needs."""
        needed = {(d, self.transform_tag(c, d)) for c in self.cells for d in self.eval_sets(c)}
        return sorted(needed | {(r.id_dataset, self._transform_tag(r, r.id_dataset)) for r in self.runs.values()})

    @functools.cached_property
    def paths(self) -> ResultsLayout:
        """Every file of the study under its results directory (study.paths)."""
        return ResultsLayout(self.results)

    def prepared_path(self, dataset: str, cell: str) -> str:
        return self.paths.path("prepared", dataset=dataset, transform=self.transform_tag(cell, dataset))

    def missing_roots(self, prepared_exists) -> list[str]:
        """One message per dataset whose root is missing while its cache still has to be built."""
        problems = []
        for name in sorted({d for d, _ in self.prepared()}):
            spec, key = self.config["datasets"][name], name
            if "base" in spec:  # a corrupted copy reads its clean set's files
                spec, key = spec["base"], spec["of"]
            pending = any(not prepared_exists(d, r) for d, r in self.prepared() if d == name)
            if "root" in spec and pending and not spec.get("download") and not Path(spec["root"]).is_dir():
                problems.append(
                    f"datasets.{key}.root: directory {spec['root']} not found"
                    + (f" (needed by {name})" if key != name else "")
                )
        return problems

    # --- per-stage params: exactly the keys the stage uses, sorted, builtin types ---

    def prepare_params(self, dataset: str, transform: str) -> dict:
        spec = self.config["datasets"][dataset]
        # mean/std are applied on the device later; they do not change the prepared images.
        spec = {k: v for k, v in spec.items() if k not in ("mean", "std")}
        params = {"dataset": dataset, **parse_transform_tag(transform), "spec": spec}
        root = spec.get("base", spec).get("root")
        if root:
            params["source_fingerprint"] = source_fingerprint(root)
        return sorted_params(params)

    def pretrain_params(self, cell: str) -> dict:
        c = self.cells[cell]
        norm = self.normalization(cell, c.id_dataset)
        return sorted_params(
            {**c.variables, "model": c.model, "training": c.training, "normalization": norm, "compute": self._compute()}
        )

    def import_params(self, cell: str) -> dict:
        c = self.cells[cell]
        return sorted_params({**c.variables, "model": c.model, "pretrained": c.pretrained})

    def embed_params(self, cell: str, eval_set: str) -> dict:
        c = self.cells[cell]
        embed = embed_settings(self.config)
        norm = self.normalization(cell, eval_set)
        return sorted_params(
            {
                **c.variables,
                "model": c.model,
                "eval_set": eval_set,
                **embed,
                "normalization": norm,
                "compute": self._compute(),
            }
        )

    def _compute(self) -> dict:
        """Result-affecting compute settings (precision, channels_last, determinism on a GPU), as
        written: ``auto`` is resolved by each job, on its device (the DAG is built without torch),
        and recorded in its outputs. The device setting is not (the device a job used is recorded)."""
        return {k: self.config["compute"][k] for k in ("precision", "channels_last", "deterministic")}

    def probe_params(self, cell: str, eval_set: str, solver: str | None = None) -> dict:
        """Settings of one probe job; ``solver`` one of the cell's solvers (default the first)."""
        c = self.cells[cell]
        role = "id" if eval_set == c.id_dataset else "ood"
        probe = {**c.probe, "solver": solver or c.probe["solver"]}
        return sorted_params({**c.variables, "eval_set": eval_set, "role": role, **probe_settings(probe)})

    def zero_shot_params(self, cell: str, eval_set: str) -> dict:
        c = self.cells[cell]
        return sorted_params(
            {**c.variables, "eval_set": eval_set, "pooling": c.probe["pooling"], **self.config["zero_shot"]}
        )

    def tsne_params(self, cell: str) -> dict:
        c = self.cells[cell]
        return sorted_params({**c.variables, "pooling": c.probe["pooling"], **self.config["tsne"]})

    def layer_stats_params(self, cell: str) -> dict:
        c = self.cells[cell]
        return sorted_params({**c.variables, "pooling": c.probe["pooling"], **self.config["layer_stats"]})

    def metrics_params(self, cell: str) -> dict:
        c = self.cells[cell]
        metrics = {k: v for k, v in self.config["metrics"].items() if k != "health"}  # health_params
        return sorted_params({**c.variables, "ood_sets": self.ood_sets(cell), **metrics})

    def health_params(self) -> dict:
        """The training-health rule (metrics.health) of cell_metrics, best_layers and aggregate_cells."""
        return sorted_params(self.config["metrics"]["health"])

    def untrained_params(self) -> dict:
        """Whether the study-level tables and figures keep untrained cells."""
        return {"include_untrained": self.config["analysis"]["include_untrained"]}

    # --- which study-level outputs the grid can fill (a lean study builds only those) ---

    def varying(self) -> list[str]:
        """Cell variables other than the seed with two or more levels among the cells: what the
        comparisons, SHAP and the curves by variable need (the architecture facts and class
        counts vary only with them)."""
        return [v for v in CELL_VARIABLES if v != "seed" and len({getattr(c, v) for c in self.cells.values()}) > 1]

    def backbones(self) -> int:
        """Distinct backbones: cells without their seed."""
        return len({tuple(getattr(c, v) for v in CELL_VARIABLES if v != "seed") for c in self.cells.values()})

    def metric_rows(self) -> int:
        """Rows of the metrics table: one per (cell, OOD set)."""
        return sum(len(self.ood_sets(c)) for c in self.cells)

    def builds(self, part: str) -> bool:
        """Whether the study-level ``part`` is built: "analysis" (SHAP, paired tests, level
        means, Tables 1/12/13, curves by variable), "shap_figure" or "strength_histogram"."""
        return not self._absence(part)

    def _absence(self, part: str) -> str:
        if part in ("analysis", "shap_figure") and not self.varying():
            cells = "the one cell" if len(self.cells) == 1 else f"the {len(self.cells)} cells"
            return f"no cell variable other than the seed has two levels among {cells}"
        if part == "shap_figure" and self.metric_rows() < SHAP_MIN_ROWS:
            return f"SHAP needs {SHAP_MIN_ROWS} or more (cell, OOD set) rows and the grid has {self.metric_rows()}"
        if part == "strength_histogram" and self.backbones() < 2:
            return "the study has one backbone"
        return ""

    def absent_parts(self) -> list[str]:
        """One line per study-level part the grid cannot fill, saying why (the report and the
        paper page show them)."""
        parts = {
            "analysis": "SHAP slopes, paired tests, level means (Tables 1, 12, 13) and curves by variable",
            "shap_figure": "the SHAP slopes figure",
            "strength_histogram": "the tunnel-strength histogram",
        }
        lines = []
        for part, what in parts.items():
            why = self._absence(part)
            if why and not (part == "shap_figure" and not self.builds("analysis")):
                lines.append(f"Not built: {what}: {why}.")
        return lines

    def best_layers_params(self, cell: str) -> dict:
        """The keys metrics.best_layers reads: the cell, its OOD sets, the tunnel rule and alpha."""
        c, metrics = self.cells[cell], self.config["metrics"]
        return sorted_params(
            {**c.variables, "ood_sets": self.ood_sets(cell), **{k: metrics[k] for k in ("alpha", "tunnel_rule")}}
        )

    def analysis_params(self) -> dict:
        return sorted_params(self.config["analysis"])

    def seed_params(self) -> dict:
        """What the seed summaries of the aggregate, tables and figures read."""
        return {"confidence": self.config["analysis"]["seed_confidence"]}

    def mlp_cells(self) -> list[str]:
        """Cells of MLP backbones, in grid order: what the tunnel-length figure plots."""
        return [c for c, cell in self.cells.items() if cell.pretrained is None and parse_mlp(cell.arch) is not None]

    def tunnel_length_params(self) -> dict:
        return sorted_params(self.config["tunnel_length"])
