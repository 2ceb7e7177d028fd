import numpy as np
import pytest

from fastlstm._kernels import available

BACKENDS = [b for b in ("reference", "numba", "cython") if b in available()]
TOL = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-9, atol=1e-11)}


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
