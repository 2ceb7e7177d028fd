"""compile / fit / evaluate: losses, optimizers and callbacks against their Keras 3 definitions, determinism,
optimizer state across fit calls, NaN handling, dropout in training, errors."""
import os
import warnings

import numpy as np
import numpy.testing as npt
import pytest

import fastlstm
from fastlstm import layers as L
from fastlstm.training import _fused
from fastlstm.training.losses import EPSILON


@pytest.fixture
def rng():
    return np.random.default_rng(11)


def toy_tokens(rng, n=96, T=10, V=30):
    """A learnable task: label = whether token 1 occurs."""
    x = rng.integers(2, V, size=(n, T))
    y = rng.integers(0, 2, size=n)
    pos = rng.integers(0, T, size=n)
    x[y == 1, pos[y == 1]] = 1
    return x, y.astype(np.float32)[:, None]


def small_model(seed=0, V=30):
    fastlstm.set_random_seed(seed)
    m = fastlstm.Sequential([L.Embedding(V, 8), L.LSTM(12), L.Dense(1, activation="sigmoid")])
    m.build((None, None))
    return m


# ---- losses ------------------------------------------------------------------------------------------------
def test_losses_match_keras_formulas(rng):
    p = rng.uniform(0, 1, size=(5, 3)).astype(np.float32)
    p[0, 0], p[1, 1] = 0.0, 1.0                      # clipped
    y = rng.integers(0, 2, size=(5, 3)).astype(np.float32)
    pc = np.clip(p, EPSILON, 1 - EPSILON)
    bce = -(y * np.log(pc) + (1 - y) * np.log(1 - pc)).mean(-1).mean()
    npt.assert_allclose(fastlstm.losses.BinaryCrossentropy()(y, p), bce, rtol=1e-6)
    z = rng.normal(size=(5, 3))
    sig = 1 / (1 + np.exp(-z))
    npt.assert_allclose(fastlstm.losses.BinaryCrossentropy(from_logits=True)(y, z),
                        -(y * np.log(sig) + (1 - y) * np.log(1 - sig)).mean(), rtol=1e-10)
    q = p / p.sum(-1, keepdims=True)
    onehot = np.eye(3)[[0, 1, 2, 1, 0]]
    npt.assert_allclose(fastlstm.losses.CategoricalCrossentropy()(onehot, p),
                        -(onehot * np.log(np.clip(q, EPSILON, 1 - EPSILON))).sum(-1).mean(), rtol=1e-6)
    ids = np.array([0, 1, 2, 1, 0])
    sm = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    npt.assert_allclose(fastlstm.losses.SparseCategoricalCrossentropy(from_logits=True)(ids, z),
                        -np.log(sm[np.arange(5), ids]).mean(), rtol=1e-10)
    npt.assert_allclose(fastlstm.losses.get("mse")(y, p), ((y - p) ** 2).mean(), rtol=1e-6)
    npt.assert_allclose(fastlstm.losses.get("mae")(y, p), np.abs(y - p).mean(), rtol=1e-6)
    npt.assert_allclose(fastlstm.losses.MeanSquaredError(reduction="sum")(y, p), ((y - p) ** 2).mean(-1).sum(),
                        rtol=1e-6)
    assert fastlstm.losses.binary_crossentropy(y, p).shape == (5,)
    assert isinstance(fastlstm.losses.get("BinaryCrossentropy"), fastlstm.losses.BinaryCrossentropy)


def test_masked_sequence_loss_averages_valid_steps():
    lo = fastlstm.losses.MeanSquaredError()
    vals = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = np.array([[True, False, True], [False, False, True]])
    loss, w = lo.reduce(vals, mask)
    npt.assert_allclose(loss, (1 + 3 + 6) / 3)
    npt.assert_allclose(w, mask * (6 / 3) / 6)


