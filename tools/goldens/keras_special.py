"""Keras fixture family, part 2: error cases (bad_*) and hand-written Keras 2.2.4 / CuDNN HDF5 files (hand_*).

Called by tools/goldens/keras.py build(); see its docstring. Error cases record what the exporting framework itself
does with the file (framework_behaviour, probed in a fresh subprocess so nothing registered here leaks in).
"""
import json
import os
import shutil
import subprocess
import sys
import zipfile

import h5py
import numpy as np

from .common import case_dir
from .keras import SUITE, TOL, _seed, gen, maxdiff, perturb, predict, save_npz, series, tokens

# ----------------------------------------------------------------------------------------------- probing
_PROBE = r"""
import os, sys
tag, mode, path, arch = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
try:
    if mode == "h5py":
        import h5py, numpy as np
        def visit(name, obj):
            dict(obj.attrs)
            if isinstance(obj, h5py.Dataset):
                np.asarray(obj[()])
        with h5py.File(path, "r") as f:
            dict(f.attrs)
            f.visititems(visit)
    else:
        if tag == "k3":
            import keras as K
        else:
            import tf_keras as K
        if arch:
            m = K.models.model_from_json(open(arch).read())
            m.load_weights(path)
        else:
            K.models.load_model(path)
    print("RESULT loads without error")
except Exception as e:
    msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
    print("RESULT raises " + type(e).__name__ + ": " + msg)
"""


