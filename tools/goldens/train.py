"""Keras 3 optimizer-step fixtures -> tests/data/train/ (family "train"; schema in tests/data/train/README.md).

Each case: a small model saved as .keras BEFORE training (compile-free), N batches of data, and what Keras 3
(TF backend, op determinism on, jit_compile off) does with them: train_on_batch per step, recording the weights
after every step (model.get_weights() order), the loss (and metrics) Keras reports per step, and the raw dense
gradient of every step at the weights that step started from.

Update rules checked here, not assumed (Keras 3.15 keras/src/optimizers/*.py, base_optimizer._clip_gradients):
    SGD        w -= lr*g
    momentum   m = mu*m - lr*g;  w += m                 (nesterov: w += mu*m - lr*g, with the new m)
    Adam       m += (g-m)(1-b1);  v += (g*g-v)(1-b2);  w -= lr*sqrt(1-b2^t)/(1-b1^t) * m/(sqrt(v)+eps)
    RMSprop    v = rho*v + (1-rho)*g*g;  w -= lr*g/sqrt(v+eps)
    clipnorm   per variable: g *= clipnorm / max(||g||_2, clipnorm)
    global_clipnorm  all variables by their joint norm;  clipvalue  g = clip(g, -c, c)
Every case re-derives its weight trajectory from the recorded gradients with these rules in NumPy
(`optimizer_rule_check_max_abs_diff`), trains again with model.fit(shuffle=False) (`fit_check`), and again with a
custom tf.GradientTape loop that densifies the Embedding gradient (`dense_grad_check_max_abs_diff`), and once
in float64 (`float64_exact_check_*`: how far an exact implementation lands from the float32 fixture).
A case may have several inputs (x is a list), per-sample weights (data returns (x, y, sample_weight)) and
`weighted_metrics`; every run above then uses them.
"""
import json
import os

import numpy as np

from .common import add_cases, case_dir, save_npz

SUITE = "train"
WEIGHTS_TOL = {"atol": 1e-5, "rtol": 1e-4}
LOSS_TOL = {"atol": 1e-5, "rtol": 1e-5}
GRAD_TOL = {"atol": 1e-5, "rtol": 1e-4}


# ----------------------------------------------------------------------------------------------- data
def _tokens(rng, n_batches, batch, steps, vocab, distinct, low=0):
    """(n_batches*batch, steps) int32 token ids; distinct=True: no id repeats inside a batch."""
    if not distinct:
        return rng.integers(low, vocab, size=(n_batches * batch, steps)).astype(np.int32)
    assert batch * steps <= vocab - low, "distinct tokens need batch*T <= vocab"
    out = [rng.permutation(np.arange(low, vocab))[: batch * steps].reshape(batch, steps) for _ in range(n_batches)]
    return np.concatenate(out).astype(np.int32)


def _prepadded_tokens(rng, n_batches, batch, steps, vocab, min_len):
    """Pre-padded (zeros first) rows of random lengths in [min_len, T], one full row per batch;
    the non-zero ids are distinct inside each batch."""
    rows = []
    for _ in range(n_batches):
        lengths = rng.integers(min_len, steps + 1, size=batch)
        lengths[rng.integers(batch)] = steps
        ids = rng.permutation(np.arange(1, vocab))
        assert lengths.sum() <= vocab - 1
        pos = 0
        for n in lengths:
            row = np.zeros(steps, np.int32)
            row[steps - n:] = ids[pos:pos + n]
            pos += n
            rows.append(row)
    return np.stack(rows).astype(np.int32)


def _rows(a, s, B):
    """Batch s (rows [s*B, (s+1)*B)) of an array, of a list of arrays (several inputs), or None."""
    if a is None:
        return None
    return [v[s * B:(s + 1) * B] for v in a] if isinstance(a, list) else a[s * B:(s + 1) * B]


def _const(tf, a):
    if a is None:
        return None
    return [tf.constant(v) for v in a] if isinstance(a, list) else tf.constant(a)


def _perturb_weights(model, rng):
    """Replace every weight with seeded NumPy values: glorot-uniform-sized kernels, non-zero biases."""
    ws = []
    for v in model.weights:
        shape = tuple(v.shape)
        if v.path.endswith("bias"):           # (n,) or GRU reset_after (2, 3H)
            ws.append(rng.uniform(-0.2, 0.2, size=shape))
        elif v.path.endswith("embeddings"):
            ws.append(rng.uniform(-0.5, 0.5, size=shape))
        else:
            a = np.sqrt(6.0 / (shape[0] + shape[-1]))
            ws.append(rng.uniform(-a, a, size=shape))
    model.set_weights([w.astype(np.float32) for w in ws])