def test_label_errors(rng):
    m = fastlstm.Sequential([fastlstm.Input((None, 3)), L.LSTM(4), L.Dense(3, activation="softmax")])
    x = rng.normal(size=(4, 5, 3)).astype(np.float32)
    m.compile("adam", "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match=r"class ids must be in \[0, 3\)"):
        m.fit(x, np.array([0, 1, 3, 1]), verbose=0)
    with pytest.raises(ValueError, match="categorical_crossentropy"):
        m.fit(x, np.eye(3)[[0, 1, 2, 1]], verbose=0)
    with pytest.raises(ValueError, match="integer class ids"):
        m.fit(x, np.array([0.5, 1, 2, 1]), verbose=0)
    m.compile("adam", "categorical_crossentropy")
    with pytest.raises(ValueError, match="sparse_categorical_crossentropy"):
        m.fit(x, np.array([0, 1, 2, 1]), verbose=0)
    m.compile("adam", "binary_crossentropy")
    with pytest.raises(ValueError, match="do not fit predictions"):
        m.fit(x, np.zeros((4, 2)), verbose=0)
    with pytest.raises(ValueError, match="rows"):
        m.fit(x, np.zeros((3, 3)), verbose=0)


# ---- optimizers ----------------------------------------------------------------------------------------------
def test_optimizer_defaults_are_keras3():
    sgd, adam, rms = fastlstm.optimizers.SGD(), fastlstm.optimizers.Adam(), fastlstm.optimizers.RMSprop()
    assert (sgd.learning_rate, sgd.momentum, sgd.nesterov) == (0.01, 0.0, False)
    assert (adam.learning_rate, adam.beta_1, adam.beta_2, adam.epsilon) == (0.001, 0.9, 0.999, 1e-7)
    assert (rms.learning_rate, rms.rho, rms.momentum, rms.epsilon, rms.centered) == (0.001, 0.9, 0.0, 1e-7, False)
    with pytest.raises(ValueError, match="Only one of"):
        fastlstm.optimizers.Adam(clipnorm=1.0, clipvalue=0.5)


def _steps(opt, w0, grads):
    w = w0.copy()
    for g in grads:
        opt.apply([g.copy()], [w])
    return w


@pytest.mark.parametrize("size", [7, 3 * _fused.FUSED_MIN_SIZE])     # NumPy path and fused loop
def test_adam_rule_keras_epsilon(rng, size):
    w0 = rng.normal(size=size).astype(np.float32)
    grads = [rng.normal(size=size).astype(np.float32) for _ in range(4)]
    got = _steps(fastlstm.optimizers.Adam(learning_rate=0.01), w0, grads)
    w, m, v = w0.astype(np.float64), 0.0, 0.0
    for t, g in enumerate(grads, 1):
        m = m + (g - m) * 0.1
        v = v + (g * g - v) * 0.001
        w = w - 0.01 * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * m / (np.sqrt(v) + 1e-7)
    npt.assert_allclose(got, w, rtol=1e-5, atol=1e-6)


def test_sgd_momentum_nesterov_rmsprop_rules(rng):
    w0 = rng.normal(size=5)
    grads = [rng.normal(size=5) for _ in range(3)]
    for nesterov in (False, True):
        got = _steps(fastlstm.optimizers.SGD(0.1, momentum=0.9, nesterov=nesterov), w0, grads)
        w, m = w0.copy(), 0.0
        for g in grads:
            m = 0.9 * m - 0.1 * g
            w = w + (0.9 * m - 0.1 * g if nesterov else m)
        npt.assert_allclose(got, w, rtol=1e-12)
    for centered, mom in ((False, 0.0), (True, 0.5)):
        got = _steps(fastlstm.optimizers.RMSprop(0.01, momentum=mom, centered=centered), w0, grads)
        w, v, a, m = w0.copy(), 0.0, 0.0, 0.0
        for g in grads:
            v = 0.9 * v + 0.1 * g * g
            a = 0.9 * a + 0.1 * g
            inc = 0.01 * g / np.sqrt((v - a * a if centered else v) + 1e-7)
            m = mom * m + inc
            w = w - (m if mom else inc)
        npt.assert_allclose(got, w, rtol=1e-12)


def test_gradient_clipping_scopes():
    g1, g2 = np.array([3.0, 4.0]), np.array([0.3, 0.4])
    opt = fastlstm.optimizers.SGD(1.0, clipnorm=1.0)          # each weight by its own norm
    w1, w2 = np.zeros(2), np.zeros(2)
    opt.apply([g1.copy(), g2.copy()], [w1, w2])
    npt.assert_allclose(w1, -g1 / 5)
    npt.assert_allclose(w2, -g2)
    opt = fastlstm.optimizers.SGD(1.0, global_clipnorm=1.0)   # all weights by their joint norm
    w1, w2 = np.zeros(2), np.zeros(2)
    opt.apply([g1.copy(), g2.copy()], [w1, w2])
    n = np.sqrt(25 + 0.25)
    npt.assert_allclose(w1, -g1 / n)
    npt.assert_allclose(w2, -g2 / n)
    opt = fastlstm.optimizers.SGD(1.0, clipvalue=0.35)
    w1 = np.zeros(2)
    opt.apply([g2.copy()], [w1])
    npt.assert_allclose(w1, [-0.3, -0.35])
    opt = fastlstm.optimizers.SGD(0.5, weight_decay=0.1)
    w1 = np.ones(2)
    opt.apply([np.zeros(2)], [w1])
    npt.assert_allclose(w1, 1 - 0.1 * 0.5)


# ---- fit / evaluate ---------------------------------------------------------------------------------------
def test_fit_learns_and_reports_history(rng):
    x, y = toy_tokens(rng)
    m = small_model()
    m.compile(fastlstm.optimizers.Adam(0.01), "binary_crossentropy", metrics=["accuracy", "mae"])
    h = m.fit(x[:80], y[:80], epochs=8, batch_size=16, validation_data=(x[80:], y[80:]), verbose=0, seed=0)
    assert set(h.history) == {"loss", "accuracy", "mae", "val_loss", "val_accuracy", "val_mae"}
    assert h.epoch == list(range(8))
    assert h.history["loss"][-1] < 0.5 * h.history["loss"][0]
    assert h.history["accuracy"][-1] > 0.9
    loss, acc, mae = m.evaluate(x[80:], y[80:], verbose=0)
    npt.assert_allclose([loss, acc, mae], [h.history["val_loss"][-1], h.history["val_accuracy"][-1],
                                           h.history["val_mae"][-1]], rtol=1e-6)
    p = m.predict(x[80:])
    npt.assert_allclose(acc, np.mean((p > 0.5) == (y[80:] > 0.5)))
    npt.assert_allclose(mae, np.mean(np.abs(p - y[80:])), rtol=1e-5)
    assert isinstance(m.evaluate(x, y, verbose=0, return_dict=True), dict)


def test_accuracy_kind_follows_shapes(rng):
    x = rng.normal(size=(40, 5, 3)).astype(np.float32)
    m = fastlstm.Sequential([fastlstm.Input((None, 3)), L.GRU(6), L.Dense(4, activation="softmax")])
    ids = rng.integers(0, 4, 40)
    m.compile("adam", "sparse_categorical_crossentropy", metrics=["acc"])
    _, acc = m.evaluate(x, ids, verbose=0)
    npt.assert_allclose(acc, np.mean(np.argmax(m.predict(x), -1) == ids))
    m.compile("rmsprop", "categorical_crossentropy", metrics=["accuracy"])
    _, acc2 = m.evaluate(x, np.eye(4)[ids], verbose=0)
    npt.assert_allclose(acc2, acc)


def test_deterministic_with_seed(rng):
    x, y = toy_tokens(rng, n=48)
    runs = []
    for seed in (5, 5, 6):
        m = fastlstm.Sequential([L.Embedding(30, 8), L.Dropout(0.3), L.LSTM(12, dropout=0.2),
                                 L.Dense(1, activation="sigmoid")])
        m.compile("adam", "binary_crossentropy")
        m.fit(x, y, epochs=2, batch_size=8, verbose=0, seed=seed)     # builds (and initializes) from the seed
        runs.append(m.get_weights())
    for a, b in zip(runs[0], runs[1]):
        npt.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(runs[0], runs[2]))


