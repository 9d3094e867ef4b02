"""The fault matrix: SIGKILLs during the heavy jobs, damaged files, and what recovers them.

A one-cell study (the tiny config's cell on toy, OOD set toy-glyphs) is built once to its
aggregate tables (the reference). Each case starts from a copy of it:

- kill: the outputs of one heavy rule and every output made from them are removed (``unbuild``:
  the state a first run reaches that job in) and the whole snakemake process group gets SIGKILL
  at a random point while that rule's job runs (``kill_when``; the test suite kills at a fixed
  point of a probe job with the same functions). Not ``--forcerun`` of the finished study: that
  leaves the old tables in place, so after ``--unlock`` a plain rerun says "Nothing to be done"
  and the tables compare equal without anything having been rebuilt;
- damage: one file of a kind gets 256 bytes inverted (same size) or is cut to half its size, and
  the job that reads it is forced to run (none for the final tables: `tunnelscope verify` then).

Then a plain rerun (`snakemake --cores 2 TABLES`). "bitwise": it succeeds and the tables equal the
reference byte for byte; "advice": it fails, and following what it printed (Snakemake's --unlock or
--rerun-incomplete, tunnelscope's `to rebuild it run: ...`) gives equal tables; "lost": neither,
or a damaged file used silently (exit 0, tables differ). ``--smoke``: the damage half through the
library readers only, on files made in memory (no snakemake).

Also the checksums' cost per heavy job: the checksum work each job does, timed directly, against
the job's time (the reference run's benchmark files, and an embed of a streamed store larger than
the default resident limit).
"""

from __future__ import annotations

