"""t-SNE of one cell's ID test embeddings at every probed layer (Harun et al., Fig. 4).

The same images (a seeded choice of classes and of test images per class) at every layer, so
the panels differ only in the layer; scikit-learn's TSNE, seeded, PCA-initialised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tunnelscope.features.store import layer_files, read_embeddings
from tunnelscope.registry import CELL_VARIABLES

SAMPLE_STREAM = 1618  # random stream of the class and image choice (seeded by tsne.tsne_seed)
# Exact gradients below this many points: for the few hundred points of a figure they are
# several times faster than Barnes-Hut's tree (0.7 vs 2.9 s per layer for 250 points, here).
EXACT_BELOW = 1000


def choose_rows(labels: np.ndarray, splits: np.ndarray, classes: int, per_class: int, seed: int) -> np.ndarray:
    """Boolean mask of the shown test rows: ``classes`` seeded classes, ``per_class`` each."""
    rng = np.random.default_rng([seed, SAMPLE_STREAM])
    test = splits == "test"
    present = np.unique(labels[test])
    chosen = np.sort(rng.choice(present, min(classes, len(present)), replace=False))
    keep = np.zeros(len(labels), dtype=bool)
    for c in chosen:
        rows = np.flatnonzero(test & (labels == c))
        keep[np.sort(rng.choice(rows, min(per_class, len(rows)), replace=False))] = True
    return keep


def embed_2d(x: np.ndarray, perplexity: float, seed: int, max_iter: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    n = len(x)
    tsne = TSNE(
        n_components=2,
        perplexity=min(perplexity, (n - 1) / 3),  # sklearn needs perplexity < n; 3 perplexities of neighbours
        init="pca",
        random_state=seed,
        method="exact" if n < EXACT_BELOW else "barnes_hut",
        max_iter=max_iter,
    )
    return tsne.fit_transform(np.asarray(x, dtype=np.float64)).astype(np.float32)


def tsne_layers(embed_dir: str | Path, settings: dict) -> pd.DataFrame:
    """One row per (layer, shown image): layer, layer_name, row (its index in the layer file's
    shown rows), label, class_name (the dataset's name of the class, else "class N"), x, y."""
    files = layer_files(embed_dir, settings["pooling"])
    keep = None

    def shown(labels, splits):  # every layer file holds the same samples in the same order
        nonlocal keep
        if keep is None:
            keep = choose_rows(labels, splits, settings["classes"], settings["per_class"], settings["tsne_seed"])
        return keep

    front = {k: settings[k] for k in CELL_VARIABLES}
    parts = []
    for path in files:
        meta, x, labels, _ = read_embeddings(path, select=shown)
        xy = embed_2d(x, settings["perplexity"], settings["tsne_seed"], settings["max_iter"])
        names = meta.get("class_names")
        parts.append(
            pd.DataFrame(
                {
                    **front,
                    "layer": meta["layer"],
                    "layer_name": meta["layer_name"],
                    "row": np.arange(len(x)),
                    "label": labels,
                    "class_name": [names[c] if names else f"class {c}" for c in labels],
                    "x": xy[:, 0],
                    "y": xy[:, 1],
                }
            )
        )
    return pd.concat(parts, ignore_index=True)
