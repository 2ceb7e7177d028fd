"""Keras fixture family: real Keras 3 and tf_keras exports -> tests/data/keras/ (dev machine only, never CI).

    ~/kvenv/bin/python tools/make_goldens.py keras [-k SUBSTRING]

Every case is built by the real framework: a model recipe is built, its weights are perturbed (random kernels,
non-zero biases, BatchNormalization statistics away from 0/1), some are trained for 1-2 epochs (so the file holds
optimizer state), the model is saved in one or more formats, each file is RELOADED by the same framework and its
predict() output is the expected output. A second fresh reload from disk checks determinism
(determinism_max_abs_diff). Error cases hold a damaged or unsupported file and no expected output. The hand_* cases
are HDF5 files written by hand with h5py in the Keras 2.2.4 / CuDNN layouts (no exporter of that era runs on
Python 3.11); their expected outputs come from tf_keras running the equivalent model.

Case name prefixes = formats (manifest "format"):
    k3_    Keras 3 .keras zip                     keras3
    k3dir_ Keras 3 unzipped .keras directory      keras3-dir       (model.save(path, zipped=False))
    k3h5_  Keras 3 legacy HDF5                    keras-h5-legacy  (model.save('model.h5'))
    k3w_   Keras 3 .weights.h5 + to_json()        weights-h5
    tk2_   tf_keras full HDF5                     tfkeras2-h5
    tk2w_  tf_keras save_weights('weights.h5')    tfkeras2-weights-h5 (+ to_json())
    tk2k_  tf_keras .keras zip                    tfkeras2-keras
    tk2kw_ tf_keras .weights.h5 + to_json()       tfkeras2-weights-v3-h5
    bad_   expect_error cases; hand_ hand-written HDF5 (keras2-h5-handwritten)
"""
import io
import os
import shutil
import traceback
import zipfile
import zlib

import numpy as np

from .common import add_cases, case_dir

SUITE = "keras"
TOL = {"atol": 1e-5, "rtol": 1e-4}

FORMATS = {
    "k3": dict(gen="k3", format="keras3", file="model.keras"),
    "k3dir": dict(gen="k3", format="keras3-dir", file="model_dir"),
    "k3h5": dict(gen="k3", format="keras-h5-legacy", file="model.h5"),
    "k3w": dict(gen="k3", format="weights-h5", file="model.weights.h5", arch="architecture.json"),
    "tk2": dict(gen="tk", format="tfkeras2-h5", file="model.h5"),
    "tk2w": dict(gen="tk", format="tfkeras2-weights-h5", file="weights.h5", arch="architecture.json"),
    "tk2k": dict(gen="tk", format="tfkeras2-keras", file="model.keras"),
    "tk2kw": dict(gen="tk", format="tfkeras2-weights-v3-h5", file="model.weights.h5", arch="architecture.json"),
}
FORMAT_NOTES = {
    "k3": "Keras 3 model.save('model.keras')",
    "k3dir": "Keras 3 model.save('model_dir', zipped=False): an unzipped .keras directory",
    "k3h5": "Keras 3 model.save('model.h5') (legacy HDF5, Keras-3 config flavour)",
    "k3w": "Keras 3 model.save_weights('model.weights.h5') + architecture.json = model.to_json()",
    "tk2": "tf_keras model.save('model.h5', save_format='h5')",
    "tk2w": "tf_keras model.save_weights('weights.h5') (legacy HDF5 weights: layer groups at the root) + "
            "architecture.json = model.to_json()",
    "tk2k": "tf_keras model.save('model.keras') (v3 zip written by tf_keras: keras_version 2.21.0, Keras-2 config)",
    "tk2kw": "tf_keras model.save_weights('model.weights.h5') (v3 layout) + architecture.json = model.to_json()",
}


# ----------------------------------------------------------------------------------------------- small helpers
def _seed(name):
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def save_npz(path, **arrays):
    """np.savez with fixed zip timestamps, so rerunning writes byte-identical input/expected files."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for k, v in arrays.items():
            info = zipfile.ZipInfo(k + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            b = io.BytesIO()
            np.lib.format.write_array(b, np.asarray(v), allow_pickle=False)
            z.writestr(info, b.getvalue())
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def maxdiff(a_list, b_list):
    return max((float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if np.size(a) else 0.0)
               for a, b in zip(a_list, b_list))


def tokens(rng, B, T, V, patterns=()):
    """int32 token ids in [1, V) with zero padding: pre, post, mid, full, last_only, first_only."""
    x = rng.integers(1, V, size=(B, T)).astype(np.int32)
    _pad(x, patterns, 0)
    return x


def series(rng, B, T, F, patterns=(), pad_value=0.0, scale=1.0):
    """float32 (B, T, F) normal data; padded steps get pad_value on every feature ('partial': one feature only)."""
    x = (rng.standard_normal((B, T, F)) * scale).astype(np.float32)
    _pad(x, patterns, pad_value)
    return x


def _pad(x, patterns, v):
    T = x.shape[1]
    k = max(1, T // 3)
    for b, p in enumerate(patterns[:x.shape[0]]):
        if p == "pre":
            x[b, :k] = v
        elif p == "post":
            x[b, T - k:] = v
        elif p == "mid":
            x[b, k:k + 2] = v
        elif p == "full":
            x[b] = v
        elif p == "last_only":
            x[b, :-1] = v
        elif p == "first_only":
            x[b, 1:] = v
        elif p == "partial":  # one feature equals the mask value: NOT a masked step
            x[b, 1, ..., 0] = v
        elif p == "mixed":  # pre + mid padding
            x[b, :2] = v
            x[b, T // 2] = v


PAD_DOC = ("rows: " + ", ".join(["none", "pre", "post", "mid", "full (all masked)", "last_only", "first_only"]))


# ----------------------------------------------------------------------------------------------- generations
class Gen:
    """One Keras generation: 'k3' = Keras 3 (import keras), 'tk' = tf_keras (Keras 2 semantics)."""

    def __init__(self, tag):
        import tensorflow as tf
        self.tag = tag
        self.k3 = tag == "k3"
        if self.k3:
            import keras as K
            self.framework = {"keras": K.__version__, "tensorflow": tf.__version__}
            self.label = f"keras {K.__version__}"
        else:
            import tf_keras as K
            self.framework = {"tf_keras": K.__version__, "tensorflow": tf.__version__}
            self.label = f"tf_keras {K.__version__}"
        self.K = K
        self.L = K.layers
        self.tf = tf

    def reset(self, seed):
        self.K.backend.clear_session()
        self.K.utils.set_random_seed(seed)

    def bump(self, *layer_names):
        """Create throwaway layers so auto names get numbered (lstm_1...) and no longer equal group names."""
        for n in layer_names:
            {"lstm": lambda: self.L.LSTM(1), "gru": lambda: self.L.GRU(1), "dense": lambda: self.L.Dense(1),
             "embedding": lambda: self.L.Embedding(2, 1)}[n]()

    # -- save / load per format
    def save(self, model, fmt, d):
        spec = FORMATS[fmt]
        path = os.path.join(d, spec["file"])
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
        if fmt in ("k3", "k3h5", "tk2k"):
            model.save(path)
        elif fmt == "k3dir":
            model.save(path, zipped=False)
        elif fmt == "tk2":
            model.save(path, save_format="h5")
        elif fmt in ("k3w", "tk2w", "tk2kw"):
            model.save_weights(path)
            with open(os.path.join(d, spec["arch"]), "w") as f:
                f.write(model.to_json())
        return path

    def load(self, fmt, d, custom_objects=None):
        spec = FORMATS[fmt]
        path = os.path.join(d, spec["file"])
        if "arch" in spec:
            with open(os.path.join(d, spec["arch"])) as f:
                m = self.K.models.model_from_json(f.read(), custom_objects=custom_objects)
            m.load_weights(path)
            return m
        return self.K.models.load_model(path, custom_objects=custom_objects)

    def reset_states(self, model):
        if hasattr(model, "reset_states"):
            model.reset_states()
            return
        for layer in _all_layers(model):
            if getattr(layer, "stateful", False) and hasattr(layer, "reset_states"):
                layer.reset_states()

    def io_names(self, model):
        cfg = model.get_config()
        if "input_layers" in cfg:
            ins, outs = cfg["input_layers"], cfg["output_layers"]
            ins = [ins] if ins and isinstance(ins[0], str) else ins
            outs = [outs] if outs and isinstance(outs[0], str) else outs
            fmt = lambda t: t[0] if t[2] == 0 else f"{t[0]}[{t[2]}]"  # noqa: E731
            return [fmt(t) for t in ins], [fmt(t) for t in outs]
        layers = cfg["layers"]
        assert layers[0]["class_name"] == "InputLayer", "give every Sequential an explicit Input"
        return [layers[0]["config"]["name"]], [layers[-1]["config"]["name"]]


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)
        for sub in ("layer", "forward_layer", "backward_layer"):
            if hasattr(layer, sub):
                yield getattr(layer, sub)


def predict(model, xs, batch_size):
    out = model.predict(xs[0] if len(xs) == 1 else list(xs), batch_size=batch_size, verbose=0)
    return [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]


def perturb(g, model, rng, gain=1.5, bias=0.6):
    """Overwrite every float weight: uniform kernels (std gain/sqrt(fan_in)), biases U(-bias, bias) (LSTM forget
    bias included, so never the init 1), embeddings U(-1, 1), BatchNorm stats/scales away from 0/1."""
    seen = set()
    for v in model.weights:
        if id(v) in seen:
            continue
        seen.add(id(v))
        name = (v.path if g.k3 else v.name).split("/")[-1].split(":")[0]
        dt = np.dtype(getattr(v.dtype, "name", v.dtype))
        if dt.kind != "f":
            continue
        shape = tuple(int(s) for s in v.shape)
        if name == "moving_variance":
            a = rng.uniform(0.4, 2.0, shape)
        elif name == "moving_mean":
            a = rng.normal(0.0, 0.5, shape)
        elif name == "gamma":
            a = rng.uniform(0.5, 1.5, shape)
        elif name in ("beta", "bias"):
            a = rng.uniform(-bias, bias, shape)
        elif name == "embeddings":
            a = rng.uniform(-1.0, 1.0, shape)
        else:
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else shape[0]
            s = gain * np.sqrt(3.0 / max(fan_in, 1))
            a = rng.uniform(-s, s, shape)
        v.assign(a.astype(dt))


# ----------------------------------------------------------------------------------------------- recipes
class Spec:
    """What a recipe returns. inputs: arrays in model-input order. calls: stateful replay
    [(inputs, reset_states_before)]; the first call is also the case's input/expected."""

    def __init__(self, model, inputs, features, description, train=None, gain=1.5, bias=0.6, tol=None,
                 calls=None, batch_size=None, perturb=True, notes=None):
        self.model, self.inputs, self.features, self.description = model, inputs, features, description
        self.train, self.gain, self.bias, self.tol = train, gain, bias, tol or TOL
        self.calls, self.batch_size, self.perturb, self.notes = calls, batch_size, perturb, notes