def test_optimizer_state_continues_across_fit_calls(rng):
    x, y = toy_tokens(rng, n=32)
    m1, m2 = small_model(1), small_model(1)
    for m in (m1, m2):
        m.compile("adam", "binary_crossentropy")
    m1.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0)
    m2.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    m2.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    assert m2.optimizer.iterations == 8
    for a, b in zip(m1.get_weights(), m2.get_weights()):
        npt.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_nan_loss_stops_and_keeps_last_good_weights(rng):
    x = rng.normal(size=(32, 4, 3)).astype(np.float32)
    y = rng.normal(size=(32, 1)).astype(np.float32)
    x_bad = x.copy()
    x_bad[16:24] = np.nan                     # batch 2 (of 4) has a NaN loss
    ref = fastlstm.Sequential([fastlstm.Input((None, 3)), L.LSTM(4), L.Dense(1)])
    w0 = ref.get_weights()
    m = fastlstm.Sequential([fastlstm.Input((None, 3)), L.LSTM(4), L.Dense(1)])
    m.set_weights(w0)
    m.compile("sgd", "mse")
    with pytest.warns(RuntimeWarning, match="not finite"):
        h = m.fit(x_bad, y, epochs=3, batch_size=8, shuffle=False, verbose=0)
    assert m.stop_training and h.history == {}
    # the last weights whose loss was finite: those batch 1 was computed at (after the update of batch 0)
    ref.compile("sgd", "mse")
    ref.fit(x[:8], y[:8], epochs=1, batch_size=8, shuffle=False, verbose=0)
    for a, b in zip(m.get_weights(), ref.get_weights()):
        npt.assert_allclose(a, b, rtol=1e-6)
        assert np.all(np.isfinite(a))


