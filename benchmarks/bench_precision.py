"""bf16 autocast against float32 on claims-style cells: what compute.precision changes in the results.

Two studies, identical but for ``compute.precision`` (fp32, bf16; channels_last as ``--channels-last``
on both), each the claims preset's VGGm-11 cells on CIFAR-10 at 32 px without augmentation
(config/claims.yaml) over ``--seeds``, probed on GTSRB and CIFAR-10 under noise. Both run through
the pipeline (Snakemake, ``--cores``) up to aggregate/metrics.csv and cells.csv; per seed and OOD
set the bf16 - fp32 difference of ID top-1, % OOD retained and tunnel start is reported as its
mean over the seeds with a 95% t-interval over the seeds. ``--data`` holds the unpacked
archives (cifar10/ and gtsrb/, each {train,test}/CLASS/IMAGE). The claims scale is
``--epochs 15 --per-class 500 --seeds 0 1 2 3 4``; smaller runs say which they used.
``--smoke``: synthetic data, the two studies planned (snakemake --dry-run), nothing trained.
"""

import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml
from scipy import stats

from common import parser, report

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "bf16")
OOD_SETS = ["gtsrb", "cifar10-noise"]


def study_config(args, precision: str, results: str) -> dict:
    """The claims preset's VGGm-11 / CIFAR-10 / 32 px / no-augmentation cells at this scale."""
    if args.smoke:
        datasets = {
            "cifar10": {
                "source": "synthetic",
                "family": "shapes",
                "classes": 4,
                "train_per_class": 20,
                "test_per_class": 5,
            },
            "gtsrb": {
                "source": "synthetic",
                "family": "glyphs",
                "classes": 4,
                "train_per_class": 20,
                "test_per_class": 5,
            },
        }
    else:
        data = Path(args.data).resolve()
        datasets = {
            "cifar10": {"source": "imagefolder", "root": str(data / "cifar10"), "per_class": args.per_class},
            "gtsrb": {"source": "imagefolder", "root": str(data / "gtsrb"), "per_class": args.ood_per_class},
        }
    datasets["cifar10-noise"] = {"source": "corrupted", "of": "cifar10", "corruption": "gaussian_noise", "severity": 3}
    return {
        "results": results,
        "datasets": datasets,
        "grid": {
            "arch": [args.arch],
            "id_dataset": ["cifar10"],
            "resolution": [32],
            "augmentation": ["none"],
            "seed": args.seeds,
        },
        "ood_sets": OOD_SETS,
        "model": {"width": 0.25},
        "training": {
            "epochs": args.epochs,
            "batch_size": 128,
            "lr": 0.01,
            "weight_decay": 0.05,
            "label_smoothing": 0.1,
            "warmup_epochs": 1,
        },
        "compute": {"device": "cpu", "precision": precision, "channels_last": args.channels_last},
    }


def run_study(args, work: Path, precision: str) -> Path:
    """Run (or, smoke, plan) one study; its results directory."""
    results = work / f"results-{precision}"
    config = work / f"{precision}.yaml"
    config.write_text(yaml.safe_dump(study_config(args, precision, str(results))))
    targets = [f"{results}/aggregate/metrics.csv", f"{results}/aggregate/cells.csv"]
    command = [sys.executable, "-m", "snakemake", *targets, "--snakefile", str(ROOT / "Snakefile")]
    command += ["--directory", str(work), "--cores", str(args.cores), "--configfile", str(config), "--quiet", "rules"]
    if args.smoke:
        command.append("--dry-run")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    subprocess.run(command, check=True, env=env)
    return results


def per_seed(results: Path) -> pd.DataFrame:
    """One row per (seed, OOD set): ID top-1 of the network, % OOD retained, tunnel start."""
    metrics = pd.read_csv(results / "aggregate" / "metrics.csv")
    cells = pd.read_csv(results / "aggregate" / "cells.csv")[["seed", "test_acc", "precision", "channels_last"]]
    table = metrics[["seed", "ood_set", "ood_retained", "tunnel_start"]].merge(cells, on="seed")
    return table.assign(id_acc=100 * table.test_acc).set_index(["seed", "ood_set"]).sort_index()


