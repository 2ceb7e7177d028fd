"""Keras -> ONNX fixtures -> tests/data/onnx/ (family "onnx_keras", run with ~/kvenv/bin/python).

Two real exporters:
  tf2onnx.convert.from_keras on tf_keras (Keras 2) models   -> cases "tf2onnx_*"   (opset 15 default, 13, 17, 18)
  Keras 3 model.export(path, format="onnx") (tf2onnx inside) -> cases "k3export_*" (opset 15)
Every model gets seeded random weights (non-zero biases), is exported with dynamic batch and time, and is
recorded at a batch / length the export never saw. expected.npz = onnxruntime on the saved file;
"source_max_abs_diff" = its distance to the Keras model's own output on the same input.
Unfused graphs (ONNX Loop with the cell inside: masked LSTMs, GRU reset_after=False, Keras-3 GRU and
hard_sigmoid LSTM) are marked optional, as in ../shared/conformance (formats.md sections 6 and 9).
"""
import os
import tempfile

import numpy as np

from .common import add_cases
from .onnx_util import wanted, write_case

V, E = 30, 8                  # vocabulary, embedding width: keeps every file in the tens of KB
B_REC, T_REC = 3, 9           # recorded batch / length
B_CALL, T_CALL = 2, 6         # Keras 3: the one call that builds the model before export


# ----------------------------------------------------------------------------------------------- data
def tokens(rng, b=B_REC, t=T_REC):
    return rng.integers(1, V, size=(b, t)).astype(np.int32)


def padded_tokens(rng, b=4, t=T_REC):
    """Rows: pre-padded, post-padded, zeros in the middle, no padding (mask_zero=True inputs)."""
    x = tokens(rng, b, t)
    x[0, :3] = 0
    x[1, -4:] = 0
    x[2, 3:5] = 0
    return x


def series(rng, b=B_REC, t=T_REC, f=3):
    return rng.normal(0, 1.0, (b, t, f)).astype(np.float32)


def masked_series(rng, b=4, t=T_REC, f=3):
    """Masking(0.0) inputs: all-zero feature vectors at pre-, post- and mid-sequence steps."""
    x = series(rng, b, t, f)
    x[0, :2] = 0.0
    x[1, -3:] = 0.0
    x[2, 4] = 0.0
    return x


def perturb(model, rng):
    """Seeded weights: uniform kernels (slightly wider than glorot), non-zero biases, spread embeddings."""
    ws = []
    for v, w in zip(model.weights, model.get_weights()):
        if "bias" in v.name:
            ws.append(rng.uniform(-0.5, 0.5, w.shape))
        elif "embeddings" in v.name:
            ws.append(rng.uniform(-1.0, 1.0, w.shape))
        else:
            a = 1.3 * np.sqrt(6.0 / (w.shape[0] + w.shape[-1]))
            ws.append(rng.uniform(-a, a, w.shape))
    model.set_weights([w.astype(np.float32) for w in ws])


