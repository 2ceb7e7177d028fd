"""Model API: batched and threaded predict, int/float inputs, list/dict inputs, lazy Sequential building,
stateful layers, input errors."""
import os

import numpy as np
import numpy.testing as npt
import pytest

import fastlstm
from fastlstm import config
from fastlstm import layers as L

TOL32 = dict(rtol=2e-5, atol=2e-6)


@pytest.fixture
def rng():
    return np.random.default_rng(5)


@pytest.fixture
def threads():
    saved = config.NUM_THREADS
    yield
    config.NUM_THREADS = saved


def embed_model():
    m = fastlstm.Sequential([L.Embedding(40, 8, mask_zero=True), L.LSTM(16), L.Dense(1, activation="sigmoid")])
    m.build((None, None))
    return m


def test_predict_batch_size_splits_and_threads_agree(rng, threads):
    m = embed_model()
    x = rng.integers(0, 40, size=(70, 9))
    config.NUM_THREADS = 1
    whole = m.predict(x)
    assert whole.shape == (70, 1)
    npt.assert_allclose(m.predict(x, batch_size=16), whole, **TOL32)
    config.NUM_THREADS = 3
    npt.assert_allclose(m.predict(x), whole, **TOL32)                  # rows split over 3 threads
    npt.assert_allclose(m.predict(x, batch_size=7), whole, **TOL32)    # batches run on the pool
    npt.assert_allclose(m.predict(x[:5]), whole[:5], **TOL32)          # small: one run
    import fastlstm.model as model_mod
    saved = model_mod.PREDICT_MAX_ROWS
    model_mod.PREDICT_MAX_ROWS = 16
    try:
        npt.assert_allclose(m.predict(x), whole, **TOL32)              # large inputs run in bounded batches
    finally:
        model_mod.PREDICT_MAX_ROWS = saved
    with pytest.raises(ValueError, match="batch_size"):
        m.predict(x, batch_size=0)


def test_kernel_threads_one_request_uses_all_a_split_batch_one_each(rng, threads, monkeypatch):
    """The kernels get config.NUM_THREADS threads when predict runs the whole batch in the calling thread (one
    request: the batch-1 LSTM steps share each step across threads), and one each in predict's workers when the
    rows are split across them (no nested threads). The outputs agree."""
    from fastlstm.backend import get_backend
    kern = get_backend()
    real, seen = kern.lstm_forward, []

    def recording(*args, **kwargs):
        seen.append(kwargs.get("threads"))
        return real(*args, **kwargs)

    monkeypatch.setattr(kern, "lstm_forward", recording)
    m = fastlstm.Sequential([fastlstm.Input((None, 4)), L.LSTM(128), L.Dense(2)])
    x = rng.normal(size=(32, 20, 4)).astype(np.float32)
    config.NUM_THREADS = 1
    one = m.predict(x[:1])
    rows = m.predict(x)
    config.NUM_THREADS = 2
    seen.clear()
    npt.assert_array_equal(m.predict(x[:1]), one)
    assert seen == ([2] if kern.name != "reference" else [None])
    seen.clear()
    npt.assert_allclose(m.predict(x), rows, **TOL32)
    assert len(seen) == 2 and set(seen) == ({1} if kern.name != "reference" else {None})


def test_threaded_batch1_predict_from_many_user_threads(rng, threads):
    """Requests served from the caller's own thread pool, each a batch-1 predict whose steps run on 2 threads
    (each calling thread gets its own OpenMP team): the results equal the serial ones."""
    from concurrent.futures import ThreadPoolExecutor
    fastlstm.set_num_threads(2)
    m = fastlstm.Sequential([fastlstm.Input((None, 16)), L.LSTM(128)])
    xs = [rng.normal(size=(1, 40, 16)).astype(np.float32) for _ in range(8)]
    want = [m.predict(x) for x in xs]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(5):
            for got, w in zip(pool.map(m.predict, xs), want):
                npt.assert_array_equal(got, w)


def _predict_in_child(model, x, want, q):
    q.put(bool(np.array_equal(model.predict(x), want)))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is a POSIX call")
