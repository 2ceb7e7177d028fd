"""Keras 3 training fixtures for the layers around the recurrent ones -> tests/data/train_layers/.

    ~/kvenv/bin/python tools/goldens/training_layers.py [-k SUBSTRING] [--part models|layers]   (dev machine only)

Two kinds of fixture, both read by tests/test_training_layers.py:

models  small Keras models that put Conv1D, pooling, merge, reshaping and normalization layers around LSTM/GRU
        layers. Per case one <case>.npz (weights flattened in order, shapes in the manifest's weight_shapes):
            architecture                           model.to_json() (utf-8 bytes)
            x (or x0, x1 for two inputs), y        N batches of B rows, trained in order (shuffle=False)
            w0                                     initial weights, model.get_weights() order
            g                                      dense gradient of the first batch's loss at w0, trainable weights
                                                   only (model.trainable_weights order)
            <opt>_loss (N,), <opt>_w               per optimizer (sgd, adam), from w0: train_on_batch's loss at
                                                   each step, every weight (moving statistics included) after N steps
        Token batches hold distinct ids (formats.md section 10: TF's sparse Embedding gradient makes Adam
        accumulate per occurrence).
layers  single layers called eagerly in training mode under a GradientTape with a random upstream gradient dy,
        on inputs chosen to hit the cases whose TF gradients are conventions (ties in max pooling, in
        reduce_max and in Maximum/Minimum; masks in merges, pooling and BatchNormalization). layers.json lists
        each case: the layer ({"class_name", "config"}), and where its arrays lie in layers.npz[case] (one float32
        vector: x<i>, mask<i> (0/1), dy, y, dx<i>, w<k> (weights before), g<k> (gradients of the trainable
        weights), after<k> (weights after the call)).

Checks made here (recorded under "checks" in the manifest): a second train_on_batch run is bit-identical,
model.fit(shuffle=False) reaches the same weights, and the same steps in float64 land within a fraction of the
test tolerance of the float32 fixture (so the tolerance is above the fixture's own float32 noise).
"""
import json
import os
import sys

import numpy as np

if __package__:
    from .common import add_cases
    from .train import (GRAD_TOL, LOSS_TOL, WEIGHTS_TOL, _dense_grads, _jsonable_cfg, _loss_obj, _opt_obj,
                        _perturb_weights, _prepadded_tokens, _rel_traj_diff, _rows, _traj_diff)
else:              # run as a script: this folder holds keras.py, which must not shadow the real keras
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    sys.path.insert(0, os.path.dirname(_here))
    from goldens.common import add_cases
    from goldens.train import (GRAD_TOL, LOSS_TOL, WEIGHTS_TOL, _dense_grads, _jsonable_cfg, _loss_obj, _opt_obj,
                               _perturb_weights, _prepadded_tokens, _rel_traj_diff, _rows, _traj_diff)

SUITE = "train_layers"
OPTIMIZERS = {"sgd": ("SGD", {"learning_rate": 0.1}), "adam": ("Adam", {"learning_rate": 0.01})}
LAYER_TOL = {"atol": 1e-5, "rtol": 1e-4}