def r_textclf(g, rng):
    L = g.L
    g.bump("embedding", "lstm", "lstm", "dense")
    m = g.K.Sequential([g.K.Input((None,), dtype="int32", name="tokens"), L.Embedding(50, 8, mask_zero=True),
                        L.LSTM(12), L.Dense(1, activation="sigmoid")], name="textclf")
    xt = tokens(rng, 64, 12, 50, ["pre", "post", "mid"] * 22)
    yt = rng.integers(0, 2, (64, 1)).astype(np.float32)
    x = tokens(rng, 7, 15, 50, ["none", "pre", "post", "mid", "full", "last_only", "first_only"])
    return Spec(m, [x], ["sequential", "embedding", "mask_zero", "lstm", "dense:sigmoid", "int_input", "trained",
                         "optimizer_state_in_file", "auto_names_offset", "pre_padding", "post_padding",
                         "mid_padding", "fully_masked_row"],
                "text classifier Sequential(Input tokens, Embedding(50,8,mask_zero), LSTM(12), Dense(1,sigmoid)), "
                "trained 2 epochs with Adam (optimizer state in the file); layers built after throwaway layers so "
                "auto names (lstm_2, ...) differ from the weight group names; inputs " + PAD_DOC,
                train=dict(x=[xt], y=yt, loss="binary_crossentropy", epochs=2))


def r_seq2seq_lstm(g, rng):
    L, K = g.L, g.K
    enc_in = K.Input((None, 4), name="encoder_in")
    dec_in = K.Input((None,), dtype="int32", name="decoder_in")
    _, h, c = L.LSTM(10, return_state=True, name="encoder")(enc_in)
    e = L.Embedding(30, 6, name="dec_embed")(dec_in)
    d = L.LSTM(10, return_sequences=True, name="decoder")(e, initial_state=[h, c])
    out = L.TimeDistributed(L.Dense(30, activation="softmax"), name="proj")(d)
    m = K.Model([enc_in, dec_in], out, name="seq2seq")
    xt = [series(rng, 32, 7, 4), tokens(rng, 32, 6, 30)]
    yt = rng.integers(0, 30, (32, 6)).astype(np.int32)
    x = [series(rng, 4, 9, 4), tokens(rng, 4, 5, 30)]
    return Spec(m, x, ["functional", "multi_input", "lstm", "return_state", "initial_state", "embedding",
                       "time_distributed", "dense:softmax", "return_sequences", "trained", "optimizer_state_in_file",
                       "length_differs"],
                "seq2seq: encoder LSTM(10, return_state) on float (B,Te,4); its [h, c] is the decoder LSTM(10, "
                "return_sequences)'s initial_state; decoder input Embedding(30,6) tokens; TimeDistributed(Dense(30, "
                "softmax)). Trained 1 epoch (sparse CE) at Te=7,Td=6; predicted at Te=9, Td=5",
                train=dict(x=xt, y=yt, loss="sparse_categorical_crossentropy", epochs=1))


def r_seq2seq_gru(g, rng):
    L, K = g.L, g.K
    enc_in = K.Input((None, 3), name="enc")
    dec_in = K.Input((None, 2), name="dec")
    _, h = L.GRU(8, return_state=True, name="encoder")(enc_in)
    seq, hd = L.GRU(8, return_sequences=True, return_state=True, name="decoder")(dec_in, initial_state=[h])
    out = L.Dense(3, name="head")(seq)
    m = K.Model([enc_in, dec_in], [out, hd], name="seq2seq_gru")
    x = [series(rng, 3, 6, 3), series(rng, 3, 4, 2)]
    return Spec(m, x, ["functional", "multi_input", "multi_output", "gru", "return_state", "initial_state",
                       "return_sequences", "dense:linear", "dense_3d"],
                "GRU seq2seq: encoder GRU(8, return_state) -> its h is decoder GRU(8, return_sequences, "
                "return_state)'s initial_state; outputs [Dense(3) on the decoder sequence, decoder final state "
                "'decoder[1]']")


def r_multi_io(g, rng):
    L, K = g.L, g.K
    g.bump("lstm", "gru")
    tok = K.Input((None,), dtype="int32", name="tokens")
    feat = K.Input((None, 3), name="features")
    meta = K.Input((4,), name="meta")
    seq, h, c = L.LSTM(8, return_sequences=True, return_state=True, name="lstm_tok")(L.Embedding(40, 6)(tok))
    gout, gh = L.GRU(6, return_state=True, name="gru_feat")(feat)
    mm = L.Dense(5, activation="relu", name="meta_dense")(meta)
    merged = L.Concatenate(name="merge")([h, gout, mm])
    cls = L.Dense(3, activation="softmax", name="cls")(merged)
    reg = L.Dense(1, name="reg")(merged)
    m = K.Model([tok, feat, meta], [cls, reg, seq, c, gh], name="multi_io")
    x = [tokens(rng, 5, 7, 40), series(rng, 5, 4, 3), rng.standard_normal((5, 4)).astype(np.float32)]
    return Spec(m, x, ["functional", "multi_input", "multi_output", "embedding", "lstm", "gru", "return_state",
                       "return_state_as_model_output", "return_sequences", "concatenate", "dense:relu",
                       "dense:softmax", "dense:linear", "int_input", "float_input"],
                "three inputs (tokens, float sequence of another length, 2-D meta), five outputs: cls, reg, the "
                "LSTM's sequence output 'lstm_tok', its cell state 'lstm_tok[2]' and the GRU's state 'gru_feat[1]' "
                "(return_state tensors as model outputs)")


def r_mask_functional(g, rng):
    L, K = g.L, g.K
    tok = K.Input((None,), dtype="int32", name="tokens")
    e = L.Embedding(30, 6, mask_zero=True)(tok)
    b = L.Bidirectional(L.LSTM(6, return_sequences=True))(e)
    h = L.GRU(5)(b)
    out = L.Dense(2, activation="softmax")(h)
    m = K.Model(tok, out)
    x = tokens(rng, 7, 10, 30, ["none", "pre", "post", "mid", "full", "last_only", "first_only"])
    return Spec(m, [x], ["functional", "embedding", "mask_zero", "bidirectional:concat", "lstm", "gru",
                         "mask_propagation", "dense:softmax", "int_input", "pre_padding", "post_padding",
                         "mid_padding", "fully_masked_row"] + (["notequal_op_node"] if g.k3 else []),
                "functional Embedding(30,6,mask_zero) -> Bidirectional(LSTM(6, return_sequences)) -> GRU(5) -> "
                "Dense(2, softmax); " + ("Keras 3 writes the mask as a NotEqual op node in the config (passed as "
                                          "kwargs.mask); " if g.k3 else "") + "inputs " + PAD_DOC)