def test_nan_loss_rolls_back_batchnorm_moving_statistics(rng):
    """BatchNormalization's moving statistics (updated by the training forward, outside the optimizer) are rolled
    back with the other weights: the model ends as one trained on batch 0 only, and a non-finite step alone
    (first batch, train_on_batch) changes no weight."""
    x = rng.normal(size=(32, 4, 3)).astype(np.float32)
    y = rng.normal(size=(32, 1)).astype(np.float32)
    x_bad = x.copy()
    x_bad[16:24, 2] = np.nan                  # batch 2 (of 4) has a NaN loss

    def make():
        return fastlstm.Sequential([fastlstm.Input((None, 3)), L.LSTM(4, return_sequences=True),
                                    L.BatchNormalization(momentum=0.5), L.LSTM(3), L.BatchNormalization(),
                                    L.Dense(1)])
    ref = make()
    w0 = ref.get_weights()
    m = make()
    m.set_weights([w.copy() for w in w0])     # set_weights keeps the arrays given
    m.compile("sgd", "mse")
    with pytest.warns(RuntimeWarning, match="not finite"):
        m.fit(x_bad, y, epochs=2, batch_size=8, shuffle=False, verbose=0)
    ref.compile("sgd", "mse")
    ref.fit(x[:8], y[:8], epochs=1, batch_size=8, shuffle=False, verbose=0)
    names = [f"{lyr.name}/{n}" for lyr in m.layers for n in lyr.weight_names[:len(lyr.weights)]]
    assert len(names) == len(w0) and sum("moving" in n for n in names) == 4
    for name, a, b, a0 in zip(names, m.get_weights(), ref.get_weights(), w0):
        assert np.all(np.isfinite(a)), name
        npt.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=name)
        if "moving" in name:
            assert not np.allclose(a, a0)       # batch 0's statistics are kept
    assert np.all(np.isfinite(m.predict(x, verbose=0)))

    for step in ("fit", "train_on_batch"):      # a NaN in the first batch: every weight stays as it was
        m = make()
        m.set_weights([w.copy() for w in w0])     # set_weights keeps the arrays given
        m.compile("sgd", "mse")
        with pytest.warns(RuntimeWarning, match="not finite"):
            if step == "fit":
                m.fit(x_bad[16:], y[16:], batch_size=8, shuffle=False, verbose=0)
            else:
                m.train_on_batch(x_bad[16:24], y[16:24])
        for name, a, a0 in zip(names, m.get_weights(), w0):
            npt.assert_array_equal(a, a0, err_msg=f"{step}: {name}")


def test_dropout_active_in_training_only(rng):
    d = L.Dropout(0.5)
    x = np.ones((200, 50), np.float32)
    y, ctx = d.forward(x, training=True, rng=np.random.default_rng(0))
    assert set(np.unique(y)) == {0.0, 2.0} and 0.4 < np.mean(y == 0) < 0.6
    npt.assert_array_equal(d.backward(ctx, np.ones_like(x)), y)
    npt.assert_array_equal(d.forward(x, training=False)[0], x)
    lstm = L.LSTM(3, dropout=0.5)
    xs = np.ones((40, 6, 5), np.float32)
    lstm.build(xs.shape)
    lstm.grads = [np.zeros_like(w) for w in lstm._weights]
    out, ctx = lstm.forward(xs, training=True, rng=np.random.default_rng(1))
    dx = lstm.backward(ctx, np.ones_like(out))
    dropped = dx == 0
    assert dropped.any() and (dropped == dropped[:, :1, :]).all()     # one input mask per sequence (Keras 3)
    sd = L.SpatialDropout1D(0.5)
    ys, _ = sd.forward(np.ones((10, 7, 20), np.float32), training=True, rng=np.random.default_rng(2))
    assert ((ys == 0) == (ys[:, :1] == 0)).all()


