"""Keras 3 losses (`fastlstm.losses.BinaryCrossentropy(from_logits=...)`, ...); see fastlstm/training/losses.py."""
from .training.losses import (MAE, MSE, BinaryCrossentropy, CategoricalCrossentropy, Loss, MeanAbsoluteError,  # noqa: F401
                              MeanSquaredError, SparseCategoricalCrossentropy, binary_crossentropy,
                              categorical_crossentropy, get, mae, mean_absolute_error, mean_squared_error, mse,
                              sparse_categorical_crossentropy)

__all__ = ["Loss", "BinaryCrossentropy", "CategoricalCrossentropy", "SparseCategoricalCrossentropy",
           "MeanSquaredError", "MeanAbsoluteError", "binary_crossentropy", "categorical_crossentropy",
           "sparse_categorical_crossentropy", "mean_squared_error", "mean_absolute_error", "mse", "mae", "get"]