def r_shared_lstm(g, rng):
    L, K = g.L, g.K
    a = K.Input((None, 3), name="left")
    b = K.Input((None, 3), name="right")
    shared = L.LSTM(7, name="shared_lstm")
    ha, hb = shared(a), shared(b)
    merged = L.Concatenate()([L.Subtract()([ha, hb]), L.Multiply()([ha, hb])])
    out = L.Dense(1, activation="sigmoid", name="similarity")(merged)
    m = K.Model([a, b], out, name="siamese")
    x = [series(rng, 4, 6, 3), series(rng, 4, 8, 3)]
    return Spec(m, x, ["functional", "multi_input", "shared_layer", "lstm", "subtract", "multiply", "concatenate",
                       "dense:sigmoid"],
                "siamese: one LSTM(7) layer called on two inputs (two inbound nodes; the second output is "
                "keras_history [shared_lstm, 1, 0]); inputs have different lengths (6 and 8)")


def r_nested(g, rng):
    L, K = g.L, g.K
    inner = K.Sequential([K.Input((None, 3), name="inner_in"), L.LSTM(6, return_sequences=True), L.LSTM(5)],
                         name="inner_rnn")
    x_in = K.Input((None, 3), name="x")
    y = inner(x_in)
    out = L.Dense(2, activation="tanh", name="out")(y)
    m = K.Model(x_in, out, name="outer")
    x = [series(rng, 3, 7, 3)]
    return Spec(m, x, ["functional", "nested_model", "sequential", "lstm", "return_sequences", "dense:tanh"],
                "Sequential(Input, LSTM(6, return_sequences), LSTM(5)) named inner_rnn used as a layer inside a "
                "functional model, then Dense(2, tanh)")


K3_ACTS = ["sigmoid", "softmax", "relu", "tanh", "linear", "elu", "selu", "softplus", "softsign", "swish", "silu",
           "gelu", "exponential", "hard_sigmoid", "relu6", "leaky_relu", "log_softmax", "mish", "hard_silu",
           "hard_swish", "celu", "glu", "hard_shrink", "hard_tanh", "log_sigmoid", "soft_shrink", "sparse_plus",
           "sparse_sigmoid", "sparsemax", "squareplus", "tanh_shrink"]
TK_ACTS = ["sigmoid", "softmax", "relu", "tanh", "linear", "elu", "selu", "softplus", "softsign", "swish", "silu",
           "gelu", "exponential", "hard_sigmoid", "relu6", "leaky_relu", "log_softmax", "mish"]


def r_dense_activations(g, rng):
    L, K = g.L, g.K
    x_in = K.Input((None, 6), name="x")
    outs = []
    for a in (K3_ACTS if g.k3 else TK_ACTS):
        outs.append(L.Dense(6 if a == "glu" else 4, activation=a, name=f"act_{a}")(x_in))
    pre = L.Dense(4, name="pre")(x_in)
    for a in ("softmax", "gelu", "hard_sigmoid", "relu6"):
        outs.append(L.Activation(a, name=f"activation_{a}")(pre))
    m = K.Model(x_in, outs, name="activations")
    x = [series(rng, 3, 5, 6)]
    acts = K3_ACTS if g.k3 else TK_ACTS
    return Spec(m, x, ["functional", "multi_output", "dense_3d", "activation_layer"] + [f"dense:{a}" for a in acts],
                f"one Dense head per activation string of {g.label} ({', '.join(acts)}), each on the raw (B,T,6) "
                "input with large kernels (pre-activations roughly +-10, so clipping/saturating regions are hit); "
                "plus Activation layers (softmax, gelu, hard_sigmoid, relu6) on a linear Dense 'pre'. "
                + ("Keras 3: hard_sigmoid = relu6(x+3)/6, gelu exact (approximate=False), leaky_relu slope 0.2, "
                   "glu halves the last axis (6 -> 3)" if g.k3 else
                   "tf_keras: hard_sigmoid = clip(0.2x+0.5,0,1), gelu exact (approximate=False), leaky_relu "
                   "alpha 0.2"),
                gain=4.0, bias=1.0, tol={"atol": 1e-5, "rtol": 1e-4})


def r_rnn_activations(g, rng):
    L, K = g.L, g.K
    m = K.Sequential([K.Input((None, 3), name="x"),
                      L.LSTM(6, activation="relu", return_sequences=True),
                      L.GRU(5, activation="linear", recurrent_activation="tanh", return_sequences=True),
                      L.LSTM(5, activation="softsign", recurrent_activation="relu6" if g.k3 else "sigmoid",
                             return_sequences=True),
                      L.SimpleRNN(4, activation="relu"),
                      L.Dense(2)], name="rnn_acts")
    x = [series(rng, 4, 8, 3)]
    return Spec(m, x, ["sequential", "lstm", "gru", "simple_rnn", "rnn_activation:relu", "rnn_activation:linear",
                       "rnn_recurrent_activation:tanh", "rnn_activation:softsign"]
                + (["rnn_recurrent_activation:relu6"] if g.k3 else []),
                "non-default RNN activations: LSTM(6, activation=relu) -> GRU(5, activation=linear, "
                "recurrent_activation=tanh) -> LSTM(5, activation=softsign, recurrent_activation="
                + ("relu6" if g.k3 else "sigmoid") + ") -> SimpleRNN(4, relu) -> Dense(2)", gain=1.0, bias=0.3)


def r_hard_sigmoid(g, rng):
    L, K = g.L, g.K
    m = K.Sequential([K.Input((None, 4), name="x"),
                      L.LSTM(8, recurrent_activation="hard_sigmoid", return_sequences=True),
                      L.GRU(6, recurrent_activation="hard_sigmoid"),
                      L.Dense(1)], name="hard_sig")
    x = [series(rng, 4, 10, 4)]
    which = ("Keras 3 definition relu6(x+3)/6 = clip(x/6+0.5,0,1)" if g.k3 else
             "Keras 2 definition clip(0.2x+0.5,0,1) (tf_keras; the file's keras_version is 2.x)")
    return Spec(m, x, ["sequential", "lstm", "gru", "hard_sigmoid", "hard_sigmoid:" + ("keras3" if g.k3 else "keras2"),
                       "float_input"],
                f"LSTM(8, recurrent_activation='hard_sigmoid', return_sequences) -> GRU(6, recurrent_activation="
                f"'hard_sigmoid') -> Dense(1); the same config string means the {which}; large kernels so gate "
                "pre-activations cross the linear region", gain=2.5, bias=1.0)


def r_gru_reset_before(g, rng):
    L, K = g.L, g.K
    m = K.Sequential([K.Input((None,), dtype="int32", name="tokens"), L.Embedding(25, 6),
                      L.GRU(8, reset_after=False, return_sequences=True),
                      L.GRU(6, reset_after=True), L.Dense(2)], name="gru_reset")
    x = [tokens(rng, 4, 9, 25)]
    return Spec(m, x, ["sequential", "embedding", "gru", "gru:reset_after=false", "gru:reset_after=true",
                       "int_input"],
                "Embedding(25,6) -> GRU(8, reset_after=False, return_sequences) (bias (3H,)) -> GRU(6, "
                "reset_after=True) (bias (2,3H)) -> Dense(2)")


def r_rnn_no_bias(g, rng):
    L, K = g.L, g.K
    m = K.Sequential([K.Input((None, 3), name="x"),
                      L.LSTM(6, use_bias=False, return_sequences=True),
                      L.GRU(5, use_bias=False, return_sequences=True),
                      L.GRU(4, use_bias=False, reset_after=False),
                      L.Dense(2, use_bias=False)], name="no_bias")
    x = [series(rng, 3, 7, 3)]
    return Spec(m, x, ["sequential", "lstm", "gru", "use_bias=false", "gru:reset_after=false"],
                "use_bias=False everywhere: LSTM(6) -> GRU(5, reset_after=True) -> GRU(4, reset_after=False) -> "
                "Dense(2, use_bias=False); the files hold only kernel and recurrent_kernel")


def r_lstm_unit_forget_bias_false(g, rng):
    L, K = g.L, g.K
    m = K.Sequential([K.Input((None, 3), name="x"), L.LSTM(6, unit_forget_bias=False), L.Dense(1)],
                     name="ufb")
    x = [series(rng, 4, 8, 3)]
    return Spec(m, x, ["sequential", "lstm", "unit_forget_bias=false"],
                "LSTM(6, unit_forget_bias=False) -> Dense(1) with random biases: unit_forget_bias only changes "
                "initialization; a loader must not add 1 to the forget bias (nor for the True default)")


