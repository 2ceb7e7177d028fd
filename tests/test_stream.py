"""Streaming sessions: stepping T timesteps (one at a time or in chunks) equals predict on the whole sequence;
state park/resume; many sessions from many threads; refusals and input errors."""
import pickle
import threading

import numpy as np
import numpy.testing as npt
import pytest

import fastlstm
from fastlstm import layers as L

from conftest import PACKED, needs_packed

TOL32 = dict(rtol=2e-5, atol=2e-6)


def stream_all(session, x, chunks):
    """Feed x (B, T, ...) in chunks of the given sizes; returns the list of step outputs."""
    outs, t = [], 0
    for k in chunks:
        outs.append(session.step(x[:, t:t + k]))
        t += k
    assert t == x.shape[1]
    return outs


def check_against_predict(model, x, chunks=None, batch_size=None):
    B, T = x.shape[:2]
    chunks = chunks or [1] * T
    s = model.stream(batch_size=batch_size or B)
    outs = stream_all(s, x, chunks)
    seq = model.predict(x)
    multi = isinstance(seq, list)
    seqs = seq if multi else [seq]
    for j, ref in enumerate(seqs):
        got = [o[j] if multi else o for o in outs]
        if ref.ndim >= 3 and ref.shape[1] == T:          # a sequence output: the chunks concatenate to it
            npt.assert_allclose(np.concatenate(got, axis=1), ref, **TOL32)
        else:                                             # the last output equals predict's
            npt.assert_allclose(got[-1], ref, **TOL32)
            # and every prefix's output equals predict on that prefix
            t = 0
            for k, o in zip(chunks, got):
                t += k
                pref = model.predict(x[:, :t])
                npt.assert_allclose(o, pref[j] if multi else pref, **TOL32)


@pytest.fixture
def rng():
    return np.random.default_rng(3)


@pytest.mark.parametrize("return_sequences", [False, True])
def test_lstm_one_step_at_a_time(rng, return_sequences):
    m = fastlstm.Sequential([fastlstm.Input((None, 5)), L.LSTM(7, return_sequences=return_sequences)])
    check_against_predict(m, rng.normal(size=(1, 9, 5)).astype(np.float32))


@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_chunks(rng, reset_after):
    m = fastlstm.Sequential([fastlstm.Input((None, 4)), L.GRU(6, return_sequences=True, reset_after=reset_after)])
    check_against_predict(m, rng.normal(size=(2, 10, 4)).astype(np.float32), chunks=[1, 3, 2, 4])


def test_stacked_lstm_gru_dense_batch(rng):
    m = fastlstm.Sequential([fastlstm.Input((None, 3)), L.LSTM(8, return_sequences=True),
                             L.GRU(5, return_sequences=True), L.LSTM(4), L.Dense(2, activation="softmax")])
    check_against_predict(m, rng.normal(size=(3, 8, 3)).astype(np.float32), chunks=[2, 1, 1, 4])


def test_embedding_mask_zero_with_padding_in_the_middle(rng):
    m = fastlstm.Sequential([L.Embedding(30, 6, mask_zero=True), L.LSTM(8, return_sequences=True),
                             L.GRU(5, return_sequences=True), L.TimeDistributed(L.Dense(3))])
    x = rng.integers(1, 30, size=(3, 12))
    x[0, :4] = 0          # pre-padding
    x[1, 5:7] = 0         # a gap
    x[2, 9:] = 0          # post-padding
    m.predict(x[:, :2])
    check_against_predict(m, x)
    check_against_predict(m, x, chunks=[5, 7])


def test_embedding_mask_last_output_and_zero_output_for_mask(rng):
    m = fastlstm.Sequential([L.Embedding(20, 4, mask_zero=True),
                             L.LSTM(6, return_sequences=True, zero_output_for_mask=True), L.LSTM(5),
                             L.Dense(1, activation="sigmoid")])
    x = rng.integers(1, 20, size=(2, 9))
    x[0, :3] = 0
    x[1, 4] = 0
    m.predict(x)
    check_against_predict(m, x)


def test_masking_layer_and_simple_rnn(rng):
    m = fastlstm.Sequential([fastlstm.Input((None, 3)), L.Masking(0.0), L.SimpleRNN(4, return_sequences=True),
                             L.Dense(2)])
    x = rng.normal(size=(2, 7, 3)).astype(np.float32)
    x[0, 2] = 0
    x[1, :3] = 0
    check_against_predict(m, x)


def test_functional_return_state_outputs(rng):
    inp = fastlstm.Input((None, 3))
    seq, h, c = L.LSTM(4, return_sequences=True, return_state=True)(inp)
    out = L.Dense(2)(h)
    m = fastlstm.Model(inp, [seq, out, c])
    check_against_predict(m, rng.normal(size=(2, 6, 3)).astype(np.float32), chunks=[2, 2, 2])


def test_float64_session(rng):
    m = fastlstm.Sequential([fastlstm.Input((None, 3)), L.LSTM(4)])
    x = rng.normal(size=(1, 5, 3))
    s = m.stream(dtype="float64")
    out = [s.step(x[:, t:t + 1]) for t in range(5)][-1]
    assert out.dtype == np.float64
    npt.assert_allclose(out, m.predict(x), rtol=1e-12, atol=1e-13)


def test_reset_state_and_set_state_pickle(rng):
    m = fastlstm.Sequential([fastlstm.Input((None, 3)), L.LSTM(5, return_sequences=True), L.GRU(4)])
    x = rng.normal(size=(1, 10, 3)).astype(np.float32)
    s = m.stream()
    full = [s.step(x[:, t:t + 1]) for t in range(10)]
    s.reset()
    for t in range(4):
        s.step(x[:, t:t + 1])
    parked = pickle.loads(pickle.dumps(s.state))
    assert set(parked) == {m.layers[0].name, m.layers[1].name}
    assert [a.shape for a in parked[m.layers[0].name]] == [(1, 5), (1, 5)]
    other = m.stream()
    other.step(rng.normal(size=(1, 3, 3)).astype(np.float32))   # some unrelated conversation
    other.set_state(parked)
    for t in range(4, 10):
        npt.assert_allclose(other.step(x[:, t:t + 1]), full[t], **TOL32)
    s.reset()
    npt.assert_allclose(s.step(x[:, :1]), full[0], **TOL32)
    with pytest.raises(ValueError, match="missing"):
        other.set_state({})
    with pytest.raises(ValueError, match="shape"):
        other.set_state({k: [np.zeros((2, a.shape[1])) for a in v] for k, v in parked.items()})