# ----------------------------------------------------------------------------------------------- tf_keras + tf2onnx
def _tk_specs(k):
    """(name, opset, build() -> model, data(rng) -> x, description, features, optional). k = tf_keras."""
    L = k.layers

    def tok_in():
        return k.Input(shape=(None,), dtype="int32", name="tokens")

    def emb(x, mask_zero=False):
        return L.Embedding(V, E, mask_zero=mask_zero, name="embedding")(x)

    def model(inp, out, name):
        return k.Model(inp, out, name=name)

    def embed_lstm_dense():
        i = tok_in()
        return model(i, L.Dense(1, activation="sigmoid", name="dense")(L.LSTM(8, name="lstm")(emb(i))), "m")

    def textgen():
        i = tok_in()
        y = L.LSTM(10, return_sequences=True, name="lstm")(emb(i))
        return model(i, L.TimeDistributed(L.Dense(V, activation="softmax"), name="time_distributed")(y), "m")

    def stacked():
        i = tok_in()
        y = L.LSTM(8, return_sequences=True, name="lstm")(emb(i))
        y = L.LSTM(6, return_sequences=True, name="lstm_1")(y)
        y = L.LSTM(5, name="lstm_2")(y)
        return model(i, L.Dense(3, activation="softmax", name="dense")(y), "m")

    def bilstm_concat():
        i = tok_in()
        y = L.Bidirectional(L.LSTM(6), name="bidirectional")(emb(i))
        return model(i, L.Dense(3, activation="softmax", name="dense")(y), "m")

    def bilstm_sum_seq():
        i = tok_in()
        y = L.Bidirectional(L.LSTM(6, return_sequences=True), merge_mode="sum", name="bidirectional")(emb(i))
        return model(i, L.Dense(2, name="dense")(y), "m")

    def bigru():
        i = tok_in()
        y = L.Bidirectional(L.GRU(6), name="bidirectional")(emb(i))
        return model(i, L.Dense(1, activation="sigmoid", name="dense")(y), "m")

    def go_backwards():
        i = tok_in()
        y = L.LSTM(8, go_backwards=True, return_sequences=True, name="lstm")(emb(i))
        return model(i, L.Dense(2, name="dense")(y), "m")

    def gru(reset_after):
        def build():
            i = tok_in()
            y = L.GRU(8, reset_after=reset_after, name="gru")(emb(i))
            return model(i, L.Dense(1, activation="sigmoid", name="dense")(y), "m")
        return build

    def lstm_variant(**kw):
        def build():
            i = tok_in()
            return model(i, L.Dense(2, name="dense")(L.LSTM(8, name="lstm", **kw)(emb(i))), "m")
        return build

    def mask_zero():
        i = tok_in()
        y = L.LSTM(8, name="lstm")(emb(i, mask_zero=True))
        return model(i, L.Dense(1, activation="sigmoid", name="dense")(y), "m")

    def masking():
        i = k.Input(shape=(None, 3), name="series")
        y = L.LSTM(6, return_sequences=True, name="lstm")(L.Masking(0.0, name="masking")(i))
        return model(i, L.Dense(1, name="dense")(y), "m")

    def return_state():
        i = tok_in()
        y, h, c = L.LSTM(8, return_sequences=True, return_state=True, name="lstm")(emb(i))
        return model(i, [y, h, c], "m")

    def timeseries():
        i = k.Input(shape=(None, 3), name="series")
        return model(i, L.Dense(1, name="dense")(L.LSTM(10, name="lstm")(i)), "m")

    def gru_elu_masked():
        i = tok_in()
        y = L.GRU(3, activation="elu", name="gru")(emb(i, mask_zero=True))
        m = model(i, L.Dense(2, name="dense")(y), "m")

        def widen(m):
            # candidate input bias +3 with embeddings spread to +-4: inputs of unit size give positive candidate
            # pre-activations (where elu == linear), the real tokens negative ones as well
            e = m.get_layer("embedding")
            e.set_weights([4.0 * e.get_weights()[0]])
            g = m.get_layer("gru")
            kernel, rec, bias = g.get_weights()
            bias[0, 6:] = 3.0
            g.set_weights([kernel, rec, bias])
        m.fixture_weights = widen
        return m

    return [
        ("tf2onnx_embed_lstm_dense", 15, embed_lstm_dense, tokens,
         "tf_keras Embedding(30,8) -> LSTM(8) -> Dense(1, sigmoid), tf2onnx default opset 15",
         ["embedding", "lstm", "dense:sigmoid", "int_input"], False),
        ("tf2onnx_textgen_timedistributed", 15, textgen, tokens,
         "Embedding -> LSTM(10, return_sequences) -> TimeDistributed(Dense(30, softmax)); output [B,T,30]",
         ["embedding", "lstm", "return_sequences", "time_distributed", "dense:softmax", "int_input"], False),
        ("tf2onnx_stacked_lstm_op13", 13, stacked, tokens,
         "Embedding -> LSTM(8, rs) -> LSTM(6, rs) -> LSTM(5) -> Dense(3, softmax), opset 13 (Squeeze/Unsqueeze "
         "axes as inputs)", ["embedding", "lstm", "stacked", "dense:softmax", "int_input", "opset13"], False),
        ("tf2onnx_bilstm_concat_op17", 17, bilstm_concat, tokens,
         "Embedding -> Bidirectional(LSTM(6)) merge concat -> Dense(3, softmax), opset 17; one bidirectional LSTM "
         "node, backward last output taken from Y", ["embedding", "lstm", "bidirectional", "merge:concat",
                                                     "dense:softmax", "int_input", "opset17"], False),
        ("tf2onnx_bilstm_sum_seq_op18", 18, bilstm_sum_seq, tokens,
         "Embedding -> Bidirectional(LSTM(6, return_sequences), merge_mode=sum) -> Dense(2) on [B,T,6], opset 18",
         ["embedding", "lstm", "bidirectional", "merge:sum", "return_sequences", "int_input", "opset18"], False),
        ("tf2onnx_bigru_concat", 15, bigru, tokens,
         "Embedding -> Bidirectional(GRU(6)) (reset_after=True, fused) -> Dense(1, sigmoid)",
         ["embedding", "gru", "bidirectional", "merge:concat", "reset_after", "int_input"], False),
        ("tf2onnx_lstm_go_backwards_seq", 15, go_backwards, tokens,
         "LSTM(8, go_backwards=True, return_sequences=True) -> Dense(2): ReverseSequence + forward LSTM; the Keras "
         "sequence output is in processing order (out[:,0] consumed x[:,-1])",
         ["embedding", "lstm", "go_backwards", "return_sequences", "int_input"], False),
        ("tf2onnx_gru_reset_after", 15, gru(True), tokens,
         "Embedding -> GRU(8, reset_after=True) -> Dense(1, sigmoid): fused GRU, linear_before_reset=1",
         ["embedding", "gru", "reset_after", "int_input"], False),
        ("tf2onnx_gru_reset_before_loop", 15, gru(False), tokens,
         "Embedding -> GRU(8, reset_after=False) -> Dense(1, sigmoid): tf2onnx does not fuse it, the cell is "
         "unrolled inside an ONNX Loop", ["embedding", "gru", "reset_before", "int_input", "unfused"], True),
        ("tf2onnx_lstm_mask_zero_loop", 15, mask_zero, padded_tokens,
         "Embedding(mask_zero=True) -> LSTM(8) -> Dense(1, sigmoid); rows pre-padded, post-padded, mid-sequence "
         "zeros, unpadded: tf2onnx emits a Loop that keeps Keras' masked-step semantics (state carried)",
         ["embedding", "lstm", "mask_zero", "masking", "int_input", "unfused"], True),
        ("tf2onnx_lstm_masking_loop", 15, masking, masked_series,
         "float input -> Masking(0.0) -> LSTM(6, return_sequences) -> Dense(1); zero steps pre/post/mid: the Loop "
         "repeats the previous output at masked steps (zeros before the first valid step)",
         ["lstm", "masking", "return_sequences", "float_input", "unfused"], True),
        ("tf2onnx_lstm_hard_sigmoid", 15, lstm_variant(recurrent_activation="hard_sigmoid"), tokens,
         "LSTM(8, recurrent_activation='hard_sigmoid') -> Dense(2): Keras-2 hard_sigmoid clip(0.2x+0.5) -> ONNX "
         "activations [HardSigmoid, Tanh, Tanh] with default alpha/beta",
         ["embedding", "lstm", "hard_sigmoid:keras2", "int_input"], False),
        ("tf2onnx_lstm_relu", 15, lstm_variant(activation="relu"), tokens,
         "LSTM(8, activation='relu') -> Dense(2): ONNX activations [Sigmoid, Relu, Relu]",
         ["embedding", "lstm", "activation:relu", "int_input"], False),
        ("tf2onnx_lstm_no_bias", 15, lstm_variant(use_bias=False), tokens,
         "LSTM(8, use_bias=False) -> Dense(2); tf2onnx still writes B, all zeros", ["embedding", "lstm", "use_bias:false", "int_input"], False),
        ("tf2onnx_lstm_return_state", 15, return_state, tokens,
         "LSTM(8, return_sequences=True, return_state=True): model outputs [sequence, h, c] = 3 graph outputs",
         ["embedding", "lstm", "return_sequences", "return_state", "multi_output", "int_input"], False),
        ("tf2onnx_timeseries_lstm_op17", 17, timeseries, series,
         "float time series [B,T,3] -> LSTM(10) -> Dense(1) regression, opset 17",
         ["lstm", "float_input", "regression", "opset17"], False),
        ("tf2onnx_gru_elu_masked_loop_op18", 18, gru_elu_masked, padded_tokens,
         "Embedding(mask_zero=True) -> GRU(3, activation='elu') -> Dense(2), opset "
         "18: a masked GRU Loop whose candidate activation is Elu. Candidate input bias +3 and embeddings "
         "spread to +-4: unit-size inputs give positive candidate pre-activations, where elu == linear, the real "
         "tokens negative ones too; the cell recognizer must probe both signs (found by tools/fuzz_onnx.py: a "
         "3-row probe took a tf2onnx GRU's elu for linear, max error 2.4)",
         ["embedding", "gru", "mask_zero", "masking", "reset_after", "activation:elu", "int_input", "unfused",
          "opset18"], True),
    ]