def r_bidi_state_lstm(g, rng):
    L, K = g.L, g.K
    x_in = K.Input((None, 3), name="x")
    outs = L.Bidirectional(L.LSTM(5, return_sequences=True, return_state=True), name="bidi")(x_in)
    m = K.Model(x_in, list(outs), name="bidi_state")
    x = [series(rng, 3, 6, 3)]
    return Spec(m, x, ["functional", "bidirectional:concat", "lstm", "return_state", "return_sequences",
                       "bidirectional_state_order", "multi_output"],
                "Bidirectional(LSTM(5, return_sequences, return_state)) outputs as model outputs: bidi = merged "
                "sequence (B,T,10), bidi[1]=h_fw, bidi[2]=c_fw, bidi[3]=h_bw, bidi[4]=c_bw")


def r_bidi_state_gru(g, rng):
    L, K = g.L, g.K
    x_in = K.Input((None, 3), name="x")
    outs = L.Bidirectional(L.GRU(5, return_state=True), merge_mode="sum", name="bidi")(x_in)
    m = K.Model(x_in, list(outs), name="bidi_state_gru")
    x = [series(rng, 3, 6, 3)]
    return Spec(m, x, ["functional", "bidirectional:sum", "gru", "return_state", "bidirectional_state_order",
                       "multi_output"],
                "Bidirectional(GRU(5, return_state), merge_mode='sum'): bidi = h_fw + h_bw, bidi[1]=h_fw, "
                "bidi[2]=h_bw")


def r_go_backwards(g, rng):
    L, K = g.L, g.K
    x_in = K.Input((None, 3), name="x")
    a = L.LSTM(5, go_backwards=True, return_sequences=True, name="lstm_back")(x_in)
    b = L.GRU(4, go_backwards=True, name="gru_back")(x_in)
    m = K.Model(x_in, [a, b], name="go_back")
    x = [series(rng, 3, 7, 3)]
    return Spec(m, x, ["functional", "lstm", "gru", "go_backwards", "return_sequences", "multi_output"],
                "standalone go_backwards layers: LSTM(5, go_backwards, return_sequences) whose sequence output is "
                "in PROCESSING order (out[:,0] consumed x[:,-1]; not flipped back), and GRU(4, go_backwards) final "
                "output")


def r_go_backwards_bidi(g, rng):
    L, K = g.L, g.K
    x_in = K.Input((None, 3), name="x")
    # Keras 3.15 refuses Bidirectional(layer with go_backwards=True) unless backward_layer is given (its copy
    # keeps go_backwards=True and fails its own check); tf_keras flips the flag in the copy by itself.
    back = dict(backward_layer=L.LSTM(5, return_sequences=True)) if g.k3 else {}
    a = L.Bidirectional(L.LSTM(5, go_backwards=True, return_sequences=True), name="bidi_lstm", **back)(x_in)
    back = dict(backward_layer=L.GRU(4)) if g.k3 else {}
    b = L.Bidirectional(L.GRU(4, go_backwards=True), name="bidi_gru", **back)(x_in)
    m = K.Model(x_in, [a, b], name="go_back_bidi")
    x = [series(rng, 3, 7, 3)]
    return Spec(m, x, ["functional", "bidirectional:concat", "lstm", "gru", "go_backwards", "go_backwards_in_bidi",
                       "return_sequences", "multi_output"],
                "Bidirectional around layers built with go_backwards=True: the 'forward' layer runs backwards "
                "(its sequence is NOT flipped back) and the backward layer runs forwards (its sequence IS flipped: "
                "Bidirectional always flips the backward output); see the config's layer / backward_layer "
                "go_backwards flags" + ("; Keras 3 needs an explicit backward_layer=LSTM(5, rs)/GRU(4) here"
                                        if g.k3 else ""))


def r_bidi_merge_modes(g, rng):
    L, K = g.L, g.K
    x_in = K.Input((None, 3), name="x")
    o_cat = L.Bidirectional(L.LSTM(4, return_sequences=True), merge_mode="concat", name="bidi_concat")(x_in)
    o_sum = L.Bidirectional(L.GRU(4, return_sequences=True), merge_mode="sum", name="bidi_sum")(x_in)
    o_mul = L.Bidirectional(L.LSTM(4), merge_mode="mul", name="bidi_mul")(x_in)
    o_ave = L.Bidirectional(L.GRU(4), merge_mode="ave", name="bidi_ave")(x_in)
    o_none = L.Bidirectional(L.LSTM(3, return_sequences=True), merge_mode=None, name="bidi_none")(x_in)
    m = K.Model(x_in, [o_cat, o_sum, o_mul, o_ave] + list(o_none), name="merge_modes")
    x = [series(rng, 3, 6, 3)]
    return Spec(m, x, ["functional", "lstm", "gru", "bidirectional:concat", "bidirectional:sum", "bidirectional:mul",
                       "bidirectional:ave", "bidirectional:none", "return_sequences", "multi_output"],
                "five Bidirectional layers on one input: concat(LSTM rs), sum(GRU rs), mul(LSTM), ave(GRU), "
                "None(LSTM rs) -> outputs bidi_none (forward) and bidi_none[1] (backward, in input order)")


def r_mask_lstm_seq(g, rng):
    L, K = g.L, g.K
    tok = K.Input((None,), dtype="int32", name="tokens")
    e = L.Embedding(20, 5, mask_zero=True)(tok)
    seq = L.LSTM(6, return_sequences=True, name="lstm_seq")(e)
    last = L.LSTM(5, name="lstm_last")(e)
    m = K.Model(tok, [seq, last], name="mask_lstm")
    x = [tokens(rng, 7, 8, 20, ["none", "pre", "post", "mid", "full", "last_only", "first_only"])]
    return Spec(m, x, ["functional", "embedding", "mask_zero", "lstm", "return_sequences", "masked_sequence_output",
                       "pre_padding", "post_padding", "mid_padding", "fully_masked_row", "int_input"],
                "Embedding(mask_zero) -> LSTM(6, return_sequences) sequence output (masked steps repeat the "
                "previous output, zeros before the first valid step) and LSTM(5) final output; " + PAD_DOC)


def r_mask_gru_seq(g, rng):
    L, K = g.L, g.K
    tok = K.Input((None,), dtype="int32", name="tokens")
    e = L.Embedding(20, 5, mask_zero=True)(tok)
    seq = L.GRU(6, return_sequences=True, name="gru_seq")(e)
    rnn = L.SimpleRNN(4, return_sequences=True, name="rnn_seq")(e)
    last = L.GRU(5, reset_after=False, name="gru_last")(e)
    m = K.Model(tok, [seq, rnn, last], name="mask_gru")
    x = [tokens(rng, 7, 8, 20, ["none", "pre", "post", "mid", "full", "last_only", "first_only"])]
    return Spec(m, x, ["functional", "embedding", "mask_zero", "gru", "simple_rnn", "gru:reset_after=false",
                       "return_sequences", "masked_sequence_output", "pre_padding", "post_padding", "mid_padding",
                       "fully_masked_row", "int_input"],
                "Embedding(mask_zero) -> GRU(6, return_sequences), SimpleRNN(4, return_sequences) and GRU(5, "
                "reset_after=False) final output, all masked; " + PAD_DOC)


def r_mask_stacked(g, rng):
    L, K = g.L, g.K
    m = K.Sequential([K.Input((None,), dtype="int32", name="tokens"), L.Embedding(30, 6, mask_zero=True),
                      L.LSTM(6, return_sequences=True), L.GRU(5, return_sequences=True),
                      L.Bidirectional(L.LSTM(4, return_sequences=True)), L.LSTM(4), L.Dense(1)], name="stack")
    x = [tokens(rng, 7, 9, 30, ["none", "pre", "post", "mid", "full", "last_only", "mixed"])]
    return Spec(m, [x[0]], ["sequential", "embedding", "mask_zero", "lstm", "gru", "bidirectional:concat", "stacked",
                            "mask_propagation", "int_input", "pre_padding", "post_padding", "mid_padding",
                            "fully_masked_row"],
                "mask propagated through a stack: Embedding(mask_zero) -> LSTM(6,rs) -> GRU(5,rs) -> "
                "Bidirectional(LSTM(4,rs)) -> LSTM(4) -> Dense(1); rows none, pre, post, mid, full, last_only, "
                "pre+mid")