def probe(tag, path, arch=None, mode="load"):
    """What the framework (or plain h5py, mode='h5py') does with the file, in a fresh process."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    r = subprocess.run([sys.executable, "-c", _PROBE, tag, mode, path, arch or ""], capture_output=True, text=True,
                       env=env, timeout=300)
    lines = [ln[7:] for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    if r.returncode < 0:
        return f"crashes (signal {-r.returncode})"
    return lines[-1] if lines else f"exit status {r.returncode}: {r.stderr.strip().splitlines()[-1:]}"


def _clean(d):
    for f in os.listdir(d):
        p = os.path.join(d, f)
        shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)


def _err_case(g, name, file, fmt, features, description, hint, behaviour, arch=None, h5py_behaviour=None):
    c = {"name": name, "file": f"{name}/{file}", "format": fmt, "input_file": None, "input_names": [],
         "expected_file": None, "output_names": [],
         "features": features + ["gen:" + ("keras3" if g.k3 else "tf_keras")],
         "description": description, "expect_error": True, "expected_error_hint": hint, "optional": False,
         "framework": g.framework, "framework_behaviour": f"{g.label} load: {behaviour}"}
    if arch:
        c["architecture_file"] = f"{name}/{arch}"
    if h5py_behaviour:
        c["h5py_behaviour"] = h5py_behaviour
    return c


def _small_model(g, rng, units=8):
    L, K = g.L, g.K
    m = K.Sequential([K.Input((None,), dtype="int32", name="tokens"), L.Embedding(30, 6), L.LSTM(units),
                      L.Dense(1, activation="sigmoid")], name="small")
    perturb(g, m, rng)
    return m


# ----------------------------------------------------------------------------------------------- error cases
def _lambda(g, out, name):
    L, K = g.L, g.K
    x = K.Input((None, 3), name="x")
    h = L.LSTM(4)(x)
    y = L.Lambda(lambda t: t * 2.0 + 1.0, name="scale_shift")(h)
    m = K.Model(x, L.Dense(1)(y))
    d = case_dir(out, SUITE, name)
    _clean(d)
    file = "model.keras" if g.k3 else "model.h5"
    p = os.path.join(d, file)
    m.save(p) if g.k3 else m.save(p, save_format="h5")
    return _err_case(g, name, file, "keras3" if g.k3 else "tfkeras2-h5", ["error:lambda_layer", "lambda", "lstm"],
                     "LSTM(4) -> Lambda(t*2+1, name='scale_shift') -> Dense(1): the Lambda's Python bytecode is "
                     "serialized in the config (" + ("Keras 3 .keras" if g.k3 else "tf_keras h5, marshal+base64")
                     + ")", "ModelLoadError naming the Lambda layer 'scale_shift' (code in a model file is never "
                            "executed)", probe(g.tag, p))


_CUSTOM = {}


def _custom_class(g):
    if g.tag not in _CUSTOM:
        K = g.K
        reg = K.saving.register_keras_serializable if hasattr(K, "saving") and hasattr(
            K.saving, "register_keras_serializable") else K.utils.register_keras_serializable

        @reg(package="fixtures")
        class ScaleShift(K.layers.Layer):
            def __init__(self, scale=2.0, **kw):
                super().__init__(**kw)
                self.scale = scale

            def call(self, x):
                return x * self.scale + 1.0

            def get_config(self):
                return dict(super().get_config(), scale=self.scale)

        _CUSTOM[g.tag] = ScaleShift
    return _CUSTOM[g.tag]


def _custom(g, out, name):
    L, K = g.L, g.K
    cls = _custom_class(g)
    x = K.Input((None, 3), name="x")
    h = L.GRU(4)(x)
    m = K.Model(x, L.Dense(1)(cls(3.0, name="scale_shift")(h)))
    d = case_dir(out, SUITE, name)
    _clean(d)
    file = "model.keras" if g.k3 else "model.h5"
    p = os.path.join(d, file)
    m.save(p) if g.k3 else m.save(p, save_format="h5")
    return _err_case(g, name, file, "keras3" if g.k3 else "tfkeras2-h5", ["error:custom_layer", "gru"],
                     "GRU(4) -> custom layer ScaleShift registered with register_keras_serializable(package="
                     "'fixtures') (config class_name 'ScaleShift'" + (", registered_name 'fixtures>ScaleShift'"
                                                                      if g.k3 else "; tf_keras writes "
                                                                      "'fixtures>ScaleShift' as class_name") + ")",
                     "ModelLoadError naming the unknown layer class ScaleShift", probe(g.tag, p))


def _truncated_keras(g, out, name, rng):
    d = case_dir(out, SUITE, name)
    _clean(d)
    p = os.path.join(d, "model.keras")
    _small_model(g, rng).save(p)
    data = open(p, "rb").read()
    open(p, "wb").write(data[:int(len(data) * 0.55)])
    return _err_case(g, name, "model.keras", "keras3", ["error:truncated_zip"],
                     f"a valid Keras 3 .keras zip ({len(data)} bytes) cut to its first 55% (central directory and "
                     "the end of model.weights.h5 missing)",
                     "ModelLoadError (wrapping zipfile.BadZipFile), no crash", probe(g.tag, p))


def _truncated_h5(g, out, name, rng):
    d = case_dir(out, SUITE, name)
    _clean(d)
    p = os.path.join(d, "model.h5")
    _small_model(g, rng).save(p)
    data = open(p, "rb").read()
    open(p, "wb").write(data[:int(len(data) * 0.6)])
    return _err_case(g, name, "model.h5", "keras-h5-legacy", ["error:truncated_h5"],
                     f"a valid Keras 3 legacy .h5 ({len(data)} bytes) cut to its first 60%",
                     "ModelLoadError (h5py cannot open a truncated file: 'truncated file: eof = ...'), no crash",
                     probe(g.tag, p), h5py_behaviour=probe(g.tag, p, mode="h5py"))


def _corrupt_h5(g, out, name, rng):
    """Flip the bytes of the HDF5 symbol-table node (b'SNOD') nearest the middle: group lookups fail loudly.
    (Flipping raw weight bytes instead would give silently wrong weights, which no loader can detect.)"""
    d = case_dir(out, SUITE, name)
    _clean(d)
    p = os.path.join(d, "model.h5")
    _small_model(g, rng).save(p, save_format="h5")
    data = bytearray(open(p, "rb").read())
    hits, i = [], data.find(b"SNOD")
    while i >= 0:
        hits.append(i)
        i = data.find(b"SNOD", i + 1)
    pos = min(hits, key=lambda k: abs(k - len(data) // 2))
    for k in range(pos, pos + 64):
        data[k] ^= 0xFF
    open(p, "wb").write(bytes(data))
    return _err_case(g, name, "model.h5", "tfkeras2-h5", ["error:corrupt_h5"],
                     f"a valid tf_keras .h5 ({len(data)} bytes) with 64 bytes flipped (XOR 0xFF) at offset {pos}, "
                     f"the symbol-table node (SNOD) of {len(hits)} nearest the middle of the file",
                     "ModelLoadError (h5py raises on the damaged group: bad symbol table node signature), no crash",
                     probe(g.tag, p), h5py_behaviour=probe(g.tag, p, mode="h5py"))


def _missing_dataset(g, out, name, rng):
    d = case_dir(out, SUITE, name)
    _clean(d)
    m = _small_model(g, rng)
    file = "model.weights.h5" if g.k3 else "weights.h5"
    p = os.path.join(d, file)
    m.save_weights(p)
    with open(os.path.join(d, "architecture.json"), "w") as f:
        f.write(m.to_json())
    with h5py.File(p, "r+") as f:
        victims = []
        f.visititems(lambda k, v: victims.append(k) if isinstance(v, h5py.Dataset) and "lstm" in k and (
            k.endswith("vars/1") or "recurrent_kernel" in k) else None)
        del f[victims[0]]
    return _err_case(g, name, file, "weights-h5" if g.k3 else "tfkeras2-weights-h5", ["error:missing_weight"],
                     f"{'Keras 3 .weights.h5' if g.k3 else 'tf_keras save_weights h5'} + architecture.json with the "
                     f"LSTM recurrent kernel dataset '{victims[0]}' deleted (h5py del)"
                     + ("" if g.k3 else "; the layer's weight_names attr still lists it"),
                     "ModelLoadError naming the LSTM layer and the missing recurrent kernel",
                     probe(g.tag, p, arch=os.path.join(d, "architecture.json")), arch="architecture.json")


def _units_mismatch(g, out, name, rng):
    d = case_dir(out, SUITE, name)
    _clean(d)
    m = _small_model(g, rng, units=8)
    if g.k3:
        src = os.path.join(d, "orig.keras")
        m.save(src)
        p = os.path.join(d, "model.keras")
        with zipfile.ZipFile(src) as zin, zipfile.ZipFile(p, "w", zipfile.ZIP_STORED) as zout:
            for info in zin.infolist():
                data = zin.read(info.filename)
                if info.filename == "config.json":
                    data = _edit_units(json.loads(data)).encode()
                zout.writestr(info, data)
        os.remove(src)
        file, fmt, where = "model.keras", "keras3", "config.json inside the .keras zip (copied member by member)"
    else:
        p = os.path.join(d, "model.h5")
        m.save(p, save_format="h5")
        with h5py.File(p, "r+") as f:
            f.attrs["model_config"] = _edit_units(json.loads(f.attrs["model_config"]))
        file, fmt, where = "model.h5", "tfkeras2-h5", "the model_config attribute of the .h5"
    return _err_case(g, name, file, fmt, ["error:config_weight_mismatch", "lstm"],
                     f"LSTM units edited from 8 to 6 in {where}; the weights still have H=8 (kernel (6, 32))",
                     "ModelLoadError about the weight shape mismatch (LSTM units=6 expects kernel (6, 24), the file "
                     "has (6, 32); the Dense kernel (8, 1) no longer fits either)",
                     probe(g.tag, p))


def _edit_units(cfg):
    for layer in cfg["config"]["layers"]:
        if layer["class_name"] == "LSTM":
            layer["config"]["units"] = 6
    return json.dumps(cfg)


def _unsupported(g, out, name, kind):
    L, K = g.L, g.K
    if kind == "conv2d":
        x = K.Input((8, 4), name="x")
        h = L.LSTM(6, return_sequences=True)(x)
        h = L.Conv2D(2, 3, name="conv2d")(L.Reshape((8, 6, 1))(h))
        out_t = L.Dense(1)(L.GlobalAveragePooling2D()(h))
        what, cls = "LSTM(6, rs) -> Reshape((8,6,1)) -> Conv2D(2, 3) -> GlobalAveragePooling2D -> Dense(1)", "Conv2D"
    else:
        x = K.Input((None, 4), name="x")
        q = L.LSTM(6, return_sequences=True)(x)
        v = L.GRU(6, return_sequences=True)(x)
        a = L.Attention(name="attention")([q, v])
        out_t = L.Dense(1)(L.GlobalAveragePooling1D()(a))
        what, cls = ("LSTM(6, rs) queries and GRU(6, rs) values -> keras Attention -> GlobalAveragePooling1D -> "
                     "Dense(1) (a valid model Keras loads; unsupported by fastlstm)", "Attention")
    m = K.Model(x, out_t)
    perturb(g, m, np.random.default_rng(_seed(name)))
    d = case_dir(out, SUITE, name)
    _clean(d)
    file = "model.keras" if g.k3 else "model.h5"
    p = os.path.join(d, file)
    m.save(p) if g.k3 else m.save(p, save_format="h5")
    return _err_case(g, name, file, "keras3" if g.k3 else "tfkeras2-h5", ["error:unsupported_layer", kind], what,
                     f"ModelLoadError naming the unsupported layer class {cls} (layer '{cls.lower()}')",
                     probe(g.tag, p))


def _dir_missing_weights(g, out, name, rng):
    d = case_dir(out, SUITE, name)
    _clean(d)
    p = os.path.join(d, "model_dir")
    _small_model(g, rng).save(p, zipped=False)
    os.remove(os.path.join(p, "model.weights.h5"))
    return _err_case(g, name, "model_dir", "keras3-dir", ["error:missing_weights_file"],
                     "an unzipped Keras 3 .keras directory (model.save(path, zipped=False)) whose model.weights.h5 "
                     "was deleted (config.json and metadata.json remain)",
                     "ModelLoadError saying model.weights.h5 is missing", probe(g.tag, p))


def build_errors(out, name_filter=""):
    jobs = [
        ("bad_k3_lambda", "k3", lambda g, n, r: _lambda(g, out, n)),
        ("bad_tk2_lambda", "tk", lambda g, n, r: _lambda(g, out, n)),
        ("bad_k3_custom_layer", "k3", lambda g, n, r: _custom(g, out, n)),
        ("bad_tk2_custom_layer", "tk", lambda g, n, r: _custom(g, out, n)),
        ("bad_k3_truncated_keras", "k3", lambda g, n, r: _truncated_keras(g, out, n, r)),
        ("bad_k3h5_truncated", "k3", lambda g, n, r: _truncated_h5(g, out, n, r)),
        ("bad_tk2_corrupt_h5", "tk", lambda g, n, r: _corrupt_h5(g, out, n, r)),
        ("bad_k3w_missing_dataset", "k3", lambda g, n, r: _missing_dataset(g, out, n, r)),
        ("bad_tk2w_missing_dataset", "tk", lambda g, n, r: _missing_dataset(g, out, n, r)),
        ("bad_k3_units_mismatch", "k3", lambda g, n, r: _units_mismatch(g, out, n, r)),
        ("bad_tk2_units_mismatch", "tk", lambda g, n, r: _units_mismatch(g, out, n, r)),
        ("bad_k3_unsupported_conv2d", "k3", lambda g, n, r: _unsupported(g, out, n, "conv2d")),
        ("bad_k3_unsupported_attention", "k3", lambda g, n, r: _unsupported(g, out, n, "attention")),
        ("bad_tk2_unsupported_conv2d", "tk", lambda g, n, r: _unsupported(g, out, n, "conv2d")),
        ("bad_k3dir_missing_weights", "k3", lambda g, n, r: _dir_missing_weights(g, out, n, r)),
    ]
    cases = []
    for name, tag, fn in jobs:
        if name_filter not in name:
            continue
        g = gen(tag)
        g.reset(_seed(name))
        cases.append(fn(g, name, np.random.default_rng(_seed(name))))
        print(f"  {name}: {cases[-1]['framework_behaviour'][:150]}", flush=True)
    return cases


# ----------------------------------------------------------------------------------------------- hand-written
GLOROT = {"class_name": "VarianceScaling", "config": {"scale": 1.0, "mode": "fan_avg", "distribution": "uniform",
                                                      "seed": None}}
ORTHO = {"class_name": "Orthogonal", "config": {"gain": 1.0, "seed": None}}
ZEROS = {"class_name": "Zeros", "config": {}}
NO_REG = {"kernel_regularizer": None, "bias_regularizer": None, "activity_regularizer": None,
          "kernel_constraint": None, "bias_constraint": None}


def k224_rnn(cls, name, units, return_sequences=False, **first):
    """Keras 2.2.4 get_config() of LSTM / GRU / CuDNNLSTM / CuDNNGRU (recurrent_activation default hard_sigmoid,
    GRU reset_after default False, implementation 1)."""
    c = {"name": name, "trainable": True, **first, "return_sequences": return_sequences, "return_state": False,
         "go_backwards": False, "stateful": False}
    if not cls.startswith("CuDNN"):
        c.update({"unroll": False, "units": units, "activation": "tanh", "recurrent_activation": "hard_sigmoid",
                  "use_bias": True})
    else:
        c["units"] = units
    c.update({"kernel_initializer": GLOROT, "recurrent_initializer": ORTHO, "bias_initializer": ZEROS})
    if cls in ("LSTM", "CuDNNLSTM"):
        c["unit_forget_bias"] = True
    c.update({"kernel_regularizer": None, "recurrent_regularizer": None, "bias_regularizer": None,
              "activity_regularizer": None, "kernel_constraint": None, "recurrent_constraint": None,
              "bias_constraint": None})
    if not cls.startswith("CuDNN"):
        c.update({"dropout": 0.0, "recurrent_dropout": 0.0, "implementation": 1})
        if cls == "GRU":
            c["reset_after"] = False
    return {"class_name": cls, "config": c}


def k224_dense(name, units, activation="linear", **first):
    return {"class_name": "Dense", "config": {"name": name, "trainable": True, **first, "units": units,
                                              "activation": activation, "use_bias": True,
                                              "kernel_initializer": GLOROT, "bias_initializer": ZEROS, **NO_REG}}


def write_k224_h5(path, model_config, layer_weights, keras_version="2.2.4"):
    """HDF5 as Keras 2.2.4 save_model() wrote it: byte-string attrs, model_weights/<layer>/<layer>/<w>:0."""
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = np.bytes_(keras_version)
        f.attrs["backend"] = np.bytes_("tensorflow")
        f.attrs["model_config"] = np.bytes_(json.dumps(model_config))
        mw = f.create_group("model_weights")
        mw.attrs["layer_names"] = np.array([n.encode() for n, _ in layer_weights])
        mw.attrs["backend"] = np.bytes_("tensorflow")
        mw.attrs["keras_version"] = np.bytes_(keras_version)
        for lname, weights in layer_weights:
            grp = mw.create_group(lname)
            grp.attrs["weight_names"] = np.array([w.encode() for w, _ in weights]) if weights else np.array([])
            for wname, arr in weights:
                grp.create_dataset(wname, data=np.asarray(arr, np.float32))


def to_cudnn_kernel(k, n_gates):
    """Inverse of tf_keras _convert_rnn_weights' input-kernel transform (per gate: c.T.reshape(c.shape, 'F'))."""
    blocks = [b.T.reshape(b.shape, order="C") for b in np.hsplit(k, n_gates)]
    back = np.hstack([c.T.reshape(c.shape, order="F") for c in blocks])
    assert np.array_equal(back, k)
    return np.hstack(blocks)


