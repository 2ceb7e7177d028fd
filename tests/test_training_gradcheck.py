"""Whole-model gradients against finite differences, in float64: the trainer's forward/backward through the
kernels' BPTT, masking, Bidirectional merges, GRU, stacked layers, initial_state, TimeDistributed, logits."""
import numpy as np
import numpy.testing as npt
import pytest

import fastlstm
from fastlstm import layers as L
from fastlstm.training.trainer import _normalize_targets


def to_float64(model):
    """Give every weight-owning layer float64 weights (fastlstm computes in the weights' and inputs' dtype)."""
    from fastlstm.training.trainer import leaf_layers
    for lyr in model.layers:
        for leaf in leaf_layers(lyr):
            leaf._weights = [w.astype(np.float64) for w in leaf._weights]
            leaf._weights_changed()


def perturb(model, rng, scale=0.5):
    model.set_weights([w + rng.uniform(-scale, scale, w.shape).astype(w.dtype) * (np.abs(w).max() + 0.1)
                       for w in model.get_weights()])


def loss_and_grads(model, x, y, rng=None, with_ctxs=False):
    """(loss, weight gradients) of one training forward/backward (with_ctxs: also every node's ctx)."""
    tr = model._trainer
    tr.setup()
    tr._ensure_grads()
    xs = model._normalize_inputs(x)
    ys = _normalize_targets(model, y, xs[0].shape[0])
    values, ctxs = tr.forward(xs, training=True, rng=rng)
    loss, _, d = tr._losses(values, ctxs, ys)
    tr._zero_grads()
    tr.backward(ctxs, d)
    grads = [g.copy() for leaf, _ in tr.leaves for g in leaf.grads]
    return (loss, grads, ctxs) if with_ctxs else (loss, grads)


def loss_only(model, x, y):
    tr = model._trainer
    xs = model._normalize_inputs(x)
    ys = _normalize_targets(model, y, xs[0].shape[0])
    values, ctxs = tr.forward(xs, training=False)
    return tr._losses(values, ctxs, ys, need_grad=False)[0]


def check_gradients(model, x, y, rng, per_weight=12, eps=1e-5):
    """4th-order central differences on `per_weight` random entries of every weight."""
    _, grads = loss_and_grads(model, x, y)
    weights = model._trainer._variables()[0]
    assert len(weights) == len(grads)
    for k, (w, g) in enumerate(zip(weights, grads)):
        flat = w.reshape(-1)
        idx = rng.choice(flat.size, size=min(per_weight, flat.size), replace=False)
        for i in idx:
            orig = flat[i]
            vals = []
            for h in (2 * eps, eps, -eps, -2 * eps):
                flat[i] = orig + h
                model._trainer.leaves[0][0]._weights_changed()
                for leaf, _ in model._trainer.leaves:
                    leaf._weights_changed()
                vals.append(loss_only(model, x, y))
            flat[i] = orig
            for leaf, _ in model._trainer.leaves:
                leaf._weights_changed()
            fd = (-vals[0] + 8 * vals[1] - 8 * vals[2] + vals[3]) / (12 * eps)
            npt.assert_allclose(g.reshape(-1)[i], fd, rtol=1e-6, atol=1e-9, err_msg=f"weight {k} entry {i}")


def prepare(model, loss, x, rng):
    model.predict(x[:1])                     # builds a lazy Sequential
    to_float64(model)
    perturb(model, rng)
    model.compile(optimizer="sgd", loss=loss)
    return model


def padded_tokens(rng, B, T, V, pre=True):
    x = rng.integers(1, V, size=(B, T))
    for b in range(B):
        n = rng.integers(0, T - 1)
        if pre:
            x[b, :n] = 0
        else:
            x[b, T - n:] = 0
    x[0, 1] = 0          # a masked step in the middle
    return x


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_embedding_masked_stacked_lstm_bce(rng):
    x = padded_tokens(rng, 5, 7, 20)
    y = rng.integers(0, 2, (5, 1)).astype(np.float64)
    m = prepare(fastlstm.Sequential([L.Embedding(20, 4, mask_zero=True), L.LSTM(5, return_sequences=True),
                                     L.LSTM(3), L.Dense(1, activation="sigmoid")]), "binary_crossentropy", x, rng)
    check_gradients(m, x, y, rng)


def test_masking_bidirectional_gru_timedistributed_softmax_sce(rng):
    x = rng.normal(size=(4, 6, 3))
    x[0, :2] = 0.0
    x[1, 3] = 0.0
    x[2, 4:] = 0.0
    y = rng.integers(0, 4, (4, 6))
    m = prepare(fastlstm.Sequential([L.Masking(0.0), L.Bidirectional(L.GRU(4, return_sequences=True)),
                                     L.TimeDistributed(L.Dense(4, activation="softmax"))]),
                "sparse_categorical_crossentropy", x, rng)
    m._trainer.setup()
    assert m._trainer.logit_node == [None]          # TimeDistributed output: Keras scores probabilities
    check_gradients(m, x, y, rng)


@pytest.mark.parametrize("merge_mode", ["sum", "mul", "ave", "concat"])
def test_bidirectional_lstm_merge_modes_mse(rng, merge_mode):
    x = padded_tokens(rng, 4, 6, 15, pre=False)
    y = rng.normal(size=(4, 2))
    m = prepare(fastlstm.Sequential([L.Embedding(15, 3, mask_zero=True),
                                     L.Bidirectional(L.LSTM(4), merge_mode=merge_mode), L.Dense(2)]), "mse", x, rng)
    check_gradients(m, x, y, rng)


