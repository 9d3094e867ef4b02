"""The embed stage: one forward pass per image, every layer pooled, and the Parquet embeddings store."""
