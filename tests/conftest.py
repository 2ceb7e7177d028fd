import numpy as np
import pytest

from fastlstm._kernels import available

BACKENDS = [b for b in ("reference", "numba", "cython") if b in available()]


def _packed_build():
    try:
        from fastlstm._kernels import _blas
    except ImportError:
        return False
    return _blas.PACKED_GEMM


# the Cython build has its AVX2/FMA paths (packed weights, batch-1 steppers, the compiled stream chain); a build
# on a CPU without them runs the general kernels, which every other test covers
PACKED = _packed_build()
needs_packed = pytest.mark.skipif(not PACKED, reason="the Cython extension was built without AVX2/FMA: no "
                                                     "packed paths to test")
TOL = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-9, atol=1e-11)}


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