import copy
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from common import parser, report

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
CELL = "vggm11_toy_r32_none_s0"
TABLES = ["out/aggregate/curves.parquet", "out/aggregate/metrics.parquet"]
KILL_RULES = {  # rule: an output of its job to force (a glob under the workdir)
    "prepare": "out/prepared/toy/r32",
    "pretrain": f"out/cells/{CELL}/checkpoint.safetensors",
    "embed": f"out/cells/{CELL}/embeddings/toy",
    "probe": f"out/cells/{CELL}/probes/lbfgs/toy.parquet",
    "cell_metrics": f"out/cells/{CELL}/metrics.parquet",
    "aggregate_table": "out/aggregate/curves.parquet",
}
# kind: (file, the output of the job that reads it, or None for a final table)
FILES = {
    "store pixels": ("out/prepared/toy/r32/train.pixels.npy", f"out/cells/{CELL}/checkpoint.safetensors"),
    "store index": ("out/prepared/toy/r32/test.index.npy", f"out/cells/{CELL}/checkpoint.safetensors"),
    "checkpoint": (f"out/cells/{CELL}/checkpoint.safetensors", f"out/cells/{CELL}/embeddings/toy"),
    "embedding": (
        f"out/cells/{CELL}/embeddings/toy/avg2x2/layer_002.parquet",
        f"out/cells/{CELL}/probes/lbfgs/toy.parquet",
    ),
    "probe table": (f"out/cells/{CELL}/probes/lbfgs/toy.parquet", f"out/cells/{CELL}/metrics.parquet"),
    "predictions": (f"out/cells/{CELL}/probes/lbfgs/toy.predictions.parquet", f"out/cells/{CELL}/metrics.parquet"),
    "metrics table": (f"out/cells/{CELL}/metrics.parquet", "out/aggregate/metrics.parquet"),
    "aggregate table": ("out/aggregate/curves.parquet", None),
    "aggregate CSV": ("out/aggregate/curves.csv", None),
}
# Compared byte for byte with the undamaged run's: the tables, and the CSV a case damages.
FINAL = [*TABLES, "out/aggregate/curves.csv"]
ENV = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def snakemake(workdir: Path, *args, wait: bool = True):
    from conftest import snakemake_cmd

    cmd = snakemake_cmd(workdir, "--cores", "2", *args)
    if not wait:  # its own process group, killed whole
        return subprocess.Popen(
            cmd, cwd=workdir, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
    return subprocess.run(cmd, cwd=workdir, env=ENV, capture_output=True, text=True, timeout=1800)


def damage(path: Path, how: str) -> None:
    size = path.stat().st_size
    if how == "truncate":
        os.truncate(path, size // 2)
        return
    offset = max(0, size // 2 - 128) if size > 4096 else max(0, size - 400)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        data = fh.read(256)
        fh.seek(offset)
        fh.write(bytes(b ^ 0xFF for b in data))


def tables_equal(workdir: Path, reference: dict) -> bool:
    return all((workdir / t).exists() and (workdir / t).read_bytes() == data for t, data in reference.items())


def follow_advice(workdir: Path, text: str, steps: int = 3) -> bool:
    """Run what a failure printed (tunnelscope's rebuild command, else Snakemake's own advice),
    and again what that run prints, as a user would: a kill can need --unlock, then
    --rerun-incomplete. True when a run succeeds within ``steps``."""
    for _ in range(steps):
        rebuild = re.search(r"to rebuild (?:it|them) run: (.*)$", text, re.M)
        if rebuild:
            advice = shlex.split(rebuild.group(1))
            cmd = [sys.executable, "-m", "snakemake", *TABLES, *advice[1:]]  # targets first: --configfile takes several
            done = subprocess.run(cmd, cwd=workdir, env=ENV, capture_output=True, text=True, timeout=1800)
        elif "--unlock" in text:
            snakemake(workdir, "--unlock")
            done = snakemake(workdir, *TABLES)
        elif "--rerun-incomplete" in text:
            done = snakemake(workdir, "--rerun-incomplete", *TABLES)
        else:
            return False
        if done.returncode == 0:
            return True
        text = done.stdout + done.stderr
    return False


def verify(workdir: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tunnelscope.cli", "verify", "tiny.yaml"]
    return subprocess.run(cmd, cwd=workdir, env=ENV, capture_output=True, text=True, timeout=600)


def outcome(workdir: Path, first: subprocess.CompletedProcess, reference: dict) -> str:
    if first.returncode == 0:
        return "bitwise" if tables_equal(workdir, reference) else "lost (used silently)"
    if follow_advice(workdir, first.stdout + first.stderr) and tables_equal(workdir, reference):
        return "advice"
    return "lost"


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 300) -> bool:
    """SIGKILL ``proc``'s whole process group (snakemake and its jobs) as soon as ``ready()``
    holds (or after ``timeout`` s); True when the run was still going then."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.02)
    killed = proc.poll() is None
    if killed:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return killed


def job_started(workdir: Path, rule: str) -> Callable[[], bool]:
    """Whether a job of ``rule`` has written its log since now."""
    since = time.time() - 1
    return lambda: any(rule in str(p) for p in (workdir / "out" / "logs").rglob("*.log") if p.stat().st_mtime > since)


def after(delay: float, event: Callable[[], bool]) -> Callable[[], bool]:
    """A condition that holds from ``delay`` seconds after ``event`` first holds."""
    seen: list[float] = []

    def ready() -> bool:
        if not seen and event():
            seen.append(time.monotonic())
        return bool(seen) and time.monotonic() - seen[0] >= delay

    return ready


def unbuild(workdir: Path, target: str) -> None:
    """Remove ``target``, every output made from it on the way to the tables and their digests:
    the state a first run of the study is in when it reaches ``target``'s job."""
    from tunnelscope.io import digest_path

    plan = snakemake(workdir, *TABLES, "--forcerun", target, "--dry-run")
    outputs = re.findall(r"^\s+output: (.*)$", plan.stdout + plan.stderr, re.M)
    if plan.returncode or not outputs:
        raise RuntimeError(f"no jobs planned for {target}: {plan.stderr[-2000:]}")
    for path in (workdir / name for line in outputs for name in line.split(", ")):
        if path.is_dir():
            shutil.rmtree(path)
        path.unlink(missing_ok=True)
        digest_path(path).unlink(missing_ok=True)


def kill_case(reference_dir: Path, workdir: Path, rule: str, rng: random.Random, reference: dict) -> tuple[str, str]:
    shutil.copytree(reference_dir, workdir, symlinks=True)
    unbuild(workdir, KILL_RULES[rule])
    proc = snakemake(workdir, *TABLES, wait=False)
    delay = rng.uniform(0.5, 8.0)
    killed = kill_when(proc, after(delay, job_started(workdir, rule)))
    first = snakemake(workdir, *TABLES)
    when = f"{delay:.1f} s into {rule}" if killed else f"{rule} (finished before the kill)"
    return when, outcome(workdir, first, reference)


def damage_case(reference_dir: Path, workdir: Path, kind: str, how: str, reference: dict) -> tuple[str, str, str]:
    shutil.copytree(reference_dir, workdir, symlinks=True)
    path, reader = FILES[kind]
    damage(workdir / path, how)
    named = verify(workdir)
    by_verify = "named" if named.returncode != 0 and path in named.stderr else "missed"
    if reader is None:  # a final table: nothing reads it; verify's advice
        return (
            by_verify,
            "n/a",
            "advice" if follow_advice(workdir, named.stderr) and tables_equal(workdir, reference) else "lost",
        )
    first = snakemake(workdir, *TABLES, "--forcerun", reader)
    by_reader = (
        "named"
        if first.returncode != 0 and f"{path}: " in first.stderr
        else "exit 0"
        if first.returncode == 0
        else "failed, not named"
    )
    return by_verify, by_reader, outcome(workdir, first, reference)


def study_config() -> dict:
    from conftest import TINY

    config = copy.deepcopy(TINY)
    config["grid"]["augmentation"] = ["none"]
    config["ood_sets"] = ["toy-glyphs"]
    config["datasets"] = {k: v for k, v in config["datasets"].items() if k in ("toy", "toy-glyphs")}
    return config


def matrix(root: Path, kills: int, seed: int, kinds: list[str]) -> list[str]:
    reference_dir = root / "reference"
    reference_dir.mkdir()
    (reference_dir / "tiny.yaml").write_text(yaml.safe_dump(study_config()))
    result = snakemake(reference_dir, *TABLES)
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])
    reference = {t: (reference_dir / t).read_bytes() for t in FINAL}
    rng = random.Random(seed)
    rows = ["| case | named by verify | named by its reader | outcome |", "|---|---|---|---|"]
    rules = list(KILL_RULES) * (-(-kills // len(KILL_RULES)))
    for n, rule in enumerate(rules[:kills]):
        when, result = kill_case(reference_dir, root / f"kill{n}", rule, rng, reference)
        rows.append(f"| SIGKILL {when} | n/a | n/a | {result} |")
        print(rows[-1], flush=True)
    for kind in kinds:
        for how in ("same-size", "truncate"):
            by_verify, by_reader, result = damage_case(
                reference_dir, root / f"{kind}-{how}".replace(" ", "-"), kind, how, reference
            )
            rows.append(f"| {kind}, {how} | {by_verify} | {by_reader} | {result} |")
            print(rows[-1], flush=True)
    return rows


def smoke(root: Path) -> list[str]:
    """Each file kind made in memory, damaged both ways, read by its library reader."""
    import numpy as np
    import pandas as pd

    from inmemory import write_arrays, write_embeddings
    from tunnelscope.data.store import ImageStore
    from tunnelscope.features.store import read_embeddings, write_checksums
    from tunnelscope.integrity import DamageError
    from tunnelscope.io import read_csv, read_table, write_csv, write_table
    from tunnelscope.models.build import build_model
    from tunnelscope.models.checkpoints import load_backbone, save_backbone

    rng = np.random.default_rng(0)

    def store():
        images = rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8)
        s = write_arrays(root / "store", {"train": (images, np.arange(64) % 4)}, 4, 8)
        return s.root / "train.pixels.npy", lambda: ImageStore(s.root).splits["train"].array()

    def checkpoint():
        path = root / "checkpoint.safetensors"
        meta = {"params": {"arch": "vggm11", "resolution": 32, "model": {"width": 0.125}}, "num_classes": 4}
        save_backbone(build_model("vggm11", 4, 0.125, 32), path, meta)
        return path, lambda: load_backbone(str(path))

    def embedding():
        path = root / "emb" / "toy" / "avg2x2" / "layer_000.parquet"
        n = 2000
        write_embeddings(
            path,
            rng.standard_normal((n, 32)).astype(np.float16),
            np.arange(n) % 4,
            np.full(n, "train"),
            np.arange(n),
            {},
        )
        write_checksums(root / "emb" / "toy")
        return path, lambda: read_embeddings(path)

    def table():
        path = root / "table.parquet"
        write_table(pd.DataFrame({"layer": np.arange(2000), "acc": rng.random(2000)}), str(path))
        return path, lambda: read_table(str(path))

    def csv():
        path = root / "table.csv"
        write_csv(pd.DataFrame({"layer": np.arange(2000), "acc": rng.random(2000)}), path)
        return path, lambda: read_csv(path)

    rows = ["| file kind | damage | reader |", "|---|---|---|"]
    for make in (store, checkpoint, embedding, table, csv):
        for how in ("same-size", "truncate"):
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            path, read = make()
            damage(path, how)
            try:
                read()
                result = "used silently"
            except DamageError as exc:
                result = "named" if str(exc).startswith(f"{path}: ") and "--forcerun" in str(exc) else "unnamed"
            rows.append(f"| {make.__name__} | {how} | {result} |")
            if result != "named":
                raise SystemExit(f"{make.__name__}, {how}: {result}")
    return rows


def cost(root: Path, store_mb: float) -> list[str]:
    """The checksum pass over a streamed store (over the default resident limit of 1024 MB) against
    an embed of it that includes the same pass (VGGm-11 at 0.125 width, 224 px, one thread)."""
    import numpy as np

    from inmemory import write_arrays
    from tunnelscope.data.store import ImageStore
    from tunnelscope.features.embed import embed_eval_set
    from tunnelscope.models.build import build_model
    from tunnelscope.models.checkpoints import save_backbone
    from tunnelscope.runtime import JobRuntime
    from tunnelscope.study.config import Study
    from tunnelscope.study.schema import load_schema

    config = study_config()
    config["grid"]["resolution"] = [224]
    study = Study(config, load_schema())
    cell = next(iter(study.cells))
    meta = {"params": study.pretrain_params(cell), "num_classes": 4, "mean": [0.5] * 3, "std": [0.25] * 3}
    save_backbone(build_model("vggm11", 4, 0.125, 224), root / "ck.safetensors", meta)
    n = max(2, int(store_mb * 2**20 // (256 * 256 * 3)) // 2 * 2)
    images = np.random.default_rng(0).integers(0, 256, (n, 256, 256, 3), dtype=np.uint8)
    labels = np.arange(n) % 4
    half = n // 2
    write_arrays(
        root / "big", {"train": (images[:half], labels[:half]), "test": (images[half:], labels[half:])}, 4, 224
    )
    del images
    store = ImageStore(root / "big")
    start = time.perf_counter()
    store.check()
    check = time.perf_counter() - start
    start = time.perf_counter()
    embed_eval_set(
        study.embed_params(cell, "toy"),
        backbone=str(root / "ck.safetensors"),
        store=str(root / "big"),
        out_dir=str(root / "emb"),
        runtime=JobRuntime(threads=1, batch_size=128),
    )
    embed = time.perf_counter() - start
    mb = sum(s.nbytes for s in store.splits.values()) / 2**20
    return [
        "| store | images | CRC-32 pass (s) | embed job incl. the pass (s) | share |",
        "|---|---|---|---|---|",
        f"| {mb:,.0f} MB, streamed | {n:,} | {check:.2f} | {embed:.1f} | {check / embed:.2%} |",
    ]


def table_cost(root: Path, repeats: int) -> list[str]:
    """The table digests' cost: writing and reading a table (Parquet and CSV) with their SHA-256
    recorded and checked against the same without, at the sizes a study writes: CPU time of this
    process (user + sys; wall time is noise on a shared machine), alternating, median of ``repeats``."""
    import numpy as np
    import pandas as pd

    from tunnelscope.io import atomic_path, check_digest, read_csv, read_table, write_table

    def plain_write(df, parquet, csv):
        with atomic_path(parquet) as tmp:
            df.to_parquet(tmp, index=False, write_page_checksum=True)
        with atomic_path(csv) as tmp:
            df.to_csv(tmp, index=False)

    def plain_read(parquet, csv):
        return pd.read_parquet(parquet, page_checksum_verification=True), pd.read_csv(csv)

    def digest_read(parquet, csv):
        return read_table(parquet), read_csv(csv)

    rng = np.random.default_rng(0)
    sizes = {  # what a study writes: a probe's layer table, the aggregate curves, predictions
        "20 x 10 (a probe table)": pd.DataFrame(rng.random((20, 10)), columns=[f"c{k}" for k in range(10)]),
        "10,000 x 20 (aggregate curves)": pd.DataFrame(rng.random((10_000, 20)), columns=[f"c{k}" for k in range(20)]),
        "50,000 x 21 int16 (predictions)": pd.DataFrame(
            rng.integers(0, 1000, (50_000, 21), dtype=np.int16), columns=[f"c{k}" for k in range(21)]
        ),
    }
    rows = [
        "| table (rows x columns) | Parquet + CSV bytes | write + read, plain (CPU ms) "
        "| with digests recorded and checked (CPU ms) | digests' cost (CPU ms) |",
        "|---|---|---|---|---|",
    ]
    for name, df in sizes.items():
        parquet, csv = root / "t.parquet", root / "t.csv"
        times = {key: [] for key in ("plain write", "digest write", "plain read", "digest read")}
        for _ in range(repeats):  # alternating, so load changes hit both alike
            for key, fn in (("plain write", plain_write), ("digest write", write_table)):
                start = time.process_time()
                fn(df, str(parquet), str(csv))
                times[key].append(time.process_time() - start)
            for key, fn in (("plain read", plain_read), ("digest read", digest_read)):
                start = time.process_time()
                fn(parquet, csv)
                times[key].append(time.process_time() - start)
        check_digest(parquet)
        ms = {key: 1000 * sorted(v)[len(v) // 2] for key, v in times.items()}
        plain, digest = ms["plain write"] + ms["plain read"], ms["digest write"] + ms["digest read"]
        size = parquet.stat().st_size + csv.stat().st_size
        rows.append(f"| {name} | {size:,} | {plain:.1f} | {digest:.1f} | {digest - plain:+.1f} |")
    return rows


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--kills", type=int, default=12, help="SIGKILLs, spread over the heavy rules (default 12)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill delays")
    p.add_argument("--damage", nargs="+", choices=list(FILES), metavar="KIND", help="damage only these file kinds")
    p.add_argument("--cost", type=float, metavar="MB", help="only the checksum cost, on a streamed store of MB")
    p.add_argument(
        "--table-cost", type=int, metavar="N", help="only the table digests' cost, median of N writes and reads"
    )
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_faults.") as tmp:
        root = Path(tmp)
        if args.smoke:
            rows = smoke(root / "smoke")
            title = "Fault matrix, smoke (library readers)"
        elif args.table_cost:
            rows = table_cost(root, args.table_cost)
            title = "Table digests' cost: writes and reads with and without the SHA-256 sidecar"
        elif args.cost:
            rows = cost(root, args.cost)
            title = "Checksum cost: a streamed store's CRC-32 pass against its embed"
        else:
            rows = matrix(root, args.kills, args.seed, args.damage or list(FILES))
            title = "Fault matrix: SIGKILLs and damaged files of a one-cell study"
    report(title, rows, args)


if __name__ == "__main__":
    main()
