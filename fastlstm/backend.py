"""Choosing the kernel backend and thread count; `info()` reports what is in use."""
import os
import platform

import numpy as np

from . import _kernels, config

_state = {"backend": None, "name": None}


def set_backend(name="auto"):
    """Use kernel backend `name`: "auto" (cython when built, else numba), "cython", "numba" or "reference".

    Raises
    ------
    ImportError
        The named backend is not available (the message says how to build it).
    ValueError
        Unknown name.
    """
    backend = _kernels.get_backend(name)
    _state.update(backend=backend, name=name)
    # The backend may have just loaded its own BLAS (scipy's OpenBLAS): keep it single-threaded (see _apply_threads)
    _apply_threads(config.NUM_THREADS)
    return backend.name


def get_backend():
    """The kernel namespace in use (resolved lazily from config.BACKEND on first use)."""
    b = _state["backend"]
    if b is None:
        set_backend(config.BACKEND)
        b = _state["backend"]
    return b


def set_num_threads(n):
    """Threads fastlstm may use: predict splits large batches across this many threads (the kernels release
    the GIL). BLAS itself stays single-threaded (see _apply_threads)."""
    n = int(n)
    if n < 1:
        raise ValueError(f"number of threads must be >= 1, got {n}")
    config.NUM_THREADS = n
    get_backend()          # load the backend's BLAS first, so the limit reaches it
    _apply_threads(n)


def _apply_threads(n):
    """BLAS runs single-threaded: the per-step recurrent GEMMs are too small to split, and OpenBLAS's per-call
    thread hand-off made a B=16, H=64 training step 9x slower with 2 threads than with 1 on a 2-core machine
    (61 ms vs 6.8 ms, measured 2026-11-23). Parallelism comes from splitting batch rows across threads instead."""
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(1, user_api="blas")
    except Exception:  # noqa: BLE001 - no threadpoolctl or no BLAS found: nothing to limit
        pass
    if "numba" in _kernels._cache:
        import numba
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def _blas_info():
    try:
        from threadpoolctl import threadpool_info
        return [f"{p.get('internal_api')} {p.get('version')} ({p.get('num_threads')} threads, "
                f"{p.get('threading_layer')}, {os.path.basename(p.get('filepath', ''))})" for p in threadpool_info()
                if p.get("user_api") == "blas"]
    except Exception:  # noqa: BLE001
        return []


def _cpu_features():
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
        model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                     platform.processor())
    except OSError:
        flags, model = [], platform.processor()
    keep = [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    return model, keep


def _threaded_steps():
    """How a single request uses the threads: the Cython batch-1 steps on OpenMP threads, or one thread."""
    if get_backend().name != "cython":
        return "one thread (the Cython backend shares batch-1 steps among threads)"
    from ._kernels import lstm_cy
    if not lstm_cy.OPENMP:
        return "one thread (extension built without OpenMP)"
    return "OpenMP (batch-1 inference: LSTM with H >= 96, GRU with H >= 128; streaming LSTM steps of >= 2 MiB)"


def info(print_=False):
    """What fastlstm runs on: version, backend ("auto" resolution), whether the Cython extension is built,
    BLAS libraries and threads, CPU features. Returns a dict; prints it when `print_` is true."""
    from . import __version__
    model, feats = _cpu_features()
    d = {
        "version": __version__,
        "backend": get_backend().name,
        "backend_requested": _state["name"] or config.BACKEND,
        "cython_extension": "built" if _kernels.cython_built() else "not built (Numba fallback; `pip install .` builds it)",
        "available_backends": _kernels.available(),
        "threads": config.NUM_THREADS,
        "threaded_steps": _threaded_steps(),
        "blas": _blas_info(),
        "cpu": model,
        "cpu_features": feats,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    if print_:
        for k, v in d.items():
            print(f"{k:20s} {', '.join(map(str, v)) if isinstance(v, list) else v}")
    return d
