"""fastlstm.load on real Keras exports.

Every case of tests/data/keras/manifest.json (Keras 3 and tf_keras files made by tools/make_goldens.py, see
tests/data/README.md) and every Keras case of the shared conformance suite is loaded and run; the outputs must
match what Keras itself computed on the reloaded file (the manifest tolerance). Error cases must raise
fastlstm.ModelLoadError. The other tests damage or edit real files to check errors, safety and sniffing.
"""
import io
import json
import os
import shutil
import zipfile

import h5py
import numpy as np
import pytest

import fastlstm
from fastlstm.loaders import keras as keras_loader

HERE = os.path.dirname(os.path.abspath(__file__))
SUITE = os.path.join(HERE, "data", "keras")
CONFORMANCE = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "conformance"))


def _cases(root, keep=lambda c: True):
    path = os.path.join(root, "manifest.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [c for c in json.load(f)["cases"] if keep(c)]


def _is_keras(case):
    return not case["file"].endswith(".onnx") and "onnx" not in case["format"]


SUITE_CASES = _cases(SUITE)
CONFORMANCE_CASES = _cases(CONFORMANCE, _is_keras)


def _load(root, case, **kw):
    arch = case.get("architecture_file")
    if arch:
        kw["architecture"] = os.path.join(root, arch)
    return fastlstm.load(os.path.join(root, case["file"]), **kw)


def _feed(case, npz):
    xs = [npz[n] for n in case["input_names"]]
    return xs[0] if len(xs) == 1 else xs


def run_case(root, case):
    """Load a manifest case and check every call's outputs, names and shapes."""
    if case["expect_error"]:
        with pytest.raises(fastlstm.ModelLoadError) as err:
            _load(root, case)
        msg = str(err.value)
        assert os.path.basename(case["file"]) in msg or case["file"] in msg, f"message does not name the file: {msg}"
        return
    model = _load(root, case)
    assert model.input_names == case["input_names"]
    assert model.output_names == case["output_names"]
    assert isinstance(model.summary(print_fn=None), str)
    calls = case.get("calls") or [{"input_file": case["input_file"], "expected_file": case["expected_file"],
                                   "reset_states_before": False}]
    tol = case.get("tolerance") or {"atol": 1e-5, "rtol": 1e-4}
    for k, call in enumerate(calls):
        if call["reset_states_before"]:
            model.reset_states()
        xin = np.load(os.path.join(root, call["input_file"]))
        exp = np.load(os.path.join(root, call["expected_file"]))
        out = model.predict(_feed(case, xin))
        outs = out if isinstance(out, list) else [out]
        assert len(outs) == len(case["output_names"])
        for i, (name, y) in enumerate(zip(case["output_names"], outs)):
            e = exp[f"output_{i}"]
            assert y.shape == e.shape, f"call {k} output {name}: shape {y.shape}, expected {e.shape}"
            np.testing.assert_allclose(y, e, **tol, err_msg=f"call {k} output {name}")


def test_keras_suite_is_present():
    assert SUITE_CASES, f"no fixtures: {SUITE}/manifest.json is missing (tools/make_goldens.py keras)"
    formats = {c["format"] for c in SUITE_CASES}
    for fmt in ("keras3", "keras3-dir", "keras-h5-legacy", "weights-h5", "tfkeras2-h5", "tfkeras2-weights-h5",
                "tfkeras2-keras", "tfkeras2-weights-v3-h5"):
        assert fmt in formats, f"no fixture in format {fmt}"


@pytest.mark.parametrize("case", SUITE_CASES, ids=[c["name"] for c in SUITE_CASES])
def test_keras_fixture(case):
    run_case(SUITE, case)


@pytest.mark.parametrize("case", CONFORMANCE_CASES, ids=[c["name"] for c in CONFORMANCE_CASES])
def test_conformance_keras_case(case):
    run_case(CONFORMANCE, case)


# ------------------------------------------------------------------------------------------------- helpers
def _case(name):
    for c in SUITE_CASES + CONFORMANCE_CASES:
        if c["name"] == name:
            return (SUITE if c in SUITE_CASES else CONFORMANCE), c
    pytest.fail(f"fixture {name} missing from the manifests")


def _expected(root, case):
    xin = np.load(os.path.join(root, case["input_file"]))
    exp = np.load(os.path.join(root, case["expected_file"]))
    return _feed(case, xin), [exp[f"output_{i}"] for i in range(len(case["output_names"]))]


def _rewrite_zip(src, dst, edit_config=None, drop=()):
    """Copy a .keras zip, editing config.json (a function on the parsed dict) and dropping members."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for n in zin.namelist():
            if n in drop:
                continue
            data = zin.read(n)
            if n == "config.json" and edit_config is not None:
                cfg = json.loads(data)
                edit_config(cfg)
                data = json.dumps(cfg).encode()
            zout.writestr(n, data)


def _layers(cfg):
    return cfg["config"]["layers"]


# ------------------------------------------------------------------------------------------------- formats
def test_architecture_as_json_string():
    root, case = _case("k3w_textclf")
    with open(os.path.join(root, case["architecture_file"])) as f:
        arch = f.read()
    x, exp = _expected(root, case)
    model = fastlstm.load(os.path.join(root, case["file"]), architecture=arch)
    np.testing.assert_allclose(model.predict(x), exp[0], **case["tolerance"])


@pytest.mark.parametrize("name, new_name", [("k3_textclf", "weights.bin"), ("tk2_textclf", "model.onnx"),
                                             ("tk2w_textclf", "w.keras")])
def test_format_is_sniffed_from_content(tmp_path, name, new_name):
    root, case = _case(name)
    dst = tmp_path / new_name
    shutil.copy(os.path.join(root, case["file"]), dst)
    kw = {"architecture": os.path.join(root, case["architecture_file"])} if case.get("architecture_file") else {}
    x, exp = _expected(root, case)
    np.testing.assert_allclose(fastlstm.load(str(dst), **kw).predict(x), exp[0], **case["tolerance"])


def test_weights_only_file_needs_architecture():
    for name in ("k3w_textclf", "tk2w_textclf"):
        root, case = _case(name)
        with pytest.raises(fastlstm.ModelLoadError, match="architecture"):
            fastlstm.load(os.path.join(root, case["file"]))


def test_keras2_hard_sigmoid_is_chosen_by_version():
    """tf_keras files use clip(0.2x+0.5); Keras 3 files relu6(x+3)/6. The fixture tells them apart."""
    root, case = _case("tk2_hard_sigmoid")
    model = _load(root, case)
    rnns = [lyr for lyr in model.layers if hasattr(lyr, "recurrent_activation")]
    assert rnns and all(lyr.recurrent_activation == "hard_sigmoid_keras2" for lyr in rnns)
    x, exp = _expected(root, case)
    for lyr in rnns:                    # the Keras 3 definition must NOT reproduce the tf_keras outputs
        lyr.recurrent_activation = "hard_sigmoid"
        lyr._act_specs = lyr._resolve_acts()
        lyr._weights_changed()
    out = model.predict(x)
    out = out if isinstance(out, list) else [out]
    assert max(float(np.max(np.abs(o - e))) for o, e in zip(out, exp)) > 1e-3
    k3_root, k3 = _case("k3_hard_sigmoid")
    k3_model = _load(k3_root, k3)
    assert all(lyr.recurrent_activation == "hard_sigmoid" for lyr in k3_model.layers
               if getattr(lyr, "recurrent_activation", None) in ("hard_sigmoid", "hard_sigmoid_keras2"))


def test_optimizer_state_is_ignored():
    root, case = _case("k3_textclf")
    with zipfile.ZipFile(os.path.join(root, case["file"])) as z:
        h5 = h5py.File(io.BytesIO(z.read("model.weights.h5")), "r")
        assert "optimizer" in h5, "fixture should hold optimizer state (trained model)"


# ------------------------------------------------------------------------------------------------- errors
def _keras_zip_case():
    return _case("k3_textclf")


@pytest.mark.parametrize("frac", [0.0, 0.05, 0.3, 0.6, 0.9, 0.999])
def test_truncated_keras_zip(tmp_path, frac):
    root, case = _keras_zip_case()
    data = open(os.path.join(root, case["file"]), "rb").read()
    p = tmp_path / "cut.keras"
    p.write_bytes(data[:max(4, int(len(data) * frac))])
    with pytest.raises(fastlstm.ModelLoadError, match="cut.keras"):
        fastlstm.load(str(p))


@pytest.mark.parametrize("frac", [0.01, 0.2, 0.5, 0.8, 0.99])
def test_truncated_hdf5(tmp_path, frac):
    root, case = _case("tk2_textclf")
    data = open(os.path.join(root, case["file"]), "rb").read()
    p = tmp_path / "cut.h5"
    p.write_bytes(data[:int(len(data) * frac)])
    with pytest.raises(fastlstm.ModelLoadError, match="cut.h5"):
        fastlstm.load(str(p))


def test_shape_mismatch_names_layer_and_shapes(tmp_path):
    root, case = _keras_zip_case()

    def edit(cfg):
        for layer in _layers(cfg):
            if layer["class_name"] == "LSTM":
                layer["config"]["units"] += 1
                self_name.append(layer["config"]["name"])
                return
    self_name = []
    p = tmp_path / "mismatch.keras"
    _rewrite_zip(os.path.join(root, case["file"]), p, edit)
    with pytest.raises(fastlstm.ModelLoadError) as err:
        fastlstm.load(str(p))
    msg = str(err.value)
    assert "mismatch.keras" in msg and repr(self_name[0]) in msg and "shape" in msg and "expects" in msg


def test_missing_weights_file_in_archive(tmp_path):
    root, case = _keras_zip_case()
    p = tmp_path / "noweights.keras"
    _rewrite_zip(os.path.join(root, case["file"]), p, drop=("model.weights.h5",))
    with pytest.raises(fastlstm.ModelLoadError, match="missing weights"):
        fastlstm.load(str(p))


@pytest.mark.parametrize("edit, pattern", [
    (lambda layer: layer.update(class_name="FancyRecurrent"), "FancyRecurrent.*not supported.*LSTM"),
    (lambda layer: layer.update(module="my_project.layers", registered_name="MyProject>Dense"), "custom object"),
    (lambda layer: layer.update(class_name="Lambda"), "Lambda"),
    (lambda layer: layer["config"].update(activation={"module": "__main__", "class_name": "function",
                                                      "config": "my_act", "registered_name": "my_act"}),
     "custom object.*my_act"),
])
def test_unsafe_or_unknown_layers_are_refused(tmp_path, edit, pattern):
    root, case = _keras_zip_case()

    def apply(cfg):
        dense = [layer for layer in _layers(cfg) if layer["class_name"] == "Dense"][-1]
        edit(dense)
    p = tmp_path / "edited.keras"
    _rewrite_zip(os.path.join(root, case["file"]), p, apply)
    with pytest.raises(fastlstm.ModelLoadError, match=pattern):
        fastlstm.load(str(p))


def test_not_a_keras_file(tmp_path):
    p = tmp_path / "empty.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(fastlstm.ModelLoadError, match="not a Keras"):
        fastlstm.load(str(p))


# ------------------------------------------------------------------------------------------------- Keras 2.2 / CuDNN
def test_cudnn_conversion_inverts_the_cudnn_layout():
    """convert_cudnn_* undo the cuDNN layout (formats.md section 3) for non-square kernels."""
    from fastlstm.loaders.keras_layers import convert_cudnn_gru, convert_cudnn_lstm
    rng = np.random.default_rng(0)
    I, H = 3, 5
    for conv, g in ((convert_cudnn_lstm, 4), (convert_cudnn_gru, 3)):
        k, r = rng.normal(size=(I, g * H)), rng.normal(size=(H, g * H))
        # cuDNN layout = what tf_keras writes for a CuDNN layer: per gate, kernel block b -> b.T reshaped in C order
        ck = np.hstack([b.T.reshape(b.shape) for b in np.hsplit(k, g)])
        cr = np.hstack([b.T for b in np.hsplit(r, g)])
        bias = rng.normal(size=(2 * g * H,))
        k2, r2, b2 = conv([ck, cr, bias])
        np.testing.assert_array_equal(k2, k)
        np.testing.assert_array_equal(r2, r)
        if g == 4:
            np.testing.assert_allclose(b2, bias[:4 * H] + bias[4 * H:])
        else:
            np.testing.assert_array_equal(b2, bias.reshape(2, 3 * H))
    same = [np.zeros((I, 4 * H)), np.zeros((H, 4 * H)), np.zeros(4 * H)]   # already LSTM layout: unchanged
    assert convert_cudnn_lstm(same) is same


def test_version_parsing():
    assert keras_loader.parse_version("3.15.1") == (3, 15, 1)
    assert keras_loader.parse_version(b"2.2.4") == (2, 2, 4)
    assert keras_loader.parse_version("2.1.6-tf") == (2, 1, 6)
    assert keras_loader.parse_version("2.4") == (2, 4, 0)


# ------------------------------------------------------------------------------------------------- layer definitions
def _conv1d_loops(x, kernel, bias, stride, dilation, padding):
    """Conv1D by its definition, one output cell at a time (channels_last, groups=1). Layer weights are float32,
    hence the float32 tolerance of the tests."""
    k, cin, f = kernel.shape
    L = x.shape[1]
    span = dilation * (k - 1) + 1
    if padding == "causal":
        x = np.pad(x, ((0, 0), (span - 1, 0), (0, 0)))
    elif padding == "same":
        out = -(-L // stride)
        total = max((out - 1) * stride + span - L, 0)
        x = np.pad(x, ((0, 0), (total // 2, total - total // 2), (0, 0)))
    out_len = (x.shape[1] - span) // stride + 1
    y = np.zeros((x.shape[0], out_len, f))
    for b in range(x.shape[0]):
        for t in range(out_len):
            for j in range(k):
                y[b, t] += x[b, t * stride + j * dilation] @ kernel[j]
    return y + bias


@pytest.mark.parametrize("padding", ["valid", "same", "causal"])
@pytest.mark.parametrize("stride, dilation", [(1, 1), (2, 1), (3, 1), (1, 2), (1, 3)])
def test_conv1d_matches_its_definition(padding, stride, dilation):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 11, 3))
    layer = fastlstm.layers.Conv1D(4, 3, strides=stride, dilation_rate=dilation, padding=padding)
    kernel, bias = rng.normal(size=(3, 3, 4)), rng.normal(size=4)
    layer.set_weights([kernel, bias])
    y = layer(x)
    np.testing.assert_allclose(y, _conv1d_loops(x, kernel, bias, stride, dilation, padding), rtol=1e-5, atol=1e-5)
    assert y.shape[1:] == layer.compute_output_shape((None, 11, 3))[1:]


def test_conv1d_groups_are_independent_convolutions():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 9, 4))
    kernel, bias = rng.normal(size=(2, 2, 6)), rng.normal(size=6)
    layer = fastlstm.layers.Conv1D(6, 2, groups=2)
    layer.set_weights([kernel, bias])
    y = layer(x)
    parts = [_conv1d_loops(x[:, :, 2 * g:2 * g + 2], kernel[:, :, 3 * g:3 * g + 3], bias[3 * g:3 * g + 3], 1, 1,
                           "valid") for g in range(2)]
    np.testing.assert_allclose(y, np.concatenate(parts, axis=-1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pool, stride, padding", [(2, 2, "valid"), (3, 1, "same"), (3, 2, "same"), (2, 1, "valid")])
def test_pooling_matches_its_definition(pool, stride, padding):
    x = np.random.default_rng(5).normal(size=(2, 7, 3))
    L = x.shape[1]
    out = -(-L // stride) if padding == "same" else (L - pool) // stride + 1
    left = max((out - 1) * stride + pool - L, 0) // 2 if padding == "same" else 0
    windows = [[t * stride - left + j for j in range(pool) if 0 <= t * stride - left + j < L] for t in range(out)]
    exp_max = np.stack([x[:, w].max(axis=1) for w in windows], axis=1)
    exp_avg = np.stack([x[:, w].mean(axis=1) for w in windows], axis=1)
    np.testing.assert_allclose(fastlstm.layers.MaxPooling1D(pool, stride, padding)(x), exp_max)
    np.testing.assert_allclose(fastlstm.layers.AveragePooling1D(pool, stride, padding)(x), exp_avg)
