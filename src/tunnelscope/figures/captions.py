"""Captions of the paper build's tables and figures, shared by the Snakemake report and the static page.

Kept free of heavy imports: the workflow reads it while the DAG is built.
"""

import re

from tunnelscope.study.paths import relative

# name -> (the paper's table it is laid out like, caption)
TABLES = {
    "id_accuracy": (
        "Table 11",
        "ID top-1 accuracy (CSV: a fraction; LaTeX: %) of every backbone on its ID test set, per resolution: one value per augmentation level, "
        "as none / rrc_flip "
        "(the kept checkpoint's).",
    ),
    "ood_accuracy": (
        "Tables 4-7",
        "Last-layer OOD linear-probe accuracy (CSV: a fraction; LaTeX: %) per backbone and OOD set, and their mean.",
    ),
    "ood_retained": (
        "Tables 4-7",
        "% OOD performance retained at the last layer, 100 x a_last / a_best, per backbone and OOD set, and their mean.",
    ),
    "pearson": (
        "Tables 4-7",
        "Pearson correlation between the ID and the OOD probe curve over all probed layers, per backbone and OOD set, and their mean.",
    ),
    "alignment": (
        "Tables 4-7",
        "ID/OOD alignment (a_id - 1/C_id)(a_ood - 1/C_ood) per backbone and OOD set, and their mean.",
    ),
    "level_means": (
        "Table 12",
        "Mean % OOD retained, Pearson correlation and ID/OOD alignment at each level of each comparison, "
        "over the backbones and OOD sets that comparison uses.",
    ),
    "effect_sizes": (
        "Tables 1 and 13",
        "Per comparison and level pair, over the matched pairs (one backbone of each level, all else equal): "
        "the magnitude of Cliff's delta between the two levels' values and the Wilcoxon signed-rank p-value, for % OOD retained, "
        "Pearson correlation and ID/OOD alignment; p over the (backbone pair x OOD set x seed) rows as the paper tests, and "
        "over the backbone pairs (each side averaged over the OOD sets, then the seeds) with Holm's correction across the "
        "comparisons of a target. Verdict at analysis.unit: holds (p < alpha the rows' way), opposite (p < alpha the other "
        "way), direction only (not significant, most pairs the rows' way), not supported.",
    ),
}

# The tables built from the analysis (paired tests and level means), only where the grid varies.
ANALYSIS_TABLES = ("level_means", "effect_sizes")

# The continual-learning table (rule continual_table), laid out like the paper's Table 2.
CONTINUAL_TABLE = (
    "Table 2",
    "Continual learning: accuracy (CSV: a fraction; LaTeX: %) on task 1 / task 2 of each configuration, per resolution (seed means; with several seeds ± half their t-interval (analysis.seed_confidence)). "
    "E = extractor (the layers before the tunnel), T = tunnel (the rest, classifier included); 1 / 2 = of the network "
    "after training on task 1 / after then training on task 2; fine-tuned rows train the parts they name on their task. "
    "Scored by continual.score: a linear probe on the last probed layer, or the network's own classifier over the task's classes.",
)


def table_caption(name: str, confidence: float = 0.95) -> str:
    paper, text = TABLES[name]
    if name == "effect_sizes":
        seeds = f"the magnitude of Cliff's delta with [low, high], the {confidence:.0%} t-interval of the per-seed delta signed in the direction of the pooled one"
    else:
        seeds = f"values are seed means ± half the width of their {confidence:.0%} t-interval across seeds"
    return f"{text} Where a backbone has several seeds, {seeds}. Laid out like the paper's {paper}."


# Tables of this project's own protocol comparisons (not in the paper).
ZERO_SHOT_CAPTION = (
    "Zero-shot against the paper's protocol on shifted copies of the ID set, per backbone: test accuracy (CSV: a fraction; LaTeX: %) on the "
    "shifted test rows outside the small validation part, at the layer zero-shot picks on that part and at the last "
    "layer, the best zero-shot layer in hindsight, and the probe trained on the shifted set (the paper's protocol) at "
    "its best and last layer."
)
SOLVERS_CAPTION = (
    "Tunnel metrics under each probe solver against the first solver, over all backbones and OOD sets: means, mean "
    "(absolute) difference, Spearman correlation across backbones and OOD sets, and the share of pairs on which both "
    "solvers agree that there is a tunnel."
)

BEST_LAYERS_CAPTION = (
    "The best layer of every backbone and OOD set, with its uncertainty (metrics.best_layers): the layer of highest "
    "OOD probe test accuracy by index and module name, that accuracy with its {confidence} Wilson interval over the "
    "test images; the layers indistinguishable from it (exact McNemar test on the same test images, p ≥ α = {alpha}, "
    "each layer tested alone, no multiplicity correction); the layer chosen on the probe's validation split, with no "
    "test image used (unavailable for solvers without one); the last layer's accuracy and the gap best − last in "
    "percentage points with Newcombe's paired score interval, the McNemar p of last against best, and the gap "
    "validation-chosen − last with its interval; whether there is "
    "a tunnel under metrics.tunnel_rule (paper: the best layer beats the last by any margin; significant: in addition "
    "p < α). Every value in aggregate/best_layers.csv."
)