def test_unsupported_training_features_raise(rng):
    x = rng.normal(size=(8, 4, 3)).astype(np.float32)
    m = fastlstm.Sequential([fastlstm.Input((None, 3)), L.LSTM(4, recurrent_dropout=0.2), L.Dense(1)])
    m.compile("sgd", "mse")
    with pytest.raises(NotImplementedError, match="recurrent_dropout"):
        m.fit(x, np.zeros((8, 1)), verbose=0)

    class NoBackward(fastlstm.layers.Layer):
        def call(self, inputs, mask=None, training=False):
            return inputs

    m2 = fastlstm.Sequential([fastlstm.Input((None, 3)), L.LSTM(2), NoBackward(name="custom")])
    m2.compile("sgd", "mse")
    with pytest.raises(NotImplementedError, match="'custom'.*no backward"):
        m2.fit(x, np.zeros((8, 2)), verbose=0)
    # off the gradient path (before any weight) a layer needs no backward
    m3 = fastlstm.Sequential([fastlstm.Input((None, 3)), NoBackward(), L.LSTM(2)])
    m3.compile("sgd", "mse")
    m3.fit(x, np.zeros((8, 2)), verbose=0)
    with pytest.raises(RuntimeError, match="compile"):
        fastlstm.Sequential([fastlstm.Input((None, 3)), L.LSTM(2)]).fit(x, np.zeros((8, 2)))
    with pytest.raises(ValueError, match="loss"):
        m.compile("sgd")
    with pytest.raises(ValueError, match="unknown optimizer"):
        m.compile("adagrad-ish", "mse")


def test_token_ids_outside_embedding_in_fit(rng):
    x, y = toy_tokens(rng, n=16)
    m = small_model()
    m.compile("adam", "binary_crossentropy")
    x[3, 2] = 30
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 30\)"):
        m.fit(x, y, verbose=0)


def test_early_stopping_restores_best_weights(rng):
    x, y = toy_tokens(rng, n=32)
    m = small_model(2)
    m.compile("adam", "binary_crossentropy")
    snapshots = []
    rec = fastlstm.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: snapshots.append(m.get_weights()))
    # min_delta so large that no epoch after the first one counts as an improvement
    es = fastlstm.callbacks.EarlyStopping(monitor="loss", min_delta=100.0, patience=1, restore_best_weights=True)
    h = m.fit(x, y, epochs=10, batch_size=8, verbose=0, callbacks=[rec, es], seed=0)
    assert len(h.epoch) == 2 and es.stopped_epoch == 1 and es.best_epoch == 0
    for a, b in zip(m.get_weights(), snapshots[0]):
        npt.assert_array_equal(a, b)


def test_early_stopping_rules_on_logs():
    class Stub:
        stop_training = False
        weights = None

        def get_weights(self):
            return [np.array(self.weights)]

        def set_weights(self, ws):
            self.weights = float(ws[0])

        def _metric_objects(self):
            return []

    stub = Stub()
    es = fastlstm.callbacks.EarlyStopping(patience=2, restore_best_weights=True)
    es.set_model(stub)
    es.on_train_begin()
    for epoch, val in enumerate([1.0, 0.8, 0.9, 0.85, 0.7]):
        stub.weights = epoch
        es.on_epoch_end(epoch, {"val_loss": val})
        if stub.stop_training:
            break
    es.on_train_end()
    assert es.stopped_epoch == 3 and stub.weights == 1.0
    acc = fastlstm.callbacks.EarlyStopping(monitor="val_accuracy")
    acc.set_model(type("M", (), {"_metric_objects": lambda self: []})())
    with pytest.raises(ValueError, match="mode='max'"):
        acc._set_monitor_op()


def test_model_checkpoint(tmp_path, rng):
    x, y = toy_tokens(rng, n=24)
    m = small_model(3)
    m.compile("adam", "binary_crossentropy", metrics=["accuracy"])
    ck = fastlstm.callbacks.ModelCheckpoint(str(tmp_path / "m_{epoch:02d}.keras"))
    ckw = fastlstm.callbacks.ModelCheckpoint(str(tmp_path / "best.weights.h5"), monitor="accuracy",
                                             save_best_only=True, save_weights_only=True)
    m.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[ck, ckw], seed=1)
    assert sorted(os.listdir(tmp_path)) == ["best.weights.h5", "m_01.keras", "m_02.keras"]
    m2 = small_model(4)
    m2.build((None, None))
    m2.load_weights(str(tmp_path / "m_02.keras"))
    npt.assert_allclose(m2.predict(x), m.predict(x), rtol=1e-6)
    with pytest.raises(ValueError, match=".weights.h5"):
        fastlstm.callbacks.ModelCheckpoint("x.keras", save_weights_only=True)