def test_many_sessions_many_threads(rng):
    m = fastlstm.Sequential([fastlstm.Input((None, 8)), L.LSTM(16, return_sequences=True), L.LSTM(12)])
    xs = [rng.normal(size=(1, 40, 8)).astype(np.float32) for _ in range(6)]
    expected = [m.predict(x) for x in xs]
    results = [None] * len(xs)
    start = threading.Barrier(len(xs))

    def worker(i):
        s = m.stream()
        start.wait()
        out = None
        for t in range(xs[i].shape[1]):
            out = s.step(xs[i][:, t:t + 1])
        results[i] = out

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        npt.assert_allclose(got, want, **TOL32)


def test_session_sees_new_weights(rng):
    m = fastlstm.Sequential([fastlstm.Input((None, 3)), L.LSTM(4)])
    s = m.stream()
    x = rng.normal(size=(1, 1, 3)).astype(np.float32)
    s.step(x)
    for scale in (0.5, -1.5):         # twice: the session's fast path is bound again after each repack
        m.set_weights([w * scale for w in m.get_weights()])
        s.reset()
        npt.assert_allclose(s.step(x), m.predict(x), **TOL32)
        npt.assert_allclose(s.step(x.astype(np.float64)), m.predict(np.concatenate([x, x], 1)), **TOL32)


def test_refuses_bidirectional_and_go_backwards():
    m = fastlstm.Sequential([fastlstm.Input((None, 3)), L.Bidirectional(L.LSTM(4))])
    with pytest.raises(ValueError, match="Bidirectional.*whole sequence"):
        m.stream()
    m2 = fastlstm.Sequential([fastlstm.Input((None, 3)), L.GRU(4, go_backwards=True)])
    with pytest.raises(ValueError, match="go_backwards"):
        m2.stream()


def test_refuses_layers_that_mix_timesteps():
    from fastlstm.layers.conv import Conv1D, GlobalAveragePooling1D
    m = fastlstm.Sequential([fastlstm.Input((None, 3)), Conv1D(4, 3), L.LSTM(4)])
    with pytest.raises(ValueError, match="Conv1D.*timesteps"):
        m.stream()
    m2 = fastlstm.Sequential([fastlstm.Input((None, 3)), L.LSTM(4, return_sequences=True), GlobalAveragePooling1D()])
    with pytest.raises(ValueError, match="GlobalAveragePooling1D"):
        m2.stream()


def test_functional_mask_zero_loaded_style_graph(rng):
    """Embedding(mask_zero) with the mask passed explicitly through a NotEqual op (what Keras 3 configs hold)."""
    from fastlstm.layers.ops import NotEqual
    inp = fastlstm.Input((None,), dtype="int32")
    e = L.Embedding(20, 4, mask_zero=True)(inp)
    mask = NotEqual(0)(inp)
    y = L.LSTM(5, return_sequences=True)(e, mask=mask)
    y = L.GRU(3)(y, mask=mask)
    m = fastlstm.Model(inp, L.Dense(2)(y))
    x = rng.integers(1, 20, size=(2, 7))
    x[0, :2] = 0
    x[1, 4] = 0
    check_against_predict(m, x)
    m.compile("adam", "mse")                                # the op is off the gradient path: trainable
    m.fit(x, np.zeros((2, 2)), verbose=0)