def r_mask_dropped(g, rng):
    L, K = g.L, g.K
    m = K.Sequential([K.Input((None,), dtype="int32", name="tokens"), L.Embedding(20, 5, mask_zero=True),
                      L.LSTM(6), L.RepeatVector(4), L.LSTM(5, return_sequences=True),
                      L.TimeDistributed(L.Dense(3))], name="mask_dropped")
    x = [tokens(rng, 5, 8, 20, ["none", "pre", "post", "full", "mid"])]
    return Spec(m, x, ["sequential", "embedding", "mask_zero", "lstm", "mask_dropped", "repeat_vector",
                       "return_sequences", "time_distributed", "int_input", "fully_masked_row"],
                "the mask stops at LSTM(6) (return_sequences=False): RepeatVector(4) -> LSTM(5, rs) -> "
                "TimeDistributed(Dense(3)) run unmasked on all 4 steps")


def r_mask_initial_state(g, rng, explicit=True):
    L, K = g.L, g.K
    tok = K.Input((None,), dtype="int32", name="tokens")
    h0 = K.Input((6,), name="h0")
    c0 = K.Input((6,), name="c0")
    e = L.Embedding(20, 5, mask_zero=True)(tok)
    # Keras 3 fills `mask` automatically only when a layer gets ONE tensor argument: with initial_state it must be
    # passed explicitly (keras.ops.not_equal -> a NotEqual op node). tf_keras propagates it by itself.
    kw = dict(mask=K.ops.not_equal(tok, 0)) if g.k3 and explicit else {}
    seq, h, c = L.LSTM(6, return_sequences=True, return_state=True, name="lstm")(e, initial_state=[h0, c0], **kw)
    gseq, gh = L.GRU(4, return_sequences=True, return_state=True, name="gru")(e, initial_state=[L.Dense(4)(h0)],
                                                                              **kw)
    m = K.Model([tok, h0, c0], [seq, h, c, gseq, gh], name="mask_init")
    x = [tokens(rng, 5, 7, 20, ["none", "full", "pre", "post", "mid"]),
         rng.standard_normal((5, 6)).astype(np.float32), rng.standard_normal((5, 6)).astype(np.float32)]
    feats = ["functional", "embedding", "mask_zero", "lstm", "gru", "initial_state", "return_state",
             "return_sequences", "multi_input", "multi_output", "dense:linear"]
    if not explicit:
        return Spec(m, x, feats + ["mask_not_applied", "fully_masked_row"],
                    "Keras 3 DROPS the Embedding mask here: LSTM(6, rs, return_state)(emb, initial_state=[h0, c0]) "
                    "and GRU(4, ...)(emb, initial_state=[Dense(4)(h0)]) get no mask, because Keras 3 auto-fills "
                    "`mask` only for a call with a single tensor argument. The config shows it: these inbound "
                    "nodes have no kwargs.mask and no NotEqual node exists. Expected outputs are therefore UNMASKED "
                    "(token 0 is embedded and processed like any token), also for the fully masked row 1")
    return Spec(m, x, feats + ["masked_initial_state", "fully_masked_row"] + (["notequal_op_node",
                                                                             "explicit_mask_kwarg"] if g.k3 else []),
                "non-zero initial_state from model inputs with masking: LSTM(6, rs, return_state)(emb, "
                "initial_state=[h0, c0]) and GRU(4, rs, return_state) with initial_state Dense(4)(h0). "
                + ("The mask is passed explicitly (mask=keras.ops.not_equal(tokens, 0): a NotEqual op node in the "
                   "config) since Keras 3 would drop it (see k3_mask_initial_state_implicit). " if g.k3 else
                   "tf_keras propagates the Embedding mask by itself. ")
                + "Row 1 is fully masked: its sequence outputs are zeros while its returned states equal the initial "
                "states; rows 2-4 pre/post/mid padded")


def r_mask_initial_state_implicit(g, rng):
    return r_mask_initial_state(g, rng, explicit=False)


def r_masking_zero(g, rng):
    L, K = g.L, g.K
    m = K.Sequential([K.Input((None, 3), name="series"), L.Masking(0.0), L.LSTM(6, return_sequences=True),
                      L.GRU(4), L.Dense(1)], name="masking_ts")
    x = [series(rng, 7, 10, 3, ["none", "pre", "post", "mid", "full", "partial", "last_only"])]
    return Spec(m, x, ["sequential", "masking", "masking:value=0", "lstm", "gru", "float_input", "time_series",
                       "pre_padding", "post_padding", "mid_padding", "fully_masked_row", "partial_mask_value"],
                "float time series with Masking(0.0) -> LSTM(6, rs) -> GRU(4) -> Dense(1); row 5 has one feature "
                "== 0 at step 1 (not masked: a step is masked only when ALL features equal mask_value); rows none, "
                "pre, post, mid, full, partial, last_only")


def r_masking_nonzero(g, rng):
    L, K = g.L, g.K
    x_in = K.Input((None, 3), name="series")
    mk = L.Masking(mask_value=-1.0, name="masking")(x_in)
    seq = L.LSTM(5, return_sequences=True, name="lstm")(mk)
    proj = L.Dense(3, name="proj")(mk)
    m = K.Model(x_in, [seq, proj], name="masking_nonzero")
    x = [series(rng, 6, 8, 3, ["none", "pre", "post", "mid", "full", "partial"], pad_value=-1.0)]
    return Spec(m, x, ["functional", "masking", "masking:value=nonzero", "lstm", "return_sequences", "float_input",
                       "masking_zeroes_values", "dense_3d", "pre_padding", "post_padding", "mid_padding",
                       "fully_masked_row", "partial_mask_value", "multi_output"],
                "Masking(mask_value=-1.0): the LSTM(5, rs) output is masked, and 'proj' = Dense(3) on the Masking "
                "output shows that masked steps' VALUES are zeroed (proj = bias there); row 5 has one feature == "
                "-1 at step 1 (not masked)")


def r_bidi_masked(g, rng):
    L, K = g.L, g.K
    tok = K.Input((None,), dtype="int32", name="tokens")
    e = L.Embedding(20, 5, mask_zero=True)(tok)
    seq = L.Bidirectional(L.GRU(5, return_sequences=True), name="bidi_seq")(e)
    last = L.Bidirectional(L.LSTM(4), name="bidi_last")(e)
    m = K.Model(tok, [seq, last], name="bidi_masked")
    x = [tokens(rng, 7, 8, 20, ["none", "pre", "post", "mid", "full", "last_only", "first_only"])]
    return Spec(m, x, ["functional", "embedding", "mask_zero", "bidirectional:concat", "gru", "lstm",
                       "return_sequences", "zero_output_for_mask", "masked_sequence_output", "pre_padding",
                       "post_padding", "mid_padding", "fully_masked_row", "int_input"],
                "masked Bidirectional: Bidirectional(GRU(5, return_sequences)) (Keras forces zero_output_for_mask: "
                "masked steps output 0 in both halves) and Bidirectional(LSTM(4)) final output; " + PAD_DOC)


def r_stateful(g, rng):
    L, K = g.L, g.K
    m = K.Sequential([K.Input((None, 3), batch_size=2, name="x"),
                      L.LSTM(6, stateful=True, return_sequences=True), L.GRU(4, stateful=True), L.Dense(2)],
                     name="stateful")
    calls = [([series(rng, 2, 5, 3)], False), ([series(rng, 2, 3, 3)], False), ([series(rng, 2, 6, 3)], False),
             ([series(rng, 2, 4, 3)], True), ([series(rng, 2, 2, 3)], False)]
    return Spec(m, calls[0][0], ["sequential", "lstm", "gru", "stateful", "fixed_batch_size", "stateful_calls"],
                "stateful=True LSTM(6, rs) -> GRU(4) -> Dense(2) with batch size 2: 'calls' replays 5 predict "
                "calls (T=5,3,6,4,2) on the freshly loaded model; state carries across calls 0-2, "
                "reset_states() before call 3, call 4 continues from 3. States are not in the file (start at 0)",
                calls=calls, batch_size=2)


def r_length_differs(g, rng):
    L, K = g.L, g.K
    m = K.Sequential([K.Input((10, 3), name="x"), L.LSTM(6, return_sequences=True), L.GRU(4), L.Dense(1)],
                     name="fixed_len")
    x = [series(rng, 3, 16, 3)]
    return Spec(m, x, ["sequential", "lstm", "gru", "length_differs", "fixed_input_length_in_config"],
                "model built with a fixed input length 10 (batch_shape [null, 10, 3] in the config) predicted on "
                "T=16; Keras accepts it (RNNs are length-agnostic)")


