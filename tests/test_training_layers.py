"""Training through the layers around LSTM/GRU: Conv1D, MaxPooling1D, AveragePooling1D, GlobalMax/AveragePooling1D,
Add/Subtract/Multiply/Average/Maximum/Minimum, Flatten/Reshape/Permute/RepeatVector/Cropping1D/ZeroPadding1D/
UpSampling1D, LayerNormalization, BatchNormalization.

1. whole-model gradients against finite differences in float64 (the helpers of test_training_gradcheck.py);
   BatchNormalization's loss is taken in training mode (batch statistics), over the trainable weights only
2. Keras 3 (tests/data/train_layers, tools/goldens/training_layers.py): each layer's output, input gradient,
   weight gradients and updated moving statistics in training mode, on inputs with ties and masks; and small
   models trained by fit with SGD and Adam from the same initial weights
3. the training forward computes what inference computes, and leaves the masks as compute_mask gives them
"""
import json
import os

import numpy as np
import numpy.testing as npt
import pytest

import fastlstm
import test_training_gradcheck as gc
from fastlstm import layers as L
from fastlstm.layers.core import TokenRows
from fastlstm.loaders.keras import parse_version
from fastlstm.loaders.keras_graph import GraphBuilder
from fastlstm.loaders.keras_layers import Flavour, make_layer
from fastlstm.training.trainer import _normalize_targets, weight_trainable
from test_training_gradcheck import check_gradients, padded_tokens, prepare

DATA = os.path.join(os.path.dirname(__file__), "data", "train_layers")


@pytest.fixture
def rng():
    return np.random.default_rng(11)


@pytest.fixture
def batch_statistics(monkeypatch):
    """check_gradients with the loss in training mode (BatchNormalization on the batch statistics) and the
    gradients of the trainable weights only (the moving statistics are not)."""
    plain_loss_and_grads = gc.loss_and_grads

    def loss_training_mode(model, x, y):
        tr = model._trainer
        xs = model._normalize_inputs(x)
        values, ctxs = tr.forward(xs, training=True)
        return tr._losses(values, ctxs, _normalize_targets(model, y, xs[0].shape[0]), need_grad=False)[0]

    def loss_and_trainable_grads(model, x, y):
        loss, _ = plain_loss_and_grads(model, x, y)
        return loss, [g.copy() for g in model._trainer._variables()[1]]

    monkeypatch.setattr(gc, "loss_only", loss_training_mode)
    monkeypatch.setattr(gc, "loss_and_grads", loss_and_trainable_grads)