def best_layers_caption(alpha: float) -> str:
    return BEST_LAYERS_CAPTION.format(confidence=f"{1 - alpha:.0%}", alpha=f"{alpha:g}")


# The study-wide figures: name (the figure's file stem) -> caption; "{confidence}" stands for the
# seed-interval level (analysis.seed_confidence). The report's caption files render these from
# their rules' params, the static page reads them here: both say the same.
FIGURES = {
    "tunnel_curves": (
        "Normalised tunnel curves of every backbone: linear-probe test accuracy per probed layer divided by the curve's "
        "maximum. Black: the ID set. Red: mean over the OOD sets, shaded ±1 SD; the star marks the layer where the mean "
        "OOD curve peaks (the tunnel start when it precedes the last layer). Where a backbone has several seeds, each line "
        "is the mean of its seeds' curves, shaded with their {confidence} t-interval across seeds; the panel title gives "
        "the number of seeds."
    ),
    "curves_by_variable": (
        "How each training variable shapes the tunnel: the mean normalised OOD probe curve over relative depth, one line "
        "per level of every variable that varies in this grid, each curve first interpolated onto one relative-depth grid "
        "(from the deepest first probe point to 1, as many points as the longest curve) so that backbones of different "
        "depths are averaged at the same depths (shading ±1 SD over cells and OOD sets; with several seeds per backbone, "
        "the {confidence} t-interval across the seeds' level curves). A curve that peaks early and falls is a tunnel; one "
        "that keeps rising is not."
    ),
    "shap_slopes": (
        "SHAP slopes per variable and target (% OOD retained / 100, Pearson ρ, ID/OOD alignment; docs/protocol.md): a "
        "Huber gradient-boosting model on ordinal-coded variables, TreeExplainer SHAP values, and the slope of a linear "
        "fit of each variable's SHAP values on its code / max code. Positive = the variable raises the target; no bar "
        "where a variable has a single level in the grid. The in-sample R² is in analysis/shap_fit.csv."
    ),
    "strength_histogram": (
        "Backbones by tunnel strength: % OOD retained averaged over each backbone's OOD sets (and seeds), negligible ≥ 95, "
        "weak [90, 95), medium [80, 90), strong < 80 (the paper found 4 / 8 / 13 / 39 of 64)."
    ),
    "layer_stats": (
        "Representation statistics of the ID test embeddings per probed layer: numerical rank (exact), RankMe (Garrido et "
        "al.'s convention), NC1 (within- over between-class scatter) and linear CKA (biased) to the last probed layer. "
        "Tunnel layers show falling rank and NC1 and CKA close to 1. With several seeds per backbone, one line per "
        "backbone (the seed mean) shaded with the {confidence} t-interval across seeds (on the NC1 log axis a band "
        "reaching 0 is cut at a tenth of the line's smallest value)."
    ),
    "best_layers": (
        "OOD linear-probe test accuracy per probed layer of every backbone and OOD set, shaded with its Wilson interval "
        "over the test images (at 1 - metrics.alpha); the star marks the best layer, filled points the layers "
        "indistinguishable from it (exact McNemar p ≥ metrics.alpha on the same test images), the diamond the layer "
        "chosen on the probe's validation split (none for solvers without one); dotted: chance, 1 / classes. The panel "
        "title says whether there is a tunnel under metrics.tunnel_rule; the numbers are in aggregate/best_layers.csv."
    ),
}


def figure_caption(name: str, confidence: float = 0.95) -> str:
    return FIGURES[name].format(confidence=f"{confidence:.0%}")