def build_tf2onnx(out, name_filter):
    import tensorflow as tf
    import tf2onnx
    import tf_keras as k

    fw = {"tf_keras": k.__version__, "tensorflow": tf.__version__, "tf2onnx": tf2onnx.__version__}
    cases = []
    for idx, (name, opset, build, data, description, features, optional) in enumerate(_tk_specs(k)):
        if not wanted(name, name_filter):
            continue
        rng = np.random.default_rng(100 + idx)
        k.backend.clear_session()
        tf.random.set_seed(idx)
        model = build()
        perturb(model, rng)
        if hasattr(model, "fixture_weights"):      # a recipe's own weight adjustment after the seeded ones
            model.fixture_weights(model)
        x = data(rng)
        in_name = model.inputs[0].name.split(":")[0]
        shape = (None, None) if x.ndim == 2 else (None, None, x.shape[2])      # dynamic batch and time
        spec = (tf.TensorSpec(shape, tf.as_dtype(x.dtype), name=in_name),)
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
        src = model(x, training=False)
        src = [np.asarray(s) for s in (src if isinstance(src, (list, tuple)) else [src])]
        cases.append(write_case(
            out, name, proto, {in_name: x}, fmt="onnx-tf2onnx",
            description=description + f"; recorded at batch {x.shape[0]}, length {x.shape[1]} (dynamic axes)",
            features=features + ["dynamic_axes"], source_outputs=src, source="tf_keras model call (training=False)",
            framework=fw, optional=optional))
    return cases