def to_cudnn_recurrent(r, n_gates):
    return np.hstack([b.T for b in np.hsplit(r, n_gates)])


def _hand_case(g, name, description, features, in_names, xs, ys, out_names, cross, tol=None):
    return {"name": name, "file": f"{name}/model.h5", "format": "keras2-h5-handwritten",
            "input_file": f"{name}/input.npz", "input_names": in_names,
            "input_dtypes": [str(x.dtype) for x in xs], "input_shapes": [list(x.shape) for x in xs],
            "expected_file": f"{name}/expected.npz", "output_names": out_names,
            "output_shapes": [list(y.shape) for y in ys],
            "reference": f"{g.label} predict() on the equivalent modern model (same weights, converted to the "
                         f"Keras layout) -- the file itself is HAND-WRITTEN",
            "features": features + ["hand_written", "gen:keras2.2.4"], "description": description,
            "tolerance": tol or TOL, "expect_error": False, "optional": False,
            "framework": dict(g.framework, written_by="h5py " + h5py.__version__), "hand_written": True,
            "cross_check": cross, "determinism_max_abs_diff": cross.get("max_abs_diff")}


def _finish_hand(g, out, name, model_cfg, layer_weights, xs, in_names, model, verify):
    d = case_dir(out, SUITE, name)
    _clean(d)
    p = os.path.join(d, "model.h5")
    write_k224_h5(p, model_cfg, layer_weights)
    ys = predict(model, xs, len(xs[0]))
    save_npz(os.path.join(d, "input.npz"), **dict(zip(in_names, xs)))
    save_npz(os.path.join(d, "expected.npz"), **{f"output_{k}": y for k, y in enumerate(ys)})
    cross = verify(p, ys)
    return ys, cross


