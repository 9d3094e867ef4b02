"""The pretrain stage: the training loop, its schedule and the checkpoints it writes."""
