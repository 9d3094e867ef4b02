"""Per-cell measurements: tunnel metrics, layer statistics, t-SNE coordinates, seed summaries."""