def test_progress_bar_verbose(capsys, rng):
    x, y = toy_tokens(rng, n=16)
    m = small_model()
    m.compile("adam", "binary_crossentropy")
    m.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert capsys.readouterr().out == ""
    m.fit(x, y, epochs=2, batch_size=8, verbose=1)
    out = capsys.readouterr().out
    assert "Epoch 1/2" in out and "Epoch 2/2" in out and "loss" in out
    m.fit(x, y, epochs=1, batch_size=8, verbose=2)
    assert capsys.readouterr().out.startswith("Epoch 1/1")


def test_sample_and_class_weights(rng):
    x = rng.normal(size=(6, 3, 2)).astype(np.float32)
    y = rng.normal(size=(6, 1)).astype(np.float32)
    m = fastlstm.Sequential([fastlstm.Input((None, 2)), L.LSTM(3), L.Dense(1)])
    m.compile("sgd", "mse")
    sw = np.array([1, 0, 2, 0, 1, 1], np.float64)
    per = ((m.predict(x) - y) ** 2).mean(-1)
    npt.assert_allclose(m.evaluate(x, y, sample_weight=sw, verbose=0), (per * sw).sum() / 6, rtol=1e-5)
    yb = np.array([[0], [1], [1], [0], [1], [0]], np.float32)
    m.compile("sgd", "binary_crossentropy")
    h = m.fit(x, yb, class_weight={0: 0.0, 1: 1.0}, epochs=1, batch_size=6, verbose=0)
    assert np.isfinite(h.history["loss"][0])
    with pytest.raises(ValueError, match="class_weight or sample_weight"):        # Keras refuses both at once
        m.fit(x, yb, class_weight={0: 2.0}, sample_weight=sw, epochs=1, verbose=0)


def test_validation_split_holds_out_the_last_rows_with_their_sample_weights(rng):
    """Keras 3 fit(validation_split=f): the last floor(n*f) rows of x, y AND sample_weight are the validation set
    a one-input, one-output model included."""
    x = rng.normal(size=(10, 5, 3)).astype(np.float32)
    y = rng.integers(0, 2, size=(10, 1)).astype(np.float32)
    sw = rng.uniform(0.2, 3.0, size=10)
    fastlstm.set_random_seed(0)
    m = fastlstm.Sequential([fastlstm.Input((5, 3)), L.LSTM(4), L.Dense(1, activation="sigmoid")])
    m.compile(fastlstm.optimizers.SGD(0.1), "binary_crossentropy", metrics=["accuracy"],
              weighted_metrics=["accuracy"])
    h = m.fit(x, y, sample_weight=sw, validation_split=0.3, epochs=2, batch_size=4,
              shuffle=False, verbose=0).history
    val = m.evaluate(x[7:], y[7:], sample_weight=sw[7:], batch_size=4, verbose=0, return_dict=True)
    for k in ("loss", "accuracy", "weighted_accuracy"):
        npt.assert_allclose(h["val_" + k][-1], val[k], rtol=1e-6)
    p = m.predict(x[7:])
    hit = ((p > 0.5) == (y[7:] > 0.5))[:, 0]
    npt.assert_allclose(val["accuracy"], hit.mean(), rtol=1e-6)                  # metrics: not sample-weighted
    npt.assert_allclose(val["weighted_accuracy"], (hit * sw[7:]).sum() / sw[7:].sum(), rtol=1e-6)