@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_go_backwards_stacked(rng, reset_after):
    x = rng.normal(size=(3, 5, 4))
    y = rng.normal(size=(3, 5, 2))
    m = prepare(fastlstm.Sequential([L.GRU(4, return_sequences=True, go_backwards=True, reset_after=reset_after),
                                     L.GRU(3, return_sequences=True, reset_after=reset_after), L.Dense(2)]),
                "mse", x, rng)
    check_gradients(m, x, y, rng)


def test_lstm_zero_output_for_mask_sequence_loss_masked(rng):
    """A sequence output carrying the mask: the loss averages over valid steps only (Keras)."""
    x = padded_tokens(rng, 4, 6, 12)
    y = rng.integers(0, 3, (4, 6))
    m = prepare(fastlstm.Sequential([L.Embedding(12, 3, mask_zero=True),
                                     L.LSTM(4, return_sequences=True, zero_output_for_mask=True),
                                     L.Dense(3), L.Activation("softmax")]), "sparse_categorical_crossentropy", x, rng)
    m._trainer.setup()
    assert m._trainer.logit_node == [3]             # scored from the Activation's logits
    check_gradients(m, x, y, rng)


def test_simple_rnn_and_categorical_crossentropy(rng):
    x = rng.normal(size=(4, 5, 3))
    x[1, 2:] = 0
    y = np.eye(3)[rng.integers(0, 3, 4)]
    m = prepare(fastlstm.Sequential([L.Masking(), L.SimpleRNN(4), L.Dense(3, activation="softmax")]),
                "categorical_crossentropy", x, rng)
    check_gradients(m, x, y, rng)


def test_functional_encoder_decoder_initial_state_two_outputs(rng):
    enc_in = fastlstm.Input((None, 3))
    dec_in = fastlstm.Input((None, 2))
    _, h, c = L.LSTM(4, return_state=True)(enc_in)
    seq = L.LSTM(4, return_sequences=True)(dec_in, initial_state=[h, c])
    out1 = L.TimeDistributed(L.Dense(2))(seq)
    out2 = L.Dense(1, activation="sigmoid")(h)
    m = fastlstm.Model([enc_in, dec_in], [out1, out2])
    xe, xd = rng.normal(size=(3, 5, 3)), rng.normal(size=(3, 4, 2))
    y1, y2 = rng.normal(size=(3, 4, 2)), rng.integers(0, 2, (3, 1)).astype(float)
    m.predict([xe, xd])
    to_float64(m)
    perturb(m, rng)
    m.compile(optimizer="adam", loss=["mse", "binary_crossentropy"], loss_weights=[1.0, 0.5])
    check_gradients(m, [xe, xd], [y1, y2], rng)


def test_bidirectional_return_state_merge_none(rng):
    inp = fastlstm.Input((None, 3))
    fw, bw, hf, cf, hb, cb = L.Bidirectional(L.LSTM(3, return_sequences=True, return_state=True),
                                             merge_mode=None)(inp)
    o1 = L.TimeDistributed(L.Dense(1))(fw)
    o2 = L.Dense(2)(hb)
    m = fastlstm.Model(inp, [o1, o2])
    x = rng.normal(size=(3, 4, 3))
    m.predict(x)
    to_float64(m)
    perturb(m, rng)
    m.compile(optimizer="sgd", loss="mse")
    check_gradients(m, x, [rng.normal(size=(3, 4, 1)), rng.normal(size=(3, 2))], rng)


def test_probability_paths_with_clipping(rng):
    """BCE / CCE on outputs that are not a sigmoid/softmax layer's (no logits): Keras clips probabilities."""
    x = rng.normal(size=(4, 3, 2))
    m = prepare(fastlstm.Sequential([L.LSTM(3, return_sequences=True),
                                     L.TimeDistributed(L.Dense(2, activation="softmax"))]),
                "categorical_crossentropy", x, rng)
    check_gradients(m, x, np.eye(2)[rng.integers(0, 2, (4, 3))], rng)
    m2 = prepare(fastlstm.Sequential([L.LSTM(3, return_sequences=True),
                                      L.TimeDistributed(L.Dense(1, activation="sigmoid"))]),
                 "binary_crossentropy", x, rng)
    check_gradients(m2, x, rng.integers(0, 2, (4, 3, 1)).astype(float), rng)


def test_mae_and_from_logits(rng):
    x = rng.normal(size=(4, 3, 2))
    m = prepare(fastlstm.Sequential([L.GRU(3), L.Dense(2)]), "mae", x, rng)
    check_gradients(m, x, rng.normal(size=(4, 2)), rng)
    m2 = prepare(fastlstm.Sequential([L.GRU(3), L.Dense(3)]),
                 fastlstm.losses.SparseCategoricalCrossentropy(from_logits=True), x, rng)
    check_gradients(m2, x, rng.integers(0, 3, 4), rng)
    m3 = prepare(fastlstm.Sequential([L.GRU(3), L.Dense(1)]),
                 fastlstm.losses.BinaryCrossentropy(from_logits=True, label_smoothing=0.1), x, rng)
    check_gradients(m3, x, rng.integers(0, 2, (4, 1)).astype(float), rng)


def test_dense_relu_and_dropout_identity_at_rate_zero(rng):
    x = rng.normal(size=(4, 3, 2))
    m = prepare(fastlstm.Sequential([L.LSTM(5, return_sequences=True), L.Dropout(0.0), L.SpatialDropout1D(0.0),
                                     L.TimeDistributed(L.Dense(3, activation="tanh")), L.LSTM(2),
                                     L.Dense(2, activation="relu")]), "mse", x, rng)
    check_gradients(m, x, rng.normal(size=(4, 2)), rng)
