"""Every file a study writes, each named once: its template under the results directory.

The rules, ``Study``, the ``onstart`` check, the budget, ``verify``, the CLI and the report's
captions all take their paths from here, so no path is spelled twice, and a job's identity (its
cell, eval set, solver) is never read back out of a file name. (What lies inside a store or an
embeddings folder is its owner's: data.store, features.store.)

A template's ``{wildcards}`` are Snakemake's: ``ResultsLayout.path`` fills those it is given and
keeps the others, so the same call gives a rule's output pattern
(``path("checkpoint")`` -> ``RESULTS/cells/{cell}/checkpoint.safetensors``) or one job's file
(``path("checkpoint", cell="vggm11_toy_r32_none_s0")``). Torch-free: the DAG reads it.
"""

import string

# A prepared store's index, written last: a store is complete once it exists (data.store).
STORE_MANIFEST = "store.json"

# name -> template under the results directory
TEMPLATES = {
    # the study that owns the results directory, and the lock of a run working there (study.manifest)
    "study_manifest": "study.json",
    "study_lock": "study.lock",
    # prepare: one store per (dataset, eval transform)
    "prepared": "prepared/{dataset}/{transform}",
    "prepared_manifest": f"prepared/{{dataset}}/{{transform}}/{STORE_MANIFEST}",
    # a cell: pretrain (or import_pretrained), embed, probe and the per-cell tables and figures
    "checkpoint": "cells/{cell}/checkpoint.safetensors",
    "train_log": "cells/{cell}/train_log.csv",
    "cell_info": "cells/{cell}/cell.json",
    "train_state": "cells/{cell}/train_state.pt",  # resume state, kept outside the outputs
    "embeddings": "cells/{cell}/embeddings/{eval_set}",
    "probe_table": "cells/{cell}/probes/{solver}/{eval_set}.parquet",
    "probe_weights": "cells/{cell}/probes/{solver}/{eval_set}.weights.npz",
    "probe_predictions": "cells/{cell}/probes/{solver}/{eval_set}.predictions.parquet",
    "cell_metrics": "cells/{cell}/metrics.parquet",
    "best_layers": "cells/{cell}/best_layers.parquet",
    "layer_stats": "cells/{cell}/layer_stats.parquet",
    "tsne": "cells/{cell}/tsne.parquet",
    "cell_figure": "cells/{cell}/figure.{ext}",
    "tsne_figure": "cells/{cell}/tsne.{ext}",
    "zero_shot": "cells/{cell}/zero_shot/{eval_set}.parquet",
    "solver_metrics": "cells/{cell}/solver_metrics.parquet",
    # the study: grid-wide tables, the analysis, figures and the paper build
    "aggregate": "aggregate/{table}.{ext}",
    "aggregate_seeds": "aggregate/{table}_seeds.{ext}",
    "analysis": "analysis/{table}.csv",
    "figure": "figures/{figure}.{ext}",
    "paper_table": "paper/tables/{table}.{ext}",
    "paper_figure": "paper/{figure}.{ext}",
    "provenance": "paper/provenance.json",
    "paper_page": "paper/index.html",
    "tunnel_length": "tunnel_length/{file}.{ext}",
    # the continual-learning experiment: per run, its networks
    "continual_checkpoint": "continual/{run}/{network}/checkpoint.safetensors",
    "continual_train_log": "continual/{run}/{network}/train_log.csv",
    "continual_info": "continual/{run}/{network}/cell.json",
    "continual_train_state": "continual/{run}/{network}/train_state.pt",
    "continual_embeddings": "continual/{run}/{network}/embeddings",
    "continual_evaluation": "continual/{run}/{network}/evaluation.parquet",
    "continual_tunnel": "continual/{run}/tunnel.json",
    "continual_scores": "continual/scores.csv",
    "continual_curves": "continual/tunnel_curves.{ext}",
}

# A job's name in its log and benchmark file: logs/RULE/JOB.log, benchmarks/RULE/JOB.tsv; a rule
# not listed runs once per study (logs/RULE.log).
JOB_NAMES = {
    "prepare": "{dataset}_{transform}",
    "pretrain": "{cell}",
    "import_pretrained": "{cell}",
    "embed": "{cell}_{eval_set}",
    "probe": "{cell}_{eval_set}_{solver}",
    "cell_metrics": "{cell}",
    "best_layers": "{cell}",
    "layer_stats": "{cell}",
    "tsne": "{cell}",
    "cell_figure": "{cell}",
    "tsne_figure": "{cell}",
    "zero_shot": "{cell}_{eval_set}",
    "solver_metrics": "{cell}",
    "paper_table": "{table}",
    "continual_train": "{run}_{network}",
    "continual_finetune": "{run}_{network}",
    "continual_evaluate": "{run}_{network}",
    "continual_swap": "{run}",
}
# prepare's benchmark files sit in a folder per dataset (as its stores do)
BENCHMARK_NAMES = {**JOB_NAMES, "prepare": "{dataset}/{transform}"}


class _KeepMissing(dict):
    """Format values that leave a wildcard nobody filled as it was."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def fill(template: str, /, **values) -> str:
    """``template`` with the given wildcards filled and the others kept."""
    unknown = set(values) - {field for _, field, _, _ in string.Formatter().parse(template) if field}
    if unknown:
        raise KeyError(f"{template}: no wildcard {', '.join(sorted(unknown))}")
    return template.format_map(_KeepMissing(values))


class ResultsLayout:
    """The paths of one study's files under its results directory ``root``."""

    def __init__(self, root: str):
        self.root = root

    def path(self, name: str, /, **values) -> str:
        """File ``name`` of TEMPLATES, its wildcards filled from ``values`` where given."""
        return f"{self.root}/{fill(TEMPLATES[name], **values)}"

    def log(self, rule: str, /, **values) -> str:
        """A job's log file (one per job, or one per rule that runs once per study)."""
        job = JOB_NAMES.get(rule)
        return f"{self.root}/logs/{rule}/{fill(job, **values)}.log" if job else f"{self.root}/logs/{rule}.log"

    def benchmark(self, rule: str, /, **values) -> str:
        """A heavy job's Snakemake benchmark file (what the budget calibrates its rates on)."""
        return f"{self.root}/{benchmark_file(rule, **values)}"


def relative(name: str, /, **values) -> str:
    """File ``name``'s path under the results directory (how captions key the report's items)."""
    return fill(TEMPLATES[name], **values)


def benchmark_file(rule: str, /, **values) -> str:
    """A job's benchmark file under the results directory."""
    return f"benchmarks/{rule}/{fill(BENCHMARK_NAMES[rule], **values)}.tsv"
