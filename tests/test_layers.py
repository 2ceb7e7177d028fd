"""Keras-style layers: goldens, dtypes, weights, errors, masking rules, and every backend through the layer."""
import numpy as np
import pytest

import fastlstm
from fastlstm.layers import GRU, LSTM, Bidirectional, Dense, Embedding

from conftest import BACKENDS


@pytest.fixture(autouse=True)
def _restore_backend():
    yield
    fastlstm.set_backend(fastlstm.config.BACKEND)


def _keras_constant_lstm(**kw):
    H, I = 3, 4
    lstm = LSTM(H, **kw)
    b = np.full(4 * H, 0.03, np.float32)
    b[H:2 * H] = 1.0                     # unit_forget_bias
    lstm.set_weights([np.full((I, 4 * H), 0.01, np.float32), np.full((H, 4 * H), 0.02, np.float32), b])
    return lstm


@pytest.mark.parametrize("backend", BACKENDS)
def test_keras_constant_initializer_golden(backend):
    fastlstm.set_backend(backend)
    x = np.arange(72, dtype=np.float32).reshape(3, 6, 4)
    y = _keras_constant_lstm()(x)
    np.testing.assert_allclose(y[:, 0], [0.62886867, 0.86899145, 0.94607728], rtol=1e-6)
    assert y.dtype == np.float32 and y.shape == (3, 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_stays_float64_and_matches_float32(backend):
    fastlstm.set_backend(backend)
    x = np.random.default_rng(0).standard_normal((2, 5, 4))
    lstm = _keras_constant_lstm(return_sequences=True)
    y64 = lstm(x)
    y32 = lstm(x.astype(np.float32))
    assert y64.dtype == np.float64 and y32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, rtol=1e-5, atol=1e-6)


def test_set_weights_builds_and_get_weights_round_trips():
    rng = np.random.default_rng(1)
    gru = GRU(5)
    ws = [rng.standard_normal(s).astype(np.float32) for s in [(3, 15), (5, 15), (2, 15)]]
    gru.set_weights(ws)
    for a, b in zip(gru.get_weights(), ws):
        np.testing.assert_array_equal(a, b)
    gru2 = GRU(5, reset_after=False)
    gru2.set_weights(ws[:2] + [ws[2][0]])
    assert gru2(np.ones((1, 2, 3), np.float32)).shape == (1, 5)


