"""Models that `model.save` writes, and the check that Keras 3 itself loads them and predicts identically.

Used by tests/test_saving.py (fastlstm's own round trip in CI; the real-Keras check when KERAS_PYTHON points at
a Python with Keras 3). Run directly to refresh the committed record:

    KERAS_PYTHON=~/kvenv/bin/python python tests/keras_roundtrip.py    -> tests/data/train/keras_roundtrip.json
"""
import json
import os
import subprocess
import sys

import numpy as np

import fastlstm
from fastlstm import layers as L

RECORD = os.path.join(os.path.dirname(__file__), "data", "train", "keras_roundtrip.json")

# Runs under KERAS_PYTHON: load every saved model with Keras 3 and predict on its inputs.
KERAS_SCRIPT = r"""
import os, sys, json
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
import numpy as np, keras
folder = sys.argv[1]
report = {"keras_version": keras.__version__, "models": {}}
for name in sorted(f[:-6] for f in os.listdir(folder) if f.endswith(".keras")):
    model = keras.saving.load_model(os.path.join(folder, name + ".keras"))
    xin = np.load(os.path.join(folder, name + "_x.npz"))
    xs = [xin[f"x{k}"] for k in range(len(xin.files))]
    out = model.predict(xs[0] if len(xs) == 1 else xs, verbose=0)
    out = out if isinstance(out, (list, tuple)) else [out]
    np.savez(os.path.join(folder, name + "_keras.npz"), *[np.asarray(o) for o in out])
    report["models"][name] = {"layers": [type(l).__name__ for l in model.layers],
                              "n_weights": len(model.get_weights())}
print(json.dumps(report))
"""


def _perturbed(model, rng):
    model.set_weights([w + rng.uniform(-0.3, 0.3, w.shape).astype(w.dtype) for w in model.get_weights()])
    return model


