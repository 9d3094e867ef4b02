"""docs/outputs.md's recipes for reading an embedding file with pandas, polars and duckdb, run as written."""

import re

import numpy as np
import pytest

from conftest import REPO
from inmemory import write_embeddings
from tunnelscope.features.store import read_embeddings

RECIPE = re.compile(r"<!-- embeddings-recipe: (\w+) -->\n```python\n(.*?)```", re.DOTALL)
READERS = ["pandas", "polars", "duckdb"]


def _recipes() -> dict[str, str]:
    return dict(RECIPE.findall((REPO / "docs/outputs.md").read_text()))


def test_the_readme_has_a_recipe_per_reader():
    assert sorted(_recipes()) == sorted(READERS)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("reader", READERS)
def test_recipe_reads_ids_labels_split_and_vectors(reader, dtype, tmp_path, monkeypatch):
    code = _recipes()[reader]
    path = tmp_path / re.search(r'^path = "(.+)"$', code, re.MULTILINE).group(1)
    rng = np.random.default_rng(7)
    n, dim = 2500, 19  # more rows than a row group holds at the minimum size: several groups
    vectors = rng.standard_normal((n, dim)).astype(dtype)
    labels, ids = rng.integers(0, 10, n), rng.permutation(n) * 3 + 1
    splits = np.where(rng.random(n) < 0.25, "test", "train")
    write_embeddings(path, vectors, labels, splits, ids, {"layer": 3, "layer_name": "features.7", "pooling": "avg2x2"})
    monkeypatch.chdir(tmp_path)
    names = {}
    exec(compile(code, f"docs/outputs.md ({reader} recipe)", "exec"), names)
    np.testing.assert_array_equal(names["ids"], ids)
    np.testing.assert_array_equal(names["labels"], labels)
    np.testing.assert_array_equal(names["split"], splits)
    X = names["X"]
    assert X.shape == (n, dim) and X.dtype == np.float32
    np.testing.assert_array_equal(X, vectors.astype(np.float32))
    np.testing.assert_array_equal(X, read_embeddings(path)[1])  # what the probes read