# ----------------------------------------------------------------------------------------------- cases
def _case_specs():
    """Each spec: name, make(keras) -> model, data(rng) -> (x, y), optimizer (class, config), loss, metrics."""
    specs = []

    def lstm_bce(name, opt_cls, opt_cfg, distinct, description, metrics=(), extra_features=()):
        V, E, H, T, B, N = 40, 8, 8, 8, 4, 4

        def make(keras):
            return keras.Sequential([keras.Input((T,), dtype="int32", name="tokens"),
                                     keras.layers.Embedding(V, E, name="embedding"),
                                     keras.layers.LSTM(H, name="lstm"),
                                     keras.layers.Dense(1, activation="sigmoid", name="dense")], name=name)

        def data(rng):
            x = _tokens(rng, N, B, T, V, distinct)
            y = rng.integers(0, 2, size=(N * B, 1)).astype(np.float32)
            return x, y

        specs.append(dict(name=name, make=make, data=data, batch_size=B, steps=N, opt=(opt_cls, opt_cfg),
                          loss=("binary_crossentropy", {}), metrics=list(metrics), description=description,
                          features=["embedding", "lstm", "dense:sigmoid", "int_input"] + list(extra_features)
                          + (["distinct_tokens_per_batch"] if distinct else ["repeated_tokens"])))

    lstm_bce("lstm_bce_sgd", "SGD", {"learning_rate": 0.1}, False,
             "Embedding+LSTM+Dense(sigmoid), BCE, plain SGD lr 0.1; tokens repeat inside a batch "
             "(the Embedding gradient sums over occurrences); accuracy recorded per step",
             metrics=["accuracy"], extra_features=["metric:accuracy"])
    lstm_bce("lstm_bce_sgd_momentum", "SGD", {"learning_rate": 0.1, "momentum": 0.9}, False,
             "SGD momentum 0.9: m = 0.9 m - lr g; w += m")
    lstm_bce("lstm_bce_sgd_nesterov", "SGD", {"learning_rate": 0.1, "momentum": 0.9, "nesterov": True}, False,
             "SGD Nesterov momentum 0.9: m = 0.9 m - lr g; w += 0.9 m - lr g")
    lstm_bce("lstm_bce_adam", "Adam", {}, True, "Adam, Keras defaults (lr 1e-3, eps 1e-7)")
    lstm_bce("lstm_bce_adam_lr001", "Adam", {"learning_rate": 0.01}, True, "Adam lr 0.01")
    lstm_bce("lstm_bce_rmsprop", "RMSprop", {}, True,
             "RMSprop, Keras defaults (lr 1e-3, rho 0.9, eps 1e-7 inside the sqrt)")
    lstm_bce("lstm_bce_adam_clipnorm", "Adam", {"learning_rate": 0.01, "clipnorm": 0.05}, True,
             "Adam lr 0.01 + clipnorm 0.05: each variable's gradient clipped to L2 norm 0.05 on its own "
             "(some variables are clipped, others not)", extra_features=["clipnorm"])
    lstm_bce("lstm_bce_adam_global_clipnorm", "Adam", {"learning_rate": 0.01, "global_clipnorm": 0.1}, True,
             "Adam lr 0.01 + global_clipnorm 0.1: all gradients scaled by one factor from their joint L2 norm",
             extra_features=["global_clipnorm"])
    lstm_bce("lstm_bce_adam_clipvalue", "Adam", {"learning_rate": 0.01, "clipvalue": 0.01}, True,
             "Adam lr 0.01 + clipvalue 0.01: elementwise clip of every gradient", extra_features=["clipvalue"])

    def masked():
        """Embedding(mask_zero=True) with pre-padded rows."""
        V, E, H, T, B, N = 50, 8, 8, 12, 4, 4

        def make_masked(keras):
            return keras.Sequential([keras.Input((T,), dtype="int32", name="tokens"),
                                     keras.layers.Embedding(V, E, mask_zero=True, name="embedding"),
                                     keras.layers.LSTM(H, name="lstm"),
                                     keras.layers.Dense(1, activation="sigmoid", name="dense")],
                                    name="lstm_masked_bce_adam")

        def data_masked(rng):
            x = _prepadded_tokens(rng, N, B, T, V, min_len=4)
            return x, rng.integers(0, 2, size=(N * B, 1)).astype(np.float32)

        specs.append(dict(name="lstm_masked_bce_adam", make=make_masked, data=data_masked, batch_size=B, steps=N,
                          opt=("Adam", {"learning_rate": 0.01}), loss=("binary_crossentropy", {}), metrics=[],
                          description="Embedding(mask_zero=True)+LSTM+Dense(sigmoid), pre-padded rows of lengths "
                                      "4..12, "
                                      "BCE, Adam lr 0.01: masked steps carry (h, c) and get no gradient; row 0 of the "
                                      "embedding gets a zero gradient (its Adam moments stay 0)",
                          features=["embedding", "mask_zero", "pre_padding", "lstm", "dense:sigmoid", "int_input",
                                    "distinct_tokens_per_batch"]))

    masked()

    # GRU + softmax, sparse categorical crossentropy
    def gru_sce(name, reset_after, opt, distinct, description, metrics=()):
        V, E, H, T, B, N, C = 40, 8, 8, 8, 4, 4, 5

        def make(keras):
            return keras.Sequential([keras.Input((T,), dtype="int32", name="tokens"),
                                     keras.layers.Embedding(V, E, name="embedding"),
                                     keras.layers.GRU(H, reset_after=reset_after, name="gru"),
                                     keras.layers.Dense(C, activation="softmax", name="dense")], name=name)

        def data(rng):
            return (_tokens(rng, N, B, T, V, distinct),
                    rng.integers(0, C, size=(N * B,)).astype(np.int32))

        specs.append(dict(name=name, make=make, data=data, batch_size=B, steps=N, opt=opt,
                          loss=("sparse_categorical_crossentropy", {}), metrics=list(metrics),
                          description=description,
                          features=["embedding", "gru", f"gru:reset_after={reset_after}", "dense:softmax",
                                    "int_input", "sparse_labels"]
                          + (["metric:accuracy"] if metrics else [])
                          + (["distinct_tokens_per_batch"] if distinct else ["repeated_tokens"])))

    gru_sce("gru_sce_adam", True, ("Adam", {"learning_rate": 0.01}), True,
            "Embedding+GRU(reset_after=True)+Dense(5, softmax), sparse CCE (int labels (B,)), Adam lr 0.01; "
            "accuracy (sparse_categorical_accuracy) recorded per step", metrics=["accuracy"])
    gru_sce("gru_resetbefore_sce_sgd", False, ("SGD", {"learning_rate": 0.1}), False,
            "Embedding+GRU(reset_after=False, bias (3H,))+Dense(5, softmax), sparse CCE, SGD lr 0.1")

    def bidirectional():
        """Bidirectional LSTM (return_sequences) + LSTM + softmax, one-hot CCE."""
        V, E, H1, H2, T, B, N, C = 50, 6, 6, 8, 10, 4, 3, 4

        def make_bi(keras):
            return keras.Sequential([keras.Input((T,), dtype="int32", name="tokens"),
                                     keras.layers.Embedding(V, E, name="embedding"),
                                     keras.layers.Bidirectional(keras.layers.LSTM(H1, return_sequences=True),
                                                                name="bidirectional"),
                                     keras.layers.LSTM(H2, name="lstm"),
                                     keras.layers.Dense(C, activation="softmax", name="dense")],
                                    name="bilstm_lstm_cce_adam")

        def data_bi(rng):
            x = _tokens(rng, N, B, T, V, True)
            y = np.eye(C, dtype=np.float32)[rng.integers(0, C, size=N * B)]
            return x, y

        specs.append(dict(name="bilstm_lstm_cce_adam", make=make_bi, data=data_bi, batch_size=B, steps=N,
                          opt=("Adam", {}), loss=("categorical_crossentropy", {}), metrics=[],
                          description="Embedding+Bidirectional(LSTM(6, return_sequences=True), concat)+LSTM(8)+"
                                      "Dense(4, softmax), categorical CCE on one-hot y, Adam defaults",
                          features=["embedding", "bidirectional", "merge:concat", "return_sequences", "stacked", "lstm",
                                    "dense:softmax", "int_input", "onehot_labels", "distinct_tokens_per_batch"]))

    bidirectional()

    # float time series, two stacked LSTMs, regression
    def ts(name, loss, opt, description):
        T, F, H1, H2, B, N = 10, 3, 8, 6, 8, 3

        def make(keras):
            return keras.Sequential([keras.Input((T, F), dtype="float32", name="series"),
                                     keras.layers.LSTM(H1, return_sequences=True, name="lstm"),
                                     keras.layers.LSTM(H2, name="lstm_1"),
                                     keras.layers.Dense(1, name="dense")], name=name)

        def data(rng):
            x = rng.normal(size=(N * B, T, F)).astype(np.float32)
            y = (x[:, -3:, 0].sum(1, keepdims=True) * 0.5 + rng.normal(scale=0.3, size=(N * B, 1))).astype(np.float32)
            return x, y

        specs.append(dict(name=name, make=make, data=data, batch_size=B, steps=N, opt=opt, loss=(loss, {}),
                          metrics=[], description=description,
                          features=["float_input", "lstm", "stacked", "return_sequences", "dense:linear",
                                    f"loss:{loss}"]))

    ts("ts_lstm2_mse_adam", "mean_squared_error", ("Adam", {"learning_rate": 0.01}),
       "float series (B=8, T=10, F=3): LSTM(8, return_sequences)+LSTM(6)+Dense(1), MSE, Adam lr 0.01")
    ts("ts_lstm2_mae_sgd", "mean_absolute_error", ("SGD", {"learning_rate": 0.1}),
       "same model, MAE (gradient sign(pred-y)/B), SGD lr 0.1")

    def timedistributed():
        """Stacked GRU + TimeDistributed(Dense linear), per-timestep sparse CCE from logits."""
        V, E, H, T, B, N = 30, 8, 8, 6, 4, 5

        def make_td(keras):
            return keras.Sequential([keras.Input((T,), dtype="int32", name="tokens"),
                                     keras.layers.Embedding(V, E, name="embedding"),
                                     keras.layers.GRU(H, return_sequences=True, name="gru"),
                                     keras.layers.GRU(H, return_sequences=True, name="gru_1"),
                                     keras.layers.TimeDistributed(keras.layers.Dense(V), name="time_distributed")],
                                    name="gru2_td_sce_logits_sgd")

        def data_td(rng):
            x = _tokens(rng, N, B, T, V, False)
            y = np.concatenate([x[:, 1:], rng.integers(0, V, size=(N * B, 1))], axis=1).astype(np.int32)
            return x, y

        specs.append(dict(name="gru2_td_sce_logits_sgd", make=make_td, data=data_td, batch_size=B, steps=N,
                          opt=("SGD", {"learning_rate": 0.5}),
                          loss=("sparse_categorical_crossentropy", {"from_logits": True}), metrics=[],
                          description="Embedding+GRU(rs)+GRU(rs)+TimeDistributed(Dense(30) linear), next-token "
                                      "ids (B, T), sparse CCE from_logits=True averaged over all B*T positions, "
                                      "SGD lr 0.5",
                          features=["embedding", "gru", "stacked", "return_sequences", "time_distributed",
                                    "dense:linear", "int_input", "sparse_labels", "per_timestep_loss", "from_logits",
                                    "repeated_tokens"]))

    timedistributed()

    def two_inputs():
        """Functional: tokens -> Embedding -> LSTM and a float series -> LSTM -> Dense(tanh), Concatenate, Dense.
        Keras orders model.layers (get_weights, the saved groups) deepest first: lstm_series before lstm_tokens,
        although a depth-first walk from the output meets lstm_tokens first."""
        V, E, H, T, T2, F, B, N = 30, 6, 5, 7, 5, 3, 4, 3

        def make_two(keras):
            L = keras.layers
            tok = keras.Input((T,), dtype="int32", name="tokens")
            ser = keras.Input((T2, F), dtype="float32", name="series")
            a = L.LSTM(H, name="lstm_tokens")(L.Embedding(V, E, name="embedding")(tok))
            b = L.Dense(4, activation="tanh", name="series_dense")(L.LSTM(H, name="lstm_series")(ser))
            out = L.Dense(1, name="dense")(L.Concatenate(name="concat")([a, b]))
            return keras.Model([tok, ser], out, name="func2in_concat_mse_sgd")

        def data_two(rng):
            x = [_tokens(rng, N, B, T, V, False), rng.normal(size=(N * B, T2, F)).astype(np.float32)]
            return x, rng.normal(size=(N * B, 1)).astype(np.float32)

        specs.append(dict(name="func2in_concat_mse_sgd", make=make_two, data=data_two, batch_size=B, steps=N,
                          opt=("SGD", {"learning_rate": 0.05, "momentum": 0.9}), loss=("mean_squared_error", {}),
                          metrics=[],
                          description="two inputs (token ids, float series): Embedding+LSTM and LSTM+Dense(tanh), "
                                      "Concatenate, Dense(1); MSE, SGD momentum 0.9. Keras's get_weights() order puts "
                                      "lstm_series before lstm_tokens (model.layers by depth), and the gradient "
                                      "flows back through Concatenate",
                          features=["functional", "multi_input", "concatenate", "embedding", "lstm", "dense:tanh",
                                    "dense:linear", "int_input", "float_input", "loss:mean_squared_error",
                                    "repeated_tokens"]))

    two_inputs()

    def sample_weighted():
        """Per-sample weights: they scale the loss and `weighted_metrics`, not `metrics` (Keras 3)."""
        V, E, H, T, B, N = 40, 8, 8, 8, 4, 4

        def make_sw(keras):
            return keras.Sequential([keras.Input((T,), dtype="int32", name="tokens"),
                                     keras.layers.Embedding(V, E, name="embedding"),
                                     keras.layers.LSTM(H, name="lstm"),
                                     keras.layers.Dense(1, activation="sigmoid", name="dense")],
                                    name="lstm_bce_sgd_sample_weight")

        def data_sw(rng):
            x = _tokens(rng, N, B, T, V, False)
            y = rng.integers(0, 2, size=(N * B, 1)).astype(np.float32)
            return x, y, rng.uniform(0.1, 3.0, size=N * B).astype(np.float32)

        specs.append(dict(name="lstm_bce_sgd_sample_weight", make=make_sw, data=data_sw, batch_size=B, steps=N,
                          opt=("SGD", {"learning_rate": 0.1}), loss=("binary_crossentropy", {}),
                          metrics=["accuracy"], weighted_metrics=["accuracy"],
                          description="Embedding+LSTM+Dense(sigmoid), BCE, SGD lr 0.1, sample_weight in [0.1, 3]: the "
                                      "loss is sum(w*l)/B; metrics=['accuracy'] is NOT sample-weighted, "
                                      "weighted_metrics=['accuracy'] is (reported as 'weighted_accuracy')",
                          features=["embedding", "lstm", "dense:sigmoid", "int_input", "sample_weight",
                                    "metric:accuracy", "weighted_metric:accuracy", "repeated_tokens"]))

    sample_weighted()

    return specs


