"""Scale: jobs read the prepared store without materialising it, and an embed job killed part
way leaves nothing that reads as done; its rerun writes what an uninterrupted run writes."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TESTS = Path(__file__).resolve().parent

# A job in a fresh process: pretrain (one epoch, augmentation) or embed, on the store argv[1];
# prints its peak RSS, its own plus its data-loader workers'.
JOB = """
import json, resource, sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_reliability import PARAMS, TRAINING, checkpoint_files
from tunnelscope.data.store import ImageStore
from tunnelscope.runtime import JobRuntime
stage, store, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
params = dict(PARAMS, resolution=128, model={{"width": 0.0625}}, training=dict(TRAINING, epochs=1, batch_size=32, warmup_epochs=0))
if stage == "pretrain":
    from tunnelscope.training.loop import pretrain
    pretrain(params, ImageStore(store), **checkpoint_files(out), runtime=JobRuntime(threads=2, resident_mb=0))
else:
    from tunnelscope.features.embed import embed_eval_set
    params = dict(params, eval_set="toy", pooling=["avg2x2"], side="default", dtype="float16")
    embed_eval_set(params, backbone=str(out / "ckpt.safetensors"), store=str(store), out_dir=str(out / "embeddings"), runtime=JobRuntime(batch_size=64, threads=2, resident_mb=0))
usage = resource.getrusage
print(json.dumps((usage(resource.RUSAGE_SELF).ru_maxrss + usage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024))
"""


def _tree(root: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for split, count in (("train", n), ("test", n // 4)):
        for i in range(count):
            h, w = (int(v) for v in rng.integers(150, 230, 2))
            path = root / split / f"c{i % 4}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, compress_level=0)


def _store(root: Path, n: int):
    from tunnelscope.data.prepare import prepare

    _tree(root / "tree", n)
    spec = {
        "source": "imagefolder",
        "root": str(root / "tree"),
        "seed": 0,
        "test_fraction": 0.2,
        "on_bad_image": "error",
        "layout": "split_dirs",
    }
    return prepare("toy", spec, 128, root / "store", threads=2)


def _run(stage: str, root: Path, script: Path) -> float:
    result = subprocess.run(
        [sys.executable, str(script), stage, str(root / "store"), str(root)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Two stores of non-uniform images (so they stream), the second 4x the first."""
    small, large = tmp_path_factory.mktemp("small"), tmp_path_factory.mktemp("large")
    sizes = [
        sum(s.nbytes for s in _store(root, n).splits.values()) / 2**20 for root, n in ((small, 300), (large, 1200))
    ]
    return small, large, sizes


def test_jobs_do_not_materialise_the_store(stores, tmp_path):
    """pretrain and embed on a 4x larger store: their peak memory grows by less than an
    allowance that the extra store would exceed several times over."""
    small, large, (mb_small, mb_large) = stores
    allowance = 24.0  # MB
    assert mb_large - mb_small > 3 * allowance  # the larger store outgrows the allowance several times
    script = tmp_path / "job.py"
    script.write_text(JOB.format(tests=str(TESTS)))
    for stage in ("pretrain", "embed"):
        peaks = [_run(stage, root, script) for root in (small, large)]
        assert peaks[1] - peaks[0] < allowance, (stage, peaks, mb_small, mb_large)


EMBED = """
import sys
sys.path.insert(0, {tests!r})
from test_reliability import PARAMS
from tunnelscope.features.embed import embed_eval_set
from tunnelscope.runtime import JobRuntime
params = dict(PARAMS, resolution=128, model={{"width": 0.0625}}, eval_set="toy", pooling=["avg2x2", "avg1x1"], side="default", dtype="float16")
embed_eval_set(params, backbone=sys.argv[1], store=sys.argv[2], out_dir=sys.argv[3], runtime=JobRuntime(batch_size=16, threads=2, resident_mb=0))
"""


def test_embed_killed_part_way_restarts_to_the_same_files(stores, tmp_path):
    small, _, _ = stores
    script = tmp_path / "embed.py"
    script.write_text(EMBED.format(tests=str(TESTS)))
    checkpoint, store = str(small / "ckpt.safetensors"), str(small / "store")
    assert Path(checkpoint).exists()  # written by the memory test's pretrain job
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run([sys.executable, str(script), checkpoint, store, str(full)], check=True, timeout=600)
    proc = subprocess.Popen([sys.executable, str(script), checkpoint, store, str(killed)])
    deadline = time.time() + 120
    while not list(tmp_path.glob(".killed.*.tmp/avg2x2/*.parquet")) and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(float(np.random.default_rng().uniform(0.0, 0.2)))
    proc.kill()
    proc.wait()
    assert not killed.exists(), "the run finished before it could be killed"
    subprocess.run([sys.executable, str(script), checkpoint, store, str(killed)], check=True, timeout=600)
    assert not list(tmp_path.glob(".killed.*.tmp"))  # the killed run's partial output is gone
    files = sorted(p.relative_to(full) for p in full.rglob("*.parquet"))
    assert files == sorted(p.relative_to(killed) for p in killed.rglob("*.parquet")) and len(files) == 2 * 10
    for name in files:
        assert (full / name).read_bytes() == (killed / name).read_bytes(), name
