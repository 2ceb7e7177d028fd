"""Keras-style layers (Keras 3 constructor arguments and defaults)."""
from .base import Input, Layer, SymbolicTensor
from .core import (Activation, ActivityRegularization, Dense, Dropout, Embedding, GaussianDropout, GaussianNoise,
                   InputLayer, Masking, SpatialDropout1D, TimeDistributed)
from .recurrent import GRU, LSTM, RNN, Bidirectional, SimpleRNN

__all__ = ["Input", "Layer", "SymbolicTensor", "Activation", "ActivityRegularization", "Dense", "Dropout",
           "Embedding", "GaussianDropout", "GaussianNoise", "InputLayer", "Masking", "SpatialDropout1D",
           "TimeDistributed", "GRU", "LSTM", "RNN", "Bidirectional", "SimpleRNN"]