def r_conv_stack(g, rng):
    L, K = g.L, g.K
    m = K.Sequential([K.Input((None, 3), name="x"),
                      L.Conv1D(8, 3, strides=2, padding="valid", activation="relu"),
                      L.Conv1D(8, 3, padding="same", dilation_rate=2, activation="tanh"),
                      L.Conv1D(6, 2, padding="causal"),
                      L.MaxPooling1D(2),
                      L.LSTM(6, return_sequences=True),
                      L.AveragePooling1D(pool_size=3, strides=1, padding="same"),
                      L.MaxPooling1D(pool_size=2, strides=1, padding="valid"),
                      L.GlobalMaxPooling1D(),
                      L.Dense(2)], name="conv")
    x = [series(rng, 3, 24, 3)]
    return Spec(m, x, ["sequential", "conv1d", "conv1d:valid", "conv1d:same", "conv1d:causal", "conv1d:strides",
                       "conv1d:dilation", "max_pooling1d", "average_pooling1d", "pooling:same", "global_max_pooling1d",
                       "lstm", "dense:relu", "float_input"],
                "Conv1D(8,3,strides=2,valid,relu) -> Conv1D(8,3,same,dilation 2,tanh) -> Conv1D(6,2,causal) -> "
                "MaxPooling1D(2) -> LSTM(6, rs) -> AveragePooling1D(3, strides 1, same) -> MaxPooling1D(2, "
                "strides 1) -> GlobalMaxPooling1D -> Dense(2); T=24")


def r_norms(g, rng):
    L, K = g.L, g.K
    m = K.Sequential([K.Input((None, 4), name="x"), L.LSTM(8, return_sequences=True),
                      L.BatchNormalization(), L.LayerNormalization(), L.GlobalAveragePooling1D(),
                      L.Dense(2)], name="norms")
    xt = series(rng, 48, 6, 4)
    yt = rng.standard_normal((48, 2)).astype(np.float32)
    x = [series(rng, 4, 7, 4)]
    return Spec(m, x, ["sequential", "lstm", "batch_normalization", "layer_normalization",
                       "global_average_pooling1d", "trained", "optimizer_state_in_file"],
                "LSTM(8, rs) -> BatchNormalization -> LayerNormalization -> GlobalAveragePooling1D -> Dense(2); "
                "moving stats perturbed then trained 1 epoch (mse), so moving_mean/variance are neither 0/1 nor "
                "the batch stats", train=dict(x=[xt], y=yt, loss="mse", epochs=1))


def r_merge_layers(g, rng):
    L, K = g.L, g.K
    a = K.Input((None, 3), name="a")
    b = K.Input((None, 3), name="b")
    la = L.LSTM(6, return_sequences=True)(a)
    lb = L.GRU(6, return_sequences=True)(b)
    merged = L.Concatenate(axis=-1, name="cat")([L.Add()([la, lb]), L.Multiply()([la, lb]), L.Average()([la, lb]),
                                                 L.Subtract()([la, lb]), L.Maximum()([la, lb]),
                                                 L.Minimum()([la, lb])])
    h = L.LSTM(5)(merged)
    out = L.Dense(1, name="out")(h)
    time_cat = L.Concatenate(axis=1, name="time_cat")([la, lb])
    pooled = L.GlobalAveragePooling1D(name="pooled")(time_cat)
    m = K.Model([a, b], [out, pooled], name="merges")
    x = [series(rng, 3, 5, 3), series(rng, 3, 5, 3)]
    return Spec(m, x, ["functional", "multi_input", "multi_output", "lstm", "gru", "add", "multiply", "average",
                       "subtract", "maximum", "minimum", "concatenate", "concatenate:axis1",
                       "global_average_pooling1d"],
                "merge layers on an LSTM and a GRU sequence: Add, Multiply, Average, Subtract, Maximum, Minimum -> "
                "Concatenate(-1) -> LSTM(5) -> Dense(1); second output: Concatenate(axis=1) (time axis) -> "
                "GlobalAveragePooling1D")


def r_reshape_zoo(g, rng):
    L, K = g.L, g.K
    m = K.Sequential([K.Input((6, 4), name="x"), L.Permute((2, 1)), L.LSTM(5, return_sequences=True),
                      L.Flatten(), L.Dense(12, activation="elu"), L.Reshape((3, 4)), L.GRU(4),
                      L.RepeatVector(3), L.LSTM(3, return_sequences=True), L.Activation("softmax")],
                     name="reshapes")
    x = [series(rng, 3, 6, 4)]
    return Spec(m, x, ["sequential", "permute", "lstm", "flatten", "dense:elu", "reshape", "gru", "repeat_vector",
                       "return_sequences", "activation_layer", "activation:softmax"],
                "fixed-shape (6,4) input -> Permute((2,1)) -> LSTM(5, rs) over 4 steps -> Flatten -> Dense(12, elu) "
                "-> Reshape((3,4)) -> GRU(4) -> RepeatVector(3) -> LSTM(3, rs) -> Activation(softmax)")


def r_identity_layers(g, rng):
    L, K = g.L, g.K
    m = K.Sequential([K.Input((None, 4), name="x"), L.Dropout(0.3), L.SpatialDropout1D(0.2),
                      L.GaussianNoise(0.5), L.LSTM(6, return_sequences=True, dropout=0.2, recurrent_dropout=0.2),
                      L.GaussianDropout(0.3), L.ActivityRegularization(l1=0.01, l2=0.01),
                      L.GRU(4, dropout=0.1, recurrent_dropout=0.1), L.Dropout(0.5), L.Dense(2)], name="identity")
    x = [series(rng, 3, 7, 4)]
    return Spec(m, x, ["sequential", "dropout", "spatial_dropout1d", "gaussian_noise", "gaussian_dropout",
                       "activity_regularization", "rnn_dropout", "lstm", "gru"],
                "inference-time identities: Dropout, SpatialDropout1D, GaussianNoise, GaussianDropout, "
                "ActivityRegularization, LSTM/GRU dropout and recurrent_dropout around LSTM(6, rs) -> GRU(4) -> "
                "Dense(2)")


def r_textgen(g, rng):
    L, K = g.L, g.K
    m = K.Sequential([K.Input((None,), dtype="int32", name="chars"), L.Embedding(24, 8),
                      L.LSTM(10, return_sequences=True), L.TimeDistributed(L.Dense(24)), L.Activation("softmax")],
                     name="textgen")
    x = [tokens(rng, 3, 9, 24)]
    return Spec(m, x, ["sequential", "embedding", "lstm", "return_sequences", "time_distributed", "activation_layer",
                       "activation:softmax", "int_input"],
                "char generator: Embedding(24,8) -> LSTM(10, rs) -> TimeDistributed(Dense(24)) -> "
                "Activation('softmax') -> (B,T,24)")


def r_simple_rnn(g, rng):
    L, K = g.L, g.K
    m = K.Sequential([K.Input((None, 3), name="x"), L.SimpleRNN(6, return_sequences=True),
                      L.SimpleRNN(4, activation="relu", go_backwards=True), L.Dense(2, activation="softplus")],
                     name="simple")
    x = [series(rng, 3, 8, 3)]
    return Spec(m, x, ["sequential", "simple_rnn", "return_sequences", "go_backwards", "rnn_activation:relu",
                       "dense:softplus"],
                "SimpleRNN(6, tanh, rs) -> SimpleRNN(4, relu, go_backwards) -> Dense(2, softplus)", gain=1.2)


def r_timeseries(g, rng):
    L, K = g.L, g.K
    m = K.Sequential([K.Input((None, 2), name="window"), L.LSTM(12, return_sequences=True), L.Dropout(0.2),
                      L.LSTM(6), L.Dense(1)], name="forecaster")
    t = np.arange(64 + 20 + 1)[:, None] * 0.3 + rng.uniform(0, 6, (1, 2))
    full = np.sin(t).astype(np.float32)
    xt = np.stack([full[i:i + 20] for i in range(64)])
    yt = np.stack([full[i + 20, :1] for i in range(64)])
    x = [xt[:5, :15].copy()]
    return Spec(m, x, ["sequential", "lstm", "stacked", "dropout", "float_input", "time_series", "regression",
                       "trained", "optimizer_state_in_file", "length_differs"],
                "time-series forecaster LSTM(12, rs) -> Dropout -> LSTM(6) -> Dense(1), trained 2 epochs (mse) on "
                "sine windows of length 20, predicted on length-15 windows",
                train=dict(x=[xt], y=yt, loss="mse", epochs=2))


def r_textclf_bigru(g, rng):
    L, K = g.L, g.K
    m = K.Sequential([K.Input((None,), dtype="int32", name="tokens"), L.Embedding(60, 8, mask_zero=True),
                      L.Bidirectional(L.GRU(8)), L.Dense(8, activation="relu"), L.Dropout(0.3),
                      L.Dense(3, activation="softmax")], name="bigru_clf")
    xt = tokens(rng, 48, 10, 60, ["pre", "post", "none"] * 16)
    yt = rng.integers(0, 3, (48,)).astype(np.int32)
    x = [tokens(rng, 6, 12, 60, ["none", "pre", "post", "mid", "full", "last_only"])]
    return Spec(m, x, ["sequential", "embedding", "mask_zero", "bidirectional:concat", "gru", "dense:relu",
                       "dense:softmax", "dropout", "trained", "optimizer_state_in_file", "int_input",
                       "fully_masked_row"],
                "3-class text classifier Embedding(60,8,mask_zero) -> Bidirectional(GRU(8)) -> Dense(8, relu) -> "
                "Dropout -> Dense(3, softmax), trained 1 epoch (sparse CE)",
                train=dict(x=[xt], y=yt, loss="sparse_categorical_crossentropy", epochs=1))


