"""Checksums where data is read, and ``tunnelscope verify`` (issue 27): a changed byte in a store
chunk, a checkpoint or an embedding file is named by the job that reads it and by verify, never
used, and the printed advice rebuilds it, and so the tables made from it, bitwise equal to an
undamaged run's."""

import copy
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import CORES, TINY, snakemake_cmd
from inmemory import write_arrays, write_embeddings
from tunnelscope.cli import main
from tunnelscope.data.store import ImageStore
from tunnelscope.features.store import read_embeddings, write_checksums
from tunnelscope.integrity import REBUILD_ENV, DamageError, rebuild_command
from tunnelscope.io import read_table, write_table
from tunnelscope.models.checkpoints import load_backbone, save_backbone

BASE = "snakemake --cores 2 --configfile /study/tiny.yaml"


@pytest.fixture(autouse=True)
def rebuild_env(monkeypatch):
    monkeypatch.setenv(REBUILD_ENV, BASE)


def flip(path, offset: int, n: int = 256) -> None:
    """Same-size damage: ``n`` bytes from ``offset`` inverted (negative: from the end)."""
    size = os.path.getsize(path)
    offset = offset % size
    with open(path, "r+b") as fh:
        fh.seek(offset)
        data = fh.read(n)
        fh.seek(offset)
        fh.write(bytes(b ^ 0xFF for b in data))


def assert_named(exc_info, path, target) -> None:
    message = str(exc_info.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    assert message.endswith(f"to rebuild it run: {BASE} --forcerun {target}"), message


def small_store(root, n=64):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)
    return write_arrays(
        Path(root) / "toy", {"train": (images, np.arange(n) % 4), "test": (images[:8], np.arange(8) % 4)}, 4, 8
    )


def test_a_changed_byte_in_a_store_chunk_is_named_before_any_image_of_it_is_used(tmp_path, monkeypatch):
    monkeypatch.setattr("tunnelscope.data.store.CHUNK_BYTES", 8 * 8 * 3 * 16)  # 4 chunks of 16 images
    import tunnelscope.data.store as store_module

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(64, 8, 8, 3), dtype=np.uint8)
    shapes = np.tile([8, 8], (64, 1))
    plan = store_module.SplitPlan(
        np.arange(64) % 4, shapes, lambda a, b: images[a:b], store_module.byte_chunks(shapes, 8 * 8 * 3 * 16)
    )
    meta = {"dataset": "toy", "num_classes": 4, "resolution": 8, "shorter_side": 8, "native": True}
    store_module.write_store(tmp_path / "toy", meta, {"train": plan})
    assert len(ImageStore(tmp_path / "toy").meta["splits"]["train"]["chunks"]) == 4
    pixels = tmp_path / "toy" / "train.pixels.npy"
    flip(pixels, os.path.getsize(pixels) - 20 * 8 * 8 * 3, 1)  # one byte of image 44, chunk 2
    split = ImageStore(tmp_path / "toy").splits["train"]
    assert np.array_equal(split.image(3), images[3])  # chunk 0 is intact and read
    with pytest.raises(DamageError, match="chunk 2 ") as exc:
        split.image(40)
    assert_named(exc, pixels, tmp_path / "toy")
    with pytest.raises(DamageError, match="chunk 2 "):
        ImageStore(tmp_path / "toy").check()


def test_a_truncated_store_or_a_changed_store_json_is_named(tmp_path):
    store = small_store(tmp_path)
    pixels = store.root / "train.pixels.npy"
    with open(pixels, "r+b") as fh:
        fh.truncate(os.path.getsize(pixels) - 10)
    with pytest.raises(DamageError, match="truncated") as exc:
        ImageStore(store.root)
    assert_named(exc, pixels, store.root)
    store = small_store(tmp_path / "again")
    meta = store.root / "store.json"
    meta.write_text(meta.read_text().replace('"num_classes": 4', '"num_classes": 5'))
    with pytest.raises(DamageError, match="CRC-32") as exc:
        ImageStore(store.root)
    assert_named(exc, meta, store.root)


def tiny_model():
    from tunnelscope.models.build import build_model

    torch.manual_seed(0)
    return build_model("vggm11", 4, 0.125, 32)


META = {"params": {"arch": "vggm11", "resolution": 32, "model": {"width": 0.125}}, "num_classes": 4}


