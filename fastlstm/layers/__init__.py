"""Keras-style layers (Keras 3 constructor arguments and defaults)."""
from .base import Input, Layer, SymbolicTensor
from .core import (Activation, ActivityRegularization, Dense, Dropout, Embedding, GaussianDropout, GaussianNoise,
                   InputLayer, Masking, SpatialDropout1D, TimeDistributed)
from .recurrent import GRU, LSTM, RNN, Bidirectional, SimpleRNN
from .conv import AveragePooling1D, Conv1D, GlobalAveragePooling1D, GlobalMaxPooling1D, MaxPooling1D
from .merging import Add, Average, Concatenate, Maximum, Minimum, Multiply, Subtract
from .normalization import BatchNormalization, LayerNormalization
from .ops import NotEqual, OpLayer
from .reshaping import Cropping1D, Flatten, Permute, RepeatVector, Reshape, UpSampling1D, ZeroPadding1D

__all__ = ["Input", "Layer", "SymbolicTensor", "Activation", "ActivityRegularization", "Dense", "Dropout",
           "Embedding", "GaussianDropout", "GaussianNoise", "InputLayer", "Masking", "SpatialDropout1D",
           "TimeDistributed", "GRU", "LSTM", "RNN", "Bidirectional", "SimpleRNN",
           "Conv1D", "MaxPooling1D", "AveragePooling1D", "GlobalMaxPooling1D", "GlobalAveragePooling1D",
           "BatchNormalization", "LayerNormalization", "Concatenate", "Add", "Subtract", "Multiply", "Average",
           "Maximum", "Minimum", "RepeatVector", "Flatten", "Reshape", "Permute", "ZeroPadding1D", "Cropping1D",
           "UpSampling1D", "NotEqual", "OpLayer"]
