"""Embedding -> recurrent layer: each distinct token projected once (TokenRows, the kernels' projected-input
mode) must give exactly what the gathered path gives (which the Keras goldens check), and its gradients must
match finite differences in float64."""
import numpy as np
import numpy.testing as npt
import pytest

import fastlstm
from fastlstm import layers as L
from fastlstm.layers import recurrent

from test_training_gradcheck import check_gradients, loss_and_grads, padded_tokens, prepare


@pytest.fixture
def project(monkeypatch):
    """project(True): every Embedding -> RNN pair projects; project(False): none does."""
    def set_(on):
        for k in ("train", "predict"):
            monkeypatch.setitem(recurrent.PROJECT_MAX_DISTINCT, k, 1.0 if on else -1.0)
        monkeypatch.setattr(recurrent, "PROJECT_MIN_WORK_PER_VOCAB", 0)
    return set_


def grads_and_outputs(model, x, y):
    """(loss, gradients, how many recurrent layers ran projected; a Bidirectional counts once if either half
    did) of one training forward/backward."""
    loss, grads, ctxs = loss_and_grads(model, x, y, rng=np.random.default_rng(0), with_ctxs=True)
    projected = [c for c in ctxs if isinstance(c, dict)
                 and ("rows" in c or "rows" in c.get("cf", {}) or "rows" in c.get("cb", {}))]
    return loss, grads, len(projected)


MODELS = {
    "lstm": lambda V: [L.Embedding(V, 6), L.LSTM(7), L.Dense(1, activation="sigmoid")],
    "lstm_mask_seq_backwards": lambda V: [L.Embedding(V, 6, mask_zero=True),
                                          L.LSTM(7, return_sequences=True, go_backwards=True), L.LSTM(4),
                                          L.Dense(1, activation="sigmoid")],
    "gru_reset_after": lambda V: [L.Embedding(V, 5, mask_zero=True), L.GRU(6), L.Dense(1, activation="sigmoid")],
    "gru_reset_before": lambda V: [L.Embedding(V, 5), L.GRU(6, reset_after=False, return_sequences=True),
                                   L.GRU(3), L.Dense(1, activation="sigmoid")],
    "bidirectional_lstm": lambda V: [L.Embedding(V, 4, mask_zero=True), L.Bidirectional(L.LSTM(5)),
                                     L.Dense(1, activation="sigmoid")],
    "bidirectional_gru_sum": lambda V: [L.Embedding(V, 4), L.Bidirectional(L.GRU(5), merge_mode="sum"),
                                        L.Dense(1, activation="sigmoid")],
}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: d.__name__)
def test_projected_equals_gathered(project, name, dtype):
    V, B, T = 30, 8, 12                     # 96 positions over 30 ids: tokens repeat
    rng = np.random.default_rng(5)
    x = padded_tokens(rng, B, T, V)
    y = rng.integers(0, 2, (B, 1)).astype(np.float32)
    fastlstm.set_random_seed(3)
    m = fastlstm.Sequential(MODELS[name](V))
    m.predict(x[:1])
    if dtype == np.float64:
        from test_training_gradcheck import to_float64
        to_float64(m)
    m.compile(optimizer="sgd", loss="binary_crossentropy")
    out = {}
    for on in (True, False):
        project(on)
        loss, grads, n_projected = grads_and_outputs(m, x, y)
        out[on] = (m.predict(x), loss, grads)
        assert n_projected == (1 if on else 0)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-13)
    npt.assert_allclose(out[True][0], out[False][0], **tol)
    npt.assert_allclose(out[True][1], out[False][1], **tol)
    for g1, g0 in zip(out[True][2], out[False][2]):
        npt.assert_allclose(g1, g0, **tol)


def test_projected_gradients_match_finite_differences(project):
    project(True)
    rng = np.random.default_rng(11)
    x = padded_tokens(rng, 5, 9, 8)        # 8 ids over 45 positions
    y = rng.integers(0, 2, (5, 1)).astype(np.float64)
    m = prepare(fastlstm.Sequential([L.Embedding(8, 3, mask_zero=True), L.Bidirectional(L.GRU(4)),
                                     L.Dense(1, activation="sigmoid")]), "binary_crossentropy", x, rng)
    assert grads_and_outputs(m, x, y)[2] == 1
    check_gradients(m, x, y, rng)


def test_projection_only_when_tokens_repeat(monkeypatch):
    """The default distinct-id threshold: real text (a few hundred distinct words per batch) projects; a batch
    of all distinct ids runs the gathered path."""
    monkeypatch.setattr(recurrent, "PROJECT_MIN_WORK_PER_VOCAB", 0)
    m = fastlstm.Sequential([L.Embedding(1000, 4), L.LSTM(3), L.Dense(1, activation="sigmoid")])
    m.build((None, None))
    m.compile(optimizer="adam", loss="binary_crossentropy")
    y = np.zeros((4, 1), np.float32)
    repeated = np.tile(np.arange(1, 11), (4, 5))                  # 10 distinct ids over 200 positions
    distinct = np.arange(1, 201).reshape(4, 50)
    assert grads_and_outputs(m, repeated, y)[2] == 1
    assert grads_and_outputs(m, distinct, y)[2] == 0