def test_step_input_errors(rng):
    m = fastlstm.Sequential([fastlstm.Input((None, 3)), L.LSTM(4)])
    s = m.stream(batch_size=2)
    with pytest.raises(ValueError, match="batch size 2"):
        s.step(np.zeros((1, 1, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(batch, k, 3\)"):
        s.step(np.zeros((2, 1, 5), np.float32))
    with pytest.raises(ValueError, match="rank 3"):
        s.step(np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match="numeric"):
        s.step(np.array([[["a"] * 3]] * 2))
    # float64 / int inputs are cast to the session's dtype
    x = rng.normal(size=(2, 2, 3))
    s.reset()
    npt.assert_allclose(s.step(x), m.predict(x.astype(np.float32)), **TOL32)
    e = fastlstm.Sequential([L.Embedding(10, 3), L.LSTM(4)])
    e.build((None, None))
    se = e.stream()
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 10\)"):
        se.step(np.array([[12]]))


def test_lazy_sequential_builds_on_first_step(rng):
    m = fastlstm.Sequential([L.LSTM(4)])
    s = m.stream()
    x = rng.normal(size=(1, 3, 2)).astype(np.float32)
    out = s.step(x)
    npt.assert_allclose(out, m.predict(x), **TOL32)


# ---- batch-1 LSTM steps over packed weights (the Cython LSTMStepper the sessions use) -------------------------
def test_batch1_masked_embedding_stream(rng):
    """B=1 with mask_zero: masked steps take the general kernel, the others the stepper, on the same state."""
    m = fastlstm.Sequential([L.Embedding(25, 6, mask_zero=True), L.LSTM(70, return_sequences=True), L.LSTM(9)])
    x = rng.integers(1, 25, size=(1, 11))
    x[0, 3:5] = 0
    x[0, 8] = 0
    m.predict(x)
    check_against_predict(m, x)
    check_against_predict(m, x, chunks=[4, 1, 6])


def test_batch1_non_default_activations(rng):
    m = fastlstm.Sequential([fastlstm.Input((None, 4)),
                             L.LSTM(66, activation="relu", recurrent_activation="hard_sigmoid", return_sequences=True)])
    check_against_predict(m, 0.3 * rng.normal(size=(1, 6, 4)).astype(np.float32), chunks=[1, 2, 3])


def _check_lstm_stepper(Packed64, LSTMStepper, a, tol):
    """An LSTMStepper over the reference case `a` (batch 1, T = 12; lstm_ref already run on it), stepped in pieces:
    step() over 1 and 4 steps keeping the sequence, 4 more keeping the last h, run() over the rest. Every output
    and the caller's state arrays (updated in place) must match the reference. Returns (stepper, x (1, T, I),
    packed weights, h, c)."""
    T, H = a["x"].shape[0], a["w_h"].shape[0]
    h, c = a["h0"].copy(), a["c0"].copy()
    packed = Packed64(np.ascontiguousarray(np.concatenate([a["w_x"], a["w_h"]])))
    st = LSTMStepper(packed, a["b"], a["p"], a["act_codes"], a["act_ab"], a["clip"], a["input_forget"], h, c)
    x = np.ascontiguousarray(a["x"].transpose(1, 0, 2))                 # (1, T, I)
    ys = [st.step(np.ascontiguousarray(x[:, :1]), True), st.step(np.ascontiguousarray(x[:, 1:5]), True)]
    last = st.step(np.ascontiguousarray(x[:, 5:9]), False)
    y_rest = np.zeros((T - 9, 1, H), np.float32)
    st.run(np.ascontiguousarray(a["x"][9:]), y_rest)
    assert ys[1].shape == (1, 4, H) and last.shape == (1, H)
    got = np.concatenate([ys[0][0], ys[1][0], y_rest[:, 0]])
    npt.assert_allclose(got, np.delete(a["y_out"][:, 0], np.s_[5:9], axis=0), **tol)
    npt.assert_allclose(last, a["y_out"][8], **tol)
    npt.assert_allclose(h, a["hT_out"], **tol)
    npt.assert_allclose(c, a["cT_out"], **tol)
    return st, x, packed, h, c


def _check_gru_stepper(Packed64, GRUStepper, a, tol):
    """A GRUStepper over the reference case `a` (batch 1, T = 10; gru_ref already run on it): step() over 4 steps
    keeping the sequence, 3 keeping the last h, run() over the rest, all matching the reference; a float64 input is
    handed back. Returns (packed weights (w_x, w_h or its two blocks), h)."""
    T, H = a["x"].shape[0], a["w_h"].shape[0]
    h = a["h0"].copy()
    w_h = a["w_h"]
    if a["reset_after"]:
        packed = (Packed64(a["w_x"]), Packed64(w_h), None)
    else:
        packed = (Packed64(a["w_x"]), Packed64(np.ascontiguousarray(w_h[:, :2 * H])),
                  Packed64(np.ascontiguousarray(w_h[:, 2 * H:])))
    st = GRUStepper(*packed, a["b_x"], a["b_h"], a["act_codes"], a["act_ab"], a["clip"], a["reset_after"], h)
    x = np.ascontiguousarray(a["x"].transpose(1, 0, 2))                 # (1, T, I)
    y_head = st.step(np.ascontiguousarray(x[:, :4]), True)
    last = st.step(np.ascontiguousarray(x[:, 4:7]), False)
    y_rest = np.zeros((T - 7, 1, H), np.float32)
    st.run(np.ascontiguousarray(a["x"][7:]), y_rest)
    npt.assert_allclose(y_head[0], a["y_out"][:4, 0], **tol)
    npt.assert_allclose(last, a["y_out"][6], **tol)
    npt.assert_allclose(y_rest[:, 0], a["y_out"][7:, 0], **tol)
    npt.assert_allclose(h, a["hT_out"], **tol)
    assert st.step(x.astype(np.float64), False) is None
    return packed, h


lstm_cy = pytest.importorskip("fastlstm._kernels.lstm_cy", reason="the Cython extension is built in CI")


@needs_packed
@pytest.mark.parametrize("I, H", [(3, 5), (70, 66), (128, 128)])
@pytest.mark.parametrize("opts", [dict(), dict(peepholes=True, clip=0.7, input_forget=True),
                                  dict(act_specs=[(2, 0.2, 0.5), (4, 0, 0), (1, 0, 0)])], ids=str)
def test_lstm_stepper_against_reference(I, H, opts):
    from fastlstm._kernels import _blas, lstm_ref
    from fastlstm._kernels.args import lstm_args
    a = lstm_args(12, 1, I, H, np.float32, np.random.default_rng(H), **opts)
    lstm_ref.lstm_forward(*a.values())
    st, x, _, _, _ = _check_lstm_stepper(_blas.Packed64, lstm_cy.LSTMStepper, a, dict(rtol=1e-4, atol=1e-5))
    # anything but a float32 C-contiguous (1, k, I) array is handed back to the caller
    assert st.step(x.astype(np.float64), False) is None
    assert st.step(x[:, ::2], False) is None
    assert st.step(np.zeros((1, 0, I), np.float32), False) is None
    with pytest.raises(ValueError, match="expected x"):
        st.run(np.zeros((2, 1, I + 1), np.float32), np.zeros((2, 1, H), np.float32))


@needs_packed
@pytest.mark.parametrize("I, H", [(256, 256), (456, 200), (40, 512)])
@pytest.mark.parametrize("threads", [2, 3])
def test_lstm_stepper_on_threads_equals_one_thread(I, H, threads):
    """A stepper with threads > 1 and at least 2 MiB of packed weights shares each step's product among the
    threads (panel ranges, lstm_cy.fl_gemv_packed64_threads): bit-identical to one thread (a partial last panel
    included: 4H = 800), and to the reference within tolerance."""
    from fastlstm._kernels import _blas, lstm_ref
    from fastlstm._kernels.args import lstm_args
    a = lstm_args(6, 1, I, H, np.float32, np.random.default_rng(H), scale=0.15)
    assert (I + H) * 4 * H >= lstm_cy.THREAD_THRESHOLDS["stepper_min_floats"]
    lstm_ref.lstm_forward(*a.values())
    packed = _blas.Packed64(np.ascontiguousarray(np.concatenate([a["w_x"], a["w_h"]])))
    x = np.ascontiguousarray(a["x"].transpose(1, 0, 2))
    ys = []
    for n in (1, threads):
        h, c = a["h0"].copy(), a["c0"].copy()
        st = lstm_cy.LSTMStepper(packed, a["b"], a["p"], a["act_codes"], a["act_ab"], 0.0, False, h, c)
        st.threads = n
        ys.append((st.step(x[:, :2], True), st.step(np.ascontiguousarray(x[:, 2:]), True), h, c))
    for one, many in zip(*ys):
        npt.assert_array_equal(many, one)
    npt.assert_allclose(np.concatenate(ys[0][:2], axis=1)[0], a["y_out"][:, 0], rtol=1e-4, atol=1e-5)


def test_session_stepper_takes_the_threads_setting(rng):
    """A batch-1 session's stepper runs on fastlstm.set_num_threads' value at the time the session is made; the
    results equal a one-thread session's."""
    saved = fastlstm.config.NUM_THREADS
    m = fastlstm.Sequential([fastlstm.Input((None, 200)), L.LSTM(256)])
    x = rng.normal(size=(1, 7, 200)).astype(np.float32)
    try:
        outs = []
        for n in (1, 2):
            fastlstm.set_num_threads(n)
            s = m.stream(batch_size=1)
            if fastlstm.get_backend().name == "cython" and PACKED:
                assert s._rnn[0][1].stepper.threads == n
            outs.append([s.step(x[:, k:k + 1]) for k in range(7)])
    finally:
        fastlstm.set_num_threads(saved)
    for a, b in zip(*outs):
        npt.assert_array_equal(a, b)
    npt.assert_allclose(outs[0][-1], m.predict(x), rtol=1e-4, atol=1e-5)


gru_cy = pytest.importorskip("fastlstm._kernels.gru_cy", reason="the Cython extension is built in CI")


@needs_packed
@pytest.mark.parametrize("I, H", [(3, 5), (70, 66)])
@pytest.mark.parametrize("opts", [dict(), dict(reset_after=False), dict(clip=0.6),
                                  dict(reset_after=False, act_specs=[(4, 1 / 6, 0.5), (10, 0, 0)])], ids=str)
def test_gru_stepper_against_reference(I, H, opts):
    # a kinked activation (hard_sigmoid) in float32: another summation order may land on the other side of a
    # kink, so those cases get the looser float32 tolerance of test_kernels.py
    tol = dict(rtol=3e-3, atol=1e-3) if "act_specs" in opts else dict(rtol=1e-4, atol=1e-5)
    from fastlstm._kernels import _blas, gru_ref
    from fastlstm._kernels.args import gru_args
    a = gru_args(10, 1, I, H, np.float32, np.random.default_rng(H), **opts)
    gru_ref.gru_forward(*a.values())
    packed, h = _check_gru_stepper(_blas.Packed64, gru_cy.GRUStepper, a, tol)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        gru_cy.GRUStepper(packed[0], packed[0], None, a["b_x"], a["b_h"], a["act_codes"], a["act_ab"], 0.0, True, h)


@pytest.mark.parametrize("reset_after", [True, False])
def test_batch1_gru_session_with_mask(rng, reset_after):
    m = fastlstm.Sequential([L.Embedding(25, 6, mask_zero=True), L.GRU(66, return_sequences=True,
                                                                        reset_after=reset_after), L.GRU(9)])
    x = rng.integers(1, 25, size=(1, 10))
    x[0, 2:4] = 0
    m.predict(x)
    check_against_predict(m, x)
    check_against_predict(m, x, chunks=[3, 1, 6])


def test_batch1_chain_embedding_lstm_dropout_dense(rng):
    """Batch 1 plain chains skip the graph walk; they must equal predict and keep predict's input errors."""
    m = fastlstm.Sequential([L.Embedding(30, 8), L.LSTM(12, return_sequences=True), L.Dropout(0.3),
                             L.GRU(7, return_sequences=True), L.Dense(4, activation="softmax")])
    x = rng.integers(0, 30, size=(1, 9))
    m.predict(x)
    m.set_weights([0.4 * rng.normal(size=w.shape).astype(np.float32) for w in m.get_weights()])   # biases too
    s = m.stream()
    # the Cython backend's steppers (built with AVX2/FMA)
    assert (s._chain is not None) == (hasattr(fastlstm.get_backend(), "Packed64") and PACKED)
    check_against_predict(m, x, chunks=[1, 3, 5])
    check_against_predict(m, x.astype(np.float64), chunks=[2, 7])      # integral float ids take the general path
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 30\)"):
        s.step(np.array([[31]]))
    last = fastlstm.Sequential([L.Embedding(30, 8), L.LSTM(12), L.Dense(1, activation="sigmoid")])
    last.predict(x)
    last.set_weights([0.4 * rng.normal(size=w.shape).astype(np.float32) for w in last.get_weights()])
    check_against_predict(last, x)


# ---- compiled chains (chain_cy.ChainStepper): Embedding -> LSTM/GRU -> Dense in one call at batch 1 ----------
def _has_chain():
    """The backend streams batch-1 chains in one compiled call (Cython, built with AVX2/FMA)."""
    return hasattr(fastlstm.get_backend(), "ChainStepper") and PACKED


def test_cython_backend_has_chain_stepper():
    """The chain step ships with the other steppers: a build that lost it must not fall back silently."""
    if fastlstm.get_backend().name == "cython":
        assert hasattr(fastlstm.get_backend(), "ChainStepper")


def chain_model(head, rnns, vocab=40, embed=8, mask_zero=False, float_in=None, rng=None):
    """Sequential([Embedding | Input] + rnns + head) built, with random weights at a scale that exercises the
    activations (biases included)."""
    first = [fastlstm.Input((None, float_in))] if float_in else [L.Embedding(vocab, embed, mask_zero=mask_zero)]
    m = fastlstm.Sequential(first + rnns + head)
    m.predict(rng.normal(size=(1, 2, float_in)).astype(np.float32) if float_in else np.ones((1, 2), np.int64))
    m.set_weights([0.5 * rng.normal(size=w.shape).astype(np.float32) for w in m.get_weights()])
    return m


def check_compiled(m, x, chunks, expect_fallback=False):
    """Stream x through a fresh session in `chunks`, compare with predict (the sequence output, or every
    prefix's last output); the compiled chain must be the session's step and must have taken the chunks."""
    s = m.stream()
    outs = stream_all(s, x, chunks)
    ref = m.predict(x)
    if ref.ndim == 3:
        npt.assert_allclose(np.concatenate(outs, axis=1), ref, **TOL32)
    else:
        t = 0
        for k, o in zip(chunks, outs):
            t += k
            npt.assert_allclose(o, m.predict(x[:, :t]), **TOL32)
    if _has_chain():
        c = s._compiled
        assert c is not None and s.step == c.step
        if expect_fallback:
            assert c.n_fallback > 0 and c.n_compiled > 0
        else:
            assert (c.n_compiled, c.n_fallback) == (len(chunks), 0)
    return s


RNN_KINDS = {"lstm": lambda n, seq: L.LSTM(n, return_sequences=seq),
             "gru": lambda n, seq: L.GRU(n, return_sequences=seq),
             "gru_before": lambda n, seq: L.GRU(n, return_sequences=seq, reset_after=False)}


@pytest.mark.parametrize("kind", sorted(RNN_KINDS))
@pytest.mark.parametrize("head", ["sigmoid", "softmax"])
@pytest.mark.parametrize("seq", [False, True])
def test_compiled_chain_token_stream_equals_predict(rng, kind, head, seq):
    dense = L.Dense(1, activation="sigmoid") if head == "sigmoid" else L.Dense(37, activation="softmax")
    m = chain_model([dense], [RNN_KINDS[kind](70, seq)], rng=rng)
    x = rng.integers(0, 40, size=(1, 11))
    check_compiled(m, x, [1] * 11)
    check_compiled(m, x.astype(np.int32), [1, 3, 5, 2])


@pytest.mark.parametrize("seq", [False, True])
def test_compiled_chain_two_recurrent_layers(rng, seq):
    m = chain_model([L.Dropout(0.5), L.Dense(5, activation="tanh"), L.Dense(9, activation="softmax")],
                    [L.LSTM(12, return_sequences=True), L.GRU(66, return_sequences=seq, reset_after=False)],
                    rng=rng)
    x = rng.integers(0, 40, size=(1, 10))
    check_compiled(m, x, [1] * 10)
    check_compiled(m, x, [4, 1, 5])


@pytest.mark.parametrize("act", ["relu", "linear", "tanh", "hard_sigmoid", "elu", "gelu", "softplus", "silu",
                                 "leaky_relu", "relu6", "selu", "softsign", "hard_silu", "exponential", "softmax"])
def test_compiled_chain_float_input_dense_activations(rng, act):
    """(1, k, I) float input; Dense before and after the recurrent layer, every C activation of the head."""
    m = chain_model([L.Dense(6, activation=act)],
                    [L.Dense(10, activation="relu"), L.GRU(9, return_sequences=True)], float_in=5, rng=rng)
    x = rng.normal(size=(1, 8, 5)).astype(np.float32)
    check_compiled(m, x, [1, 2, 5])
    s = check_compiled(m, x[:, :3], [3])
    npt.assert_allclose(s.step(x[:, 3:5].astype(np.float64)), m.predict(x[:, :5])[:, 3:], **TOL32)  # converted


def test_compiled_chain_softmax_large_logits(rng):
    """Logits far beyond exp's float32 range: the softmax subtracts the max first, as NumPy's does."""
    m = chain_model([L.Dense(30, activation="softmax")], [L.LSTM(8)], rng=rng)
    m.layers[-1].set_weights([300 * w for w in m.layers[-1].get_weights()])
    x = rng.integers(0, 40, size=(1, 6))
    check_compiled(m, x, [1] * 6)
    assert np.isfinite(m.stream().step(x)).all()


def test_compiled_chain_not_built_for_numpy_only_activation(rng):
    """A Dense activation without a C version keeps the NumPy chain closure (and stays correct)."""
    m = chain_model([L.Dense(4, activation="log_softmax")], [L.LSTM(6)], rng=rng)
    s = m.stream()
    assert s._compiled is None
    assert (s._chain is not None) == (hasattr(fastlstm.get_backend(), "Packed64") and PACKED)
    check_against_predict(m, rng.integers(0, 40, size=(1, 5)))


def test_compiled_chain_mask_zero_padding(rng):
    """Chunks with padding ids (0) of a mask_zero Embedding take the general path, the others the compiled
    chain, on the same states."""
    m = chain_model([L.Dense(7, activation="softmax")],
                    [L.LSTM(16, return_sequences=True), L.GRU(8, return_sequences=True)], mask_zero=True, rng=rng)
    x = rng.integers(1, 40, size=(1, 14))
    x[0, :2] = 0
    x[0, 6] = 0
    x[0, 12:] = 0
    check_compiled(m, x, [1] * 14, expect_fallback=True)
    check_compiled(m, x, [3, 4, 2, 5], expect_fallback=True)
    last = chain_model([L.Dense(1, activation="sigmoid")], [L.LSTM(16)], mask_zero=True, rng=rng)
    check_compiled(last, x, [1] * 14, expect_fallback=True)


def test_compiled_chain_input_errors_and_fallbacks(rng):
    m = chain_model([L.Dense(1, activation="sigmoid")], [L.LSTM(8)], vocab=30, rng=rng)
    x = rng.integers(0, 30, size=(1, 6))
    s = m.stream()
    for bad in ([[30]], [[-1]], [[3, 31]]):
        with pytest.raises(ValueError, match=r"token ids must be in \[0, 30\)"):
            s.step(np.array(bad))
        with pytest.raises(ValueError, match=r"token ids must be in \[0, 30\)"):
            s.step(np.array(bad, np.int32))
    with pytest.raises(ValueError, match="rank 2"):
        s.step(np.zeros((1, 2, 3), np.int64))
    with pytest.raises(ValueError, match="k >= 1"):
        s.step(np.zeros((1, 0), np.int64))
    with pytest.raises(TypeError, match="integer token ids"):
        s.step(np.array([[1.5]]))
    # the refused chunks left the state alone; other id types (uint8, lists, integral floats, strided) are
    # converted or taken by the general path
    steps = [x[:, :1].astype(np.uint8), x[:, 1:2].tolist(), x[:, 2:3].astype(np.float32), x[:, 3:5],
             np.asfortranarray(np.repeat(x[:, 5:6], 2, 0))[:1]]
    outs = [s.step(a) for a in steps]
    for t, o in zip([1, 2, 3, 5, 6], outs):
        npt.assert_allclose(o, m.predict(x[:, :t]), **TOL32)
    if _has_chain():
        c = s._compiled
        assert c.run(np.array([[30]])) is None and c.run(np.array([[1]], np.int16)) is None
        assert c.run(np.zeros((1, 0), np.int64)) is None and c.run([[1]]) is None
        assert c.run(np.array([[1.0]])) is None and c.run(np.zeros((2, 1), np.int64)) is None
        assert c.n_compiled >= 2


def test_compiled_chain_state_set_state_reset(rng):
    m = chain_model([L.Dense(3, activation="softmax")], [L.GRU(10, return_sequences=True), L.LSTM(7)], rng=rng)
    x = rng.integers(0, 40, size=(1, 10))
    s = m.stream()
    full = [s.step(x[:, t:t + 1]) for t in range(10)]
    s.reset()
    npt.assert_allclose(s.step(x[:, :1]), full[0], **TOL32)
    for t in range(1, 4):
        s.step(x[:, t:t + 1])
    parked = pickle.loads(pickle.dumps(s.state))
    other = m.stream()
    other.step(x[:, 5:9])                                       # some unrelated conversation
    other.set_state(parked)
    for t in range(4, 10):
        npt.assert_allclose(other.step(x[:, t:t + 1]), full[t], **TOL32)
    npt.assert_allclose(s.state[m.layers[2].name][1], parked[m.layers[2].name][1])    # untouched by `other`
    if _has_chain():
        assert (s._compiled.n_fallback, other._compiled.n_fallback) == (0, 0)


def test_compiled_chain_sees_weight_changes_between_steps(rng):
    """set_weights on every layer, fit, in-place edits (float32 and float64 weights) between steps: the
    compiled session follows a float64 session (graph walk, general kernels) that sees the same changes."""
    m = chain_model([L.Dense(5, activation="softmax")], [L.LSTM(9, return_sequences=True), L.GRU(6)], rng=rng)
    emb, lstm, gru, dense = m.layers
    x = rng.integers(0, 40, size=(1, 40))
    s, ref = m.stream(), m.stream(dtype="float64")

    def scaled(layer, f):
        return [f * w for w in layer.get_weights()]

    changes = [lambda: dense.set_weights(scaled(dense, 1.5)),
               lambda: emb.set_weights(scaled(emb, -0.7)),
               lambda: lstm.set_weights(scaled(lstm, 0.8)),
               lambda: gru.set_weights(scaled(gru, 1.2)),
               lambda: dense._weights[0].__imul__(-1),          # in place, no notification
               lambda: emb._weights[0].__iadd__(0.1),
               lambda: setattr(dense, "_weights", [w.astype(np.float64) for w in dense._weights]),
               lambda: setattr(emb, "_weights", [emb._weights[0].astype(np.float64)]),
               lambda: dense._weights[1].__isub__(0.5),         # float64, in place
               lambda: emb._weights[0].__imul__(0.9),
               lambda: m.fit(rng.integers(0, 40, size=(4, 5)), np.eye(5)[[0, 1, 2, 3]], epochs=2, verbose=0)]
    m.compile("adam", "categorical_crossentropy")
    t = 0
    for change in [None] + changes:
        if change is not None:
            before = [w.copy() for w in m.get_weights()]
            change()
            assert any(a.dtype != b.dtype or not np.array_equal(a, b) for a, b in zip(before, m.get_weights()))
        for k in (1, 2):
            got, want = s.step(x[:, t:t + k]), ref.step(x[:, t:t + k])
            npt.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
            t += k
    assert t <= x.shape[1]
    if _has_chain():
        assert s._compiled.n_fallback == 0 and s._compiled.n_compiled == 2 * (len(changes) + 1)
    s.reset()
    npt.assert_allclose(s.step(x[:, :7]), m.predict(x[:, :7]), **TOL32)   # and equal to predict afterwards


def test_compiled_chain_threads_equal_serial(rng):
    m = chain_model([L.Dense(50, activation="softmax")], [L.LSTM(64, return_sequences=True), L.GRU(32)],
                    vocab=100, rng=rng)
    xs = [rng.integers(0, 100, size=(1, 150)) for _ in range(2)]

    def run(x):
        s = m.stream()
        return np.concatenate([s.step(x[:, t:t + 1]) for t in range(x.shape[1])])

    serial = [run(x) for x in xs]
    results = [None, None]
    start = threading.Barrier(2)

    def worker(i):
        start.wait()
        results[i] = run(xs[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for got, want in zip(results, serial):
        npt.assert_array_equal(got, want)
    # and right: a float64 session (graph walk, general kernels) over all 150 steps
    ref = m.stream(dtype="float64")
    want = np.concatenate([ref.step(xs[0][:, t:t + 1]) for t in range(xs[0].shape[1])])
    npt.assert_allclose(serial[0], want, rtol=1e-4, atol=1e-5)


def test_compiled_chain_used_for_demo_model():
    """The bundled demo model (Embedding(10000, 32) -> LSTM(32) -> Dense(1, sigmoid)) steps through the compiled
    chain: session.step is its step and no token falls back."""
    from fastlstm import demo
    m, vocab = demo.load_bundled()
    ids = np.array([vocab.encode(demo.STREAM_REVIEW)])
    s = m.stream()
    scores = [s.step(ids[:, t:t + 1]) for t in range(ids.shape[1])]
    npt.assert_allclose(scores[-1], m.predict(ids), **TOL32)
    npt.assert_allclose(scores[len(scores) // 2], m.predict(ids[:, :len(scores) // 2 + 1]), **TOL32)
    if fastlstm.get_backend().name == "cython" and PACKED:
        assert type(s._compiled).__name__ == "ChainStepper"
        assert s.step == s._compiled.step
        assert (s._compiled.n_compiled, s._compiled.n_fallback) == (ids.shape[1], 0)


# ---- the Numba backend's batch-1 steppers (step_numba.LSTMStepper / GRUStepper) ------------------------------
_KINKED = {2, 4, 6, 15, 16}          # relu, hard_sigmoid, thresholded_relu, relu6, hard_silu (acts.py codes)


def _act_tol(opts):
    """float32 tolerance against the reference: another summation order may land on the other side of a kink, and
    an unbounded gate activation (e.g. a linear forget gate) amplifies every rounding difference over the steps."""
    specs = opts.get("act_specs")
    if not specs:
        return dict(rtol=1e-4, atol=1e-5)
    return dict(rtol=3e-3, atol=1e-3) if any(s[0] in _KINKED for s in specs) else dict(rtol=1e-3, atol=1e-4)


def _act_scale(opts):
    """Weight scale: small enough that an exponential candidate activation does not overflow within the steps."""
    return 0.05 if any(s[0] == 14 for s in opts.get("act_specs", [])) else 0.2


def _numba_steppers():
    pytest.importorskip("numba")
    from fastlstm._kernels import step_numba
    if not step_numba.AVAILABLE:
        pytest.skip("NUMBA_DISABLE_JIT is set: the Numba backend has no steppers")
    return step_numba


def _numba_case(cell, T, I, H, opts):
    """(step_numba, a batch-1 reference case of `cell` with its reference outputs filled in, the tolerance) for a
    Numba stepper test."""
    step_numba = _numba_steppers()
    from fastlstm._kernels import args, gru_ref, lstm_ref
    make, forward = (args.lstm_args, lstm_ref.lstm_forward) if cell == "lstm" else (args.gru_args, gru_ref.gru_forward)
    a = make(T, 1, I, H, np.float32, np.random.default_rng(H), scale=_act_scale(opts), **opts)
    forward(*a.values())
    assert np.isfinite(a["y_out"]).all()                 # something to compare
    return step_numba, a, _act_tol(opts)


def _act_cases(n_acts):
    """act_specs covering every activation code (acts.py) in the candidate / cell-output slots (slot 1, and 2 for
    LSTM), with the defaults elsewhere, plus hard_sigmoid as the gate activation (slot 0). (An unbounded gate
    activation makes the recurrence blow up within a few steps, in every backend: nothing left to compare.)"""
    from fastlstm._kernels import acts
    default = [(acts.SIGMOID, 0.0, 0.0), (acts.TANH, 0.0, 0.0), (acts.TANH, 0.0, 0.0)][:n_acts]
    ab = {acts.HARD_SIGMOID: (0.2, 0.5), acts.LEAKY_RELU: (0.1, 0.0), acts.THRESHOLDED_RELU: (0.3, 0.0),
          acts.SCALED_TANH: (0.8, 1.3), acts.AFFINE: (0.5, 0.1), acts.ELU: (1.0, 0.0)}
    cases = [[(acts.HARD_SIGMOID, 0.2, 0.5)] + default[1:]]
    for code in range(acts.N_CODES):
        slot = 1 + code % (n_acts - 1)
        cases.append(default[:slot] + [(code,) + ab.get(code, (0.0, 0.0))] + default[slot + 1:])
    return cases


@pytest.mark.parametrize("I, H", [(3, 5), (70, 66), (128, 128)])
@pytest.mark.parametrize("opts", [dict(), dict(peepholes=True), dict(clip=0.7), dict(input_forget=True),
                                  dict(peepholes=True, clip=0.7, input_forget=True)]
                         + [dict(act_specs=s) for s in _act_cases(3)], ids=str)
def test_numba_lstm_stepper_against_reference(I, H, opts):
    step_numba, a, tol = _numba_case("lstm", 12, I, H, opts)
    st, x, packed, h, c = _check_lstm_stepper(step_numba.Packed64, step_numba.LSTMStepper, a, tol)
    assert (st.n_in, st.units) == (I, H)
    # anything but a float32 C-contiguous (1, k, I) array is handed back to the caller, the state untouched
    for bad in (x.astype(np.float64), x[:, ::2], np.zeros((1, 0, I), np.float32), x[:, :, :-1].copy(),
                np.zeros((2, 1, I), np.float32), x[0], x.tolist(), np.asfortranarray(np.zeros((1, 2, I), np.float32))):
        assert st.step(bad, False) is None
    npt.assert_allclose(h, a["hT_out"], **tol)
    with pytest.raises(ValueError, match="expected x"):
        st.run(np.zeros((2, 1, I + 1), np.float32), np.zeros((2, 1, H), np.float32))
    with pytest.raises(ValueError, match="expected x"):
        st.run(np.zeros((2, 1, I)), np.zeros((2, 1, H), np.float32))
    with pytest.raises(ValueError, match="inconsistent shapes"):
        step_numba.LSTMStepper(packed, a["b"][:-1], a["p"], a["act_codes"], a["act_ab"], 0.0, False, h, c)


@pytest.mark.parametrize("I, H", [(3, 5), (70, 66), (128, 128)])
@pytest.mark.parametrize("opts", [dict(), dict(reset_after=False), dict(clip=0.6), dict(reset_after=False, clip=0.6)]
                         + [dict(act_specs=s, reset_after=ra) for s in _act_cases(2) for ra in (True, False)], ids=str)
def test_numba_gru_stepper_against_reference(I, H, opts):
    step_numba, a, tol = _numba_case("gru", 10, I, H, opts)
    packed, h = _check_gru_stepper(step_numba.Packed64, step_numba.GRUStepper, a, tol)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        step_numba.GRUStepper(*packed, a["b_x"][:-1], a["b_h"], a["act_codes"], a["act_ab"], 0.0, a["reset_after"],
                              h)


@pytest.fixture
def numba_backend(monkeypatch):
    """The Numba backend for one test; its general recurrent kernels raise while `forbid` is set, so a test
    fails if a session falls back to them instead of the stepper."""
    _numba_steppers()
    fastlstm.set_backend("numba")
    ns = fastlstm.get_backend()
    kernels = {"lstm_forward": ns.lstm_forward, "gru_forward": ns.gru_forward}
    flag = {"forbid": False}

    def guarded(name):
        def kern(*args, **kw):
            if flag["forbid"]:
                raise AssertionError(f"the session fell back to numba {name} instead of the stepper")
            return kernels[name](*args, **kw)
        return kern

    for name in kernels:
        monkeypatch.setattr(ns, name, guarded(name))
    yield flag
    fastlstm.set_backend(fastlstm.config.BACKEND)


@pytest.mark.parametrize("kind", sorted(RNN_KINDS))
@pytest.mark.parametrize("seq", [False, True])
def test_numba_session_steps_through_stepper(rng, numba_backend, kind, seq):
    from fastlstm._kernels import step_numba
    m = fastlstm.Sequential([fastlstm.Input((None, 6)), RNN_KINDS[kind](20, seq)])
    x = rng.normal(size=(1, 9, 6)).astype(np.float32)
    m.predict(x)
    m.set_weights([0.5 * rng.normal(size=w.shape).astype(np.float32) for w in m.get_weights()])   # biases too
    full = m.predict(x)
    prefixes = [m.predict(x[:, :t]) for t in range(1, 10)]
    s = m.stream()
    r = s._rnn[0][1]
    assert isinstance(r.stepper, step_numba.LSTMStepper if kind == "lstm" else step_numba.GRUStepper)
    numba_backend["forbid"] = True
    outs = stream_all(s, x, [1, 3, 1, 4])
    outs += stream_all(s, np.concatenate([x, x.astype(np.float64)], 1)[:, 9:], [2, 7])     # converted input
    if seq:
        npt.assert_allclose(np.concatenate(outs[:4], 1), full, **TOL32)
    else:
        for t, o in zip([1, 4, 5, 9], outs):
            npt.assert_allclose(o, prefixes[t - 1], **TOL32)
    numba_backend["forbid"] = False
    twice = m.predict(np.concatenate([x, x], 1))
    npt.assert_allclose(outs[-1] if not seq else np.concatenate(outs, 1), twice if not seq else twice, **TOL32)


def test_numba_session_sees_weight_changes_between_steps(rng, numba_backend):
    from fastlstm._kernels import step_numba
    m = fastlstm.Sequential([fastlstm.Input((None, 3)), L.LSTM(4)])
    g = fastlstm.Sequential([fastlstm.Input((None, 3)), L.GRU(5, reset_after=False)])
    x = rng.normal(size=(1, 1, 3)).astype(np.float32)
    for model in (m, g):
        s = model.stream()
        s.step(x)
        first = s._rnn[0][1].stepper
        for scale in (0.5, -1.5):      # twice: the session's step is bound again after each repack
            model.set_weights([w * scale for w in model.get_weights()])
            s.reset()
            want1, want2 = model.predict(x), model.predict(np.concatenate([x, x], 1))
            numba_backend["forbid"] = True
            npt.assert_allclose(s.step(x), want1, **TOL32)
            npt.assert_allclose(s.step(x.astype(np.float64)), want2, **TOL32)
            numba_backend["forbid"] = False
        assert s._rnn[0][1].stepper is not first
        assert isinstance(s._rnn[0][1].stepper, (step_numba.LSTMStepper, step_numba.GRUStepper))


def test_numba_chain_and_masked_stream(rng, numba_backend):
    """Batch-1 chains run the Numba steppers through the chain closure; masked chunks take the general kernel
    on the same state arrays."""
    m = fastlstm.Sequential([L.Embedding(30, 8), L.LSTM(12, return_sequences=True), L.Dropout(0.3),
                             L.GRU(7, return_sequences=True), L.Dense(4, activation="softmax")])
    x = rng.integers(1, 30, size=(1, 9))
    m.predict(x)
    m.set_weights([0.4 * rng.normal(size=w.shape).astype(np.float32) for w in m.get_weights()])
    s = m.stream()
    assert s._chain is not None and s._compiled is None           # no compiled chain on this backend
    assert all(r.stepper is not None for _, r in s._rnn)
    want = m.predict(x)
    numba_backend["forbid"] = True
    npt.assert_allclose(np.concatenate(stream_all(s, x, [1, 3, 5]), 1), want, **TOL32)
    numba_backend["forbid"] = False
    mm = fastlstm.Sequential([L.Embedding(25, 6, mask_zero=True), L.LSTM(70, return_sequences=True), L.GRU(9)])
    xm = rng.integers(1, 25, size=(1, 11))
    xm[0, 3:5] = 0
    mm.predict(xm)
    check_against_predict(mm, xm)
    check_against_predict(mm, xm, chunks=[4, 1, 6])
