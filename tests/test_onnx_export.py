"""model.export_onnx: onnxruntime (the oracle) must reproduce fastlstm's predict to atol 1e-5 at several batch
sizes and sequence lengths (dynamic axes); fastlstm reloads its own export; unfaithful exports are refused."""
import os

import numpy as np
import pytest

import fastlstm
from fastlstm import layers as L

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

_SO = ort.SessionOptions()
_SO.log_severity_level = 3
V = 40


def tokens(rng, B, T, post_pad=False):
    x = rng.integers(1, V, (B, T)).astype(np.int32)
    if post_pad:
        lens = rng.integers(0, T + 1, B)
        lens[0] = T
        x[np.arange(T)[None, :] >= lens[:, None]] = 0
    return x


def series(rng, B, T, post_pad=False):
    x = rng.normal(size=(B, T, 3)).astype(np.float32)
    if post_pad:
        lens = rng.integers(0, T + 1, B)
        lens[0] = T
        x[np.arange(T)[None, :] >= lens[:, None]] = 0
    return x


def tok_model(*layers):
    return fastlstm.Sequential([L.Input((None,), dtype="int32")] + list(layers))


def ser_model(*layers):
    return fastlstm.Sequential([L.Input((None, 3))] + list(layers))


MODELS = {
    "embed_lstm_dense": (lambda: tok_model(L.Embedding(V, 6), L.LSTM(5), L.Dense(1, activation="sigmoid")), tokens,
                         False),
    "embed_gru_reset_after": (lambda: tok_model(L.Embedding(V, 6), L.GRU(5), L.Dense(3, activation="softmax")),
                              tokens, False),
    "gru_reset_before": (lambda: ser_model(L.GRU(4, reset_after=False, return_sequences=True),
                                           L.TimeDistributed(L.Dense(2))), series, False),
    "stacked_dropout_activation": (lambda: ser_model(L.LSTM(6, return_sequences=True), L.Dropout(0.5),
                                                     L.LSTM(4), L.Dense(3), L.Activation("tanh")), series, False),
    "bidirectional_concat_seq": (lambda: tok_model(L.Embedding(V, 5), L.Bidirectional(L.LSTM(4, return_sequences=True)),
                                                   L.TimeDistributed(L.Dense(2, activation="relu"))), tokens, False),
    "bidirectional_gru_modes": (lambda: ser_model(L.Bidirectional(L.GRU(4, return_sequences=True), merge_mode="ave"),
                                                  L.Bidirectional(L.GRU(3), merge_mode="mul")), series, False),
    "bidirectional_sum_last": (lambda: ser_model(L.Bidirectional(L.LSTM(4), merge_mode="sum")), series, False),
    "go_backwards": (lambda: ser_model(L.LSTM(4, go_backwards=True, return_sequences=True),
                                       L.GRU(3, go_backwards=True)), series, False),
    "activations": (lambda: ser_model(L.LSTM(4, activation="relu", recurrent_activation="hard_sigmoid",
                                             return_sequences=True),
                                      L.GRU(3, activation="softsign", recurrent_activation="sigmoid",
                                            return_sequences=True),
                                      L.SimpleRNN(3, activation="tanh"), L.Dense(2, activation="gelu")),
                    series, False),
    "mask_zero_last": (lambda: tok_model(L.Embedding(V, 6, mask_zero=True), L.LSTM(5),
                                         L.Dense(1, activation="sigmoid")), tokens, True),
    "mask_zero_stacked": (lambda: tok_model(L.Embedding(V, 6, mask_zero=True), L.LSTM(5, return_sequences=True),
                                            L.GRU(4), L.Dense(2)), tokens, True),
    "mask_zero_sequences_repeat_last": (lambda: tok_model(L.Embedding(V, 6, mask_zero=True),
                                                          L.GRU(4, return_sequences=True),
                                                          L.TimeDistributed(L.Dense(2))), tokens, True),
    "masking_bidirectional_seq": (lambda: ser_model(L.Masking(0.0), L.Bidirectional(L.LSTM(3, return_sequences=True)),
                                                    L.Bidirectional(L.GRU(3))), series, True),
    "masking_go_backwards": (lambda: ser_model(L.Masking(0.0), L.LSTM(3, go_backwards=True, return_sequences=True),
                                               L.LSTM(2, go_backwards=True)), series, True),
}


def _perturbed(build, seed):
    m = build()
    rng = np.random.default_rng(seed)
    m.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in m.get_weights()])
    return m


def _check_against_ort(model, path, xs):
    sess = ort.InferenceSession(str(path), _SO, providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == model.input_names
    assert [o.name for o in sess.get_outputs()] == model.output_names
    back = fastlstm.load(str(path))
    for x in xs:
        feeds = dict(zip(model.input_names, x if isinstance(x, list) else [x]))
        want = model.predict(x)
        want = want if isinstance(want, list) else [want]
        got = sess.run(None, feeds)
        again = back.predict(feeds)
        again = again if isinstance(again, list) else [again]
        for w, g, a in zip(want, got, again):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5)
            np.testing.assert_allclose(a, w, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_export_matches_onnxruntime(name, tmp_path):
    build, make_x, post_pad = MODELS[name]
    model = _perturbed(build, seed=len(name))
    rng = np.random.default_rng(0)
    xs = [make_x(rng, B, T, post_pad) for B, T in ((1, 1), (3, 7), (5, 12))]
    model.predict(xs[0])
    path = tmp_path / f"{name}.onnx"
    model.export_onnx(path)
    _check_against_ort(model, path, xs)


def test_functional_initial_state_and_return_state(tmp_path):
    """An encoder-decoder: the encoder's (h, c) feed the decoder's initial_state; two inputs, three outputs."""
    enc_in, dec_in = fastlstm.Input((None, 3), name="enc"), fastlstm.Input((None, 2), name="dec")
    _, h, c = L.LSTM(4, return_state=True, name="encoder")(enc_in)
    y, h2, c2 = L.LSTM(4, return_sequences=True, return_state=True, name="decoder")(dec_in, initial_state=[h, c])
    out = L.Dense(2, activation="softmax", name="head")(y)
    model = fastlstm.Model([enc_in, dec_in], [out, h2, c2])
    rng = np.random.default_rng(1)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in model.get_weights()])
    xs = [[rng.normal(size=(B, T, 3)).astype(np.float32), rng.normal(size=(B, T2, 2)).astype(np.float32)]
          for B, T, T2 in ((1, 2, 3), (4, 6, 5))]
    model.export_onnx(tmp_path / "s2s.onnx")
    _check_against_ort(model, tmp_path / "s2s.onnx", xs)