def test_multi_output_loss_dict_and_logs(rng):
    inp = fastlstm.Input((None, 3), name="seq")
    h = L.LSTM(4)(inp)
    a = L.Dense(1, activation="sigmoid", name="flag")(h)
    b = L.Dense(2, name="value")(h)
    m = fastlstm.Model(inp, [a, b])
    m.compile("adam", {"flag": "binary_crossentropy", "value": "mse"}, metrics={"flag": ["accuracy"]},
              loss_weights={"flag": 1.0, "value": 0.5})
    x = rng.normal(size=(10, 4, 3)).astype(np.float32)
    ys = {"flag": rng.integers(0, 2, (10, 1)).astype(np.float32), "value": rng.normal(size=(10, 2))}
    hist = m.fit(x, ys, epochs=1, batch_size=5, verbose=0)
    assert set(hist.history) == {"loss", "flag_loss", "value_loss", "flag_accuracy"}
    logs = m.evaluate(x, ys, verbose=0, return_dict=True)
    npt.assert_allclose(logs["loss"], logs["flag_loss"] + 0.5 * logs["value_loss"], rtol=1e-6)


def test_fresh_layers_use_keras_initializers():
    fastlstm.set_random_seed(0)
    lstm = L.LSTM(16)
    lstm.build((None, None, 8))
    k, r, b = lstm.get_weights()
    lim = np.sqrt(6 / (8 + 64))
    assert np.abs(k).max() <= lim and np.abs(k).max() > 0.8 * lim                  # glorot_uniform
    npt.assert_allclose(r @ r.T, np.eye(16), atol=1e-5)                            # orthogonal rows
    npt.assert_array_equal(b, np.r_[np.zeros(16), np.ones(16), np.zeros(32)])      # unit_forget_bias


def test_embedding_gradient_with_repeated_tokens(rng):
    emb = L.Embedding(10, 3)
    emb.build(None)
    emb.grads = [np.zeros_like(emb._weights[0])]
    ids = np.array([[1, 2, 1], [3, 1, 2]])
    out, ctx = emb.forward(ids)
    dy = rng.normal(size=out.shape).astype(np.float32)
    emb.backward(ctx, dy)
    want = np.zeros((10, 3), np.float32)
    np.add.at(want, ids.ravel(), dy.reshape(-1, 3))
    npt.assert_allclose(emb.grads[0], want, rtol=1e-6)
    emb.zero_grads()
    assert not emb.grads[0].any()
    # the fused loop (large inputs) agrees with np.add.at
    big = rng.integers(0, 50, size=20000)
    rows = rng.normal(size=(20000, 4)).astype(np.float32)
    out1, out2 = np.zeros((50, 4), np.float32), np.zeros((50, 4), np.float32)
    _fused.scatter_add_rows(out1, big, rows)
    np.add.at(out2, big, rows)
    npt.assert_allclose(out1, out2, rtol=1e-4, atol=1e-4)


def test_train_on_batch_and_compile_objects(rng):
    x, y = toy_tokens(rng, n=8)
    m = small_model()
    m.compile(optimizer=fastlstm.optimizers.SGD(learning_rate=0.1, momentum=0.9, nesterov=True),
              loss=fastlstm.losses.BinaryCrossentropy(label_smoothing=0.1), metrics=["accuracy"])
    loss, acc = m.train_on_batch(x, y)
    assert np.isfinite(loss) and 0 <= acc <= 1 and m.optimizer.iterations == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.test_on_batch(x, y)


