"""Runtime settings in one place: defaults, overridden by FASTLSTM_* environment variables.

    FASTLSTM_BACKEND    auto | cython | numba | reference      (default auto)
    FASTLSTM_THREADS    threads for BLAS and the kernels        (default: all cores)
    FASTLSTM_FASTMATH   1 to let Numba use fastmath flags       (default 0: bitwise-stable math)
"""
import os

BACKEND = os.environ.get("FASTLSTM_BACKEND", "auto")
NUM_THREADS = int(os.environ.get("FASTLSTM_THREADS", "0")) or (os.cpu_count() or 1)
FASTMATH = os.environ.get("FASTLSTM_FASTMATH", "0") == "1"
# Numba compile flags, read once by every jitted kernel module (flags only come from here).
NUMBA_FLAGS = dict(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy", boundscheck=False)