@pytest.mark.parametrize("cell", [L.LSTM, L.GRU])
def test_predict_in_a_child_forked_after_threaded_predict(rng, threads, cell):
    """A process forked after the parent ran the threaded batch-1 steps (multiprocessing's default start method
    on Linux, preforking servers) predicts too, on one thread, the same numbers: libgomp's thread team does not
    survive a fork, and entering a parallel region in the child would wait forever."""
    import multiprocessing
    m = fastlstm.Sequential([fastlstm.Input((None, 16)), cell(128)])
    x = rng.normal(size=(1, 50, 16)).astype(np.float32)
    fastlstm.set_num_threads(2)
    want = m.predict(x)                         # the parent's team exists from here on
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    child = ctx.Process(target=_predict_in_child, args=(m, x, want, q))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung in predict")
    assert child.exitcode == 0 and q.get(timeout=5) is True


def test_int_and_float_inputs(rng):
    m = fastlstm.Sequential([fastlstm.Input((None, 3)), L.GRU(4)])
    xi = rng.integers(-2, 3, size=(2, 5, 3))
    npt.assert_allclose(m.predict(xi), m.predict(xi.astype(np.float32)), **TOL32)
    x64 = xi.astype(np.float64)
    assert m.predict(x64).dtype == np.float64
    e = embed_model()
    ids = rng.integers(0, 40, size=(2, 6))
    npt.assert_allclose(e.predict(ids.astype(np.float32)), e.predict(ids), **TOL32)   # integer-valued floats


def test_list_and_dict_inputs_any_length(rng):
    a, b = fastlstm.Input((None, 3), name="a"), fastlstm.Input((None, 2), name="b")
    ha = L.LSTM(4)(a)
    hb = L.GRU(4)(b)
    out = L.Dense(1)(ha)
    out2 = L.Dense(2)(hb)
    m = fastlstm.Model([a, b], [out, out2])
    xa, xb = rng.normal(size=(3, 7, 3)).astype(np.float32), rng.normal(size=(3, 2, 2)).astype(np.float32)
    p_list = m.predict([xa, xb])
    p_dict = m.predict({"b": xb, "a": xa})
    for u, v in zip(p_list, p_dict):
        npt.assert_allclose(u, v)
    assert [p.shape for p in p_list] == [(3, 1), (3, 2)]
    assert m.predict([xa[:, :1], xb])[0].shape == (3, 1)
    with pytest.raises(ValueError, match="missing input"):
        m.predict({"a": xa})


def test_sequential_builds_on_fit_and_build(rng):
    m = fastlstm.Sequential([L.LSTM(4), L.Dense(1)])
    assert not m.built
    m.compile("sgd", "mse")
    m.fit(rng.normal(size=(4, 3, 2)), np.zeros((4, 1)), verbose=0)
    assert m.built and m.layers[0].input_dim == 2
    m2 = fastlstm.Sequential([L.GRU(3)])
    m2.build((None, None, 5))
    assert [w.shape for w in m2.get_weights()] == [(5, 9), (3, 9), (2, 9)]


def test_stateful_reset_states(rng):
    m = fastlstm.Sequential([fastlstm.Input((None, 3), batch_size=2), L.LSTM(4, stateful=True)])
    ref = fastlstm.Sequential([fastlstm.Input((None, 3)), L.LSTM(4)])
    ref.set_weights(m.get_weights())
    x = rng.normal(size=(2, 6, 3)).astype(np.float32)
    m.predict(x[:, :3])
    npt.assert_allclose(m.predict(x[:, 3:]), ref.predict(x), **TOL32)    # state carried across predict calls
    m.reset_states()
    npt.assert_allclose(m.predict(x), ref.predict(x), **TOL32)


def test_input_errors(rng):
    m = fastlstm.Sequential([fastlstm.Input((None, 3)), L.LSTM(4)])
    with pytest.raises(ValueError, match="rank 3"):
        m.predict(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"\(None, None, 3\)"):
        m.predict(np.zeros((2, 4, 5)))
    with pytest.raises(TypeError, match="numeric"):
        m.predict(np.array([[["x", "y", "z"]]]))
    e = embed_model()
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 40\)"):
        e.predict(np.array([[1, 2, 40]]))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 40\)"):
        e.predict(np.array([[1, -1]]))
    with pytest.raises(TypeError, match="integer token ids"):
        e.predict(np.array([[1.5, 2.0]]))


def test_summary_and_weights_roundtrip(rng):
    m = embed_model()
    text = m.summary(print_fn=None)
    assert "Embedding" in text and "LSTM" in text
    ws = [w + 1 for w in m.get_weights()]
    m.set_weights(ws)
    for a, b in zip(m.get_weights(), ws):
        npt.assert_array_equal(a, b)