# ----------------------------------------------------------------------------------------------- keras runs
def _loss_obj(keras, loss):
    name, kw = loss
    cls = {"binary_crossentropy": keras.losses.BinaryCrossentropy,
           "categorical_crossentropy": keras.losses.CategoricalCrossentropy,
           "sparse_categorical_crossentropy": keras.losses.SparseCategoricalCrossentropy,
           "mean_squared_error": keras.losses.MeanSquaredError,
           "mean_absolute_error": keras.losses.MeanAbsoluteError}[name]
    return cls(**kw)


def _opt_obj(keras, opt):
    cls, cfg = opt
    return getattr(keras.optimizers, cls)(name=cls.lower(), **cfg)  # fixed name: no per-process counter


def _load_compiled(keras, model_path, spec):
    model = keras.saving.load_model(model_path, compile=False)
    model.compile(optimizer=_opt_obj(keras, spec["opt"]), loss=_loss_obj(keras, spec["loss"]),
                  metrics=list(spec["metrics"]) or None, weighted_metrics=spec.get("weighted_metrics"),
                  jit_compile=False)
    return model


def _run_train_on_batch(keras, model_path, spec, x, y, sw):
    """Per step train_on_batch: weights after every step, reported logs per step."""
    model = _load_compiled(keras, model_path, spec)
    B = spec["batch_size"]
    weights = [model.get_weights()]
    logs = []
    for s in range(spec["steps"]):
        out = model.train_on_batch(_rows(x, s, B), _rows(y, s, B), sample_weight=_rows(sw, s, B), return_dict=True)
        logs.append({k: float(v) for k, v in out.items()})
        weights.append(model.get_weights())
    return model, weights, logs


