"""``tunnelscope analyze``: SHAP slopes, paired comparisons and level means of a (backbone x OOD set) table."""

from __future__ import annotations

import argparse
import sys

from tunnelscope.commands.study_file import read_study
from tunnelscope.study.schema import SCHEMA_PATH

HELP = "SHAP slopes, paired comparisons and level means of a (backbone x OOD set) table"
DESCRIPTION = (
    "SHAP slopes, paired comparisons and level means of a (backbone x OOD set) table: "
    "results/aggregate/metrics.csv of a study, any table with the same columns, or the paper's "
    "released experiments_results.csv exactly as published (backbones and OOD sets recovered from its row order)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "table",
        nargs="?",
        help="CSV or Parquet: ood_retained, pearson, alignment, family, stem, spatial_reduction, augmentation, resolution, id_classes, gamma, depth (plus arch, id_dataset, seed, ood_set, ood_index for the comparisons)",
    )
    parser.add_argument(
        "--paper",
        action="store_true",
        help="analyse the paper's released table (shipped with tunnelscope) with the comparisons of config/paper.yaml",
    )
    parser.add_argument(
        "--config",
        help="a study config whose analysis section (comparisons, unit, SHAP slope normalisation, alpha) to use (default: automatic comparisons at the backbone unit; config/paper.yaml's for the released table, at the row unit)",
    )
    parser.add_argument(
        "--schema", default=str(SCHEMA_PATH), help="JSON schema of --config (default: the one shipped with tunnelscope)"
    )
    parser.add_argument(
        "--out",
        required=True,
        help="output directory for shap_slopes.csv, shap_fit.csv, paired_tests.csv, level_means.csv",
    )


def run(args) -> int:
    import logging

    from tunnelscope.analysis.comparisons import DEFAULT_SETTINGS, analyze
    from tunnelscope.analysis.release import paper_analysis, release_path
    from tunnelscope.analysis.table import TableError
    from tunnelscope.analysis.table import read_analysis_table as read_table

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if (args.table is None) == (not args.paper):
        print("tunnelscope: analyze needs a TABLE or --paper (the paper's released table), not both", file=sys.stderr)
        return 2
    table_path = str(release_path()) if args.paper else args.table
    settings = dict(DEFAULT_SETTINGS)
    source = "auto"
    if args.config:
        study, code = read_study(args.config, args.schema)
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


def _is_release(path: str) -> bool:
    import pandas as pd

    from tunnelscope.analysis.release import is_release_table

    try:
        return path.endswith(".csv") and is_release_table(pd.read_csv(path, nrows=0))
    except (OSError, ValueError):
        return False