def test_set_weights_copies_like_keras():
    """The layer keeps copies: changing the arrays given to set_weights afterwards does not change the layer
    (nor its cached cast and packed weights), as in Keras."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 20, 3)).astype(np.float32)
    ws = [rng.standard_normal(s).astype(np.float32) * 0.3 for s in ((3, 16), (4, 16), (16,))]
    layer = fastlstm.layers.LSTM(4)
    layer.set_weights(ws)
    y = layer(x)
    for w in ws:
        w *= -2
    np.testing.assert_array_equal(layer(x), y)
    np.testing.assert_array_equal(layer.get_weights()[0], ws[0] / -2)


def test_return_state_and_initial_state():
    lstm = _keras_constant_lstm(return_state=True, return_sequences=True)
    x = np.random.default_rng(2).standard_normal((2, 7, 4)).astype(np.float32)
    y, h, c = lstm(x)
    assert y.shape == (2, 7, 3) and h.shape == c.shape == (2, 3)
    np.testing.assert_array_equal(y[:, -1], h)
    # running the second half from the first half's states equals one run
    y1, h1, c1 = lstm(x[:, :3])
    y2, h2, c2 = lstm(x[:, 3:], initial_state=[h1, c1])
    np.testing.assert_allclose(np.concatenate([y1, y2], 1), y, rtol=1e-6, atol=1e-7)


def _numpy_lstm_keras_mask(x, ws, mask, go_backwards=False, h0=None):
    """Keras masked LSTM written out step by step: state carried, output repeats the previous output."""
    k, r, b = ws
    H = r.shape[0]
    B, T, _ = x.shape
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    h = np.zeros((B, H)) if h0 is None else h0[0].copy()
    c = np.zeros((B, H)) if h0 is None else h0[1].copy()
    prev_out = np.zeros((B, H))
    outs = []
    steps = range(T - 1, -1, -1) if go_backwards else range(T)
    for t in steps:
        z = x[:, t] @ k + h @ r + b
        i, f, g, o = sig(z[:, :H]), sig(z[:, H:2 * H]), np.tanh(z[:, 2 * H:3 * H]), sig(z[:, 3 * H:])
        c_new = f * c + i * g
        h_new = o * np.tanh(c_new)
        m = mask[:, t][:, None]
        h, c = np.where(m, h_new, h), np.where(m, c_new, c)
        prev_out = np.where(m, h_new, prev_out)
        outs.append(prev_out)
    return np.stack(outs, 1), h, c


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("go_backwards", [False, True])
def test_masking_follows_keras(backend, go_backwards):
    fastlstm.set_backend(backend)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 6, 3))
    mask = np.array([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1], [1, 1, 0, 1, 0, 1], [0, 0, 0, 0, 0, 0]], bool)
    ws = [(rng.standard_normal(s) * 0.5).astype(np.float32).astype(np.float64) for s in [(3, 8), (2, 8), (8,)]]
    h0 = [rng.standard_normal((4, 2)), rng.standard_normal((4, 2))]
    lstm = LSTM(2, return_sequences=True, return_state=True, go_backwards=go_backwards)
    lstm.set_weights(ws)
    y, h, c = lstm(x, mask=mask, initial_state=h0)
    ey, eh, ec = _numpy_lstm_keras_mask(x, ws, mask, go_backwards, h0)
    np.testing.assert_allclose(y, ey, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h, eh, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(c, ec, rtol=1e-10, atol=1e-12)
    assert np.all(y[3] == 0) and np.allclose(h[3], h0[0][3])   # fully masked row: zero output, initial state kept


def test_bidirectional_merges_and_flips_backward_sequence():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 5, 3))
    inner = LSTM(4, return_sequences=True)
    bi = Bidirectional(inner, merge_mode=None)
    ws = [(rng.standard_normal(s) * 0.3).astype(np.float32) for s in [(3, 16), (4, 16), (16,)] * 2]
    bi.set_weights(ws)
    fw, bw = bi(x)
    ref_fw = LSTM(4, return_sequences=True)
    ref_fw.set_weights(ws[:3])
    ref_bw = LSTM(4, return_sequences=True, go_backwards=True)
    ref_bw.set_weights(ws[3:])
    np.testing.assert_allclose(fw, ref_fw(x), rtol=1e-12)
    np.testing.assert_allclose(bw, ref_bw(x)[:, ::-1], rtol=1e-12)
    bi_concat = Bidirectional(LSTM(4, return_sequences=True))
    bi_concat.set_weights(ws)
    np.testing.assert_allclose(bi_concat(x), np.concatenate([fw, bw], -1), rtol=1e-12)


def test_errors_name_expected_and_received():
    lstm = _keras_constant_lstm()
    with pytest.raises(ValueError, match=r"\(batch, timesteps, 4\).*\(2, 5, 3\)"):
        lstm(np.zeros((2, 5, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(batch, timesteps, features\).*\(5, 4\)"):
        lstm(np.zeros((5, 4), np.float32))
    with pytest.raises(TypeError, match="numeric"):
        lstm(np.array([[["a"] * 4]]))
    with pytest.raises(ValueError, match=r"initial state must have shape \(2, 3\)"):
        lstm(np.zeros((2, 5, 4), np.float32), initial_state=[np.zeros((1, 3)), np.zeros((1, 3))])
    with pytest.raises(ValueError, match=r"weight 1 \(recurrent_kernel\) must have shape \(3, 12\), got \(3, 8\)"):
        lstm.set_weights([np.zeros((4, 12)), np.zeros((3, 8)), np.zeros(12)])
    with pytest.raises(ValueError, match="positive integer"):
        LSTM(0)
    with pytest.raises(ValueError, match="not supported inside LSTM"):
        LSTM(3, activation="softmax")
    emb = Embedding(10, 4)
    with pytest.raises(ValueError, match=r"\[0, 10\).*got 12"):
        emb(np.array([[1, 12]]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_input_propagates_like_keras(backend):
    fastlstm.set_backend(backend)
    lstm = _keras_constant_lstm(return_sequences=True)
    x = np.ones((2, 4, 4), np.float32)
    x[0, 1, 2] = np.nan
    y = lstm(x)
    assert np.isnan(y[0, 1:]).all() and np.isfinite(y[0, 0]).all() and np.isfinite(y[1]).all()


def test_backends_agree_through_layers():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 9, 6)).astype(np.float32)
    model = fastlstm.Sequential([Bidirectional(GRU(5, return_sequences=True, reset_after=False)), LSTM(4),
                                 Dense(2, activation="softmax")])
    model.build((None, None, 6))
    outs = {}
    for b in BACKENDS:
        fastlstm.set_backend(b)
        outs[b] = model.predict(x)
    for b in BACKENDS:
        np.testing.assert_allclose(outs[b], outs["reference"], rtol=2e-5, atol=2e-6)


def test_named_backend_missing_raises_import_error(monkeypatch):
    import fastlstm._kernels as k
    monkeypatch.setitem(k._MODULES, "cython", ("fastlstm._kernels.not_there", "fastlstm._kernels.not_there"))
    monkeypatch.delitem(k._cache, "cython", raising=False)
    with pytest.raises(ImportError, match="pip install"):
        fastlstm.set_backend("cython")
    with pytest.raises(ValueError, match="unknown backend"):
        fastlstm.set_backend("fortran")
