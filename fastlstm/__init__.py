"""fastlstm: fast CPU inference and training for LSTM and GRU networks.

Fused Cython/Numba kernels (forward and backward), loaders for Keras (.keras, .h5, .weights.h5) and ONNX files,
and a thin Keras-like model class. See design.md for the API contract.
"""
__version__ = "0.1.0"

from . import config, layers  # noqa: E402
from .backend import get_backend, info, set_backend, set_num_threads  # noqa: E402
from .errors import ModelLoadError  # noqa: E402
from .initializers import set_random_seed  # noqa: E402
from .layers.base import Input  # noqa: E402
from .loaders import load  # noqa: E402
from .model import Model, Sequential  # noqa: E402
from . import callbacks, losses, optimizers  # noqa: E402
from .stream import StreamSession  # noqa: E402

__all__ = ["layers", "load", "Model", "Sequential", "Input", "set_backend", "get_backend", "set_num_threads",
           "info", "ModelLoadError", "set_random_seed", "__version__",
           "losses", "optimizers", "callbacks", "StreamSession"]
