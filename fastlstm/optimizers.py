"""Keras 3 optimizers (`fastlstm.optimizers.Adam(learning_rate=...)`, ...); see fastlstm/training/optimizers.py."""
from .training.optimizers import SGD, Adam, Optimizer, RMSprop, get  # noqa: F401

__all__ = ["Optimizer", "SGD", "Adam", "RMSprop", "get"]