# ----------------------------------------------------------------------------------------------- Keras 3 export
def _k3_specs(keras):
    L = keras.layers

    def tok_in():
        return keras.Input(shape=(None,), dtype="int32", name="tokens")

    def emb(x, mask_zero=False):
        return L.Embedding(V, E, mask_zero=mask_zero, name="embedding")(x)

    def embed_lstm():
        i = tok_in()
        return keras.Model(i, L.Dense(1, activation="sigmoid", name="dense")(L.LSTM(8, name="lstm")(emb(i))))

    def gru():
        i = tok_in()
        return keras.Model(i, L.Dense(2, name="dense")(L.GRU(8, name="gru")(emb(i))))

    def mask_zero():
        i = tok_in()
        y = L.LSTM(8, name="lstm")(emb(i, mask_zero=True))
        return keras.Model(i, L.Dense(1, activation="sigmoid", name="dense")(y))

    def hard_sigmoid():
        i = tok_in()
        y = L.LSTM(8, recurrent_activation="hard_sigmoid", name="lstm")(emb(i))
        return keras.Model(i, L.Dense(2, name="dense")(y))

    def bilstm():
        i = tok_in()
        y = L.Bidirectional(L.LSTM(6), name="bidirectional")(emb(i))
        return keras.Model(i, L.Dense(3, activation="softmax", name="dense")(y))

    def stacked():
        i = tok_in()
        y = L.LSTM(8, return_sequences=True, name="lstm")(emb(i))
        y = L.LSTM(6, return_sequences=True, name="lstm_1")(y)
        return keras.Model(i, L.Dense(V, activation="softmax", name="dense")(y))

    def timeseries():
        i = keras.Input(shape=(None, 3), name="series")
        y = L.LSTM(10, name="lstm")(i)
        return keras.Model(i, L.Dense(1, name="dense")(y))

    def layernorm():
        i = tok_in()
        y = L.LSTM(6, return_sequences=True, name="lstm")(emb(i))
        y = L.LayerNormalization(name="layer_normalization")(y)
        return keras.Model(i, L.Dense(2, name="dense")(L.LSTM(5, name="lstm_1")(y)))

    return [
        ("k3export_embed_lstm_dense", embed_lstm, tokens,
         "Keras 3 Embedding(30,8) -> LSTM(8) -> Dense(1, sigmoid) via model.export(format='onnx'): fused LSTM, "
         "Embedding as Gather with negative-index fix-up", ["embedding", "lstm", "dense:sigmoid", "int_input"], False),
        ("k3export_gru_loop", gru, tokens,
         "Keras 3 Embedding -> GRU(8) (reset_after=True) -> Dense(2): Keras-3 GRUs are not fused, the cell is "
         "unrolled in an ONNX Loop", ["embedding", "gru", "reset_after", "int_input", "unfused"], True),
        ("k3export_lstm_mask_zero_loop", mask_zero, padded_tokens,
         "Keras 3 Embedding(mask_zero=True) -> LSTM(8) -> Dense(1, sigmoid); rows pre-, post-, mid-padded and "
         "unpadded; exported as a Loop", ["embedding", "lstm", "mask_zero", "masking", "int_input", "unfused"], True),
        ("k3export_lstm_hard_sigmoid_loop", hard_sigmoid, tokens,
         "Keras 3 LSTM(8, recurrent_activation='hard_sigmoid') -> Dense(2): Keras-3 hard_sigmoid relu6(x+3)/6, "
         "exported as a Loop", ["embedding", "lstm", "hard_sigmoid:keras3", "int_input", "unfused"], True),
        ("k3export_bilstm_concat", bilstm, tokens,
         "Keras 3 Embedding -> Bidirectional(LSTM(6)) concat -> Dense(3, softmax)",
         ["embedding", "lstm", "bidirectional", "merge:concat", "int_input"], False),
        ("k3export_stacked_return_sequences", stacked, tokens,
         "Keras 3 Embedding -> LSTM(8, rs) -> LSTM(6, rs) -> Dense(30, softmax) on [B,T,6]; output [B,T,30]",
         ["embedding", "lstm", "stacked", "return_sequences", "dense:softmax", "int_input"], False),
        ("k3export_timeseries_lstm", timeseries, series,
         "Keras 3 float time series [B,T,3] -> LSTM(10) -> Dense(1)", ["lstm", "float_input", "regression"], False),
        ("k3export_lstm_layernorm", layernorm, tokens,
         "Keras 3 Embedding -> LSTM(6, rs) -> LayerNormalization -> LSTM(5) -> Dense(2): tf2onnx writes the "
         "LayerNormalization moments (means over the last axis of [B,T,6]) as GlobalAveragePool (found by "
         "tools/fuzz_onnx.py: refused as an unsupported op while onnxruntime runs the file)",
         ["embedding", "lstm", "stacked", "return_sequences", "layer_normalization", "int_input",
          "onnx:GlobalAveragePool"], False),
    ]


