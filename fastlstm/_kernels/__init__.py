"""Kernel backends, registered by name. Each backend module exposes the same four functions:

    lstm_forward, lstm_backward      (contract: lstm_ref.py)
    gru_forward,  gru_backward       (contract: gru_ref.py)

`get_backend(name)` returns a namespace with those four (cython and numba also have LSTMStepper, GRUStepper and
Packed64, batch-1 streaming steps over packed weights, and WeightPacks, packed weights kept across forward calls
(kernel_kw); cython also ChainStepper, compiled batch-1 chain steps). "auto" picks cython
when the extension is built, else numba; a backend asked for by name that is not available raises ImportError.
"""
import importlib
import importlib.util
import os
import types

from .. import config

NAMES = ("reference", "numba", "cython")
_MODULES = {
    "reference": ("fastlstm._kernels.lstm_ref", "fastlstm._kernels.gru_ref"),
    "numba": ("fastlstm._kernels.lstm_numba", "fastlstm._kernels.gru_numba"),
    "cython": ("fastlstm._kernels.lstm_cy", "fastlstm._kernels.gru_cy"),
}
_HOW_TO_BUILD = {
    "cython": "the Cython extension is not built; build it with `pip install .` (needs gcc, Cython, numpy, scipy) "
              "or `python setup.py build_ext --inplace`",
    "numba": "numba is not installed; `pip install numba`",
}
_cache = {}


def _preload_cython_blas():
    """Load scipy.linalg.cython_blas on its own, so the Cython kernels' cimport of it does not import the whole
    scipy.linalg package (about 0.3-0.6 s that the first predict would otherwise pay)."""
    import sys
    if "scipy.linalg.cython_blas" in sys.modules:
        return
    try:
        spec = importlib.util.find_spec("scipy")
        folder = os.path.join(spec.submodule_search_locations[0], "linalg")
        so = next(f for f in os.listdir(folder) if f.startswith("cython_blas.") and f.endswith((".so", ".pyd")))
        blas_spec = importlib.util.spec_from_file_location("scipy.linalg.cython_blas", os.path.join(folder, so))
        module = importlib.util.module_from_spec(blas_spec)
        sys.modules[blas_spec.name] = module
        blas_spec.loader.exec_module(module)
    except Exception:  # noqa: BLE001 - fall back to the normal import
        sys.modules.pop("scipy.linalg.cython_blas", None)


def get_backend(name="auto"):
    """The kernel namespace for `name` ("auto", "cython", "numba", "reference")."""
    if name == "auto":
        return get_backend(auto_name())
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}; expected one of 'auto', {', '.join(map(repr, NAMES))}")
    if name not in _cache:
        if name == "cython":
            _preload_cython_blas()
        try:
            lstm_mod, gru_mod = (importlib.import_module(m) for m in _MODULES[name])
        except ImportError as e:
            raise ImportError(f"backend {name!r} is not available: {_HOW_TO_BUILD.get(name, e)} ({e})") from e
        _cache[name] = types.SimpleNamespace(
            name=name, lstm_forward=lstm_mod.lstm_forward, lstm_backward=lstm_mod.lstm_backward,
            gru_forward=gru_mod.gru_forward, gru_backward=gru_mod.gru_backward)
        if name == "numba":      # recurrent weights packed once per layer; batch-1 streaming steps (stream.py)
            from . import step_numba
            from ._numba_common import KeptPanels
            _cache[name].WeightPacks = KeptPanels
            if step_numba.AVAILABLE:
                _cache[name].LSTMStepper = step_numba.LSTMStepper
                _cache[name].GRUStepper = step_numba.GRUStepper
                _cache[name].Packed64 = step_numba.Packed64
        if name == "cython":     # batch-1 streaming steps over packed weights (stream.py)
            from . import _blas
            _cache[name].LSTMStepper = lstm_mod.LSTMStepper
            _cache[name].GRUStepper = gru_mod.GRUStepper
            _cache[name].Packed64 = _blas.Packed64
            _cache[name].WeightPacks = _blas.WeightPacks
            try:                 # compiled Embedding -> recurrent -> Dense chain steps (stream.py)
                from .chain_cy import ChainStepper
                _cache[name].ChainStepper = ChainStepper
            except ImportError:
                pass
    return _cache[name]


def kernel_kw(kernels, holder):
    """Keyword arguments for kernels.lstm_forward / gru_forward: {"packs": the backend's kept packed weights (Cython:
    _blas.WeightPacks; Numba: _numba_common.KeptPanels), kept in `holder`, "threads": config.kernel_threads()}, or
    {} for the reference. `holder` is a dict the caller drops whenever its weights change (a layer's cast weights),
    since the packed copies are made once from the arrays it passes."""
    make = getattr(kernels, "WeightPacks", None)
    if make is None:
        return {}
    key = ("packs", kernels.name)
    packs = holder.get(key)
    if packs is None:
        packs = holder[key] = make()
    return {"packs": packs, "threads": config.kernel_threads()}


def cython_built():
    """True when the compiled extension modules import."""
    _preload_cython_blas()
    try:
        importlib.import_module("fastlstm._kernels.lstm_cy")
        importlib.import_module("fastlstm._kernels.gru_cy")
        return True
    except ImportError:
        return False


def numba_installed():
    return importlib.util.find_spec("numba") is not None


def auto_name():
    """What "auto" resolves to: cython whenever built (no JIT on the default path), else numba, else reference."""
    if cython_built():
        return "cython"
    if numba_installed():
        return "numba"
    return "reference"


def available():
    """Names of the backends that can be used here."""
    out = ["reference"]
    if numba_installed():
        out.append("numba")
    if cython_built():
        out.append("cython")
    return out


def batch_first(x_tm):
    """The C-contiguous (B, T, I) array of which x_tm (T, B, I) is the transposed view, for the kernels'
    batch_major forward (no time-major copy); None when x_tm is C-contiguous itself or some other view."""
    if x_tm.flags.c_contiguous:
        return None
    x = x_tm.transpose(1, 0, 2)
    return x if x.flags.c_contiguous else None
