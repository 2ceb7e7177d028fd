"""Packed weights kept across calls (_blas.WeightPacks via _kernels.kernel_kw): the same numbers as packing per
call, one packed copy per weight matrix and layout, and a layer whose weights change packs again."""
import numpy as np
import pytest

import fastlstm
from fastlstm._kernels import get_backend, gru_ref, kernel_kw, lstm_ref
from fastlstm._kernels.args import copy_args, gru_args, lstm_args

from conftest import BACKENDS, PACKED

needs_cython = pytest.mark.skipif("cython" not in BACKENDS, reason="the Cython extension is not built")



CELLS = {"lstm": (lstm_args, lstm_ref.lstm_forward, ("y_out", "hT_out", "cT_out")),
         "gru": (gru_args, gru_ref.gru_forward, ("y_out", "hT_out"))}


@needs_cython
@pytest.mark.parametrize("shape", [(100, 1, 16, 24), (12, 1, 5, 66), (9, 3, 7, 8), (3, 1, 4, 4)], ids=str)
@pytest.mark.parametrize("cell, opts", [("lstm", {}), ("lstm", dict(mask="random", reverse=True)), ("gru", {}),
                                        ("gru", dict(reset_after=False, mask="random", reverse=True))],
                         ids=["lstm", "lstm_mask_reverse", "gru", "gru_before_mask_reverse"])
def test_kept_packs_give_the_per_call_results(cell, shape, opts):
    make, ref_forward, outs = CELLS[cell]
    k = get_backend("cython")
    forward = getattr(k, f"{cell}_forward")
    args = make(*shape, np.float32, np.random.default_rng(3), **opts)
    plain, kept = copy_args(args), copy_args(args)
    forward(*plain.values())
    holder = {}
    for _ in range(3):          # the first call packs, the later ones reuse
        forward(*kept.values(), **kernel_kw(k, holder))
        for n in outs:
            np.testing.assert_array_equal(kept[n], plain[n], err_msg=n)
    T, B = shape[:2]
    # w_h: by units (LSTM batch 1, T >= 8), 64-column panels (GRU batch 1, T >= 8), 16-column panels
    # (1 < B < 128; reset_before GRU: two blocks of w_h); w_x in 16-column panels for 8 < T * B < 128 rows
    n_wh = 2 if cell == "gru" and not opts.get("reset_after", True) else 1
    expected = n_wh * int(B == 1 and T >= 8 or 1 < B < 128) + int(8 < T * B < 128)
    assert len(holder[("packs", "cython")]) == (expected if PACKED else 0)     # (no AVX2 build: nothing packs)
    ref = copy_args(args)
    ref_forward(*ref.values())
    np.testing.assert_allclose(kept["y_out"], ref["y_out"], rtol=1e-4, atol=1e-5)


@needs_cython
def test_other_weight_arrays_get_their_own_packs():
    k = get_backend("cython")
    holder = {}
    a = lstm_args(20, 1, 6, 8, np.float32, np.random.default_rng(0))
    b = lstm_args(20, 1, 6, 8, np.float32, np.random.default_rng(1))
    k.lstm_forward(*a.values(), **kernel_kw(k, holder))
    k.lstm_forward(*b.values(), **kernel_kw(k, holder))
    assert len(holder[("packs", "cython")]) == (4 if PACKED else 0)
    ref = copy_args(b)
    lstm_ref.lstm_forward(*ref.values())
    np.testing.assert_allclose(b["y_out"], ref["y_out"], rtol=1e-4, atol=1e-5)


def test_reference_gets_no_packs():
    assert kernel_kw(get_backend("reference"), {}) == {}


@pytest.mark.skipif("numba" not in BACKENDS, reason="numba is not installed")
@pytest.mark.parametrize("shape", [(30, 1, 6, 20), (9, 3, 7, 8)], ids=str)
def test_numba_kept_panels_give_the_per_call_results(shape):
    k = get_backend("numba")
    args = lstm_args(*shape, np.float32, np.random.default_rng(6))
    plain, kept = copy_args(args), copy_args(args)
    k.lstm_forward(*plain.values())
    holder = {}
    for _ in range(2):       # (the input product on kept panels sums in another order than np.dot)
        k.lstm_forward(*kept.values(), **kernel_kw(k, holder))
        np.testing.assert_allclose(kept["y_out"], plain["y_out"], rtol=1e-5, atol=1e-6)
    assert len(holder[("packs", "numba")]) == 2        # w_h for the steps, w_x for the input product
    g = gru_args(*shape, np.float32, np.random.default_rng(6))
    g_plain, g_kept = copy_args(g), copy_args(g)
    k.gru_forward(*g_plain.values())
    k.gru_forward(*g_kept.values(), **kernel_kw(k, holder))
    np.testing.assert_array_equal(g_kept["y_out"], g_plain["y_out"])


@needs_cython
def test_layer_packs_again_after_set_weights():
    fastlstm.set_backend("cython")
    try:
        layer = fastlstm.layers.LSTM(8)
        x = np.random.default_rng(0).standard_normal((1, 30, 5)).astype(np.float32)
        y1 = layer(x)
        w = [v * 1.5 for v in layer.get_weights()]
        layer.set_weights(w)
        y2 = layer(x)
        ref = fastlstm.layers.LSTM(8)
        ref.set_weights(w)
        fastlstm.set_backend("reference")
        np.testing.assert_allclose(y2, ref(x), rtol=1e-4, atol=1e-5)
        assert not np.allclose(y1, y2)
    finally:
        fastlstm.set_backend("auto")


@needs_cython
@pytest.mark.parametrize("K, N", [(37, 45), (128, 512), (400, 16)], ids=str)
def test_packed_gemm_every_row_count(K, N):
    """The packed register-tile GEMM (_blas.fl_gemm_packed: 6-row tiles, the last 7-9 rows as 4 + 3, 4 + 4,
    5 + 4; K > 384 in chunks), accumulating and starting from a bias, against float64 NumPy for every row count
    through several tile plans."""
    from fastlstm._kernels import _blas
    rng = np.random.default_rng(K)
    w = rng.standard_normal((K, N)).astype(np.float32)
    for M in range(1, 40):
        a = rng.standard_normal((M, K)).astype(np.float32)
        c = rng.standard_normal((M, N)).astype(np.float32)
        expected = c.astype(np.float64) + a.astype(np.float64) @ w.astype(np.float64)
        got = _blas._recurrent_check(a, w, c.copy(), True)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.sqrt(K), err_msg=f"M={M}")
        # starting from a bias instead (fl_gemm_packed_bias): what c held is never read
        bias = rng.standard_normal(N).astype(np.float32)
        got = _blas._recurrent_check(a, w, np.full((M, N), np.nan, np.float32), True, bias=bias)
        expected = bias.astype(np.float64) + a.astype(np.float64) @ w.astype(np.float64)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.sqrt(K), err_msg=f"M={M}, bias")
