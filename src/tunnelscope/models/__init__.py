"""Backbones: one module per architecture family, probe points, capture hooks and published weights."""
