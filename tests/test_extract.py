import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from inmemory import embed_images, to_input, write_embeddings
from tunnelscope.features.store import read_embeddings
from tunnelscope.models.build import build_model, probe_points
from tunnelscope.models.capture import pool


def test_in_place_relu_after_the_conv_does_not_change_the_capture():
    # VGGm's ReLU is in place right after BN; the conv output captured must keep its negatives.
    model = build_model("vggm11", 5, 0.125).eval()
    images = np.random.default_rng(1).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    captured = embed_images(model, probe_points(model), images, ["avg1x1"], dtype=np.float32)
    assert (captured[(1, "avg1x1")] < 0).any()


def test_pooling_rules():
    t = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    assert pool(t, "avg2x2").shape == (2, 12)
    assert torch.allclose(pool(t, "avg2x2"), F.adaptive_avg_pool2d(t, 2).flatten(1))
    small = torch.randn(2, 5, 1, 1)
    assert torch.equal(pool(small, "avg2x2"), small.flatten(1))  # already <= 2x2: as is
    assert torch.allclose(pool(t, "avg1x1"), t.mean((2, 3)))
    tokens = torch.randn(2, 7, 6)
    assert torch.allclose(pool(tokens, "avg2x2"), tokens.mean(1))
    assert torch.allclose(pool(tokens, "token_mean", prefix_tokens=1), tokens[:, 1:].mean(1))
    assert torch.equal(pool(tokens, "cls", prefix_tokens=1), tokens[:, 0])
    assert pool(t, "avg4x4").shape == (2, 3 * 16)
    with pytest.raises(ValueError, match="class token"):
        pool(tokens, "cls")
    with pytest.raises(ValueError, match="'avg3'"):
        pool(t, "avg3")


def test_several_poolings_from_one_forward():
    model = build_model("vggm11", 5, 0.125).eval()
    calls = []
    model.features[0].register_forward_hook(lambda m, a, o: calls.append(1))
    images = np.zeros((3, 32, 32, 3), dtype=np.uint8)
    out = embed_images(model, probe_points(model), images, ["avg2x2", "avg1x1", "avg4x4"], batch_size=8)
    assert len(calls) == 1  # one forward pass for all three poolings
    assert (
        out[(3, "avg2x2")].shape == (3, 16 * 4)
        and out[(3, "avg1x1")].shape == (3, 16)
        and out[(3, "avg4x4")].shape == (3, 16 * 16)
    )


def test_parquet_round_trip_keeps_vectors_and_metadata(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(9, 12)).astype(np.float16)
    labels = np.arange(9) % 3
    splits = np.array(["train"] * 6 + ["test"] * 3)
    path = tmp_path / "layer_001.parquet"
    write_embeddings(path, vectors, labels, splits, np.arange(9), {"layer": 1, "layer_name": "features.0"})
    meta, back, back_labels, back_splits = read_embeddings(path)
    assert meta["layer"] == 1 and meta["dim"] == 12 and meta["dtype"] == "float16"
    assert back.dtype == np.float32 and np.array_equal(back, vectors.astype(np.float32))
    assert back_labels.tolist() == labels.tolist() and back_splits.tolist() == splits.tolist()


def test_parquet_round_trip_float32_over_several_row_groups(tmp_path):
    vectors = np.random.default_rng(1).normal(size=(4500, 1024)).astype(np.float32)
    path = tmp_path / "layer_002.parquet"
    write_embeddings(path, vectors, np.zeros(4500, int), np.full(4500, "train"), np.arange(4500), {"layer": 2})
    assert pq.ParquetFile(path).metadata.num_row_groups >= 2  # decoded on parallel threads
    meta, back, _, _ = read_embeddings(path)
    assert meta["dtype"] == "float32" and np.array_equal(back, vectors)


def test_a_file_with_a_list_column_is_refused_by_name(tmp_path):
    """Early versions stored the vectors as a list column; such a file is named, not misread."""
    vectors = np.arange(12, dtype=np.float16).reshape(3, 4)
    splits = pa.array(["train", "train", "test"]).dictionary_encode()
    table = pa.table(
        {
            "sample_id": [0, 1, 2],
            "split": splits,
            "label": pa.array([0, 1, 0], pa.int32()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 4),
        }
    )
    path = tmp_path / "layer_001.parquet"
    pq.write_table(table.replace_schema_metadata({b"tunnelscope": b'{"dim": 4, "dtype": "float16"}'}), path)
    with pytest.raises(RuntimeError, match="layer_001.parquet.*'embedding' is fixed_size_list"):
        read_embeddings(path)


def test_corrupt_embedding_file_is_named(tmp_path):
    path = tmp_path / "layer_001.parquet"
    path.write_bytes(b"not parquet")
    with pytest.raises(RuntimeError, match="layer_001.parquet"):
        read_embeddings(path)


