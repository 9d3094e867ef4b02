"""Your model, your data: the README's own-model path against the script a researcher would write.

Both answer "which layer of my model transfers best to my other data" on the same images: a small
CNN built by a function in a .py file, its saved state dict, an ID and an OOD ImageFolder tree.
- pipeline: `snakemake --cores 2 --configfile own.yaml` from nothing, the README's config
  (prepare, import, embed, probe, metrics, best layers, figures, the report page);
- script: one Python process, the same model and probe points, forward hooks, the same 2x2
  average pooling, scikit-learn LogisticRegression (standardised features) per layer, test
  accuracy per layer: the notebook answer, without intervals.
The two run in turn (pipeline, script, pipeline, ...); the figures are medians and per-pair
ratios. Where the pipeline's time goes: the sum of its jobs' Snakemake benchmark files, its job
count, and the start-up of one job process (python importing torch and tunnelscope).

Data: ``--id-root``/``--ood-root`` (ImageFolder trees ROOT/{train,test}/CLASS/IMAGE, e.g. the
CIFAR-10 and GTSRB archives), else generated trees of procedural images written as PNG.
"""

from __future__ import annotations

import csv
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from common import parser, report

REPO = Path(__file__).resolve().parents[1]

# The model a researcher brings: a file of their own, not timm or torchvision.
MODEL_FILE = textwrap.dedent(
    """
    from torch import nn


    def block(i, o, pool):
        layers = [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]
        return nn.Sequential(*layers, *([nn.MaxPool2d(2)] if pool else []))


    def build(num_classes=10, width=32):
        model = nn.Sequential()
        widths = [3, width, width, 2 * width, 2 * width, 4 * width, 4 * width]
        model.features = nn.Sequential(*(block(widths[k], widths[k + 1], k % 2 == 1) for k in range(6)))
        model.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes))
        return model
    """
)
POINTS = [f"features.{k}" for k in range(6)]  # each conv block's output

SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np, torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from torchvision import datasets, transforms
    sys.path.insert(0, ".")
    from mynet import build

    torch.set_num_threads(2)
    points = {points!r}
    model = build(num_classes={classes})
    model.load_state_dict(torch.load("mynet.pt", weights_only=True))
    model.eval()
    modules = dict(model.named_modules())
    captured = {{}}
    for name in points:
        modules[name].register_forward_hook(lambda m, i, o, name=name: captured.__setitem__(name, o))
    tf = transforms.Compose([transforms.Resize(36, interpolation=transforms.InterpolationMode.BICUBIC),
                             transforms.CenterCrop(32), transforms.ToTensor(),
                             transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])

    def embed(root):
        loader = torch.utils.data.DataLoader(datasets.ImageFolder(root, tf), batch_size=256)
        feats, labels = {{n: [] for n in points}}, []
        with torch.no_grad():
            for x, y in loader:
                model(x)
                for n in points:
                    feats[n].append(torch.nn.functional.adaptive_avg_pool2d(captured[n], 2).flatten(1).numpy())
                labels.append(y.numpy())
        return {{n: np.concatenate(v) for n, v in feats.items()}}, np.concatenate(labels)

    for name, root in (("id", "{id_root}"), ("ood", "{ood_root}")):
        (train, ytr), (test, yte) = embed(root + "/train"), embed(root + "/test")
        for layer, n in enumerate(points, 1):
            probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
            probe.fit(train[n], ytr)
            print(name, layer, n, round(probe.score(test[n], yte), 4), flush=True)
    """
)


def _config(id_root: str, ood_root: str, classes: int) -> str:
    return textwrap.dedent(
        f"""
        results: results-mynet
        datasets:
          mine: {{source: imagefolder, root: {id_root}}}
          other: {{source: imagefolder, root: {ood_root}}}
        pretrained:
          mynet:
            arch: python:mynet.py:build
            kwargs: {{num_classes: {classes}}}
            weights: mynet.pt
            num_classes: {classes}
            n_train: {classes * 200}
            probe_points: {POINTS}
        grid: {{arch: [mynet], id_dataset: [mine], resolution: [32]}}
        ood_sets: [other]
        """
    )


def _write_tree(root: Path, family: str, classes: int, train: int, test: int, seed: int) -> None:
    """An ImageFolder tree of procedural images (tunnelscope.data.synthetic) as PNG files."""
    from PIL import Image

    from tunnelscope.data.synthetic import class_images

    for split, n in (("train", train), ("test", test)):
        for c in range(classes):
            folder = root / split / f"{family}{c:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(class_images(family, c, n, 32, split, seed)):
                Image.fromarray(image).save(folder / f"{i:05d}.png")


def _count_classes(root: str) -> int:
    return sum(1 for p in (Path(root) / "train").iterdir() if p.is_dir())


def _save_weights(workdir: Path, classes: int) -> None:
    """A trained-looking model is not needed to time the answer: seeded random weights."""
    import torch

    sys.path.insert(0, str(workdir))
    from mynet import build

    torch.manual_seed(0)
    torch.save(build(num_classes=classes).state_dict(), workdir / "mynet.pt")
    sys.path.remove(str(workdir))


def _snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--configfile", "own.yaml"]
    return subprocess.run([*cmd, *args], cwd=workdir, capture_output=True, text=True, check=True)


def _run_pipeline(workdir: Path) -> float:
    subprocess.run(["rm", "-rf", "results-mynet", ".snakemake"], cwd=workdir, check=True)
    start = time.perf_counter()
    _snakemake(workdir, "--cores", "2")
    return time.perf_counter() - start


def _run_script(workdir: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "answer.py"], cwd=workdir, capture_output=True, text=True, check=True)
    return time.perf_counter() - start


def _job_seconds(workdir: Path) -> dict[str, float]:
    """Seconds per rule, summed over the run's Snakemake benchmark files."""
    totals: dict[str, float] = {}
    for path in (workdir / "results-mynet" / "benchmarks").rglob("*.tsv"):
        with open(path) as fh:
            row = next(csv.DictReader(fh, delimiter="\t"))
        rule = path.relative_to(workdir / "results-mynet" / "benchmarks").parts[0]
        totals[rule] = totals.get(rule, 0.0) + float(row["s"])
    return totals


