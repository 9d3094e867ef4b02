"""Figures and tables of cells, the grid and the paper build; captions shared with the report."""