def series(rng, B, T, F, zero_steps=False):
    x = rng.normal(size=(B, T, F))
    if zero_steps:                   # whole zero steps for Masking: some at the end, one in the middle
        for b in range(B):
            k = int(rng.integers(0, T // 2))
            if k:
                x[b, T - k:] = 0.0
        x[0, 1] = 0.0
    return x


# ---------------------------------------------------------------------------------------------- 1. finite differences
@pytest.mark.parametrize("pooling", ["max", "avg", "max_and_avg"])
@pytest.mark.parametrize("pre", [True, False], ids=["prepad", "postpad"])
def test_pooled_gru_text_classifier(rng, pooling, pre):
    """Embedding(mask_zero)+GRU(return_sequences)+global pooling+Dense: post-padded rows repeat the last output at
    the padded steps, so the max ties there (the split gradients all flow back into that step)."""
    x = padded_tokens(rng, 5, 7, 20, pre=pre)
    y = rng.integers(0, 2, (5, 1)).astype(np.float64)
    tok = fastlstm.Input((7,), dtype="int32")
    seq = L.GRU(5, return_sequences=True)(L.Embedding(20, 4, mask_zero=True)(tok))
    pooled = {"max": lambda: L.GlobalMaxPooling1D()(seq), "avg": lambda: L.GlobalAveragePooling1D()(seq),
              "max_and_avg": lambda: L.Concatenate()([L.GlobalMaxPooling1D()(seq),
                                                     L.GlobalAveragePooling1D()(seq)])}[pooling]()
    m = prepare(fastlstm.Model(tok, L.Dense(1, activation="sigmoid")(pooled)), "binary_crossentropy", x, rng)
    check_gradients(m, x, y, rng)


def test_global_pooling_keepdims_channels_first(rng):
    x = padded_tokens(rng, 4, 6, 15)
    m = prepare(fastlstm.Sequential([L.Embedding(15, 3, mask_zero=True), L.LSTM(4, return_sequences=True),
                                     L.GlobalAveragePooling1D(keepdims=True), L.LSTM(3, return_sequences=True),
                                     L.GlobalMaxPooling1D(data_format="channels_first", keepdims=True),
                                     L.Flatten(), L.Dense(2)]), "mse", x, rng)
    check_gradients(m, x, rng.normal(size=(4, 2)), rng)


CONV_CASES = {
    "causal_dilated_tanh_maxpool": (dict(padding="causal", dilation_rate=2, activation="tanh"),
                                    L.MaxPooling1D, dict(pool_size=2)),
    "same_strided_nobias_avgpool_same": (dict(padding="same", strides=2, use_bias=False, activation="sigmoid"),
                                         L.AveragePooling1D, dict(pool_size=3, strides=2, padding="same")),
    "valid_strided_linear_maxpool_same": (dict(padding="valid", strides=3), L.MaxPooling1D,
                                          dict(pool_size=3, strides=1, padding="same")),
    "causal_groups_relu_avgpool": (dict(padding="causal", groups=2, activation="relu"), L.AveragePooling1D,
                                   dict(pool_size=2, strides=1)),
    "channels_first_same_dilated": (dict(padding="same", dilation_rate=3, activation="tanh",
                                         data_format="channels_first"), L.MaxPooling1D,
                                    dict(pool_size=2, data_format="channels_first")),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv1d_pooling_lstm(rng, case):
    conv_kw, pool_cls, pool_kw = CONV_CASES[case]
    cf = conv_kw.get("data_format") == "channels_first"
    x = rng.normal(size=(4, 4, 13) if cf else (4, 13, 4))
    stack = [fastlstm.Input(x.shape[1:]), L.Conv1D(4, 3, **conv_kw), pool_cls(**pool_kw)] + \
        ([L.Permute((2, 1))] if cf else [])
    m = prepare(fastlstm.Sequential(stack + [L.LSTM(5), L.Dense(2)]), "mse", x, rng)
    check_gradients(m, x, rng.normal(size=(4, 2)), rng)


@pytest.mark.parametrize("conv_kw", [dict(padding="causal", dilation_rate=2), dict(padding="same", strides=2),
                                     dict(padding="valid", groups=2, data_format="channels_first")],
                         ids=["causal_dilated", "same_strided", "grouped_channels_first"])
def test_conv1d_after_lstm(rng, conv_kw):
    """A Conv1D between recurrent layers: its input gradient reaches the LSTM weights."""
    x = padded_tokens(rng, 4, 9, 25)
    cf = [L.Permute((2, 1))] if conv_kw.get("data_format") == "channels_first" else []
    m = prepare(fastlstm.Sequential([fastlstm.Input((9,), dtype="int32"), L.Embedding(25, 3, mask_zero=True),
                                     L.LSTM(4, return_sequences=True)] + cf +
                                    [L.Conv1D(4, 3, activation="tanh", **conv_kw),
                                     L.AveragePooling1D(2, padding="same", data_format=conv_kw.get("data_format"))]
                                    + cf + [L.GRU(3), L.Dense(2)]), "mse", x, rng)
    check_gradients(m, x, rng.normal(size=(4, 2)), rng)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("act, loss", [("sigmoid", "binary_crossentropy"), ("softmax", "categorical_crossentropy"),
                                       ("softmax", "sparse_categorical_crossentropy")])
def test_conv1d_sigmoid_softmax_output_scored_from_logits(rng, act, loss, data_format):
    """A crossentropy on a sigmoid/softmax Conv1D output comes from its logits, as Keras 3 computes it (as for
    Dense): the loss and the SGD step match float64 NumPy on the logits, where |z| ~ 50 and every label is on the
    wrong side (the probability path clips at 1e-7: a loss near 16 and no gradient)."""
    B, T, C, F, lr = 3, 6, 2, 3, 0.01
    cf = data_format == "channels_first"
    x = rng.normal(size=(B, C, T) if cf else (B, T, C)).astype(np.float32)
    kernel = rng.normal(size=(2, C, F)).astype(np.float32)
    kernel *= np.float32(50) / np.abs(kernel).sum(axis=(0, 1)).max()
    bias = np.float32(45) * np.where(rng.random(F) < 0.5, np.float32(-1), np.float32(1))
    m = fastlstm.Sequential([fastlstm.Input(x.shape[1:]),
                             L.Conv1D(F, 2, padding="causal", activation=act, data_format=data_format)])
    m.set_weights([kernel.copy(), bias.copy()])
    m.compile(fastlstm.optimizers.SGD(learning_rate=lr), loss)
    # float64 logits z (B, T, F) in channels_last, then the output's layout (softmax acts on its last axis)
    x64 = np.swapaxes(x, 1, 2).astype(np.float64) if cf else x.astype(np.float64)
    xp = np.concatenate([np.zeros((B, 1, C)), x64], axis=1)             # causal: one zero step on the left
    z = xp[:, :-1] @ kernel[0] + xp[:, 1:] @ kernel[1] + bias
    zo = np.swapaxes(z, 1, 2) if cf else z
    if act == "sigmoid":
        y = (zo < 0).astype(np.float32)                                   # every label on the wrong side
        values = np.mean(np.maximum(zo, 0) - zo * y + np.log1p(np.exp(-np.abs(zo))), axis=-1)
        dzo = (1 / (1 + np.exp(-zo)) - y) / zo.shape[-1]
    else:
        ids = np.argmin(zo, axis=-1)                                      # the least likely class
        y = ids if loss.startswith("sparse") else np.eye(zo.shape[-1], dtype=np.float32)[ids]
        log_p = zo - zo.max(axis=-1, keepdims=True)
        log_p -= np.log(np.exp(log_p).sum(axis=-1, keepdims=True))
        onehot = np.eye(zo.shape[-1])[ids]
        values = -np.sum(onehot * log_p, axis=-1)
        dzo = np.exp(log_p) - onehot
    want_loss = values.mean()
    assert want_loss > 25
    dz = (np.swapaxes(dzo, 1, 2) if cf else dzo) / values.size
    want_dkernel = np.stack([xp[:, j:T + j].reshape(-1, C).T @ dz.reshape(-1, F) for j in (0, 1)])
    m._trainer.setup()
    assert m._trainer.logit_node == [0]
    # inference (before the step): probabilities over the output's last axis, where Keras applies the activation
    probs = 1 / (1 + np.exp(-zo)) if act == "sigmoid" else np.exp(log_p)
    npt.assert_allclose(m.predict(x, verbose=0), probs, rtol=1e-4, atol=1e-6)
    npt.assert_allclose(m.evaluate(x, y, verbose=0), want_loss, rtol=1e-5)
    npt.assert_allclose(m.train_on_batch(x, y), want_loss, rtol=1e-5)
    k1, b1 = m.get_weights()
    npt.assert_allclose((kernel - k1) / lr, want_dkernel, rtol=2e-3, atol=2e-4)
    npt.assert_allclose((bias - b1) / lr, dz.sum(axis=(0, 1)), rtol=2e-3, atol=2e-4)


def test_repeat_vector_seq2seq(rng):
    x = rng.normal(size=(4, 5, 3))
    m = prepare(fastlstm.Sequential([L.LSTM(5), L.RepeatVector(4), L.LSTM(4, return_sequences=True),
                                     L.TimeDistributed(L.Dense(2))]), "mse", x, rng)
    check_gradients(m, x, rng.normal(size=(4, 4, 2)), rng)


MERGES = {"Add": 3, "Subtract": 2, "Multiply": 3, "Average": 3, "Maximum": 3, "Minimum": 3}


@pytest.mark.parametrize("masked", [True, False], ids=["masked", "unmasked"])
@pytest.mark.parametrize("merge", sorted(MERGES))
def test_merge_of_recurrent_branches(rng, merge, masked):
    """Branches with different masks: the masked merges (OR masks, Multiply's 1s, Maximum/Minimum taking the
    other operand at masked steps) and an LSTM reading the merged mask."""
    n = MERGES[merge]
    ins = [fastlstm.Input((6, 3)) for _ in range(n)]
    rnns = [L.LSTM, L.GRU, L.LSTM]
    branches = [rnns[k](4, return_sequences=True)(L.Masking()(t) if masked else t) for k, t in enumerate(ins)]
    h = L.LSTM(3)(getattr(L, merge)()(branches))
    m = fastlstm.Model(ins, L.Dense(2)(h))
    x = [series(rng, 4, 6, 3, zero_steps=masked) for _ in range(n)]
    m.predict(x)
    gc.to_float64(m)
    gc.perturb(m, rng)
    m.compile(optimizer="sgd", loss="mse")
    check_gradients(m, x, rng.normal(size=(4, 2)), rng)


@pytest.mark.parametrize("merge", ["Add", "Multiply", "Maximum", "Minimum", "Subtract"])
def test_merge_broadcast_sequence_and_vector(rng, merge):
    """A (batch, features) input merged with a (batch, steps, features) one: expanded at axis 1 and broadcast, its
    gradient summed over the steps."""
    inp = fastlstm.Input((5, 3))
    seq = L.LSTM(4, return_sequences=True)(inp)
    vec = L.GRU(4)(inp)
    merged = getattr(L, merge)()([vec, seq] if merge == "Subtract" else [seq, vec])
    m = fastlstm.Model(inp, L.Dense(1)(L.LSTM(3)(merged)))
    x = rng.normal(size=(4, 5, 3))
    m.predict(x)
    gc.to_float64(m)
    gc.perturb(m, rng)
    m.compile(optimizer="sgd", loss="mse")
    check_gradients(m, x, rng.normal(size=(4, 1)), rng)


LAYER_NORMS = {"default": {}, "no_center": dict(center=False), "no_scale": dict(scale=False),
               "rms_scaling": dict(rms_scaling=True), "steps_and_features": dict(axis=[1, 2], epsilon=1e-2)}


@pytest.mark.parametrize("kind", sorted(LAYER_NORMS))
def test_layer_normalization_after_lstm(rng, kind):
    x = rng.normal(size=(4, 5, 3))
    m = prepare(fastlstm.Sequential([fastlstm.Input((5, 3)), L.LSTM(5, return_sequences=True),
                                     L.LayerNormalization(**LAYER_NORMS[kind]),
                                     L.GRU(4), L.LayerNormalization(), L.Dense(3, activation="softmax")]),
                "sparse_categorical_crossentropy", x, rng)
    check_gradients(m, x, rng.integers(0, 3, 4), rng)


BATCH_NORMS = {"default": {}, "no_center": dict(center=False, momentum=0.5), "no_scale": dict(scale=False),
               "neither": dict(center=False, scale=False), "per_step_axis1": dict(axis=1)}


@pytest.mark.parametrize("kind", sorted(BATCH_NORMS))
def test_batch_normalization_after_lstm(rng, batch_statistics, kind):
    """Masked sequence (Embedding(mask_zero)+LSTM(return_sequences)): masked batch moments; then BatchNormalization
    on the unmasked final state."""
    x = padded_tokens(rng, 6, 7, 30)
    y = rng.integers(0, 2, (6, 1)).astype(np.float64)
    m = prepare(fastlstm.Sequential([fastlstm.Input((7,), dtype="int32"), L.Embedding(30, 4, mask_zero=True),
                                     L.LSTM(5, return_sequences=True), L.BatchNormalization(**BATCH_NORMS[kind]),
                                     L.LSTM(4), L.BatchNormalization(momentum=0.9),
                                     L.Dense(1, activation="sigmoid")]), "binary_crossentropy", x, rng)
    check_gradients(m, x, y, rng)


def test_frozen_batch_normalization_uses_moving_statistics(rng, batch_statistics):
    """trainable=False: Keras runs it on the moving statistics even in training; its weights get no update."""
    x = rng.normal(size=(5, 4, 3))
    bn = L.BatchNormalization(trainable=False)
    m = prepare(fastlstm.Sequential([L.LSTM(4, return_sequences=True), bn, L.LSTM(3), L.Dense(1)]), "mse", x, rng)
    before = bn.get_weights()
    check_gradients(m, x, rng.normal(size=(5, 1)), rng)
    m.train_on_batch(x, rng.normal(size=(5, 1)))
    for a, b in zip(bn.get_weights(), before):
        npt.assert_array_equal(a, b)


def test_reshaping_layers_around_rnns(rng):
    x = rng.normal(size=(4, 6, 3))
    m = prepare(fastlstm.Sequential([fastlstm.Input((6, 3)), L.ZeroPadding1D((1, 2)),
                                     L.LSTM(4, return_sequences=True), L.Cropping1D((2, 1)), L.UpSampling1D(2),
                                     L.GRU(3, return_sequences=True), L.Permute((2, 1)),
                                     L.LSTM(4, return_sequences=True), L.Flatten(), L.Reshape((4, 3)),
                                     L.GRU(2), L.Dense(1)]), "mse", x, rng)
    check_gradients(m, x, rng.normal(size=(4, 1)), rng)


def test_reshaping_channels_first_and_repeat(rng):
    x = rng.normal(size=(3, 5, 4))
    m = prepare(fastlstm.Sequential([fastlstm.Input((5, 4)), L.LSTM(3, return_sequences=True), L.ZeroPadding1D((0, 2),
                                     data_format="channels_first"), L.Flatten(data_format="channels_first"),
                                     L.Reshape((5, -1)), L.GRU(3), L.RepeatVector(2), L.LSTM(2),
                                     L.Dense(2)]), "mse", x, rng)
    check_gradients(m, x, rng.normal(size=(3, 2)), rng)


# ---------------------------------------------------------------------------------------------- 3. forward and masks
def _forward_models(rng):
    """Models holding every layer of this file (BatchNormalization excepted: its training output differs)."""
    tok = padded_tokens(rng, 4, 6, 15, pre=False)
    t_in = fastlstm.Input((6,), dtype="int32")
    seq = L.GRU(4, return_sequences=True)(L.Embedding(15, 3, mask_zero=True)(t_in))
    a = L.LSTM(4, return_sequences=True)(seq)
    merged = [cls()([seq, a]) for cls in (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum)]
    cat = L.Concatenate()(merged)
    normed = L.LayerNormalization()(cat)
    pooled = L.Concatenate()([L.GlobalMaxPooling1D()(normed), L.GlobalAveragePooling1D()(normed)])
    yield fastlstm.Model(t_in, L.Dense(2)(L.LSTM(3)(L.RepeatVector(3)(pooled)))), tok
    x = rng.normal(size=(3, 11, 4))
    yield fastlstm.Sequential([fastlstm.Input((11, 4)),
                               L.Conv1D(4, 3, padding="causal", dilation_rate=2, activation="relu"),
                               L.MaxPooling1D(2, padding="same"), L.Conv1D(3, 2, strides=2, padding="same"),
                               L.AveragePooling1D(2, strides=1), L.ZeroPadding1D(1), L.Cropping1D((0, 1)),
                               L.UpSampling1D(2), L.LSTM(3, return_sequences=True), L.Permute((2, 1)), L.Flatten(),
                               L.Reshape((3, -1)), L.GRU(2)]), x


def test_training_forward_matches_inference(rng):
    for m, x in _forward_models(rng):
        m.predict(x[:1])
        m.compile(optimizer="sgd", loss="mse")
        tr = m._trainer
        tr.setup()
        xs = m._normalize_inputs(x)
        train, _ = tr.forward(xs, training=True)
        infer, _ = tr.forward(xs, training=False)
        assert train.keys() == infer.keys()
        for k in train:
            (a, ma), (b, mb) = train[k], infer[k]
            a, b = [v.gather() if isinstance(v, TokenRows) else v for v in (a, b)]
            npt.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
            assert (ma is None) == (mb is None)
            if ma is not None:
                npt.assert_array_equal(ma, mb)


def test_batch_normalization_statistics_are_not_trainable(rng):
    """The moving statistics are left out of the optimizer's variables (weight decay would shrink them) and are
    exactly what the training forward made of them."""
    x = padded_tokens(rng, 4, 5, 20)
    y = rng.normal(size=(4, 1))
    bn = L.BatchNormalization(momentum=0.6)
    m = fastlstm.Sequential([fastlstm.Input((5,), dtype="int32"), L.Embedding(20, 3, mask_zero=True),
                             L.LSTM(4, return_sequences=True), bn, L.LSTM(2), L.Dense(1)])
    m.compile(optimizer=fastlstm.optimizers.SGD(0.1, weight_decay=0.5), loss="mse")
    tr = m._trainer
    tr.setup()
    ws, _ = tr._variables()
    assert not any(w is v for w in ws for v in bn._weights[2:])
    assert len(ws) == len(m.get_weights()) - 2
    w0, bn0 = m.get_weights(), bn.get_weights()
    tr.forward(m._normalize_inputs(x), training=True)
    after_forward = [w.copy() for w in bn._weights[2:]]
    assert not np.allclose(after_forward[0], bn0[2])
    m.set_weights(w0)
    m.train_on_batch(x, y)
    for a, b in zip(bn._weights[2:], after_forward):
        npt.assert_array_equal(a, b)
    assert not np.allclose(bn._weights[0], bn0[0])            # gamma moved


# ---------------------------------------------------------------------------------------------- 2. Keras goldens
def _load_json(name):
    path = os.path.join(DATA, name)
    return json.load(open(path)) if os.path.exists(path) else None


MANIFEST = _load_json("manifest.json")
MODEL_CASES = MANIFEST["cases"] if MANIFEST else []
LAYER_SUITE = _load_json("layers.json")
LAYER_CASES = LAYER_SUITE["cases"] if LAYER_SUITE else []


def test_fixtures_present():
    assert len(MODEL_CASES) >= 6 and len(LAYER_CASES) >= 20, \
        f"fixtures missing in {DATA} (~/kvenv/bin/python tools/goldens/training_layers.py)"


def _unflatten(flat, shapes):
    out, k = [], 0
    for s in shapes:
        n = int(np.prod(s, dtype=np.int64))
        out.append(flat[k:k + n].reshape(s))
        k += n
    assert k == flat.size
    return out


def _keras_model(case):
    data = np.load(os.path.join(DATA, case["data_file"]))
    config = json.loads(data["architecture"].tobytes().decode("utf-8"))
    flavour = Flavour(parse_version(case["framework"]["keras"]))
    model, _ = GraphBuilder(flavour, case["name"]).build(config)
    model.set_weights(_unflatten(data["w0"], case["weight_shapes"]))
    x = [data[f"x{k}"] for k in range(case["n_inputs"])] if case["n_inputs"] > 1 else data["x"]
    return model, data, x, data["y"]


def _compile(model, case, opt):
    spec = case["optimizers"][opt]
    model.compile(optimizer=fastlstm.optimizers.get({"class_name": spec["class"], "config": spec["config"]}),
                  loss=fastlstm.losses.get({"class_name": case["loss"]["class"], "config": case["loss"]["config"]}))


def _rows(x, sl):
    return [a[sl] for a in x] if isinstance(x, list) else x[sl]


@pytest.mark.parametrize("case", MODEL_CASES, ids=[c["name"] for c in MODEL_CASES])
def test_keras_first_batch_gradient(case):
    model, data, x, y = _keras_model(case)
    _compile(model, case, "sgd")
    B = case["batch_size"]
    tr = model._trainer
    tr.setup()
    tr._ensure_grads()
    xs = model._normalize_inputs(_rows(x, slice(0, B)))
    values, ctxs = tr.forward(xs, training=True)
    _, _, d = tr._losses(values, ctxs, _normalize_targets(model, y[:B], B))
    tr._zero_grads()
    tr.backward(ctxs, d)
    shapes = [s for s, t in zip(case["weight_shapes"], case["trainable"]) if t]
    names = [n for n, t in zip(case["weight_names"], case["trainable"]) if t]
    grads = tr._variables()[1]
    assert len(grads) == len(shapes)
    for name, g, want in zip(names, grads, _unflatten(data["g"], shapes)):
        npt.assert_allclose(g, want, **case["tolerance"]["grads"], err_msg=f"gradient of {name}")


class _BatchLosses(fastlstm.callbacks.Callback):
    """Each batch's own loss, from fit's running mean over the epoch."""

    def on_train_begin(self, logs=None):
        self.means = []

    def on_train_batch_end(self, batch, logs=None):
        self.means.append(logs["loss"])

    def losses(self):
        s = np.arange(1, len(self.means) + 1)
        total = np.asarray(self.means) * s
        return np.diff(total, prepend=0.0)


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("case", MODEL_CASES, ids=[c["name"] for c in MODEL_CASES])
def test_keras_fit_steps(case, opt):
    """fit(shuffle=False) over the fixture's batches lands on Keras's weights (moving statistics included)."""
    model, data, x, y = _keras_model(case)
    _compile(model, case, opt)
    n = case["steps"] * case["batch_size"]
    rec = _BatchLosses()
    model.fit(_rows(x, slice(0, n)), y[:n], batch_size=case["batch_size"], epochs=1, shuffle=False, verbose=0,
              callbacks=[rec])
    npt.assert_allclose(rec.losses(), data[f"{opt}_loss"], **case["tolerance"]["loss"], err_msg="per-step loss")
    want = _unflatten(data[f"{opt}_w"], case["weight_shapes"])
    for name, w, e in zip(case["weight_names"], model.get_weights(), want):
        npt.assert_allclose(w, e, **case["tolerance"]["weights"], err_msg=f"{opt}: {name} after {case['steps']} steps")


def _layer_arrays(case):
    flat = np.load(os.path.join(DATA, "layers.npz"))[case["name"]]
    return {k: flat[off:off + int(np.prod(shape, dtype=np.int64))].reshape(shape)
            for k, (off, shape) in case["arrays"].items()}


@pytest.mark.parametrize("case", LAYER_CASES, ids=[c["name"] for c in LAYER_CASES])
def test_keras_layer_gradients(case):
    """One layer in training mode against Keras under a GradientTape: output, d inputs, d weights, and the
    weights after the call (BatchNormalization's moving statistics)."""
    a = _layer_arrays(case)
    tol = LAYER_SUITE["tolerance"]
    n = case["n_inputs"]
    layer = make_layer(case["layer"], Flavour(parse_version(LAYER_SUITE["framework"]["keras"])), case["name"])
    xs = [a[f"x{k}"] for k in range(n)]
    masks = [a[f"mask{k}"].astype(bool) if f"mask{k}" in a else None for k in range(n)]
    layer._ensure_built([x.shape for x in xs] if n > 1 else xs[0].shape)
    if case["n_weights"]:
        layer.set_weights([a[f"w{k}"] for k in range(case["n_weights"])])
    layer.grads = [np.zeros_like(w) for w in layer._weights]
    if n > 1:
        y, ctx = layer.forward(xs, mask=None if all(m is None for m in masks) else masks, training=True)
    else:
        y, ctx = layer.forward(xs[0], mask=masks[0], training=True)
    npt.assert_allclose(y, a["y"], **tol, err_msg="output")
    dx = layer.backward(ctx, a["dy"])
    for k, d in enumerate(dx if n > 1 else [dx]):
        npt.assert_allclose(d, a[f"dx{k}"], **tol, err_msg=f"d input {k}")
    grads = [g for g, t in zip(layer.grads, weight_trainable(layer)) if t]
    assert len(grads) == sum(case["trainable"])
    for k, g in enumerate(grads):
        npt.assert_allclose(g, a[f"g{k}"], **tol, err_msg=f"gradient of trainable weight {k}")
    for k, w in enumerate(layer.get_weights()):
        npt.assert_allclose(w, a[f"after{k}"], **tol, err_msg=f"weight {k} after the call")


# ---------------------------------------------------------------------------------------------- 4. saving
KERAS_FILES = os.path.join(os.path.dirname(__file__), "data", "keras")


def _keras_zip(path):
    """(config.json, {dataset path: shape} of model.weights.h5) of a .keras file."""
    import io
    import zipfile

    import h5py
    with zipfile.ZipFile(path) as zf:
        cfg = json.loads(zf.read("config.json"))
        tree = {}
        with h5py.File(io.BytesIO(zf.read("model.weights.h5")), "r") as h5:
            h5.visititems(lambda name, obj: tree.__setitem__(name, getattr(obj, "shape", None)))
    return cfg, tree


@pytest.mark.parametrize("case", ["k3_conv_stack", "k3_norms", "k3_reshape_zoo"])
def test_trained_conv_norm_reshape_models_save_as_keras_does(tmp_path, case):
    """Keras-written files with Conv1D, pooling, Batch/LayerNormalization, Permute, Flatten, Reshape and
    RepeatVector: trained a step in fastlstm, `model.save` writes Keras's HDF5 groups (Conv1D -> layers/conv1d,
    Keras's to_snake_case) and, per layer, the config keys and values Keras wrote; fastlstm loads it back."""
    path = os.path.join(KERAS_FILES, case, "model.keras")
    model = fastlstm.load(path)
    x = np.load(os.path.join(KERAS_FILES, case, "input.npz"))[model.input_names[0]]
    y = model.predict(x)
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, y + 0.1, epochs=1, batch_size=len(x), verbose=0)
    out = str(tmp_path / "m.keras")
    model.save(out)
    want_cfg, want_tree = _keras_zip(path)
    got_cfg, got_tree = _keras_zip(out)
    assert got_tree == {k: v for k, v in want_tree.items() if not k.startswith("optimizer")}
    for want, got in zip(want_cfg["config"]["layers"], got_cfg["config"]["layers"]):
        assert got["class_name"] == want["class_name"]
        if want["class_name"] not in ("Conv1D", "MaxPooling1D", "AveragePooling1D", "GlobalMaxPooling1D",
                                      "GlobalAveragePooling1D", "BatchNormalization", "LayerNormalization",
                                      "Permute", "Flatten", "Reshape", "RepeatVector"):
            continue
        assert sorted(got["config"]) == sorted(want["config"]), want["class_name"]
        for k, v in want["config"].items():          # initializers: "zeros" in a loaded model (weights from file)
            if k != "dtype" and not k.endswith("initializer"):
                assert got["config"][k] == v, (want["class_name"], k)
    back = fastlstm.load(out)
    for a, b in zip(back.get_weights(), model.get_weights()):
        npt.assert_array_equal(a, b)
    npt.assert_array_equal(back.predict(x), model.predict(x))


def test_padding_cropping_upsampling_save_their_arguments(tmp_path, rng):
    """ZeroPadding1D, Cropping1D and UpSampling1D write their arguments (Keras 3's keys) and come back with them."""
    m = fastlstm.Sequential([fastlstm.Input((6, 3)), L.ZeroPadding1D((1, 2)), L.LSTM(4, return_sequences=True),
                             L.Cropping1D((2, 1)), L.UpSampling1D(3), L.GRU(2)])
    path = str(tmp_path / "m.keras")
    m.save(path)
    cfg = {lc["class_name"]: lc["config"] for lc in _keras_zip(path)[0]["config"]["layers"]}
    assert cfg["ZeroPadding1D"]["padding"] == [1, 2] and cfg["ZeroPadding1D"]["data_format"] == "channels_last"
    assert cfg["Cropping1D"]["cropping"] == [2, 1] and cfg["UpSampling1D"]["size"] == 3
    x = rng.normal(size=(2, 6, 3)).astype(np.float32)
    npt.assert_array_equal(fastlstm.load(path).predict(x), m.predict(x))