# ---- training on several threads ----------------------------------------------------------------------------
@pytest.mark.parametrize("make, opts", [
    (lambda: L.LSTM(12, return_sequences=True, return_state=True), dict(mask=True, init=True)),
    (lambda: L.LSTM(12, go_backwards=True, dropout=0.2), dict()),
    (lambda: L.GRU(12, return_sequences=True), dict(mask=True)),
    (lambda: L.GRU(12, reset_after=False, return_state=True), dict(init=True)),
    (lambda: L.Bidirectional(L.LSTM(6, return_sequences=True)), dict(mask=True)),
], ids=["lstm_seq_state_mask", "lstm_backwards_dropout", "gru_seq_mask", "gru_before_state", "bilstm"])
def test_training_row_shares_on_threads_equal_one_thread(rng, make, opts):
    """With 2 kernel threads and at least TRAIN_MIN_ROWS_PER_THREAD rows per thread, an LSTM/GRU training forward
    and backward run on shares of the batch rows in parallel (each share its own workspace, the weight gradients
    summed): outputs, input and initial-state gradients equal one thread's; the weight gradients too, up to the
    order of the sum over rows."""
    from fastlstm import config
    from fastlstm.layers import recurrent
    B, T, I = 4 * recurrent.TRAIN_MIN_ROWS_PER_THREAD - 3, 9, 5          # uneven shares
    x = rng.normal(size=(B, T, I)).astype(np.float32)
    mask = rng.random((B, T)) < 0.8 if opts.get("mask") else None
    results, saved = [], config.NUM_THREADS
    try:
        for threads in (1, 2):
            config.NUM_THREADS = threads
            layer = make()
            layer.build((None, T, I))
            ws = results[0][0] if results else [(0.3 * rng.normal(size=w.shape)).astype(w.dtype)
                                                  for w in layer.get_weights()]
            layer.set_weights(ws)
            inner = getattr(layer, "forward_layer", layer)
            n_states = inner.n_states if not isinstance(layer, L.Bidirectional) else 0
            init = [rng.normal(size=(B, 12)).astype(np.float32) for _ in range(n_states)] if opts.get("init") else None
            init = results[0][4] if results and init is not None else init
            for leaf in recurrent_leaves(layer):
                leaf.grads = [np.zeros_like(w) for w in leaf._weights]
            kw = dict(mask=mask, training=True, rng=np.random.default_rng(3))
            if init is not None:
                kw["initial_state"] = init
            out, ctx = layer.forward(x, **kw)
            shares = [c.get("shares") for c in _rnn_ctxs(ctx)]
            assert all((s is not None) == (threads == 2) for s in shares)
            outs = out if isinstance(out, list) else [out]
            d_out = results[0][6] if results else [np.asarray(rng.normal(size=o.shape), np.float32) for o in outs]
            dx = layer.backward(ctx, d_out if isinstance(out, list) else d_out[0])
            grads = [g.copy() for leaf in recurrent_leaves(layer) for g in leaf.grads]
            results.append((ws, outs, dx, grads, init, ctx.get("d_initial_state"), d_out))
    finally:
        config.NUM_THREADS = saved
    (_, o1, dx1, g1, _, di1, _), (_, o2, dx2, g2, _, di2, _) = results
    # per row the same arithmetic; the reference's input product is one BLAS matmul over all T*B rows, which may
    # round a row differently at another position in the matrix
    if fastlstm.get_backend().name == "reference":
        same = lambda a, b: npt.assert_allclose(a, b, rtol=1e-5, atol=1e-6)    # noqa: E731
    else:
        same = npt.assert_array_equal
    for a, b in zip(o1, o2):
        same(a, b)
    same(dx1, dx2)
    if di1 is not None:
        for a, b in zip(di1, di2):
            same(a, b)
    for a, b in zip(g1, g2):      # float32 sums over the rows in another order: error relative to the largest entry
        npt.assert_allclose(a, b, rtol=1e-5, atol=2e-6 * max(1.0, float(np.abs(a).max())))


def recurrent_leaves(layer):
    return [layer.forward_layer, layer.backward_layer] if isinstance(layer, L.Bidirectional) else [layer]


def _rnn_ctxs(ctx):
    return [ctx["cf"], ctx["cb"]] if "cf" in ctx else [ctx]


@pytest.mark.parametrize("cell", [L.LSTM, L.GRU])
def test_training_row_shares_with_projected_tokens(rng, cell, monkeypatch):
    """Embedding -> LSTM/GRU (each distinct token projected once, the projected input copied into the shares):
    one optimizer step on 2 threads gives one thread's weights, up to float32 sums in another order."""
    from fastlstm import config
    from fastlstm.layers import recurrent
    used = []
    real = recurrent.RNN._forward_shares
    monkeypatch.setattr(recurrent.RNN, "_forward_shares", lambda self, *a: used.append(a[-1] is not None)
                        or real(self, *a))
    ids = rng.integers(1, 12, size=(40, 15))          # few distinct ids: the projected path
    y = rng.integers(0, 2, size=(40, 1)).astype(np.float32)
    weights, saved = None, config.NUM_THREADS
    after = []
    try:
        for threads in (1, 2):
            config.NUM_THREADS = threads
            m = fastlstm.Sequential([L.Embedding(12, 6), cell(10), L.Dense(1, activation="sigmoid")])
            m.build((None, 15))
            weights = weights or [(0.3 * rng.normal(size=w.shape)).astype(w.dtype) for w in m.get_weights()]
            m.set_weights(weights)
            m.compile(optimizer="adam", loss="binary_crossentropy")
            m.train_on_batch(ids, y)
            after.append(m.get_weights())
    finally:
        config.NUM_THREADS = saved
    assert used == [True]                              # 2 threads: shares, with the projected input
    for a, b in zip(*after):
        npt.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
