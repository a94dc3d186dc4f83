"""Training: the engine (tasks → epochs → steps), optimizers, checkpoints, run directories."""