def _run_fit(keras, model_path, spec, x, y, sw):
    model = _load_compiled(keras, model_path, spec)
    weights, fit_logs = [model.get_weights()], []

    class Rec(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            weights.append(self.model.get_weights())
            fit_logs.append({k: float(v) for k, v in logs.items()})

    hist = model.fit(x, y, batch_size=spec["batch_size"], epochs=1, shuffle=False, verbose=0, callbacks=[Rec()],
                     sample_weight=sw)
    return weights, fit_logs, {k: float(v[-1]) for k, v in hist.history.items()}


def _dense_grads(tf, model, loss_fn, xb, yb, swb=None):
    with tf.GradientTape() as tape:
        pred = model(xb, training=True)
        loss = loss_fn(yb, pred, sample_weight=swb)
    grads = tape.gradient(loss, model.trainable_weights)
    return loss, [tf.convert_to_tensor(g) for g in grads]  # IndexedSlices -> dense (sums repeated ids)


def _run_dense_loop(keras, tf, model_path, spec, x, y, sw):
    """Independent custom loop: GradientTape, densified gradients, optimizer.apply_gradients."""
    model = keras.saving.load_model(model_path, compile=False)
    opt = _opt_obj(keras, spec["opt"])
    loss_fn = _loss_obj(keras, spec["loss"])

    @tf.function
    def step(xb, yb, swb):
        loss, grads = _dense_grads(tf, model, loss_fn, xb, yb, swb)
        opt.apply_gradients(zip(grads, model.trainable_weights))
        return loss

    B = spec["batch_size"]
    weights, losses = [model.get_weights()], []
    for s in range(spec["steps"]):
        losses.append(float(step(_const(tf, _rows(x, s, B)), _const(tf, _rows(y, s, B)),
                                 _const(tf, _rows(sw, s, B)))))
        weights.append(model.get_weights())
    return weights, losses


def _grads_along(keras, tf, model_path, spec, x, y, sw, weights):
    """Dense gradient and loss of step s at the reference weights that step started from."""
    model = keras.saving.load_model(model_path, compile=False)
    loss_fn = _loss_obj(keras, spec["loss"])

    @tf.function
    def grad_fn(xb, yb, swb):
        return _dense_grads(tf, model, loss_fn, xb, yb, swb)

    B = spec["batch_size"]
    grads, losses = [], []
    for s in range(spec["steps"]):
        model.set_weights(weights[s])
        loss, g = grad_fn(_const(tf, _rows(x, s, B)), _const(tf, _rows(y, s, B)), _const(tf, _rows(sw, s, B)))
        grads.append([gi.numpy() for gi in g])
        losses.append(float(loss))
    return grads, losses


def _float64_trajectory(keras, tf, spec, x, y, sw, w0, opt_cfg):
    """What an exact implementation would get: the same model in float64, its own float64 gradients each step,
    the NumPy update rule. Distance to the float32 fixture = the fixture's own float32 noise."""
    keras.config.set_dtype_policy("float64")
    try:
        model = spec["make"](keras)
    finally:
        keras.config.set_dtype_policy("float32")
    loss_fn = _loss_obj(keras, spec["loss"])

    @tf.function
    def grad_fn(xb, yb, swb):
        return _dense_grads(tf, model, loss_fn, xb, yb, swb)

    B = spec["batch_size"]
    y64 = y.astype(np.float64) if y.dtype.kind == "f" else y
    sw = None if sw is None else sw.astype(np.float64)
    grads, w = [], [a.astype(np.float64) for a in w0]
    traj = []
    for s in range(spec["steps"]):
        model.set_weights(w)
        grads.append([g.numpy() for g in grad_fn(_const(tf, _rows(x, s, B)), _const(tf, _rows(y64, s, B)),
                                                  _const(tf, _rows(sw, s, B)))[1]])
        w = _numpy_trajectory(opt_cfg, spec["opt"][0], w0, grads)[-1]  # replay: the rule keeps no outside state
        traj.append(w)
    return traj


# ----------------------------------------------------------------------------------------------- numpy rules
def _numpy_trajectory(cfg, cls, w0, grads):
    """Re-derive the weights after every step from the recorded gradients with the documented update rules
    (float64 arithmetic)."""
    w = [a.astype(np.float64) for a in w0]
    m = [np.zeros_like(a) for a in w]
    v = [np.zeros_like(a) for a in w]
    out = []
    for t, g in enumerate(grads, start=1):
        g = [a.astype(np.float64) for a in g]
        if cfg.get("clipnorm"):
            c = cfg["clipnorm"]
            g = [a * c / max(np.sqrt((a * a).sum()), c) for a in g]
        elif cfg.get("global_clipnorm"):
            c = cfg["global_clipnorm"]
            n = np.sqrt(sum((a * a).sum() for a in g))
            g = [a * c / max(n, c) for a in g]
        elif cfg.get("clipvalue"):
            c = cfg["clipvalue"]
            g = [np.clip(a, -c, c) for a in g]
        lr = cfg["learning_rate"]
        for i in range(len(w)):
            if cls == "SGD":
                mu = cfg["momentum"]
                if mu:
                    m[i] = mu * m[i] - lr * g[i]
                    w[i] = w[i] + (mu * m[i] - lr * g[i] if cfg["nesterov"] else m[i])
                else:
                    w[i] = w[i] - lr * g[i]
            elif cls == "Adam":
                b1, b2, eps = cfg["beta_1"], cfg["beta_2"], cfg["epsilon"]
                alpha = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
                m[i] += (g[i] - m[i]) * (1 - b1)
                v[i] += (g[i] * g[i] - v[i]) * (1 - b2)
                w[i] = w[i] - alpha * m[i] / (np.sqrt(v[i]) + eps)
            elif cls == "RMSprop":
                rho, eps = cfg["rho"], cfg["epsilon"]
                assert not cfg["momentum"] and not cfg["centered"]
                v[i] = rho * v[i] + (1 - rho) * g[i] * g[i]
                w[i] = w[i] - lr * g[i] / np.sqrt(v[i] + eps)
            else:
                raise ValueError(cls)
        out.append([a.copy() for a in w])
    return out


def _clip_activity(cfg, grads):
    """How much the case's clipping option actually bites, per step (a fixture where nothing is clipped tests
    nothing)."""
    if cfg.get("clipnorm"):
        return {"per_variable_grad_norms_clipped_per_step":
                [int(sum(np.sqrt((g.astype(np.float64) ** 2).sum()) > cfg["clipnorm"] for g in gs)) for gs in grads],
                "n_variables": len(grads[0])}
    if cfg.get("global_clipnorm"):
        return {"global_grad_norm_per_step":
                [float(np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in gs))) for gs in grads]}
    if cfg.get("clipvalue"):
        return {"fraction_of_gradient_entries_clipped_per_step":
                [float(sum((np.abs(g) > cfg["clipvalue"]).sum() for g in gs) / sum(g.size for g in gs))
                 for gs in grads]}
    return None


