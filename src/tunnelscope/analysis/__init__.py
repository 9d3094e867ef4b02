"""Cross-grid analysis: paired comparisons, SHAP slopes, the paper's released table, tunnel length."""