@pytest.mark.parametrize("where", ["weights", "facts"])
def test_a_changed_checkpoint_is_named_and_not_loaded(tmp_path, where):
    path = tmp_path / "checkpoint.safetensors"
    save_backbone(tiny_model(), path, META)
    load_backbone(str(path))  # intact: loads
    if where == "weights":
        flip(path, -4000)
    else:  # a fact changed in the header, the JSON still valid
        data = path.read_bytes()
        path.write_bytes(data.replace(b'\\"resolution\\": 32', b'\\"resolution\\": 33', 1))
        assert path.read_bytes() != data
    with pytest.raises(DamageError) as exc:
        load_backbone(str(path))
    assert_named(exc, path, path)


def embeddings(tmp_path):
    root = tmp_path / "embeddings" / "toy"
    rng = np.random.default_rng(0)
    n = 3000
    for layer in range(2):
        write_embeddings(
            root / "avg2x2" / f"layer_{layer:03d}.parquet",
            rng.standard_normal((n, 64)).astype(np.float16),
            np.arange(n) % 4,
            np.where(np.arange(n) < 2000, "train", "test"),
            np.arange(n),
            {"layer": layer, "num_classes": 4},
        )
    write_checksums(root)
    return root


@pytest.mark.parametrize("offset", [3000, -200])  # a data page; the footer (schema and metadata)
def test_a_changed_embedding_file_is_named_and_not_read(tmp_path, offset):
    root = embeddings(tmp_path)
    path = root / "avg2x2" / "layer_001.parquet"
    read_embeddings(path)
    flip(path, offset, 16)
    with pytest.raises(DamageError) as exc:
        read_embeddings(path)
    assert_named(exc, path, root)
    read_embeddings(root / "avg2x2" / "layer_000.parquet")  # the other layer is intact