def test_bidirectional_return_state_and_merge_none(tmp_path):
    inp = fastlstm.Input((None, 3), name="x")
    outs = L.Bidirectional(L.GRU(3, return_state=True), merge_mode=None, name="bi")(inp)
    model = fastlstm.Model(inp, outs)
    rng = np.random.default_rng(2)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in model.get_weights()])
    model.export_onnx(tmp_path / "bi.onnx")
    _check_against_ort(model, tmp_path / "bi.onnx", [series(rng, 3, 5)])


def test_exported_graph_is_valid_at_other_opsets(tmp_path):
    model = _perturbed(MODELS["masking_bidirectional_seq"][0], 3)
    x = series(np.random.default_rng(4), 3, 6, True)
    model.predict(x)
    for opset in (13, 18, 21):
        model.export_onnx(tmp_path / f"m{opset}.onnx", opset=opset)
        assert onnx.load(str(tmp_path / f"m{opset}.onnx")).opset_import[0].version == opset
        _check_against_ort(model, tmp_path / f"m{opset}.onnx", [x])


@pytest.mark.parametrize("build, message", [
    (lambda: ser_model(L.LSTM(3, stateful=True)), "stateful"),
    (lambda: ser_model(L.LSTM(3, activation="selu")), "cannot be expressed"),
    (lambda: ser_model(L.LSTM(3, return_sequences=True), L.Dense(2, activation="glu")), "glu"),
])
def test_unfaithful_exports_are_refused(build, message, tmp_path):
    model = build()
    with pytest.raises(ValueError, match=message):
        model.export_onnx(tmp_path / "x.onnx")


def test_explicit_mask_argument(tmp_path):
    """A mask given as a model input follows the same post-padding contract as Embedding/Masking masks."""
    inp, m = fastlstm.Input((None, 3), name="x"), fastlstm.Input((None,), dtype="bool", name="m")
    model = fastlstm.Model([inp, m], L.GRU(3, return_sequences=True)(inp, mask=m))
    rng = np.random.default_rng(8)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in model.get_weights()])
    x = series(rng, 4, 6)
    mask = np.arange(6)[None, :] < np.array([6, 3, 0, 1])[:, None]
    model.export_onnx(tmp_path / "m.onnx")
    _check_against_ort(model, tmp_path / "m.onnx", [[x, mask]])


def test_unbuilt_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not built"):
        fastlstm.Sequential([L.LSTM(3)]).export_onnx(tmp_path / "x.onnx")


# ---- every Keras fixture (tests/data/keras): loaded by fastlstm, exported, run by onnxruntime -------------------
KERAS_DATA = os.path.join(os.path.dirname(__file__), "data", "keras")
KERAS_CASES = sorted(d for d in (os.listdir(KERAS_DATA) if os.path.isdir(KERAS_DATA) else [])
                     if not d.startswith("bad_") and os.path.exists(os.path.join(KERAS_DATA, d, "input.npz")))
# what the export refuses on purpose (module docstring of fastlstm/export_onnx.py)
REFUSALS = ("has no ONNX export", "is stateful", "cannot be expressed")


def _post_padded(x, mask_value):
    """The same rows with their valid steps moved to the front (the export's masking contract)."""
    if x.ndim < 2 or x.dtype.kind == "b":
        return x
    valid = (x != mask_value) if x.ndim == 2 else np.any(x != mask_value, axis=-1)
    order = np.argsort(~valid, axis=1, kind="stable")
    y = np.take_along_axis(x, order if x.ndim == 2 else order[..., None], axis=1).copy()
    y[~np.take_along_axis(valid, order, axis=1)] = mask_value
    return y


@pytest.mark.parametrize("case", KERAS_CASES)
def test_keras_fixture_exports(case, tmp_path):
    d = os.path.join(KERAS_DATA, case)
    files = sorted(f for f in os.listdir(d) if f.startswith(("model", "weights")) and not f.endswith(".npz"))
    arch = os.path.join(d, "architecture.json")
    model = fastlstm.load(os.path.join(d, files[0]), **({"architecture": arch} if os.path.exists(arch) else {}))
    xin = np.load(os.path.join(d, "input.npz"))
    masking = [lyr for lyr in model.layers if type(lyr).__name__ == "Masking"]
    mask_value = masking[0].mask_value if masking else 0
    xs = [_post_padded(xin[n], mask_value) for n in model.input_names]
    model.predict(xs[0] if len(xs) == 1 else xs)
    try:
        model.export_onnx(tmp_path / "m.onnx")
    except ValueError as e:
        assert any(r in str(e) for r in REFUSALS), str(e)
        return
    _check_against_ort(model, tmp_path / "m.onnx", [xs[0] if len(xs) == 1 else xs])