def _verify_load_model(g, xs):
    def run(p, ys):
        g.K.backend.clear_session()
        m = g.K.models.load_model(p, compile=False)
        return {"vs": f"{g.label} load_model() of this hand-written file, predict()",
                "max_abs_diff": maxdiff(predict(m, xs, len(xs[0])), ys)}
    return run


def _verify_load_weights(g, xs, build):
    def run(p, ys):
        g.K.backend.clear_session()
        m = build()
        m.load_weights(p)  # legacy h5: layers in order, tf_keras converts CuDNN weights (_convert_rnn_weights)
        return {"vs": f"{g.label} load_weights() of this hand-written file into the equivalent LSTM/GRU model "
                      "(tf_keras converts the cuDNN layout itself), predict()",
                "max_abs_diff": maxdiff(predict(m, xs, len(xs[0])), ys),
                "load_model": probe(g.tag, p) + " (tf_keras builds real CuDNN layers from the config; their "
                              "predict needs a GPU: no CPU kernel for CudnnRNNV3)"}
    return run


def _hand_k224_seq(g, out, name, rng):
    L, K = g.L, g.K
    V, E, H1, H2 = 30, 6, 8, 6
    m = K.Sequential([K.Input((None,), dtype="int32", name="embedding_1_input"),
                      L.Embedding(V, E, mask_zero=True, name="embedding_1"),
                      L.LSTM(H1, recurrent_activation="hard_sigmoid", return_sequences=True, name="lstm_1"),
                      L.GRU(H2, recurrent_activation="hard_sigmoid", reset_after=False, name="gru_1"),
                      L.Dense(3, activation="softmax", name="dense_1")])
    perturb(g, m, rng, gain=2.0, bias=1.0)
    w = {n: m.get_layer(n).get_weights() for n in ("embedding_1", "lstm_1", "gru_1", "dense_1")}
    layers = [k224_rnn("LSTM", "lstm_1", H1, True), k224_rnn("GRU", "gru_1", H2), k224_dense("dense_1", 3, "softmax")]
    emb = {"class_name": "Embedding", "config": {
        "name": "embedding_1", "trainable": True, "batch_input_shape": [None, None], "dtype": "float32",
        "input_dim": V, "output_dim": E,
        "embeddings_initializer": {"class_name": "RandomUniform",
                                   "config": {"minval": -0.05, "maxval": 0.05, "seed": None}},
        "embeddings_regularizer": None, "activity_regularizer": None, "embeddings_constraint": None,
        "mask_zero": True, "input_length": None}}
    cfg = {"class_name": "Sequential", "config": {"name": "sequential_1", "layers": [emb] + layers}}
    rnn_w = ("kernel", "recurrent_kernel", "bias")
    lw = [("embedding_1", [("embedding_1/embeddings:0", w["embedding_1"][0])]),
          ("lstm_1", [(f"lstm_1/{k}:0", a) for k, a in zip(rnn_w, w["lstm_1"])]),
          ("gru_1", [(f"gru_1/{k}:0", a) for k, a in zip(rnn_w, w["gru_1"])]),
          ("dense_1", [(f"dense_1/{k}:0", a) for k, a in zip(("kernel", "bias"), w["dense_1"])])]
    xs = [tokens(rng, 6, 10, V, ["none", "pre", "pre", "post", "mid", "full"])]
    ys, cross = _finish_hand(g, out, name, cfg, lw, xs, ["embedding_1_input"], m, _verify_load_model(g, xs))
    return _hand_case(g, name, "HAND-WRITTEN Keras 2.2.4-style h5 (keras_version '2.2.4', byte-string attrs, no "
                      "InputLayer in the Sequential config, weight names 'lstm_1/kernel:0' with no cell level): "
                      "Embedding(30,6,mask_zero) -> LSTM(8, rs) -> GRU(6) -> Dense(3, softmax). The LSTM and GRU "
                      "configs carry the 2.2.4 defaults recurrent_activation='hard_sigmoid' (Keras 2 definition "
                      "clip(0.2x+0.5,0,1)) and GRU reset_after=False (bias (3H,)); pre-padded rows as pad_sequences "
                      "made them", ["sequential", "embedding", "mask_zero", "lstm", "gru", "hard_sigmoid",
                                    "hard_sigmoid:keras2", "gru:reset_after=false", "keras2_weight_names",
                                    "int_input", "fully_masked_row"],
                      ["embedding_1_input"], xs, ys, ["dense_1"], cross)