def test_page_checksums_catch_a_changed_data_page_the_digest_file_aside(tmp_path):
    root = embeddings(tmp_path)
    (root / "checksums.json").unlink()  # page checksums alone, as for a table
    path = root / "avg2x2" / "layer_000.parquet"
    flip(path, os.path.getsize(path) // 2, 16)  # in the vectors' pages
    with pytest.raises(DamageError, match="not a readable tunnelscope embedding file"):
        read_embeddings(path)
    table = tmp_path / "probe.parquet"
    write_table(pd.DataFrame({"layer": np.arange(500), "acc": np.linspace(0, 1, 500)}), table)
    flip(table, 600, 8)
    with pytest.raises(DamageError) as exc:
        read_table(table)
    assert_named(exc, table, table)


def small_table(n=20):
    return pd.DataFrame({"layer": np.arange(n), "acc": np.linspace(0, 1, n)})


def footer_metadata_offset(path) -> int:
    """Where the pandas schema (JSON) lies in a Parquet file's footer key-value metadata: bytes
    page checksums do not cover."""
    return path.read_bytes().rindex(b'"columns"')


@pytest.mark.parametrize("kind", ["parquet footer", "csv", "tex"])
def test_a_changed_table_file_is_named_by_its_reader_and_by_verify(tmp_path, kind):
    from types import SimpleNamespace

    from tunnelscope.figures.tables import write as write_tex_table
    from tunnelscope.io import check_digest, digest_path, read_csv
    from tunnelscope.verify import check_results

    write_table(small_table(), tmp_path / "t.parquet", tmp_path / "t.csv")
    write_tex_table("t", small_table(), small_table(), tmp_path / "u.csv", tmp_path / "u.tex", caption="t")
    path, read = {
        "parquet footer": (tmp_path / "t.parquet", read_table),
        "csv": (tmp_path / "t.csv", read_csv),
        "tex": (tmp_path / "u.tex", check_digest),
    }[kind]
    assert digest_path(path).read_text().split()[1] == path.name  # sha256sum's format
    read(path)  # intact
    study = SimpleNamespace(results=tmp_path, prepared=list)
    assert check_results(study) == (4, [])
    flip(path, footer_metadata_offset(path) if kind == "parquet footer" else len(path.read_bytes()) // 2, 2)
    with pytest.raises(DamageError, match="SHA-256 .* not the one recorded when written") as exc:
        read(path)
    assert_named(exc, path, path)
    checked, findings = check_results(study)
    assert checked == 4 and [(f.path, f.target) for f in findings] == [(path, path)]


def test_a_table_without_a_recorded_digest_is_read_and_a_rewrite_records_a_new_one(tmp_path):
    from tunnelscope.io import digest_path, read_csv, write_csv

    path = tmp_path / "t.csv"
    small_table().to_csv(path, index=False)  # a table tunnelscope did not write (a user's)
    assert read_csv(path).equals(small_table())
    write_csv(small_table(5), path)
    old = digest_path(path).read_text()
    write_csv(small_table(7), path)  # rewritten: the digest follows
    assert digest_path(path).read_text() != old and len(read_csv(path)) == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == [".t.csv.sha256", "t.csv"]  # nothing else left


def test_the_advice_forceruns_the_damaged_outputs():
    assert (
        rebuild_command(["out/a b", "out/c"], "snakemake --cores 1") == "snakemake --cores 1 --forcerun 'out/a b' out/c"
    )


# --- the study, end to end -------------------------------------------------------------------

CELL = "vggm11_toy_r32_none_s0"
TABLES = ["out/aggregate/curves.parquet", "out/aggregate/metrics.parquet"]


def run(workdir, *args, check=True):
    result = subprocess.run(
        snakemake_cmd(workdir, "--cores", CORES, *args), capture_output=True, text=True, timeout=900, cwd=workdir
    )
    assert not check or result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def one_cell(tmp_path_factory):
    """One cell, one OOD set of the tiny study, built to its aggregate tables."""
    workdir = tmp_path_factory.mktemp("integrity")
    config = copy.deepcopy(TINY)
    config["grid"]["augmentation"] = ["none"]
    config["ood_sets"] = ["toy-glyphs"]
    config["datasets"] = {k: v for k, v in config["datasets"].items() if k in ("toy", "toy-glyphs")}
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(config))
    run(workdir, *TABLES)
    return workdir


def verify(workdir, capsys) -> tuple[int, str]:
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        status = main(["verify", "tiny.yaml"])
    finally:
        os.chdir(cwd)
    out = capsys.readouterr()
    return status, out.out + out.err


DAMAGE = {  # the file, the job that reads it (the output it makes) and the output to rebuild
    "store": (
        "out/prepared/toy/r32/train.pixels.npy",
        f"out/cells/{CELL}/checkpoint.safetensors",
        "out/prepared/toy/r32",
    ),
    "checkpoint": (
        f"out/cells/{CELL}/checkpoint.safetensors",
        f"out/cells/{CELL}/embeddings/toy-glyphs",
        f"out/cells/{CELL}/checkpoint.safetensors",
    ),
    "embedding": (
        f"out/cells/{CELL}/embeddings/toy/avg2x2/layer_002.parquet",
        f"out/cells/{CELL}/probes/lbfgs/toy.parquet",
        f"out/cells/{CELL}/embeddings/toy",
    ),
}


def file_bytes(path: Path) -> dict[str, bytes]:
    """The bytes of a file, or of every file under a directory, by relative name."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.integration
def test_damage_is_named_by_its_reader_and_verify_and_the_advice_rebuilds_it_bitwise(one_cell, tmp_path, capsys):
    status, out = verify(one_cell, capsys)
    assert status == 0 and "all intact" in out, out
    for case, (damaged, reader, target) in DAMAGE.items():
        workdir = tmp_path / case
        shutil.copytree(one_cell, workdir, symlinks=True)
        flip(workdir / damaged, -3000 if case != "embedding" else 3000)
        # The job that reads it fails, names it and says how to rebuild it.
        failed = run(workdir, reader, "--forcerun", reader, check=False)
        assert failed.returncode != 0
        line = next(x for x in failed.stderr.splitlines() if "to rebuild it run: " in x)
        line = line[line.index(f"{damaged}: ") :]  # after the exception's class name
        assert line.startswith(f"{damaged}: ") and line.endswith(f"--forcerun {target}"), line
        advice = shlex.split(line.split("to rebuild it run: ", 1)[1])
        # verify names it too, with the same command (--cores all and the config as given aside).
        status, out = verify(workdir, capsys)
        assert status == 1 and f"{damaged}: " in out and f"--forcerun {target}" in out, out
        # Following the advice to the damaged output itself: rebuilt bitwise, so every table made
        # from it is too (a rebuild through to the tables: the kill and embed.keep tests below).
        assert advice[0] == "snakemake" and advice[-2:] == ["--forcerun", target]
        cmd = [sys.executable, "-m", "snakemake", target, *advice[1:]]  # target first: --configfile takes several
        rebuilt = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=workdir)
        assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
        assert file_bytes(workdir / target) == file_bytes(one_cell / target), f"{case}: {target} differs"
        status, out = verify(workdir, capsys)
        assert status == 0, out


def test_a_checkpoint_is_the_same_bytes_in_every_process(tmp_path):
    """safetensors writes its metadata map in a random order per process: with the digest under
    a second key, two runs' checkpoints differed in their bytes (seen in gpu_check's two runs)."""
    script = (
        "import sys, torch; sys.path.insert(0, 'tests'); from test_integrity import tiny_model, META; "
        "from tunnelscope.models.checkpoints import save_backbone; torch.manual_seed(0); "
        "save_backbone(tiny_model(), sys.argv[1], META)"
    )
    paths = [tmp_path / f"{k}.safetensors" for k in range(4)]
    for path in paths:
        subprocess.run([sys.executable, "-c", script, str(path)], check=True, cwd=Path(__file__).parents[1])
    assert len({path.read_bytes() for path in paths}) == 1
    _, meta = load_backbone(str(paths[0]))
    assert "sha256" not in meta  # the digest is checked and dropped, not handed to readers


@pytest.mark.integration
def test_a_run_killed_inside_a_probe_job_recovers_bitwise_by_following_the_printed_advice(one_cell, tmp_path):
    """One case of benchmarks/bench_faults.py's kill matrix, with its functions: the study as a
    first run finds it on reaching a probe job (that job's outputs and all made from them absent),
    SIGKILL of the whole process group as soon as the probe has logged its first layer (mid-job);
    a plain rerun stops, and following what it prints gives tables bitwise equal to the
    undamaged run's."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import bench_faults

    workdir = tmp_path / "killed"
    shutil.copytree(one_cell, workdir, symlinks=True)
    probe = f"out/cells/{CELL}/probes/lbfgs/toy-glyphs.parquet"  # the cheaper of the cell's two probes
    bench_faults.unbuild(workdir, probe)
    assert not any((workdir / t).exists() for t in [probe, *TABLES])
    log = workdir / "out" / "logs" / "probe" / f"{CELL}_toy-glyphs_lbfgs.log"
    log.unlink()  # the undamaged run's
    running = bench_faults.snakemake(workdir, *TABLES, wait=False)
    first_layer = lambda: log.exists() and " test acc " in log.read_text()  # noqa: E731
    assert bench_faults.kill_when(running, first_layer, timeout=600), "the run ended before the kill"
    assert first_layer() and not (workdir / probe).exists()  # killed inside the probe job
    rerun = bench_faults.snakemake(workdir, *TABLES)
    assert rerun.returncode != 0, "a plain rerun recovered: the advice was not needed"
    reference = {t: (one_cell / t).read_bytes() for t in TABLES}
    assert bench_faults.outcome(workdir, rerun, reference) == "advice", rerun.stderr[-3000:]
    assert (workdir / probe).exists()


@pytest.mark.integration
def test_embed_keep_false_deletes_the_embeddings_after_their_probes_and_changes_no_table(one_cell, tmp_path):
    """The one-cell study with embed.keep false, its OOD set's embed job and all made from it
    unbuilt (bench_faults.unbuild; changing keep alone reruns nothing): the run embeds, probes,
    then deletes those embeddings; every table it rebuilt is bitwise the kept run's."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import bench_faults

    workdir = tmp_path / "unkept"
    shutil.copytree(one_cell, workdir, symlinks=True)
    config = yaml.safe_load((workdir / "tiny.yaml").read_text())
    (workdir / "tiny.yaml").write_text(yaml.safe_dump({**config, "embed": {"keep": False}}))
    embeddings = workdir / "out" / "cells" / CELL / "embeddings" / "toy-glyphs"
    bench_faults.unbuild(workdir, str(embeddings.relative_to(workdir)))
    assert not embeddings.exists() and not (workdir / TABLES[0]).exists()
    started = time.time()
    rerun = run(workdir, *TABLES)
    assert "Removing temporary output" in rerun.stderr and not embeddings.exists(), rerun.stderr[-3000:]
    rebuilt = sorted(
        p.relative_to(workdir)
        for p in (workdir / "out").rglob("*")
        if p.suffix in (".parquet", ".csv", ".npz") and p.stat().st_mtime >= started
    )
    assert len(rebuilt) >= len(TABLES) + 2  # the tables and the OOD set's probes at least
    for path in rebuilt:
        assert (workdir / path).read_bytes() == (one_cell / path).read_bytes(), f"{path} differs"
