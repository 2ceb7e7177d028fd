"""fastlstm.info(): what the package runs on, including how a single request uses the threads."""
import fastlstm
from fastlstm import backend

from conftest import BACKENDS


def test_info_names_backend_threads_and_threaded_steps(capsys):
    d = fastlstm.info(print_=True)
    printed = capsys.readouterr().out
    for key in ("backend", "cython_extension", "threads", "threaded_steps", "blas", "cpu_features"):
        assert key in d and key in printed
    assert d["backend"] == fastlstm.get_backend().name
    if d["backend"] == "cython":
        from fastlstm._kernels import lstm_cy
        assert d["threaded_steps"].startswith("OpenMP" if lstm_cy.OPENMP else "one thread")
    else:
        assert d["threaded_steps"].startswith("one thread")


def test_threaded_steps_on_each_backend():
    saved = fastlstm.get_backend().name
    try:
        for name in BACKENDS:
            fastlstm.set_backend(name)
            says = backend._threaded_steps()
            assert says.startswith("OpenMP") == (name == "cython" and _openmp_built())
    finally:
        fastlstm.set_backend(saved)


def _openmp_built():
    from fastlstm._kernels import lstm_cy
    return lstm_cy.OPENMP