def _hand_k224_bidi(g, out, name, rng):
    L, K = g.L, g.K
    H = 5
    x_in = K.Input((None, 3), name="input_1")
    b = L.Bidirectional(L.LSTM(H, recurrent_activation="hard_sigmoid", return_sequences=True),
                        name="bidirectional_1")(x_in)
    y = L.TimeDistributed(L.Dense(2, activation="tanh"), name="time_distributed_1")(b)
    m = K.Model(x_in, y, name="model_1")
    perturb(g, m, rng, gain=2.0, bias=1.0)
    fw, bw = m.get_layer("bidirectional_1").forward_layer, m.get_layer("bidirectional_1").backward_layer
    td = m.get_layer("time_distributed_1").layer
    inp = {"name": "input_1", "class_name": "InputLayer", "config": {
        "batch_input_shape": [None, None, 3], "dtype": "float32", "sparse": False, "name": "input_1"},
        "inbound_nodes": []}
    lstm = k224_rnn("LSTM", "lstm_1", H, True)
    bidi = {"name": "bidirectional_1", "class_name": "Bidirectional",
            "config": {"name": "bidirectional_1", "trainable": True, "layer": lstm, "merge_mode": "concat"},
            "inbound_nodes": [[["input_1", 0, 0, {}]]]}
    tdc = {"name": "time_distributed_1", "class_name": "TimeDistributed",
           "config": {"name": "time_distributed_1", "trainable": True, "layer": k224_dense("dense_1", 2, "tanh")},
           "inbound_nodes": [[["bidirectional_1", 0, 0, {}]]]}
    cfg = {"class_name": "Model", "config": {"name": "model_1", "layers": [inp, bidi, tdc],
                                             "input_layers": [["input_1", 0, 0]],
                                             "output_layers": [["time_distributed_1", 0, 0]]}}
    names = ("kernel", "recurrent_kernel", "bias")
    lw = [("input_1", []),
          ("bidirectional_1", [(f"bidirectional_1/forward_lstm_1/{k}:0", v.numpy()) for k, v in
                               zip(names, fw.weights)] +
           [(f"bidirectional_1/backward_lstm_1/{k}:0", v.numpy()) for k, v in zip(names, bw.weights)]),
          ("time_distributed_1", [(f"time_distributed_1/{k}:0", v.numpy()) for k, v in zip(("kernel", "bias"),
                                                                                        td.weights)])]
    xs = [series(rng, 3, 7, 3)]
    ys, cross = _finish_hand(g, out, name, cfg, lw, xs, ["input_1"], m, _verify_load_model(g, xs))
    return _hand_case(g, name, "HAND-WRITTEN Keras 2.2.4-style functional h5 (class_name 'Model', inbound_nodes "
                      "[[[name, 0, 0, {}]]], input_1 listed in layer_names with empty weight_names): "
                      "Bidirectional(LSTM(5, rs, recurrent_activation hard_sigmoid default)) -> "
                      "TimeDistributed(Dense(2, tanh)); weights 'bidirectional_1/forward_lstm_1/kernel:0', "
                      "'bidirectional_1/backward_lstm_1/...', 'time_distributed_1/kernel:0'",
                      ["functional", "bidirectional:concat", "lstm", "hard_sigmoid", "hard_sigmoid:keras2",
                       "time_distributed", "dense:tanh", "return_sequences", "keras2_weight_names"],
                      ["input_1"], xs, ys, ["time_distributed_1"], cross)