def _max_diff(a_list, b_list):
    return max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
               for a, b in zip(a_list, b_list))


def _traj_diff(wa, wb):
    return max(_max_diff(a, b) for a, b in zip(wa, wb))


def _rel_traj_diff(wa, wb):
    """max |a-b| / (atol/rtol-style scale): the fraction of the suggested tolerance used."""
    worst = 0.0
    for a_s, b_s in zip(wa, wb):
        for a, b in zip(a_s, b_s):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            worst = max(worst, float(np.max(np.abs(a - b) / (WEIGHTS_TOL["atol"] + WEIGHTS_TOL["rtol"] * np.abs(b)))))
    return worst


def _jsonable_cfg(cfg):
    return json.loads(json.dumps(cfg, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


# ----------------------------------------------------------------------------------------------- build
def build(out, name_filter=""):
    import keras
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.get_logger().setLevel("ERROR")  # retracing notices: each case builds new models
    cases = []
    for idx, spec in enumerate(_case_specs()):
        name = spec["name"]
        if name_filter not in name:
            continue
        rng = np.random.default_rng(1000 + sum(map(ord, name)))
        keras.utils.set_random_seed(1234)
        d = case_dir(out, SUITE, name)
        model = spec["make"](keras)
        _perturb_weights(model, rng)
        model_path = os.path.join(d, "model.keras")
        model.save(model_path)
        weight_names = [v.path for v in model.weights]
        assert [v.path for v in model.trainable_weights] == weight_names
        x, y, sw = (tuple(spec["data"](rng)) + (None,))[:3]
        arrays = {f"x{k}": v for k, v in enumerate(x)} if isinstance(x, list) else {"x": x}
        arrays["y"] = y
        if sw is not None:
            arrays["sample_weight"] = sw
        save_npz(os.path.join(d, "data.npz"), **arrays)

        ref_model, weights, logs = _run_train_on_batch(keras, model_path, spec, x, y, sw)
        opt_cfg = _jsonable_cfg(ref_model.optimizer.get_config())
        loss_cfg = _jsonable_cfg(ref_model.loss.get_config())
        assert ref_model.jit_compile is False
        # the file really holds the initial weights
        assert _max_diff(model.get_weights(), weights[0]) == 0.0

        # checks
        weights2, logs2 = _run_train_on_batch(keras, model_path, spec, x, y, sw)[1:]
        fit_w, fit_logs, fit_hist = _run_fit(keras, model_path, spec, x, y, sw)
        dense_w, dense_losses = _run_dense_loop(keras, tf, model_path, spec, x, y, sw)
        grads, grad_losses = _grads_along(keras, tf, model_path, spec, x, y, sw, weights)
        rule_w = _numpy_trajectory(opt_cfg, spec["opt"][0], weights[0], grads)
        f64_w = _float64_trajectory(keras, tf, spec, x, y, sw, weights[0], opt_cfg)

        losses = np.array([lg["loss"] for lg in logs], np.float32)
        B = spec["batch_size"]
        running = np.cumsum(losses.astype(np.float64)) / np.arange(1, len(losses) + 1)
        checks = {
            "determinism_max_abs_diff": max(_traj_diff(weights, weights2),
                                            _max_diff([[lg["loss"] for lg in logs]], [[lg["loss"] for lg in logs2]])),
            "fit_check": {
                "weights_max_abs_diff": _traj_diff(weights, fit_w),
                "fit_batch_logs_loss_vs_running_mean_of_train_on_batch_max_abs_diff":
                    float(np.max(np.abs(np.array([lg["loss"] for lg in fit_logs]) - running))),
                "fit_history_loss": fit_hist["loss"],
                "note": "model.fit(x, y, batch_size, epochs=1, shuffle=False) from the same file: same weights "
                        "after every batch; fit's per-batch logs/history 'loss' is the running mean over the epoch",
            },
            "dense_grad_check_max_abs_diff": _traj_diff(weights, dense_w),
            "loss_recompute_max_abs_diff": float(np.max(np.abs(np.array(grad_losses) - losses))),
            "optimizer_rule_check_max_abs_diff": _traj_diff(weights[1:], rule_w),
            "optimizer_rule_check_tolerance_fraction": _rel_traj_diff(rule_w, weights[1:]),
            "float64_exact_check_max_abs_diff": _traj_diff(weights[1:], f64_w),
            "float64_exact_check_tolerance_fraction": _rel_traj_diff(f64_w, weights[1:]),
        }
        clip = _clip_activity(opt_cfg, grads)
        if clip:
            checks["clipping"] = clip
        if "mask_zero" in spec["features"]:
            checks["masked_embedding_row0_grad_max_abs"] = max(float(np.abs(g[0][0]).max()) for g in grads)
            assert checks["masked_embedding_row0_grad_max_abs"] == 0.0
        assert checks["determinism_max_abs_diff"] == 0.0, (name, checks)
        assert checks["fit_check"]["weights_max_abs_diff"] < 1e-6, (name, checks)
        assert checks["fit_check"]["fit_batch_logs_loss_vs_running_mean_of_train_on_batch_max_abs_diff"] < 1e-5
        assert checks["dense_grad_check_max_abs_diff"] < 1e-5, (name, checks)
        assert checks["optimizer_rule_check_tolerance_fraction"] < 0.1, (name, checks)
        assert checks["float64_exact_check_tolerance_fraction"] < 0.5, (name, checks)
        if spec["opt"][0] in ("Adam", "RMSprop") and "embedding" in spec["features"]:
            assert "distinct_tokens_per_batch" in spec["features"], name
        if "distinct_tokens_per_batch" in spec["features"]:
            for s in range(spec["steps"]):
                ids = _rows(x[0] if isinstance(x, list) else x, s, B).ravel()
                ids = ids[ids != 0] if "mask_zero" in spec["features"] else ids
                assert len(np.unique(ids)) == ids.size, (name, s)

        expected = {"loss": losses}
        metric_names = [k for k in logs[0] if k != "loss"]
        for k in metric_names:
            expected[f"metric_{k}"] = np.array([lg[k] for lg in logs], np.float32)
        for s, ws in enumerate(weights):
            for i, w in enumerate(ws):
                expected[f"w{s}_{i}"] = w
        for s, gs in enumerate(grads, start=1):
            for i, g in enumerate(gs):
                expected[f"g{s}_{i}"] = g.astype(np.float32)
        save_npz(os.path.join(d, "expected.npz"), **expected)

        cases.append({
            "name": name,
            "model_file": f"{name}/model.keras",
            "format": "keras-v3",
            "data_file": f"{name}/data.npz",
            "expected_file": f"{name}/expected.npz",
            **({"x_shape": list(x.shape), "x_dtype": str(x.dtype)} if not isinstance(x, list) else
               {"x_shapes": [list(v.shape) for v in x], "x_dtypes": [str(v.dtype) for v in x]}),
            "y_shape": list(y.shape), "y_dtype": str(y.dtype), "sample_weight": sw is not None,
            "optimizer": {"class": spec["opt"][0], "config": opt_cfg},
            "loss": {"name": spec["loss"][0], "from_logits": bool(loss_cfg.get("from_logits", False)),
                     "class": type(ref_model.loss).__name__, "config": loss_cfg},
            "metrics": metric_names,
            "compile_metrics": {"metrics": list(spec["metrics"]), "weighted_metrics": spec.get("weighted_metrics", [])},
            "steps": spec["steps"],
            "batch_size": B,
            "shuffle": False,
            "weight_names": weight_names,
            "weight_shapes": [list(w.shape) for w in weights[0]],
            "features": spec["features"],
            "tolerance": {"weights": WEIGHTS_TOL, "loss": LOSS_TOL, "metrics": {"atol": 1e-6, "rtol": 0.0},
                          "grads": GRAD_TOL},
            "reference": "keras train_on_batch per step on the model reloaded from model_file, compiled with "
                         "(optimizer, loss, metrics), jit_compile=False, tf op determinism on",
            "description": spec["description"],
            "framework": {"keras": keras.__version__, "tensorflow": tf.__version__, "backend": keras.backend.backend()},
            "checks": checks,
        })
        print(f"{name}: loss {np.round(losses, 5).tolist()} "
              f"rule {checks['optimizer_rule_check_max_abs_diff']:.2e} "
              f"fit {checks['fit_check']['weights_max_abs_diff']:.1e} "
              f"dense {checks['dense_grad_check_max_abs_diff']:.1e}")
    add_cases(out, SUITE, cases)