def r_bidi_backward_units(g, rng):
    L, K = g.L, g.K
    x_in = K.Input((None, 3), name="x")
    cat = L.Bidirectional(L.LSTM(6, return_sequences=True), name="bidi_concat",
                          backward_layer=L.LSTM(3, return_sequences=True, go_backwards=True))(x_in)
    head = L.Dense(2, name="head")(cat)
    fw, bw, h_fw, h_bw = L.Bidirectional(L.GRU(5, return_state=True), merge_mode=None, name="bidi_none",
                                         backward_layer=L.GRU(2, return_state=True, go_backwards=True))(x_in)
    tail = L.Dense(1, name="tail")(L.Concatenate(name="cat")([fw, bw, h_fw, h_bw]))
    m = K.Model(x_in, [head, tail], name="bidi_backward_units")
    x = [series(rng, 3, 6, 3)]
    return Spec(m, x, ["functional", "bidirectional:concat", "bidirectional:none", "backward_layer",
                       "backward_layer_units_differ", "lstm", "gru", "return_state", "concatenate", "dense_3d"],
                "Bidirectional layers whose backward_layer has another width: LSTM(6) forward + LSTM(3) backward, "
                "concat -> (B,T,9) -> Dense(2); GRU(5) forward + GRU(2) backward, merge_mode=None, return_state -> "
                "[fw (B,5), bw (B,2), h_fw (B,5), h_bw (B,2)] -> Concatenate -> Dense(1). The layers after them are "
                "built for 9 and 14 features (Keras 3.15 cannot run these: its Bidirectional.compute_output_shape "
                "assumes equal widths)")


def r_bidi_initial_state(g, rng):
    L, K = g.L, g.K
    enc_in = K.Input((None, 3), name="enc")
    dec_in = K.Input((None,), dtype="int32", name="dec")
    _, h_fw, c_fw, h_bw, c_bw = L.Bidirectional(L.LSTM(5, return_state=True), name="encoder")(enc_in)
    e = L.Embedding(20, 4, mask_zero=True, name="dec_embed")(dec_in)
    seq = L.Bidirectional(L.LSTM(5, return_sequences=True), merge_mode="sum", name="decoder")(
        e, initial_state=[h_fw, c_fw, h_bw, c_bw])
    out = L.Dense(3, name="proj")(seq)
    m = K.Model([enc_in, dec_in], out, name="bidi_init")
    x = [series(rng, 5, 6, 3), tokens(rng, 5, 7, 20, ["none", "pre", "post", "mid", "full"])]
    return Spec(m, x, ["functional", "multi_input", "bidirectional:concat", "bidirectional:sum", "lstm",
                       "return_state", "initial_state", "bidirectional_initial_state", "embedding", "mask_zero",
                       "return_sequences", "int_input", "fully_masked_row"],
                "Bidirectional seq2seq: encoder Bidirectional(LSTM(5, return_state)) -> [h_fw, c_fw, h_bw, c_bw] is "
                "the initial_state of decoder Bidirectional(LSTM(5, return_sequences), merge_mode='sum') on "
                "Embedding(20,4,mask_zero) tokens -> Dense(3). "
                + ("Keras 3 drops the Embedding mask here (a call with initial_state gets no implicit mask)"
                   if g.k3 else "tf_keras writes {'initial_state': null, 'constants': null} into each of the "
                   "decoder's inbound entries [[embedding], [encoder, 0, 1..4]] and propagates the mask") + "; rows "
                "none, pre, post, mid, full")


def r_stateful_initial_state(g, rng):
    L, K = g.L, g.K
    B = 2
    x_in = K.Input((None, 3), batch_size=B, name="x")
    s_in = K.Input((4,), batch_size=B, name="s")
    seq = L.GRU(4, stateful=True, return_sequences=True, name="gru")(
        x_in, initial_state=[L.Dense(4, activation="tanh", name="h0")(s_in)])
    last = L.LSTM(3, stateful=True, name="lstm")(
        seq, initial_state=[L.Dense(3, name="h1")(s_in), L.Dense(3, name="c1")(s_in)])
    out = L.Dense(2, name="head")(last)
    m = K.Model([x_in, s_in], [seq, out], name="stateful_init")
    steps = ((4, False), (3, False), (5, False), (2, True), (3, False))      # (T, reset_states before)
    calls = [([series(rng, B, T, 3), rng.standard_normal((B, 4)).astype(np.float32)], reset) for T, reset in steps]
    rule = ("Keras 3 uses the given initial_state on every call (the carried state is overwritten)" if g.k3 else
            "tf_keras (base_rnn.py) uses the layer's carried state instead of initial_state once that state is "
            "non-zero, i.e. on every call but the first after reset_states()")
    return Spec(m, calls[0][0], ["functional", "multi_input", "multi_output", "stateful", "stateful_calls",
                                 "fixed_batch_size", "initial_state", "stateful_initial_state", "gru", "lstm",
                                 "return_sequences"],
                "stateful GRU(4, rs) and LSTM(3) with batch size 2, each called with initial_state from Dense layers "
                "of input 's' (a new value every call): " + rule + ". 'calls' replays 5 predict calls (T=4,3,5,2,3), "
                "reset_states() before call 3", calls=calls, batch_size=B)


BOTH_ALL = {"k3": ["k3", "k3dir", "k3h5", "k3w"], "tk": ["tk2", "tk2w", "tk2k", "tk2kw"]}
RECIPES = [  # base name, recipe, formats per generation
    ("textclf", r_textclf, BOTH_ALL),
    ("seq2seq_lstm", r_seq2seq_lstm, {"k3": ["k3", "k3dir", "k3h5"], "tk": ["tk2", "tk2k"]}),
    ("seq2seq_gru", r_seq2seq_gru, {"k3": ["k3"], "tk": ["tk2"]}),
    ("multi_io", r_multi_io, {"k3": ["k3", "k3w"], "tk": ["tk2", "tk2w"]}),
    ("mask_functional", r_mask_functional, {"k3": ["k3", "k3h5"], "tk": ["tk2"]}),
    ("shared_lstm", r_shared_lstm, {"k3": ["k3"], "tk": ["tk2"]}),
    ("nested_sequential", r_nested, {"k3": ["k3", "k3h5"], "tk": ["tk2"]}),
    ("dense_activations", r_dense_activations, {"k3": ["k3"], "tk": ["tk2"]}),
    ("rnn_activations", r_rnn_activations, {"k3": ["k3"], "tk": ["tk2"]}),
    ("hard_sigmoid", r_hard_sigmoid, {"k3": ["k3", "k3h5"], "tk": ["tk2", "tk2k"]}),
    ("gru_reset_before", r_gru_reset_before, {"k3": ["k3"], "tk": ["tk2"]}),
    ("rnn_no_bias", r_rnn_no_bias, {"k3": ["k3", "k3w"], "tk": ["tk2", "tk2w"]}),
    ("lstm_unit_forget_bias_false", r_lstm_unit_forget_bias_false, {"k3": ["k3"], "tk": ["tk2"]}),
    ("bidi_state_lstm", r_bidi_state_lstm, {"k3": ["k3", "k3h5"], "tk": ["tk2"]}),
    ("bidi_state_gru", r_bidi_state_gru, {"k3": ["k3"], "tk": ["tk2"]}),
    ("go_backwards", r_go_backwards, {"k3": ["k3"], "tk": ["tk2"]}),
    ("go_backwards_bidi", r_go_backwards_bidi, {"k3": ["k3"], "tk": ["tk2"]}),
    ("bidi_merge_modes", r_bidi_merge_modes, {"k3": ["k3", "k3h5"], "tk": ["tk2", "tk2w"]}),
    ("mask_lstm_seq", r_mask_lstm_seq, {"k3": ["k3"], "tk": ["tk2", "tk2kw"]}),
    ("mask_gru_seq", r_mask_gru_seq, {"k3": ["k3"], "tk": ["tk2"]}),
    ("mask_stacked", r_mask_stacked, {"k3": ["k3"], "tk": ["tk2"]}),
    ("mask_dropped", r_mask_dropped, {"k3": ["k3"], "tk": ["tk2"]}),
    ("mask_initial_state", r_mask_initial_state, {"k3": ["k3"], "tk": ["tk2"]}),
    ("mask_initial_state_implicit", r_mask_initial_state_implicit, {"k3": ["k3"]}),
    ("masking_zero", r_masking_zero, {"k3": ["k3", "k3h5"], "tk": ["tk2"]}),
    ("masking_nonzero", r_masking_nonzero, {"k3": ["k3"], "tk": ["tk2"]}),
    ("bidi_masked", r_bidi_masked, {"k3": ["k3"], "tk": ["tk2"]}),
    ("stateful", r_stateful, {"k3": ["k3", "k3h5"], "tk": ["tk2", "tk2k"]}),
    # tf_keras refuses T != the fixed length in the config ("expected shape=(None, 10, 3), found (3, 16, 3)")
    ("length_differs", r_length_differs, {"k3": ["k3"]}),
    ("conv_stack", r_conv_stack, {"k3": ["k3"], "tk": ["tk2", "tk2w"]}),
    ("norms", r_norms, {"k3": ["k3", "k3w"], "tk": ["tk2", "tk2kw"]}),
    ("merge_layers", r_merge_layers, {"k3": ["k3"], "tk": ["tk2"]}),
    ("reshape_zoo", r_reshape_zoo, {"k3": ["k3"], "tk": ["tk2"]}),
    ("identity_layers", r_identity_layers, {"k3": ["k3"], "tk": ["tk2"]}),
    ("textgen", r_textgen, {"k3": ["k3"]}),
    ("simple_rnn", r_simple_rnn, {"k3": ["k3"], "tk": ["tk2"]}),
    ("timeseries", r_timeseries, {"k3": ["k3", "k3h5"], "tk": ["tk2"]}),
    ("textclf_bigru", r_textclf_bigru, {"k3": ["k3"], "tk": ["tk2"]}),
    # found by tools/fuzz_keras.py
    ("bidi_backward_units", r_bidi_backward_units, {"tk": ["tk2", "tk2kw"]}),
    ("bidi_initial_state", r_bidi_initial_state, {"k3": ["k3"], "tk": ["tk2", "tk2k"]}),
    ("stateful_initial_state", r_stateful_initial_state, {"k3": ["k3"], "tk": ["tk2", "tk2w"]}),
]