def _cudnn_weights(layer, kind, prefix, rng):
    """Perturbed Keras-layout weights of `layer` -> (cuDNN-layout [(name, array)], Keras-layout list to set)."""
    H = layer.units
    n = 4 if kind == "LSTM" else 3
    k, r = (v.numpy() for v in layer.weights[:2])
    if kind == "LSTM":
        b_in = rng.uniform(-0.6, 0.6, 4 * H).astype(np.float32)
        b_rec = rng.uniform(-0.6, 0.6, 4 * H).astype(np.float32)
        keras_b = b_in + b_rec          # what tf_keras / a loader computes (float32 sum)
        cudnn_b = np.concatenate([b_in, b_rec])
    else:
        keras_b = rng.uniform(-0.6, 0.6, (2, 3 * H)).astype(np.float32)   # GRU(reset_after=True) layout
        cudnn_b = keras_b.reshape(-1)
    ws = [(f"{prefix}/kernel:0", to_cudnn_kernel(k, n)), (f"{prefix}/recurrent_kernel:0", to_cudnn_recurrent(r, n)),
          (f"{prefix}/bias:0", cudnn_b)]
    return ws, [k, r, keras_b]


def _hand_cudnn(g, out, name, rng, kind):
    L, K = g.L, g.K
    cls = "CuDNNLSTM" if kind == "LSTM" else "CuDNNGRU"
    lname = "cu_dnnlstm" if kind == "LSTM" else "cu_dnngru"
    rnn = (lambda u, rs, nm: L.LSTM(u, return_sequences=rs, name=nm)) if kind == "LSTM" else \
        (lambda u, rs, nm: L.GRU(u, return_sequences=rs, reset_after=True, name=nm))
    F, H1, H2 = 4, 8, 6

    def build():
        return K.Sequential([K.Input((None, F), name=f"{lname}_1_input"), rnn(H1, True, f"{lname}_1"),
                             rnn(H2, False, f"{lname}_2"), L.Dense(2, name="dense_1")], name="sequential_1")
    m = build()
    perturb(g, m, rng, gain=1.5)
    lw = []
    for nm in (f"{lname}_1", f"{lname}_2"):
        ws, keras_ws = _cudnn_weights(m.get_layer(nm), kind, nm, rng)
        m.get_layer(nm).set_weights(keras_ws)
        lw.append((nm, ws))
    dense = m.get_layer("dense_1")
    lw.append(("dense_1", [(f"dense_1/{k}:0", v.numpy()) for k, v in zip(("kernel", "bias"), dense.weights)]))
    layers = [k224_rnn(cls, f"{lname}_1", H1, True, batch_input_shape=[None, None, F], dtype="float32"),
              k224_rnn(cls, f"{lname}_2", H2), k224_dense("dense_1", 2)]
    cfg = {"class_name": "Sequential", "config": {"name": "sequential_1", "layers": layers}}
    xs = [series(rng, 3, 7, F)]
    ys, cross = _finish_hand(g, out, name, cfg, lw, xs, [f"{lname}_1_input"], m, _verify_load_weights(g, xs, build))
    if kind == "LSTM":
        lay = ("kernel (I,4H) / recurrent_kernel (H,4H) stored per gate block in cuDNN layout (input block: "
               "keras = c.T.reshape(c.shape, order='F'); recurrent block: keras = c.T), bias (8H,) = [input bias; "
               "recurrent bias] whose halves differ (Keras bias = their sum)")
        eq = "LSTM (tanh / sigmoid)"
    else:
        lay = ("kernel (I,3H) / recurrent_kernel (H,3H) per gate block in cuDNN layout (as CuDNNLSTM), bias (6H,) = "
               "reshape to (2,3H) [input; recurrent] = GRU(reset_after=True)")
        eq = "GRU(reset_after=True, tanh / sigmoid)"
    return _hand_case(g, name, f"HAND-WRITTEN Keras 2.2.4-style h5 with {cls} layers: {cls}({H1}, rs) -> "
                      f"{cls}({H2}) -> Dense(2); class_name '{cls}' in the config (no activation keys), "
                      f"weights '{lname}_1/kernel:0' etc.: {lay}. Equivalent to {eq}",
                      ["sequential", "cudnn", f"cudnn:{kind.lower()}", kind.lower(), "return_sequences",
                       "keras2_weight_names", "float_input"] + (["gru:reset_after=true"] if kind == "GRU" else []),
                      [f"{lname}_1_input"], xs, ys, ["dense_1"], cross)


