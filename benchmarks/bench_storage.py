"""Storage: reading one layer's embeddings from Parquet into float32 vs np.load from .npy.

Targets (issue 6): at most 3x np.load of the same float32 array (warm cache); the Parquet file no
larger than the raw float16 bytes of the vectors.
"""

import os
import tempfile

import numpy as np

from common import best_of, parser, report
from inmemory import write_embeddings
from tunnelscope.features.store import read_embeddings


def main():
    p = parser(__doc__)
    p.add_argument("--rows", type=int, default=50000)
    p.add_argument("--dims", type=int, nargs="+", default=[12, 256, 2048])
    args = p.parse_args()
    if args.smoke:
        args.rows, args.dims = 100, [8]
    rng = np.random.default_rng(0)
    lines = [
        f"{args.rows} rows; vectors are ReLU-like features (half zeros, log-normal magnitudes), stored float16",
        "",
        "| dim | np.load f32 (ms) | Parquet -> f32 (ms) | read ratio | Parquet bytes / raw f16 bytes |",
        "|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for dim in args.dims:
            x = (np.maximum(rng.normal(size=(args.rows, dim)), 0) * rng.lognormal(size=(1, dim))).astype(np.float16)
            npy, pq = os.path.join(tmp, f"{dim}.npy"), os.path.join(tmp, f"{dim}.parquet")
            np.save(npy, x.astype(np.float32))
            write_embeddings(
                pq,
                x,
                rng.integers(0, 100, args.rows),
                np.where(np.arange(args.rows) % 5, "train", "test"),
                np.arange(args.rows),
                {"layer": 1},
            )
            np.load(npy), read_embeddings(pq)  # warm the page cache
            t_npy = best_of(lambda: np.load(npy), 5)
            t_pq = best_of(lambda: read_embeddings(pq), 5)
            size = os.path.getsize(pq) / x.nbytes
            lines.append(f"| {dim} | {1000 * t_npy:.1f} | {1000 * t_pq:.1f} | {t_pq / t_npy:.2f}x | {size:.2f} |")
    report("Embedding storage: Parquet vs .npy", lines, args)


if __name__ == "__main__":
    main()