def test_projection_only_when_the_input_gemm_is_large():
    """The default work threshold: one short review through a small model skips the distinct-id pass (it
    would cost about what it saves); a training batch of the IMDB model projects."""
    y = np.zeros((1, 1), np.float32)
    small = fastlstm.Sequential([L.Embedding(10000, 32), L.LSTM(32), L.Dense(1, activation="sigmoid")])
    small.build((None, None))
    small.compile(optimizer="adam", loss="binary_crossentropy")
    assert grads_and_outputs(small, np.tile(np.arange(1, 11), (1, 20)), y)[2] == 0
    big = fastlstm.Sequential([L.Embedding(20000, 128), L.LSTM(128), L.Dense(1, activation="sigmoid")])
    big.build((None, None))
    big.compile(optimizer="adam", loss="binary_crossentropy")
    x = np.random.default_rng(0).integers(1, 300, (32, 200))
    assert grads_and_outputs(big, x, np.zeros((32, 1), np.float32))[2] == 1


def test_no_projection_when_embedding_output_is_shared_or_dropped(project):
    """An Embedding output read by two layers, or an RNN with input dropout in training, takes the gathered
    path; the gradients still match the all-gathered run."""
    project(True)
    inp = fastlstm.Input((None,), dtype="int32")
    e = L.Embedding(20, 4)(inp)
    a = L.LSTM(3)(e)
    b = L.GRU(3)(e)
    m = fastlstm.Model(inp, L.Dense(1, activation="sigmoid")(L.Concatenate()([a, b])))
    m.compile(optimizer="sgd", loss="binary_crossentropy")
    x = np.random.default_rng(0).integers(0, 20, (6, 10))
    y = np.ones((6, 1), np.float32)
    assert m._token_row_nodes() == set()
    assert grads_and_outputs(m, x, y)[2] == 0
    # dropout on one Bidirectional half: that half gathers, the other projects, and the two gradients add up
    fastlstm.set_random_seed(1)
    d = fastlstm.Sequential([L.Embedding(20, 4), L.Bidirectional(L.LSTM(3, dropout=0.5),
                                                                 backward_layer=L.LSTM(3, go_backwards=True)),
                             L.Dense(1, activation="sigmoid")])
    d.predict(x[:1])
    d.compile(optimizer="sgd", loss="binary_crossentropy")
    got = grads_and_outputs(d, x, y)
    project(False)
    want = grads_and_outputs(d, x, y)
    assert got[2] == 1 and want[2] == 0
    for g1, g0 in zip(got[1], want[1]):
        npt.assert_allclose(g1, g0, rtol=1e-5, atol=1e-6)


def test_fit_with_projection_matches_fit_without(project):
    """Whole fits (Adam, several batches with repeated ids) agree to float32 rounding either way."""
    rng = np.random.default_rng(2)
    x = rng.integers(0, 50, (64, 20))
    y = (x[:, :5].sum(1, keepdims=True) > 125).astype(np.float32)
    weights = []
    for on in (True, False):
        project(on)
        fastlstm.set_random_seed(4)
        m = fastlstm.Sequential([L.Embedding(50, 8, mask_zero=True), L.LSTM(8), L.Dense(1, activation="sigmoid")])
        m.compile(optimizer="adam", loss="binary_crossentropy")
        m.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
        weights.append(m.get_weights())
    for a, b in zip(*weights):
        npt.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_predict_keeps_the_token_table_once_it_pays(monkeypatch):
    """After a layer has projected as many positions as the vocabulary has ids, predict gathers rows of the whole
    table[V] @ w_x: same outputs; the table follows weight changes of the Embedding (set_weights, fit) and of the
    layer itself; over the byte budget it is never built."""
    V = 40
    fastlstm.set_random_seed(0)
    m = fastlstm.Sequential([L.Embedding(V, 8), L.LSTM(6), L.Dense(1, activation="sigmoid")])
    m.build((None, None))
    rng = np.random.default_rng(3)
    x = rng.integers(0, V, (3, 12))                    # 36 positions per predict
    lstm = m.layers[1]
    monkeypatch.setattr(recurrent, "PROJECT_MIN_WORK_PER_VOCAB", 0)

    def gathered():
        saved = dict(recurrent.PROJECT_MAX_DISTINCT)
        monkeypatch.setitem(recurrent.PROJECT_MAX_DISTINCT, "predict", -1.0)
        monkeypatch.setattr(recurrent, "TOKEN_TABLE_MAX_BYTES", 0)
        try:
            return m.predict(x)
        finally:
            recurrent.PROJECT_MAX_DISTINCT.update(saved)
            monkeypatch.setattr(recurrent, "TOKEN_TABLE_MAX_BYTES", 64 << 20)

    first = m.predict(x)
    assert "token_table" not in lstm._cast               # 36 < 40 positions seen
    second = m.predict(x)
    assert "token_table" in lstm._cast
    npt.assert_allclose(first, gathered(), rtol=1e-5, atol=1e-6)
    npt.assert_allclose(second, gathered(), rtol=1e-5, atol=1e-6)
    # a new embedding table: the kept projection must not be used
    emb = m.layers[0]
    emb.set_weights([emb.get_weights()[0] * 2.0])
    npt.assert_allclose(m.predict(x), gathered(), rtol=1e-5, atol=1e-6)
    # fit changes both layers in place
    m.compile(optimizer="sgd", loss="binary_crossentropy")
    m.fit(x, np.ones((3, 1), np.float32), epochs=2, verbose=0)
    for _ in range(3):
        got = m.predict(x)
    npt.assert_allclose(got, gathered(), rtol=1e-5, atol=1e-6)
    # the embedding array replaced behind the layer's back (no _weights_changed): still seen
    emb._weights = [np.ascontiguousarray(emb._weights[0][::-1])]
    npt.assert_allclose(m.predict(x), gathered(), rtol=1e-5, atol=1e-6)
    # over the budget: never built
    monkeypatch.setattr(recurrent, "TOKEN_TABLE_MAX_BYTES", 10)
    lstm._weights_changed()
    for _ in range(3):
        m.predict(x)
    assert "token_table" not in lstm._cast