def interval(diffs: pd.Series) -> str:
    """Mean of the paired differences with its 95% t-interval over the seeds."""
    n, mean = len(diffs), diffs.mean()
    if n < 2 or diffs.std() == 0:
        return f"{mean:+.2f}"
    half = stats.t.ppf(0.975, n - 1) * diffs.std() / math.sqrt(n)
    return f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}]"


def comparison(tables: dict[str, pd.DataFrame]) -> list[str]:
    fp32, bf16 = tables["fp32"], tables["bf16"]
    lines = [
        "| OOD set | measure | fp32 (mean over seeds) | bf16 | bf16 - fp32 (mean, 95% t-interval over seeds) |",
        "|---|---|---|---|---|",
    ]
    for ood_set in OOD_SETS:
        a, b = fp32.xs(ood_set, level="ood_set"), bf16.xs(ood_set, level="ood_set")
        for column, label in (
            ("id_acc", "ID top-1 (%)"),
            ("ood_retained", "% OOD retained"),
            ("tunnel_start", "tunnel start (layer)"),
        ):
            lines.append(
                f"| {ood_set} | {label} | {a[column].mean():.2f} | {b[column].mean():.2f} | {interval(b[column] - a[column])} |"
            )
    per_cell = [
        f"seed {seed}: {ood} retained {a_row.ood_retained:.1f} / {b_row.ood_retained:.1f}, tunnel start {a_row.tunnel_start:g} / {b_row.tunnel_start:g}"
        for (seed, ood), a_row in fp32.iterrows()
        for b_row in [bf16.loc[(seed, ood)]]
    ]
    resolved = {p: f"{t.precision.iloc[0]}, channels_last {t.channels_last.iloc[0]}" for p, t in tables.items()}
    return [
        *lines,
        "",
        f"Resolved in cell.json: fp32 study {resolved['fp32']}; bf16 study {resolved['bf16']}.",
        "",
        "Per seed (fp32 / bf16): " + "; ".join(per_cell) + ".",
    ]


def main():
    p = parser(__doc__)
    p.add_argument("--data", default="data", help="directory holding cifar10/ and gtsrb/ (unpacked archives)")
    p.add_argument("--arch", default="vggm11")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--per-class", type=int, default=500, help="CIFAR-10 training images per class (claims: 500)")
    p.add_argument("--ood-per-class", type=int, default=100, help="GTSRB training images per class")
    p.add_argument("--channels-last", type=yaml.safe_load, default="auto", help="compute.channels_last of both studies")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--work", help="keep the two studies here (default: a temporary directory, removed)")
    args = p.parse_args()
    if args.smoke:
        args.seeds, args.epochs = [0], 1
    with tempfile.TemporaryDirectory(prefix="bench_precision.") as tmp:
        work = Path(args.work or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        results = {precision: run_study(args, work, precision) for precision in PRECISIONS}
        scale = (
            f"{args.arch} width 0.25, CIFAR-10 at 32 px, {args.per_class} train images per class, no augmentation, "
            f"{args.epochs} epochs, seeds {', '.join(map(str, args.seeds))}; OOD: GTSRB ({args.ood_per_class} per class), "
            f"CIFAR-10 gaussian_noise 3; compute.channels_last {args.channels_last}; snakemake --cores {args.cores}"
        )
        if args.smoke:
            lines = [scale, "", f"Planned (dry run, nothing trained): {', '.join(map(str, results.values()))}"]
        else:
            lines = [scale, "", *comparison({p: per_seed(r) for p, r in results.items()})]
    report("bf16 autocast against float32 on claims-style cells", lines, args)


if __name__ == "__main__":
    main()
