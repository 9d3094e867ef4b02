# tunnelscope: which layers of a pretrained image network transfer out of distribution?
# Run: snakemake --cores N [--configfile config/FILE.yaml]. See README.md.
import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")

# The library's config module is torch-free, so the DAG builds fast without the heavy stack.
sys.path.insert(0, str(Path(workflow.basedir) / "src"))

# The embedded default applies only when no --configfile is given: Snakemake would otherwise
# deep-merge it into the user's config (its datasets and overrides would leak into every study).
if not workflow.overwrite_configfiles:
    workflow.configfile(str(Path(workflow.basedir) / "config.yaml"))


include: "workflow/rules/common.smk"
include: "workflow/rules/prepare.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/embed.smk"
include: "workflow/rules/probe.smk"
include: "workflow/rules/metrics.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/paper.smk"
include: "workflow/rules/protocols.smk"
include: "workflow/rules/continual.smk"
include: "workflow/rules/tunnel_length.smk"


rule all:
    default_target: True
    input:
        # The grid's outputs when the study has cells, the continual experiment's when it has runs.
        [
            *rules.aggregate.input,
            *(rules.analysis.output if STUDY.builds("analysis") else []),
            *rules.paper.input,
            *rules.overview_figure.output,
            *rules.best_layers_figure.output,
        ]
        if CELLS
        else [],
        expand(rules.cell_figure.output.png, cell=CELLS),
        expand(rules.tsne_figure.output.png, cell=CELLS),
        protocol_outputs(),
        rules.continual.input if RUNS else [],
        # Masarczyk et al.'s tunnel length against MLP depth and width, when the grid has MLPs.
        rules.tunnel_length.input if STUDY.mlp_cells() else [],


rule cells:
    """Target: every cell's own outputs (its chain through the probes, metrics and layer statistics,
    its figure and t-SNE), nothing study-level. A long grid runs in pieces with Snakemake's batching,
    a share of the cells at a time (its files sorted by path, so by cell id), then the rest:
    snakemake cells --batch cells=1/4, ... cells=4/4, then snakemake (docs/running.md)."""
    input:
        expand(
            [
                rules.cell_metrics.output[0],
                rules.layer_stats.output[0],
                rules.cell_figure.output.png,
                rules.tsne_figure.output.png,
            ],
            cell=CELLS,
        ),
