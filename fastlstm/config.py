"""Runtime settings in one place: defaults, overridden by FASTLSTM_* environment variables.

    FASTLSTM_BACKEND    auto | cython | numba | reference      (default auto)
    FASTLSTM_THREADS    threads for BLAS and the kernels        (default: all cores)
    FASTLSTM_FASTMATH   1 to let Numba use fastmath flags       (default 0: bitwise-stable math)
"""
import os
import threading

BACKEND = os.environ.get("FASTLSTM_BACKEND", "auto")
NUM_THREADS = int(os.environ.get("FASTLSTM_THREADS", "0")) or (os.cpu_count() or 1)
FASTMATH = os.environ.get("FASTLSTM_FASTMATH", "0") == "1"
# Numba compile flags, read once by every jitted kernel module (flags only come from here).
NUMBA_FLAGS = dict(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy", boundscheck=False)

_LOCAL = threading.local()


def kernel_threads():
    """Threads one kernel call may use: NUM_THREADS, or 1 in a thread that already runs a share of the work
    (predict's workers, which split the batch across NUM_THREADS; see one_kernel_thread)."""
    return 1 if getattr(_LOCAL, "one_kernel_thread", False) else NUM_THREADS


def one_kernel_thread():
    """Mark the calling thread: the kernels it calls run on one thread (a ThreadPoolExecutor initializer)."""
    _LOCAL.one_kernel_thread = True