# The report's other items, also on the static page (html_page's ``more``): the file's path
# relative to the results directory (study.paths; a cell's as its template, {cell} unfilled) ->
# caption. Their report caption files render the same text from their rules' params.
ITEMS = {
    relative("cell_figure", ext="png"): (
        "Cell {cell}. Left: linear-probe test accuracy per probed layer on each eval set, shaded with its {confidence} "
        "Wilson interval over the test images (1 - metrics.alpha); dotted lines: each set's chance level (1 / classes); "
        "the layer axis names each layer's module where the names fit. Right: the same curves normalised by their "
        "maxima, OOD mean ±1 SD, star at the OOD peak."
    ),
    relative("tsne_figure", ext="png"): (
        "t-SNE of one backbone's ID test embeddings at every probed layer (Harun et al., Fig. 4), beside the numerical "
        "rank of the ID representation per layer (layer_stats). The same seeded choice of tsne.classes classes and "
        "tsne.per_class test images per class is shown at every layer; scikit-learn TSNE, PCA initialisation, seeded. "
        "Where the tunnel compresses representations, classes form tight clusters in its layers while the rank falls."
    ),
    relative("paper_figure", figure="zero_shot", ext="png"): (
        "Two protocols on a shifted copy of the ID set (a source: corrupted OOD set whose of is the ID set). Zero-shot: "
        "the probes trained on the clean ID set, scored on the shifted copy of the ID test split; the layer is chosen on "
        "a small seeded validation part of it (zero_shot.val_fraction) and scored on the rest. The paper's protocol: a "
        "probe trained on the shifted set's own training split, scored on the same rest. Dashed: the ID probes on the "
        "clean ID test split."
    ),
    relative("paper_figure", figure="solvers", ext="png"): (
        "Tunnel metrics (% OOD retained, Pearson correlation of the ID and OOD curves, ID/OOD alignment, tunnel start) of "
        "every backbone and OOD set under each solver of probe.solver against the first, on the same embeddings. Points "
        "on the diagonal: the protocols agree."
    ),
    relative("continual_curves", ext="png"): (
        "The ID linear-probe curves the continual-learning tunnel is located on, one panel per run: the network after "
        "task 1 (E1+T1) probed on task 1 and the network after task 2 (E2+T2) probed on task 2, test accuracy (%) per "
        "probed layer. Dotted lines: the threshold (continual.tunnel_threshold, default 95%) times each curve's last "
        "layer; the tunnel starts at the first layer at or above it on the curve continual.tunnel_curve names. Shaded: "
        "the tunnel used for the swaps, through the last probed layer (the extractor is everything before it)."
    ),
    relative("tunnel_length", file="tunnel_length", ext="png"): (
        "Tunnel length of the MLP cells by Masarczyk et al.'s ID rule: the tunnel starts at the first probed layer whose "
        "ID linear-probe test accuracy reaches the tunnel_length.threshold fraction (0.95) of the last layer's, and runs "
        "to the last probed layer. Left two columns: its length in layers and as a fraction of the probed (hidden) "
        "layers against MLP depth, one line per width. Right two: the same against width (log scale), one line per "
        "depth. Points are means over seeds, shaded bands the Student-t interval of that mean; tunnel_length.csv holds "
        "the plotted values and tunnel_length_cells.csv one row per cell."
    ),
    relative("tunnel_length", file="rank_per_layer", ext="png"): (
        "Numerical rank (singular values of the feature covariance above layer_stats.rank_tol times the largest) of each "
        "MLP hidden layer's ID test embeddings, one panel per depth and one line per width: mean over seeds with the "
        "Student-t interval of that mean shaded. The dashed line is the number of ID classes, to which Masarczyk et al. "
        "report the rank collapsing inside the tunnel; dotted lines mark each width's mean ID-rule tunnel start. "
        "rank_per_layer.csv holds the plotted values."
    ),
    relative("aggregate", table="cells", ext="csv"): (
        "Every cell's backbone facts and training health. trained is false where the backbone's ID test accuracy stays "
        "below chance + {chance_margin} of the way from chance to perfect{loss}; untrained_reason says which. Such cells "
        "are left out of the study-level analysis, the summary tables and figures unless analysis.include_untrained is "
        "true; published backbones count as trained."
    ),
}
for _protocol in ("zero_shot", "solvers"):  # a protocol's table shares its figure's caption
    ITEMS[relative("paper_table", table=_protocol, ext="csv")] = ITEMS[
        relative("paper_figure", figure=_protocol, ext="png")
    ]
ITEMS[relative("paper_table", table="continual", ext="csv")] = (
    f"{CONTINUAL_TABLE[1]} Laid out like the paper's {CONTINUAL_TABLE[0]}. Every score, with the classifier's "
    "accuracy beside the probe's and each run's tunnel, in continual/scores.csv; LaTeX beside it: "
    "paper/tables/continual.tex."
)
HEALTH_LOSS = ", or its train loss was not finite, ended above its first epoch's or never fell below it"


# each ITEMS key as a pattern: its {cell} matches one cell's directory
_ITEM_PATTERNS = {key: re.compile(re.escape(key).replace(r"\{cell\}", "(?P<cell>[^/]+)")) for key in ITEMS}


def item_match(path: str) -> tuple[str, str]:
    """(ITEMS key, cell or "") of a report item at ``path`` under the results directory."""
    for key, pattern in _ITEM_PATTERNS.items():
        if found := pattern.fullmatch(path):
            return key, found.groupdict().get("cell", "")
    raise KeyError(f"{path}: not a report item of captions.ITEMS")


def item_caption(path: str, confidence: float = 0.95, health: dict | None = None) -> str:
    """The caption of a report item (ITEMS) at ``path`` under the results directory;
    ``health``: the study's metrics.health settings (the cells table's caption states them)."""
    health = health or {"chance_margin": 0.15, "loss": True}
    key, cell = item_match(path)
    return ITEMS[key].format(
        cell=cell,
        confidence=f"{confidence:.0%}",
        chance_margin=health["chance_margin"],
        loss=HEALTH_LOSS if health["loss"] else "",
    )