def build_k3export(out, name_filter):
    import keras
    import onnx
    import tensorflow as tf
    import tf2onnx

    fw = {"keras": keras.__version__, "tensorflow": tf.__version__, "tf2onnx": tf2onnx.__version__}
    cases = []
    for idx, (name, build, data, description, features, optional) in enumerate(_k3_specs(keras)):
        if not wanted(name, name_filter):
            continue
        rng = np.random.default_rng(200 + idx)
        keras.backend.clear_session()
        keras.utils.set_random_seed(idx)
        model = build()
        perturb(model, rng)
        x = data(rng)
        x_call = data(rng)[:B_CALL, :T_CALL]
        model(x_call)                                       # export needs a model that has been called
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.onnx")
            model.export(path, format="onnx", verbose=False)
            proto = onnx.load(path)
        in_name = proto.graph.input[0].name
        src = model(x, training=False)
        src = [np.asarray(s) for s in (src if isinstance(src, (list, tuple)) else [src])]
        cases.append(write_case(
            out, name, proto, {in_name: x}, fmt="onnx-keras-export",
            description=description + f"; model called once at {list(x_call.shape)} before export, recorded at "
                                      f"{list(x.shape)}",
            features=features + ["dynamic_axes"], source_outputs=src, source="keras 3 model call (training=False)",
            framework=fw, optional=optional))
    return cases


def build(out, name_filter):
    import onnx  # noqa: F401  (fail early when the venv lacks it)

    cases = build_tf2onnx(out, name_filter) + build_k3export(out, name_filter)
    add_cases(out, "onnx", cases)