def _hand_cudnn_bidi(g, out, name, rng):
    L, K = g.L, g.K
    H, F = 5, 3

    def build():
        return K.Sequential([K.Input((None, F), name="bidirectional_1_input"),
                             L.Bidirectional(L.LSTM(H, return_sequences=True), name="bidirectional_1"),
                             L.Dense(1, name="dense_1")], name="sequential_1")
    m = build()
    perturb(g, m, rng, gain=1.5)
    bl = m.get_layer("bidirectional_1")
    wf, kf = _cudnn_weights(bl.forward_layer, "LSTM", "bidirectional_1/forward_cu_dnnlstm_1", rng)
    wb, kb = _cudnn_weights(bl.backward_layer, "LSTM", "bidirectional_1/backward_cu_dnnlstm_1", rng)
    bl.set_weights(kf + kb)
    dense = m.get_layer("dense_1")
    lw = [("bidirectional_1", wf + wb),
          ("dense_1", [(f"dense_1/{k}:0", v.numpy()) for k, v in zip(("kernel", "bias"), dense.weights)])]
    inner = k224_rnn("CuDNNLSTM", "cu_dnnlstm_1", H, True)
    layers = [{"class_name": "Bidirectional", "config": {"name": "bidirectional_1", "trainable": True,
                                                         "batch_input_shape": [None, None, F], "dtype": "float32",
                                                         "layer": inner, "merge_mode": "concat"}},
              k224_dense("dense_1", 1)]
    cfg = {"class_name": "Sequential", "config": {"name": "sequential_1", "layers": layers}}
    xs = [series(rng, 3, 6, F)]
    ys, cross = _finish_hand(g, out, name, cfg, lw, xs, ["bidirectional_1_input"], m,
                             _verify_load_weights(g, xs, build))
    return _hand_case(g, name, "HAND-WRITTEN Keras 2.2.4-style h5: Bidirectional(CuDNNLSTM(5, rs)) -> Dense(1) on "
                      "the sequence; weights 'bidirectional_1/forward_cu_dnnlstm_1/kernel:0' ... "
                      "'bidirectional_1/backward_cu_dnnlstm_1/bias:0' (6 entries) in cuDNN layout (see "
                      "hand_cudnn_lstm)", ["sequential", "cudnn", "cudnn:lstm", "bidirectional:concat", "lstm",
                                           "return_sequences", "dense_3d", "keras2_weight_names", "float_input"],
                      ["bidirectional_1_input"], xs, ys, ["dense_1"], cross)


def build_handwritten(out, name_filter=""):
    jobs = [("hand_keras224_lstm_gru", _hand_k224_seq), ("hand_keras224_functional_bidi", _hand_k224_bidi),
            ("hand_cudnn_lstm", lambda g, o, n, r: _hand_cudnn(g, o, n, r, "LSTM")),
            ("hand_cudnn_gru", lambda g, o, n, r: _hand_cudnn(g, o, n, r, "GRU")),
            ("hand_cudnn_bidi", _hand_cudnn_bidi)]
    cases = []
    g = gen("tk")
    for name, fn in jobs:
        if name_filter not in name:
            continue
        g.reset(_seed(name))
        c = fn(g, out, name, np.random.default_rng(_seed(name)))
        print(f"  {name}: cross-check {c['cross_check']}", flush=True)
        if c["cross_check"]["max_abs_diff"] > 1e-5:
            raise RuntimeError(f"{name}: tf_keras reading the hand-written file disagrees: {c['cross_check']}")
        cases.append(c)
    return cases
