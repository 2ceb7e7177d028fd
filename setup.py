"""Build the Cython kernels. Metadata lives in pyproject.toml.

If the C build fails (no compiler), the package still installs and runs on the Numba backend;
`fastlstm.info()` then says the extension is missing.
"""
import sys

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

KERNELS = ("_blas", "lstm_cy", "gru_cy")


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
            print(f"WARNING: could not build {ext.name} ({e})", file=sys.stderr)


extensions = [
    Extension(
        f"fastlstm._kernels.{name}",
        [f"fastlstm/_kernels/{name}.pyx"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3", "-march=native", "-fno-math-errno", "-ffp-contract=off", "-fno-trapping-math"],
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