def make_models(seed=0):
    """{name: (model, [inputs])}: one of every layer type the model class saves."""
    rng = np.random.default_rng(seed)
    fastlstm.set_random_seed(seed)
    out = {}
    tok = rng.integers(1, 30, size=(4, 9))
    tok[0, :3] = 0
    tok[1, 5] = 0
    m = fastlstm.Sequential([L.Embedding(30, 6, mask_zero=True), L.LSTM(7, return_sequences=True),
                             L.GRU(5, reset_after=False), L.Dense(1, activation="sigmoid")], name="seq_embed")
    m.build((None, None))
    out["seq_embed"] = (_perturbed(m, rng), [tok])

    xf = rng.normal(size=(3, 6, 4)).astype(np.float32)
    xf[0, :2] = 0.0
    m = fastlstm.Sequential([fastlstm.Input((None, 4)), L.Masking(0.0),
                             L.Bidirectional(L.LSTM(5, return_sequences=True)), L.Dropout(0.2),
                             L.TimeDistributed(L.Dense(3)), L.Activation("softmax")], name="seq_bidir_td")
    out["seq_bidir_td"] = (_perturbed(m, rng), [xf])

    m = fastlstm.Sequential([fastlstm.Input((None, 4)), L.SpatialDropout1D(0.1), L.GaussianNoise(0.1),
                             L.Bidirectional(L.GRU(3, return_sequences=True), merge_mode="ave"),
                             L.SimpleRNN(4, return_sequences=True, go_backwards=True), L.LSTM(3, use_bias=False),
                             L.Dense(2, activation="tanh")], name="seq_misc")
    out["seq_misc"] = (_perturbed(m, rng), [xf])

    inp = fastlstm.Input((None,), dtype="int32", name="tokens")
    e = L.Embedding(30, 6, mask_zero=True)(inp)
    seq = L.LSTM(6, return_sequences=True)(e)
    last, h, c = L.LSTM(5, return_state=True)(seq)
    bi = L.Bidirectional(L.GRU(3), merge_mode="sum")(seq)
    o1 = L.Dense(1, activation="sigmoid", name="flag")(last)
    o2 = L.Dense(2, name="score")(c)
    o3 = L.Dense(2, name="bi")(bi)
    m = fastlstm.Model(inp, [o1, o2, o3], name="func_multi")
    out["func_multi"] = (_perturbed(m, rng), [tok])

    enc = fastlstm.Input((None, 4), name="enc")
    dec = fastlstm.Input((None, 3), name="dec")
    _, h, c = L.LSTM(5, return_state=True)(enc)
    y = L.LSTM(5, return_sequences=True)(dec, initial_state=[h, c])
    y = L.TimeDistributed(L.Dense(3, activation="softmax"))(y)
    m = fastlstm.Model([enc, dec], y, name="func_seq2seq")
    out["func_seq2seq"] = (_perturbed(m, rng), [xf, rng.normal(size=(3, 4, 3)).astype(np.float32)])

    # two LSTMs whose depth-first order (lstm_tok first) is not Keras's model.layers order (lstm_ser is deeper):
    # the saved groups layers/lstm, layers/lstm_1 must follow Keras's order; gradients flow through Concatenate
    tok2 = fastlstm.Input((None,), dtype="int32", name="tok")
    ser = fastlstm.Input((None, 3), name="ser")
    a = L.LSTM(5, name="lstm_tok")(L.Embedding(30, 4)(tok2))
    b = L.Dense(4, activation="tanh", name="ser_dense")(L.LSTM(5, name="lstm_ser")(ser))
    m = fastlstm.Model([tok2, ser], L.Dense(2, name="out")(L.Concatenate()([a, b])), name="func_two_inputs")
    out["func_two_inputs"] = (_perturbed(m, rng), [tok, rng.normal(size=(4, 6, 3)).astype(np.float32)])

    # a real Keras 3 file whose config holds an op node (NotEqual) passed to two RNNs as an explicit mask
    case = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "keras", "k3_mask_initial_state")
    m = fastlstm.load(os.path.join(case, "model.keras"))
    m.name = "loaded_mask_ops"
    xin = np.load(os.path.join(case, "input.npz"))
    out["loaded_mask_ops"] = (_perturbed(m, rng), [xin[k] for k in m.input_names])
    return out


def save_all(folder, seed=0):
    """Save every model and its inputs to folder; returns {name: (model, inputs)}."""
    models = make_models(seed)
    for name, (model, xs) in models.items():
        model.save(os.path.join(folder, name + ".keras"))
        np.savez(os.path.join(folder, name + "_x.npz"), **{f"x{k}": x for k, x in enumerate(xs)})
    return models


def run_keras(python, folder):
    res = subprocess.run([python, "-c", KERAS_SCRIPT, folder], capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"Keras failed to load the saved models:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def compare(models, folder):
    """{name: max abs difference between fastlstm's and Keras's predictions}."""
    diffs = {}
    for name, (model, xs) in models.items():
        ours = model.predict(xs[0] if len(xs) == 1 else xs)
        ours = ours if isinstance(ours, list) else [ours]
        theirs = np.load(os.path.join(folder, name + "_keras.npz"))
        theirs = [theirs[f"arr_{k}"] for k in range(len(theirs.files))]
        assert len(ours) == len(theirs), name
        diffs[name] = max(float(np.max(np.abs(a - b))) for a, b in zip(ours, theirs))
    return diffs


if __name__ == "__main__":
    import tempfile
    python = os.environ.get("KERAS_PYTHON")
    if not python:
        sys.exit("set KERAS_PYTHON to a Python with Keras 3")
    with tempfile.TemporaryDirectory() as d:
        models = save_all(d)
        report = run_keras(python, d)
        report["max_abs_diff"] = compare(models, d)
        report["fastlstm_version"] = fastlstm.__version__
        report["what"] = ("model.save() files loaded by keras.saving.load_model and predicted by Keras; "
                          "max |fastlstm predict - Keras predict| per model (tests/keras_roundtrip.py)")
    with open(RECORD, "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report, indent=1))