def _startup_seconds() -> float:
    """One job process's start-up: python importing torch and the library, as a job script does."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, pandas, tunnelscope.io"], check=True)
    return time.perf_counter() - start


def main():
    p = parser(__doc__)
    p.add_argument("--id-root", help="an ImageFolder tree for the ID set (default: generated)")
    p.add_argument("--ood-root", help="an ImageFolder tree for the OOD set (default: generated)")
    p.add_argument("--repeats", type=int, default=3, help="pairs of runs (pipeline, script)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        id_root, ood_root = args.id_root, args.ood_root
        if not (id_root and ood_root):
            per = (4, 2) if args.smoke else (200, 50)
            _write_tree(workdir / "data" / "mine", "shapes", 10, *per, seed=0)
            _write_tree(workdir / "data" / "other", "glyphs", 10, *per, seed=1)
            id_root, ood_root = str(workdir / "data" / "mine"), str(workdir / "data" / "other")
        id_root, ood_root = str(Path(id_root).resolve()), str(Path(ood_root).resolve())
        classes = _count_classes(id_root)
        (workdir / "mynet.py").write_text(MODEL_FILE)
        _save_weights(workdir, classes)
        (workdir / "own.yaml").write_text(_config(id_root, ood_root, classes))
        (workdir / "answer.py").write_text(
            SCRIPT.format(points=POINTS, classes=classes, id_root=id_root, ood_root=ood_root)
        )
        dry = _snakemake(workdir, "-n", "--cores", "2").stdout
        jobs = int(next(line.split()[-1] for line in dry.splitlines() if line.startswith("total")))
        if args.smoke:  # the script side and the plan only: the pipeline's run is the integration tests'
            seconds = _run_script(workdir)
            report("Own model (smoke)", [f"script {seconds:.1f} s; the pipeline plans {jobs} jobs"], args)
            return
        pipeline, script = [], []
        for _ in range(args.repeats):
            pipeline.append(_run_pipeline(workdir))
            script.append(_run_script(workdir))
        by_rule = _job_seconds(workdir)
        startup = _startup_seconds()
    ratios = [a / b for a, b in zip(pipeline, script)]
    data = "generated shapes -> glyphs (10 classes, 200 train + 50 test per class)"
    if args.id_root:
        data = f"{Path(args.id_root).name} -> {Path(args.ood_root).name}"
    rules = ", ".join(f"{rule} {s:.1f}" for rule, s in sorted(by_rule.items(), key=lambda kv: -kv[1]))
    report(
        "Own model: the README's pipeline vs a hooks + scikit-learn script",
        [
            f"A 6-point CNN from mynet.py (random seeded weights), 32 px, {data}; {args.repeats} pairs, 2 cores.",
            "",
            "| pipeline wall (s) | script wall (s) | ratio pipeline/script (median, per pair) | target |",
            "|---|---|---|---|",
            f"| {statistics.median(pipeline):.1f} | {statistics.median(script):.1f} | "
            f"{statistics.median(ratios):.2f}x ({', '.join(f'{r:.2f}' for r in ratios)}) | "
            f"<= 1x {'met' if statistics.median(ratios) <= 1 else 'NOT met'} |",
            "",
            f"Where the pipeline's time goes: {jobs} jobs, each a fresh Python process that starts in "
            f"{startup:.1f} s (python + torch + tunnelscope), so {jobs} x {startup:.1f} = {jobs * startup:.0f} s of "
            f"start-up over 2 cores; the heavy jobs' benchmark files (start-up included) sum to "
            f"{sum(by_rule.values()):.1f} s ({rules}). The script's time is one start-up, decoding the PNGs and "
            "scikit-learn's LogisticRegression per layer.",
        ],
        args,
    )


if __name__ == "__main__":
    main()
