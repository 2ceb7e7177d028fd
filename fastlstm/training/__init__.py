"""Training: losses, optimizers, metrics, callbacks and the BPTT trainer behind Model.compile/fit/evaluate."""
