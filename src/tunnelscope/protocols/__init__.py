"""Protocols beside the paper's: zero-shot transfer, solvers side by side, continual learning."""