# ----------------------------------------------------------------------------------------------- data
def _series(rng, n, T, F, zero_steps=False):
    x = rng.normal(size=(n, T, F)).astype(np.float32)
    if zero_steps:                       # whole steps of zeros, for Masking: a few at the end, one in the middle
        for b in range(n):
            k = int(rng.integers(0, T // 2))
            if k:
                x[b, T - k:] = 0.0
            if rng.random() < 0.5:
                x[b, int(rng.integers(1, T - 1))] = 0.0
    return x


def _post_padded(rng, n_batches, B, T, V, min_len):
    """Post-padded rows (zeros last) with distinct non-zero ids inside each batch."""
    return np.ascontiguousarray(_prepadded_tokens(rng, n_batches, B, T, V, min_len)[:, ::-1])


def _flat(arrays):
    return np.concatenate([np.asarray(a, np.float32).ravel() for a in arrays])


def _init_weights(model, rng):
    """train.py's seeded weights, then normalization parameters near their usual values (gamma ~ 1, a positive
    moving variance)."""
    _perturb_weights(model, rng)
    ws = []
    for v, w in zip(model.weights, model.get_weights()):
        name = v.path.rsplit("/", 1)[-1]
        if name == "gamma":
            w = rng.uniform(0.6, 1.4, w.shape)
        elif name == "beta":
            w = rng.uniform(-0.3, 0.3, w.shape)
        elif name == "moving_mean":
            w = rng.uniform(-0.3, 0.3, w.shape)
        elif name == "moving_variance":
            w = rng.uniform(0.5, 1.5, w.shape)
        ws.append(np.asarray(w, np.float32))
    model.set_weights(ws)


# ----------------------------------------------------------------------------------------------- model cases
def _model_specs():
    """name, make(keras) -> model, data(rng) -> (x, y), loss, batch size, steps, description, features."""
    specs = []

    def add(name, make, data, loss, description, features, B=4, N=3):
        specs.append(dict(name=name, make=make, data=data, loss=loss, batch_size=B, steps=N,
                          description=description, features=features))

    V, T = 36, 8

    def gru_pool(keras):
        L = keras.layers
        tok = keras.Input((T,), dtype="int32", name="tokens")
        seq = L.GRU(5, return_sequences=True, name="gru")(L.Embedding(V, 4, mask_zero=True, name="embedding")(tok))
        pooled = L.Concatenate(name="concat")([L.GlobalMaxPooling1D(name="max_pool")(seq),
                                              L.GlobalAveragePooling1D(name="avg_pool")(seq)])
        return keras.Model(tok, L.Dense(1, activation="sigmoid", name="dense")(pooled), name="gru_pool_text_bce")

    add("gru_pool_text_bce", gru_pool,
        lambda rng: (_post_padded(rng, 3, 4, T, V, 3), rng.integers(0, 2, (12, 1)).astype(np.float32)),
        ("binary_crossentropy", {}),
        "Embedding(mask_zero)+GRU(return_sequences), GlobalMaxPooling1D (ignores the mask; the padded steps repeat "
        "the last output, so the max ties) and GlobalAveragePooling1D (mean over unmasked steps) concatenated, "
        "Dense(sigmoid); post-padded token rows",
        ["embedding", "mask_zero", "post_padding", "gru", "global_max_pooling1d", "global_average_pooling1d",
         "concatenate", "dense:sigmoid", "distinct_tokens_per_batch"])

    def conv_lstm(keras):
        L = keras.layers
        return keras.Sequential([keras.Input((12, 3), name="series"),
                                 L.Conv1D(4, 3, padding="causal", dilation_rate=2, activation="relu", name="conv"),
                                 L.MaxPooling1D(2, name="max_pool"),
                                 L.LSTM(5, name="lstm"), L.Dense(1, name="dense")], name="conv_lstm_mse")

    add("conv_lstm_mse", conv_lstm,
        lambda rng: (_series(rng, 12, 12, 3), rng.normal(size=(12, 1)).astype(np.float32)),
        ("mean_squared_error", {}),
        "Conv1D(4, 3, causal, dilation 2, relu)+MaxPooling1D(2)+LSTM(5)+Dense(1), MSE",
        ["conv1d", "padding:causal", "dilation", "activation:relu", "max_pooling1d", "lstm"])

    def conv_gru(keras):
        L = keras.layers
        return keras.Sequential([keras.Input((11, 3), name="series"),
                                 L.Conv1D(4, 3, padding="same", strides=2, activation="tanh", use_bias=False,
                                          name="conv"),
                                 L.Conv1D(3, 2, padding="valid", activation="sigmoid", name="conv_1"),
                                 L.AveragePooling1D(3, strides=2, padding="same", name="avg_pool"),
                                 L.GRU(4, name="gru"), L.Dense(3, activation="softmax", name="dense")],
                                name="conv_gru_sce")

    add("conv_gru_sce", conv_gru,
        lambda rng: (_series(rng, 12, 11, 3), rng.integers(0, 3, 12).astype(np.int32)),
        ("sparse_categorical_crossentropy", {}),
        "Conv1D(same, strides 2, tanh, no bias)+Conv1D(valid, sigmoid)+AveragePooling1D(3, strides 2, same: the "
        "edge windows average their real steps only)+GRU+Dense(softmax), sparse CCE",
        ["conv1d", "padding:same", "strides", "use_bias:false", "activation:tanh", "activation:sigmoid",
         "average_pooling1d", "gru", "dense:softmax"])

    def seq2seq(keras):
        L = keras.layers
        return keras.Sequential([keras.Input((6, 2), name="series"), L.LSTM(5, name="encoder"),
                                 L.RepeatVector(6, name="repeat"), L.LSTM(5, return_sequences=True, name="decoder"),
                                 L.TimeDistributed(L.Dense(2), name="td")], name="seq2seq_repeat_mse")

    def seq2seq_data(rng):
        x = _series(rng, 12, 6, 2)
        return x, np.ascontiguousarray(x[:, ::-1])

    add("seq2seq_repeat_mse", seq2seq, seq2seq_data, ("mean_squared_error", {}),
        "sequence autoencoder: LSTM encoder, RepeatVector(6), LSTM(return_sequences) decoder, TimeDistributed(Dense), "
        "MSE against the reversed series", ["lstm", "repeat_vector", "return_sequences", "time_distributed"])

    def merges(keras):
        L = keras.layers
        x1 = keras.Input((6, 3), name="a")
        x2 = keras.Input((6, 2), name="b")
        a = L.LSTM(3, return_sequences=True, name="lstm_a")(L.Masking(name="mask_a")(x1))
        b = L.GRU(3, return_sequences=True, name="gru_b")(L.Masking(name="mask_b")(x2))
        merged = [cls(name=cls.__name__.lower())([a, b]) for cls in
                  (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum)]
        h = L.LSTM(3, name="lstm")(L.Concatenate(name="concat")(merged))
        return keras.Model([x1, x2], L.Dense(1, name="dense")(h), name="merge_branches_mse")

    add("merge_branches_mse", merges,
        lambda rng: ([_series(rng, 12, 6, 3, True), _series(rng, 12, 6, 2, True)],
                     rng.normal(size=(12, 1)).astype(np.float32)),
        ("mean_squared_error", {}),
        "two inputs, each Masking (different zero steps) + LSTM/GRU(return_sequences); Add, Subtract, Multiply, "
        "Average, Maximum, Minimum of the two branches (masked merges: OR masks, Multiply's 1s, Maximum/Minimum "
        "taking the other operand at masked steps), Concatenate, LSTM, Dense; MSE",
        ["functional", "multi_input", "masking", "add", "subtract", "multiply", "average", "maximum", "minimum",
         "concatenate", "lstm", "gru"])

    def layer_norm(keras):
        L = keras.layers
        return keras.Sequential([keras.Input((6, 3), name="series"), L.LSTM(6, return_sequences=True, name="lstm"),
                                 L.LayerNormalization(axis=[1, 2], name="ln_steps"), L.LSTM(5, name="lstm_1"),
                                 L.LayerNormalization(scale=False, name="ln"),
                                 L.Dense(3, activation="softmax", name="dense")], name="layernorm_lstm_cce")

    add("layernorm_lstm_cce", layer_norm,
        lambda rng: (_series(rng, 12, 6, 3), np.eye(3, dtype=np.float32)[rng.integers(0, 3, 12)]),
        ("categorical_crossentropy", {}),
        "LSTM(return_sequences)+LayerNormalization(axis=[1, 2])+LSTM+LayerNormalization(scale=False)+Dense(softmax), "
        "categorical CCE", ["lstm", "layer_normalization", "layer_normalization:axis=[1,2]", "scale:false"])

    def batch_norm(keras):
        L = keras.layers
        return keras.Sequential([keras.Input((T,), dtype="int32", name="tokens"),
                                 L.Embedding(V, 4, mask_zero=True, name="embedding"),
                                 L.LSTM(5, return_sequences=True, name="lstm"),
                                 L.BatchNormalization(momentum=0.8, name="bn_seq"),
                                 L.LSTM(4, name="lstm_1"),
                                 L.BatchNormalization(momentum=0.9, center=False, name="bn"),
                                 L.Dense(1, activation="sigmoid", name="dense")], name="batchnorm_lstm_bce")

    add("batchnorm_lstm_bce", batch_norm,
        lambda rng: (_prepadded_tokens(rng, 3, 4, T, V, 3), rng.integers(0, 2, (12, 1)).astype(np.float32)),
        ("binary_crossentropy", {}),
        "Embedding(mask_zero)+LSTM(return_sequences)+BatchNormalization(momentum 0.8: masked batch moments over "
        "(batch, steps))+LSTM+BatchNormalization(momentum 0.9, center=False)+Dense(sigmoid), BCE; the moving "
        "statistics (non-trainable, in get_weights) move with every step",
        ["embedding", "mask_zero", "pre_padding", "lstm", "batch_normalization", "masked_moments",
         "non_trainable_weights", "distinct_tokens_per_batch"])

    def reshaping(keras):
        L = keras.layers
        return keras.Sequential([keras.Input((6, 3), name="series"), L.ZeroPadding1D((1, 2), name="pad"),
                                 L.LSTM(4, return_sequences=True, name="lstm"), L.Cropping1D((2, 1), name="crop"),
                                 L.UpSampling1D(2, name="up"), L.GRU(3, return_sequences=True, name="gru"),
                                 L.Permute((2, 1), name="permute"), L.LSTM(4, return_sequences=True, name="lstm_1"),
                                 L.Flatten(name="flatten"), L.Reshape((4, 3), name="reshape"),
                                 L.GRU(2, name="gru_1"), L.Dense(1, name="dense")], name="reshaping_rnn_mse")

    add("reshaping_rnn_mse", reshaping,
        lambda rng: (_series(rng, 12, 6, 3), rng.normal(size=(12, 1)).astype(np.float32)),
        ("mean_squared_error", {}),
        "ZeroPadding1D((1, 2))+LSTM+Cropping1D((2, 1))+UpSampling1D(2)+GRU+Permute((2, 1))+LSTM+Flatten+"
        "Reshape((4, 3))+GRU+Dense, MSE",
        ["zero_padding1d", "cropping1d", "up_sampling1d", "permute", "flatten", "reshape", "lstm", "gru"])
    return specs


def _fresh(keras, spec, w0, opt):
    model = spec["make"](keras)
    model.set_weights(w0)
    model.compile(optimizer=_opt_obj(keras, opt), loss=_loss_obj(keras, spec["loss"]), jit_compile=False)
    return model


def _train_steps(keras, spec, w0, opt, x, y):
    model = _fresh(keras, spec, w0, opt)
    B, weights, losses = spec["batch_size"], [], []
    for s in range(spec["steps"]):
        losses.append(float(model.train_on_batch(_rows(x, s, B), _rows(y, s, B), return_dict=True)["loss"]))
        weights.append(model.get_weights())
    return model, weights, losses


def _fit_steps(keras, spec, w0, opt, x, y):
    model = _fresh(keras, spec, w0, opt)
    weights = []

    class Rec(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            weights.append(self.model.get_weights())

    n = spec["steps"] * spec["batch_size"]
    model.fit(_rows(x, 0, n), y[:n], batch_size=spec["batch_size"], epochs=1, shuffle=False, verbose=0,
              callbacks=[Rec()])
    return weights


def _float64_steps(keras, spec, w0, opt, x, y):
    keras.config.set_dtype_policy("float64")
    try:
        model = spec["make"](keras)
    finally:
        keras.config.set_dtype_policy("float32")
    model.set_weights([w.astype(np.float64) for w in w0])
    model.compile(optimizer=_opt_obj(keras, opt), loss=_loss_obj(keras, spec["loss"]), jit_compile=False)
    as64 = (lambda a: a.astype(np.float64) if a.dtype.kind == "f" else a)
    x64 = [as64(a) for a in x] if isinstance(x, list) else as64(x)
    y64, B, weights = as64(y), spec["batch_size"], []
    for s in range(spec["steps"]):
        model.train_on_batch(_rows(x64, s, B), _rows(y64, s, B))
        weights.append(model.get_weights())
    return weights


def build_models(out, name_filter=""):
    import keras
    import tensorflow as tf

    cases = []
    for spec in _model_specs():
        name = spec["name"]
        if name_filter not in name:
            continue
        rng = np.random.default_rng(2000 + sum(map(ord, name)))
        keras.utils.set_random_seed(1234)
        model = spec["make"](keras)
        _init_weights(model, rng)
        w0 = model.get_weights()
        weight_names = [v.path for v in model.weights]
        trainable = [any(v is t for t in model.trainable_weights) for v in model.weights]
        x, y = spec["data"](rng)
        arrays = {f"x{k}": v for k, v in enumerate(x)} if isinstance(x, list) else {"x": x}
        arrays["y"] = y
        arrays["architecture"] = np.frombuffer(model.to_json().encode("utf-8"), np.uint8)
        arrays["w0"] = _flat(w0)
        B = spec["batch_size"]
        xb0 = [tf.constant(v) for v in _rows(x, 0, B)] if isinstance(x, list) else tf.constant(_rows(x, 0, B))
        _, g0 = _dense_grads(tf, _fresh(keras, spec, w0, OPTIMIZERS["sgd"]), _loss_obj(keras, spec["loss"]), xb0,
                             tf.constant(_rows(y, 0, B)))
        arrays["g"] = _flat([g.numpy() for g in g0])
        checks, opt_cfgs = {}, {}
        for key, opt in OPTIMIZERS.items():
            ref, weights, losses = _train_steps(keras, spec, w0, opt, x, y)
            opt_cfgs[key] = {"class": opt[0], "config": _jsonable_cfg(ref.optimizer.get_config())}
            again = _train_steps(keras, spec, w0, opt, x, y)[1]
            fit_w = _fit_steps(keras, spec, w0, opt, x, y)
            f64_w = _float64_steps(keras, spec, w0, opt, x, y)
            checks[key] = {"determinism_max_abs_diff": _traj_diff(weights, again),
                           "fit_vs_train_on_batch_max_abs_diff": _traj_diff(weights, fit_w),
                           "float64_max_abs_diff": _traj_diff(weights, f64_w),
                           "float64_tolerance_fraction": _rel_traj_diff(f64_w, weights),
                           "max_abs_weight_change": _traj_diff(weights[-1:], [w0])}
            assert checks[key]["determinism_max_abs_diff"] == 0.0, (name, key, checks)
            assert checks[key]["fit_vs_train_on_batch_max_abs_diff"] < 1e-6, (name, key, checks)
            assert checks[key]["float64_tolerance_fraction"] < 0.5, (name, key, checks)
            arrays[f"{key}_loss"] = np.array(losses, np.float32)
            arrays[f"{key}_w"] = _flat(weights[-1])
        if "distinct_tokens_per_batch" in spec["features"]:
            for s in range(spec["steps"]):
                ids = _rows(x, s, B).ravel()
                ids = ids[ids != 0]
                assert len(np.unique(ids)) == ids.size, (name, s)
        np.savez_compressed(os.path.join(out, SUITE, f"{name}.npz"), **arrays)
        loss_cfg = _jsonable_cfg(_loss_obj(keras, spec["loss"]).get_config())
        cases.append({
            "name": name, "kind": "model",
            "data_file": f"{name}.npz",
            "n_inputs": len(x) if isinstance(x, list) else 1,
            "loss": {"class": type(_loss_obj(keras, spec["loss"])).__name__, "config": loss_cfg},
            "optimizers": opt_cfgs, "steps": spec["steps"], "batch_size": B, "shuffle": False,
            "weight_names": weight_names, "weight_shapes": [list(w.shape) for w in w0], "trainable": trainable,
            "tolerance": {"weights": WEIGHTS_TOL, "loss": LOSS_TOL, "grads": GRAD_TOL},
            "features": spec["features"], "description": spec["description"],
            "reference": "keras train_on_batch per step from w0 (one fresh model per optimizer), jit_compile=False, "
                         "tf op determinism on; g: GradientTape on the first batch at w0 (training=True)",
            "framework": {"keras": keras.__version__, "tensorflow": tf.__version__, "backend": keras.backend.backend()},
            "checks": checks,
        })
        print(f"{name}: sgd loss {np.round(arrays['sgd_loss'], 4).tolist()} adam loss "
              f"{np.round(arrays['adam_loss'], 4).tolist()}  f64 fraction "
              f"{checks['sgd']['float64_tolerance_fraction']:.3f}/{checks['adam']['float64_tolerance_fraction']:.3f}")
    return cases


# ----------------------------------------------------------------------------------------------- layer cases
def _ties(rng, shape):
    """Values on a coarse grid (many exact ties)."""
    return rng.integers(-2, 3, size=shape).astype(np.float32)


def _layer_specs():
    """name, make(keras) -> layer, inputs(rng) -> (list of arrays, list of masks or None), description."""
    specs = []

    def add(name, make, inputs, description):
        specs.append(dict(name=name, make=make, inputs=inputs, description=description))

    def masks(rng, n, B, T):
        out = []
        for _ in range(n):
            m = rng.random((B, T)) < 0.7
            m[:, 0] = rng.random(B) < 0.5
            out.append(m)
        return out

    add("conv_causal_dilated_relu", lambda k: k.layers.Conv1D(3, 3, padding="causal", dilation_rate=2,
                                                             activation="relu"),
        lambda rng: ([rng.normal(size=(2, 9, 4)).astype(np.float32)], None), "Conv1D causal, dilation 2, relu")
    add("conv_same_strided_nobias", lambda k: k.layers.Conv1D(3, 2, padding="same", strides=2, use_bias=False,
                                                             activation="tanh"),
        lambda rng: ([rng.normal(size=(2, 7, 4)).astype(np.float32)], None), "Conv1D same, strides 2, no bias, tanh")
    add("conv_valid_strided", lambda k: k.layers.Conv1D(2, 3, strides=3, activation="sigmoid"),
        lambda rng: ([rng.normal(size=(2, 10, 3)).astype(np.float32)], None),
        "Conv1D valid, strides 3 (the last step unread), sigmoid (TF's CPU Conv2D has no channels_first)")
    add("maxpool_same_ties", lambda k: k.layers.MaxPooling1D(3, strides=2, padding="same"),
        lambda rng: ([_ties(rng, (2, 9, 3))], None), "MaxPooling1D(3, strides 2, same) on tied values: dy goes "
                                                       "to the first maximum of each window")
    add("maxpool_overlap_ties", lambda k: k.layers.MaxPooling1D(2, strides=1),
        lambda rng: ([_ties(rng, (2, 6, 3))], None), "MaxPooling1D(2, strides 1): overlapping windows, ties")
    add("avgpool_same", lambda k: k.layers.AveragePooling1D(3, strides=2, padding="same"),
        lambda rng: ([rng.normal(size=(2, 8, 3)).astype(np.float32)], None),
        "AveragePooling1D(3, strides 2, same): edge windows divide by their real steps")
    add("avgpool_valid_channels_first", lambda k: k.layers.AveragePooling1D(2, data_format="channels_first"),
        lambda rng: ([rng.normal(size=(2, 3, 7)).astype(np.float32)], None), "AveragePooling1D(2), channels_first")
    add("global_max_ties", lambda k: k.layers.GlobalMaxPooling1D(),
        lambda rng: ([_ties(rng, (3, 5, 4))], None), "GlobalMaxPooling1D on tied values: dy split evenly")
    add("global_max_keepdims_channels_first",
        lambda k: k.layers.GlobalMaxPooling1D(keepdims=True, data_format="channels_first"),
        lambda rng: ([_ties(rng, (2, 3, 5))], None), "GlobalMaxPooling1D keepdims, channels_first, ties")
    add("global_avg_masked", lambda k: k.layers.GlobalAveragePooling1D(),
        lambda rng: ([rng.normal(size=(3, 5, 4)).astype(np.float32)], masks(rng, 1, 3, 5)),
        "GlobalAveragePooling1D with a mask: mean over the unmasked steps")
    add("global_avg_keepdims", lambda k: k.layers.GlobalAveragePooling1D(keepdims=True),
        lambda rng: ([rng.normal(size=(2, 5, 3)).astype(np.float32)], None), "GlobalAveragePooling1D keepdims")
    for cls, n in (("Add", 3), ("Subtract", 2), ("Multiply", 3), ("Average", 3), ("Maximum", 3), ("Minimum", 3)):
        add(f"{cls.lower()}_masked_ties", (lambda c: lambda k: getattr(k.layers, c)())(cls),
            (lambda n: lambda rng: ([_ties(rng, (3, 5, 2)) for _ in range(n)], masks(rng, n, 3, 5)))(n),
            f"{cls} of {n} masked inputs (different masks) on tied values")
    add("multiply_one_masked", lambda k: k.layers.Multiply(),
        lambda rng: ([rng.normal(size=(2, 4, 3)).astype(np.float32) for _ in range(2)],
                     [masks(rng, 1, 2, 4)[0], None]), "Multiply, only the first input masked")
    add("maximum_one_masked", lambda k: k.layers.Maximum(),
        lambda rng: ([_ties(rng, (2, 4, 3)) for _ in range(2)], [None, masks(rng, 1, 2, 4)[0]]),
        "Maximum, only the second input masked")
    add("add_broadcast_rank", lambda k: k.layers.Add(),
        lambda rng: ([rng.normal(size=(2, 4, 3)).astype(np.float32), rng.normal(size=(2, 3)).astype(np.float32)],
                     None), "Add of (2, 4, 3) and (2, 3): the lower rank input expanded at axis 1, broadcast")
    add("layernorm", lambda k: k.layers.LayerNormalization(),
        lambda rng: ([rng.normal(size=(2, 4, 5)).astype(np.float32) * 2 + 1], None), "LayerNormalization defaults")
    add("layernorm_axes_no_center", lambda k: k.layers.LayerNormalization(axis=[1, 2], center=False, epsilon=1e-2),
        lambda rng: ([rng.normal(size=(2, 4, 5)).astype(np.float32)], None), "LayerNormalization over (steps, "
                                                                            "features), no beta")
    add("layernorm_rms", lambda k: k.layers.LayerNormalization(rms_scaling=True),
        lambda rng: ([rng.normal(size=(2, 4, 5)).astype(np.float32) + 0.5], None),
        "LayerNormalization rms_scaling=True (x / sqrt(var + eps) * gamma)")
    add("batchnorm_masked", lambda k: k.layers.BatchNormalization(momentum=0.7),
        lambda rng: ([rng.normal(size=(3, 5, 4)).astype(np.float32) * 1.5 + 0.5], masks(rng, 1, 3, 5)),
        "BatchNormalization training=True with a mask: masked moments, moving statistics updated")
    add("batchnorm_axis1_no_scale", lambda k: k.layers.BatchNormalization(axis=1, scale=False),
        lambda rng: ([rng.normal(size=(4, 3, 5)).astype(np.float32)], None),
        "BatchNormalization(axis=1, scale=False) training=True: statistics over (batch, features) per step")
    add("batchnorm_frozen", lambda k: k.layers.BatchNormalization(trainable=False),
        lambda rng: ([rng.normal(size=(4, 3, 5)).astype(np.float32)], None),
        "BatchNormalization(trainable=False) called with training=True: runs on the moving statistics")
    for name, make, shape in (
            ("repeat_vector", lambda k: k.layers.RepeatVector(3), (2, 4)),
            ("flatten_channels_first", lambda k: k.layers.Flatten(data_format="channels_first"), (2, 3, 4)),
            ("reshape", lambda k: k.layers.Reshape((2, -1)), (2, 4, 3)),
            ("permute", lambda k: k.layers.Permute((2, 1)), (2, 4, 3)),
            ("permute_rank4", lambda k: k.layers.Permute((2, 3, 1)), (2, 3, 4, 5)),
            ("flatten_channels_first_rank4", lambda k: k.layers.Flatten(data_format="channels_first"), (2, 3, 4, 2)),
            ("cropping", lambda k: k.layers.Cropping1D((1, 2)), (2, 6, 3)),
            ("zero_padding", lambda k: k.layers.ZeroPadding1D((2, 1)), (2, 4, 3)),
            ("up_sampling", lambda k: k.layers.UpSampling1D(3), (2, 4, 3))):
        add(name, make, (lambda s: lambda rng: ([rng.normal(size=s).astype(np.float32)], None))(shape), name)
    return specs


def build_layers(out, name_filter=""):
    import keras
    import tensorflow as tf
    from keras.src import backend as kb

    entries, arrays = [], {}
    for spec in _layer_specs():
        name = spec["name"]
        if name_filter not in name:
            continue
        rng = np.random.default_rng(3000 + sum(map(ord, name)))
        layer = spec["make"](keras)
        xs, masks = spec["inputs"](rng)
        multi = len(xs) > 1
        layer.build([x.shape for x in xs] if multi else xs[0].shape)
        _init_weights(layer, rng)
        before = layer.get_weights()
        xvars = [tf.Variable(x) for x in xs]
        takes_mask = "mask" in layer.call.__code__.co_varnames[:layer.call.__code__.co_argcount]
        with tf.GradientTape() as tape:
            ins = [tf.identity(v) for v in xvars]
            kwargs = {"training": True}
            if masks is not None:
                if takes_mask:
                    kwargs["mask"] = tf.constant(masks[0])
                else:
                    for t, m in zip(ins, masks):
                        if m is not None:
                            kb.set_keras_mask(t, tf.constant(m))
            y = layer(ins if multi else ins[0], **kwargs)
            dy = rng.normal(size=tuple(y.shape)).astype(np.float32)
            obj = tf.reduce_sum(y * dy)
        grads = tape.gradient(obj, xvars + list(layer.trainable_weights))
        n = len(xs)
        parts = {f"x{k}": x for k, x in enumerate(xs)}
        parts.update({f"mask{k}": m for k, m in enumerate(masks or []) if m is not None})
        parts.update(dy=dy, y=y.numpy())
        parts.update({f"dx{k}": np.zeros_like(xs[k]) if g is None else tf.convert_to_tensor(g).numpy()
                      for k, g in enumerate(grads[:n])})
        parts.update({f"w{k}": w for k, w in enumerate(before)})
        parts.update({f"g{k}": tf.convert_to_tensor(g).numpy() for k, g in enumerate(grads[n:])})
        parts.update({f"after{k}": w for k, w in enumerate(layer.get_weights())})
        index, offset = {}, 0
        for key, a in parts.items():
            index[key] = [offset, list(np.shape(a))]
            offset += int(np.size(a))
        arrays[name] = _flat(parts.values())
        cfg = keras.saving.serialize_keras_object(layer)
        cfg = {"class_name": cfg["class_name"],
               "config": {k: v for k, v in cfg["config"].items()
                          if k != "dtype" and not k.endswith(("_initializer", "_regularizer", "_constraint"))}}
        entries.append({"name": name, "layer": cfg, "n_inputs": n, "n_weights": len(before),
                        "trainable": [any(v is t for t in layer.trainable_weights) for v in layer.weights],
                        "arrays": index, "description": spec["description"]})
    np.savez_compressed(os.path.join(out, SUITE, "layers.npz"), **arrays)
    with open(os.path.join(out, SUITE, "layers.json"), "w") as f:
        json.dump({"suite": "Keras 3 layer gradients in training mode (tools/goldens/training_layers.py)",
                   "tolerance": LAYER_TOL, "framework": {"keras": keras.__version__, "tensorflow": tf.__version__},
                   "cases": entries}, f, indent=None, separators=(",", ":"))
    print(f"layers: {len(entries)} cases")


def build(out, name_filter="", part="all"):
    """part: "models", "layers" or "all"; name_filter selects model cases (the layer file is written whole)."""
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.get_logger().setLevel("ERROR")
    os.makedirs(os.path.join(out, SUITE), exist_ok=True)
    if part in ("all", "models"):
        add_cases(out, SUITE, build_models(out, name_filter))
    if part in ("all", "layers"):
        build_layers(out)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", default="", help="only model cases whose name contains this")
    ap.add_argument("--part", choices=("all", "models", "layers"), default="all")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests",
                                                  "data"))
    a = ap.parse_args()
    for k, v in (("TF_ENABLE_ONEDNN_OPTS", "0"), ("CUDA_VISIBLE_DEVICES", ""), ("KERAS_BACKEND", "tensorflow"),
                 ("TF_CPP_MIN_LOG_LEVEL", "2")):
        os.environ.setdefault(k, v)
    build(os.path.abspath(a.out), a.k, a.part)