# ----------------------------------------------------------------------------------------------- driver
_GENS = {}


def gen(tag):
    if tag not in _GENS:
        _GENS[tag] = Gen(tag)
    return _GENS[tag]


def run_recipe(out, base, fn, formats, name_filter):
    cases = []
    for tag, fmts in formats.items():
        fmts = [f for f in fmts if name_filter in f"{f}_{base}"]
        if not fmts:
            continue
        g = gen(tag)
        seed = _seed(f"{tag}:{base}")
        g.reset(seed)
        rng = np.random.default_rng(seed)
        spec = fn(g, rng)
        model = spec.model
        if spec.perturb:
            perturb(g, model, rng, spec.gain, spec.bias)
        if spec.train:
            t = spec.train
            model.compile(optimizer=g.K.optimizers.Adam(learning_rate=0.01), loss=t["loss"])
            model.fit(t["x"] if len(t["x"]) > 1 else t["x"][0], t["y"], epochs=t["epochs"], batch_size=16,
                      shuffle=False, verbose=0)
        in_names, out_names = g.io_names(model)
        bs = spec.batch_size
        calls = spec.calls or [(spec.inputs, False)]
        mem = _replay(g, model, calls, bs)
        for fmt in fmts:
            cases.append(_write_case(out, g, base, fmt, spec, model, in_names, out_names, calls, mem))
        print(f"  {tag}:{base}: {', '.join(fmts)}", flush=True)
    return cases


def _replay(g, model, calls, bs):
    outs = []
    for xs, reset in calls:
        if reset:
            g.reset_states(model)
        outs.append(predict(model, xs, bs or len(xs[0])))
    return outs


def _write_case(out, g, base, fmt, spec, model, in_names, out_names, calls, mem):
    name = f"{fmt}_{base}"
    d = case_dir(out, SUITE, name)
    for f in os.listdir(d):
        p = os.path.join(d, f)
        shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
    g.save(model, fmt, d)
    reload_error = None
    try:
        loaded = g.load(fmt, d)
        got = _replay(g, loaded, calls, spec.batch_size)
        reference = f"{g.label} predict() on the model reloaded from the file"
    except Exception as e:  # noqa: BLE001 - recorded in the manifest: the framework cannot read its own file
        reload_error = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        got = mem
        reference = (f"{g.label} predict() on the in-memory model that was saved ({g.label} cannot reload this "
                     f"file: see framework_reload_error)")
    save_reload = max(maxdiff(a, b) for a, b in zip(mem, got))
    call_entries = []
    for i, ((xs, reset), ys) in enumerate(zip(calls, got)):
        sfx = "" if i == 0 else f"_{i}"
        save_npz(os.path.join(d, f"input{sfx}.npz"), **dict(zip(in_names, xs)))
        save_npz(os.path.join(d, f"expected{sfx}.npz"), **{f"output_{k}": y for k, y in enumerate(ys)})
        call_entries.append({"input_file": f"{name}/input{sfx}.npz", "expected_file": f"{name}/expected{sfx}.npz",
                             "reset_states_before": bool(reset)})
    spec_f = FORMATS[fmt]
    xs0, ys0 = calls[0][0], got[0]
    case = {
        "name": name, "file": f"{name}/{spec_f['file']}", "format": spec_f["format"],
        "input_file": f"{name}/input.npz", "input_names": in_names,
        "input_dtypes": [str(np.asarray(x).dtype) for x in xs0], "input_shapes": [list(np.shape(x)) for x in xs0],
        "expected_file": f"{name}/expected.npz", "output_names": out_names,
        "output_shapes": [list(y.shape) for y in ys0], "reference": reference,
        "features": spec.features + ["gen:" + ("keras3" if g.k3 else "tf_keras")],
        "description": spec.description + ". File: " + FORMAT_NOTES[fmt],
        "tolerance": spec.tol, "expect_error": False, "optional": False, "framework": g.framework,
        "save_reload_max_abs_diff": save_reload,
    }
    if "arch" in spec_f:
        case["architecture_file"] = f"{name}/{spec_f['arch']}"
    if spec.calls:
        case["calls"] = call_entries
        case["batch_size"] = spec.batch_size
    if reload_error:
        case["framework_reload_error"] = reload_error
    assert len(out_names) == len(ys0), (name, out_names, [y.shape for y in ys0])
    return case


def verify_case(out, case, custom_objects=None):
    """Fresh reload from disk + predict on the written inputs; returns max |diff| vs the written expected."""
    if case.get("framework_reload_error") or case["expect_error"]:
        return None
    tag = "k3" if "keras" in case["framework"] else "tk"
    g = gen(tag)
    g.K.backend.clear_session()
    fmt = case["name"].split("_")[0]
    d = os.path.join(out, SUITE, case["name"])
    if fmt == "hand":
        return None
    model = g.load(fmt, d, custom_objects)
    calls = case.get("calls") or [{"input_file": case["input_file"], "expected_file": case["expected_file"],
                                   "reset_states_before": False}]
    worst = 0.0
    for c in calls:
        if c["reset_states_before"]:
            g.reset_states(model)
        xin = np.load(os.path.join(out, SUITE, c["input_file"]))
        exp = np.load(os.path.join(out, SUITE, c["expected_file"]))
        xs = [xin[n] for n in case["input_names"]]
        ys = predict(model, xs, case.get("batch_size") or len(xs[0]))
        assert len(ys) == len(case["output_names"]), case["name"]
        worst = max(worst, maxdiff(ys, [exp[f"output_{k}"] for k in range(len(ys))]))
    return worst


# ----------------------------------------------------------------------------------------------- entry point
def build(out, name_filter=""):
    import tensorflow as tf
    tf.config.experimental.enable_op_determinism()
    from . import keras_special
    cases, failed = [], []
    for base, fn, formats in RECIPES:
        try:
            cases += run_recipe(out, base, fn, formats, name_filter)
        except Exception:  # noqa: BLE001 - report every broken recipe, then fail
            traceback.print_exc()
            failed.append(base)
    cases += keras_special.build_errors(out, name_filter)
    cases += keras_special.build_handwritten(out, name_filter)
    for c in cases:
        if c["expect_error"] or c["name"].startswith("hand_"):
            continue
        c["determinism_max_abs_diff"] = verify_case(out, c)
        if c["determinism_max_abs_diff"] not in (None, 0.0) and c["determinism_max_abs_diff"] > 1e-6:
            print(f"  WARNING {c['name']}: fresh reload differs by {c['determinism_max_abs_diff']:.3g}")
    add_cases(out, SUITE, cases)
    print(f"keras: {len(cases)} cases written to {os.path.join(out, SUITE)}")
    if failed:
        raise SystemExit(f"recipes failed: {failed}")
