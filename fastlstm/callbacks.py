"""Keras 3 callbacks for `fit` (`fastlstm.callbacks.EarlyStopping(...)`, ...); see fastlstm/training/callbacks.py."""
from .training.callbacks import (Callback, EarlyStopping, History, LambdaCallback, ModelCheckpoint,  # noqa: F401
                                 TerminateOnNaN)

__all__ = ["Callback", "History", "EarlyStopping", "ModelCheckpoint", "TerminateOnNaN", "LambdaCallback"]
