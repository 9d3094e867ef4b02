"""The study: the config (validated against its schema), the cells and every stage's params."""
