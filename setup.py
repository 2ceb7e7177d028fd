"""Build the Cython kernels. Metadata lives in pyproject.toml.

If the C build fails (no compiler), the package still installs and runs on the Numba backend;
`fastlstm.info()` then says the extension is missing.
"""
import os
import sys

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

KERNELS = ("_blas", "lstm_cy", "gru_cy", "chain_cy")


class OptionalBuildExt(build_ext):
    """Build the extensions, but let the install go on (Numba fallback) when a compile fails."""

    def run(self):
        try:
            super().run()
        except Exception as e:  # noqa: BLE001 - any build failure means: no extension, numba fallback
            print(f"WARNING: fastlstm Cython kernels not built ({e}); the Numba backend will be used", file=sys.stderr)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as e:  # noqa: BLE001
            if OPENMP_FLAGS and OPENMP_FLAGS[0] in ext.extra_compile_args:
                # a compiler without OpenMP: the same kernels on one thread
                print(f"WARNING: {ext.name} did not build with OpenMP ({e}); building it without (one thread)",
                      file=sys.stderr)
                ext.extra_compile_args = [a for a in ext.extra_compile_args if a not in OPENMP_FLAGS]
                ext.extra_link_args = [a for a in ext.extra_link_args if a not in OPENMP_FLAGS]
                self.build_extension(ext)
                return
            print(f"WARNING: could not build {ext.name} ({e})", file=sys.stderr)


# -march=native: AVX2/FMA for the vectorised gate loops and the packed recurrent GEMM (without AVX2 + FMA the
#   kernels fall back to BLAS for it). FASTLSTM_ARCH_FLAGS replaces it, e.g. "-mavx2 -mfma" or "" for a
#   portable build.
# -fno-math-errno, -fno-trapping-math: let gcc inline and if-convert the math so that the gate loops vectorise
#   (results stay IEEE: NaN and inf propagate as in NumPy).
# -ffp-contract=off: no implicit a*b+c fusion, so elementwise float32 results round like NumPy's (the general
#   activation path follows acts.py operation by operation); the exp kernel uses explicit fmaf where it wants one.
ARCH_FLAGS = os.environ.get("FASTLSTM_ARCH_FLAGS", "-march=native").split()
COMPILE_ARGS = ["-O3", *ARCH_FLAGS, "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off"]
# -fopenmp (lstm_cy, gru_cy): the batch-1 steps on several threads (fl_lstm_units_forward, LSTMStepper,
#   _gru_units_threads); built again
#   without it when the compiler has no OpenMP, and FASTLSTM_OPENMP=0 leaves it out (one thread).
OPENMP_FLAGS = ["-fopenmp"] if os.environ.get("FASTLSTM_OPENMP", "1") != "0" else []
THREADED = {"lstm_cy", "gru_cy"}

extensions = [
    Extension(
        f"fastlstm._kernels.{name}",
        [f"fastlstm/_kernels/{name}.pyx"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=COMPILE_ARGS + (OPENMP_FLAGS if name in THREADED else []),
        extra_link_args=OPENMP_FLAGS if name in THREADED else [],
    )
    for name in KERNELS
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=dict(language_level=3, boundscheck=False, wraparound=False, cdivision=True,
                                 initializedcheck=False),
    ),
    cmdclass={"build_ext": OptionalBuildExt},
)