class _Reused(torch.nn.Module):
    """Applies the same conv twice: a reused module."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(torch.relu(self.conv(x)))


def test_a_reused_module_is_captured_at_its_first_call():
    from tunnelscope.models.points import ProbePoint

    model = _Reused().eval()
    points = [ProbePoint(1, "conv", "output"), ProbePoint(2, "conv", "input")]
    images = np.random.default_rng(0).integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
    out = embed_images(model, points, images, ["avg1x1"], dtype=np.float32)
    with torch.no_grad():
        x = to_input(torch.from_numpy(images))
        first = model.conv(x)
    np.testing.assert_allclose(out[(1, "avg1x1")], first.mean((2, 3)).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[(2, "avg1x1")], x.mean((2, 3)).numpy(), rtol=1e-5, atol=1e-6)


def test_capture_side_can_be_switched():
    model = build_model("vggm11", 5, 0.125)
    inputs = probe_points(model, "input")
    assert {p.side for p in inputs} == {"input"} and len(inputs) == 10
    with pytest.raises(ValueError):
        probe_points(model, "middle")


def test_the_store_owns_the_layer_file_layout(tmp_path):
    from tunnelscope.features.store import layer_files, layer_path

    assert layer_path(tmp_path, "avg2x2", 7) == tmp_path / "avg2x2" / "layer_007.parquet"
    for layer in (10, 2):
        write_embeddings(
            layer_path(tmp_path, "avg2x2", layer),
            np.zeros((2, 3), np.float16),
            np.zeros(2, int),
            np.array(["train", "test"]),
            np.arange(2),
            {"layer": layer},
        )
    assert layer_files(tmp_path, "avg2x2") == [layer_path(tmp_path, "avg2x2", 2), layer_path(tmp_path, "avg2x2", 10)]
    with pytest.raises(FileNotFoundError, match="pooling avg1x1"):
        layer_files(tmp_path, "avg1x1")


class _Event:
    """A stand-in for a CUDA event: records when the copies behind it were waited for."""

    def __init__(self, log: list, index: int):
        self.log, self.index = log, index

    def synchronize(self):
        self.log.append(f"sync {self.index}")


def test_lagged_host_copies_yield_what_immediate_copies_yield_one_batch_later():
    """The CUDA path of embed_batches (copies queued, each batch handed over once the next one's
    forward is queued and its event waited for), run on the CPU without pinned memory: the same
    arrays, bitwise (float16 rounding included), in the same order, one batch late."""
    from tunnelscope.features.extract import HostCopies, embed_batches

    model = build_model("vggm11", 5, 0.125).eval()
    points = probe_points(model)
    images = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8))
    log, events = [], []

    def batches():
        for k in range(0, 10, 4):
            log.append(f"forward {k // 4}")
            yield images[k : k + 4]

    def record():
        events.append(_Event(log, len(events)))
        return events[-1]

    def run(copies):
        out = []
        for vectors in embed_batches(model, points, batches(), ["avg2x2", "avg1x1"], np.float16, copies=copies):
            log.append(f"yield {len(out)}")
            out.append(vectors)
        return out

    immediate = run(None)  # the CPU's own choice: HostCopies.for_device
    assert log == ["forward 0", "yield 0", "forward 1", "yield 1", "forward 2", "yield 2"]
    log.clear()
    lagged = run(HostCopies(np.float16, lag=True, record=record))
    assert log == ["forward 0", "forward 1", "sync 0", "yield 0", "forward 2", "sync 1", "yield 1", "sync 2", "yield 2"]
    assert len(lagged) == len(immediate) == 3
    for ours, theirs in zip(lagged, immediate):
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert ours[key].dtype == np.float16 and np.array_equal(ours[key], theirs[key]), key


def test_host_copies_cast_as_numpy_casts_and_pin_only_for_cuda():
    """float32 -> float16 on the device (before the copy, half the bytes) rounds as numpy's
    astype on the host did: ties, overflow to infinity, subnormals."""
    from tunnelscope.features.extract import HostCopies

    values = torch.tensor([1.0, 65504.0, 65520.0, -70000.0, 1e-8, 3e-5, 1 + 2**-11, 1 + 3 * 2**-11, 0.1])
    values = torch.cat([values, torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 100])
    copies = HostCopies(np.float16, lag=True, record=lambda: _Event([], 0))
    assert copies.push({"a": values}) == []
    (ours,) = copies.drain()
    with np.errstate(over="ignore"):
        assert np.array_equal(ours["a"], values.numpy().astype(np.float16))
    assert copies.drain() == []
    cpu = HostCopies.for_device(torch.device("cpu"), np.float32)
    cuda = HostCopies.for_device(torch.device("cuda:1"), "float16")  # built, never run, without a GPU
    assert (cpu.lag, cpu.pin) == (False, False) and (cuda.lag, cuda.pin) == (True, True)
    assert cuda.dtype == np.float16 and cuda.record is not None
