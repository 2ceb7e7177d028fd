"""model.save (.keras), save_weights / load_weights (.weights.h5): Keras 3 layout, round trips, atomic writes.
The real-Keras check runs when KERAS_PYTHON points at a Python with Keras 3 (its last result is committed in
tests/data/train/keras_roundtrip.json)."""
import json
import os
import zipfile

import h5py
import numpy as np
import numpy.testing as npt
import pytest

import fastlstm
from fastlstm import layers as L

from keras_roundtrip import RECORD, compare, make_models, run_keras, save_all

TOL32 = dict(rtol=1e-6, atol=1e-7)


def _h5_tree(h5):
    out = {}
    h5.visititems(lambda name, obj: out.__setitem__(name, (type(obj).__name__, dict(obj.attrs),
                                                            getattr(obj, "shape", None))))
    return out


def test_keras_layout_and_config(tmp_path):
    m = fastlstm.Sequential([L.Embedding(30, 4), L.LSTM(5, return_sequences=True, name="first"),
                             L.Bidirectional(L.GRU(3, return_sequences=True)),
                             L.TimeDistributed(L.Dense(2)), L.LSTM(2, use_bias=False), L.Dense(1)], name="net")
    m.build((None, None))
    path = str(tmp_path / "m.keras")
    m.save(path)
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist() == ["metadata.json", "config.json", "model.weights.h5"]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
        cfg = json.loads(zf.read("config.json"))
        meta = json.loads(zf.read("metadata.json"))
        tree = _h5_tree(h5py.File(__import__("io").BytesIO(zf.read("model.weights.h5"))))
    assert meta["keras_version"].startswith("3.")
    assert cfg["class_name"] == "Sequential" and cfg["config"]["name"] == "net"
    layers = cfg["config"]["layers"]
    assert [lc["class_name"] for lc in layers] == ["InputLayer", "Embedding", "LSTM", "Bidirectional",
                                                   "TimeDistributed", "LSTM", "Dense"]
    assert layers[0]["config"]["batch_shape"] == [None, None] and layers[0]["config"]["dtype"] == "int32"
    assert layers[2]["config"]["name"] == "first" and layers[2]["build_config"] == {"input_shape": [None, None, 4]}
    assert layers[3]["config"]["backward_layer"]["config"]["go_backwards"] is True
    datasets = {k: v[2] for k, v in tree.items() if v[0] == "Dataset"}
    assert datasets == {
        "layers/embedding/vars/0": (30, 4),
        "layers/lstm/cell/vars/0": (4, 20), "layers/lstm/cell/vars/1": (5, 20), "layers/lstm/cell/vars/2": (20,),
        "layers/bidirectional/forward_layer/cell/vars/0": (5, 9),
        "layers/bidirectional/forward_layer/cell/vars/1": (3, 9),
        "layers/bidirectional/forward_layer/cell/vars/2": (2, 9),
        "layers/bidirectional/backward_layer/cell/vars/0": (5, 9),
        "layers/bidirectional/backward_layer/cell/vars/1": (3, 9),
        "layers/bidirectional/backward_layer/cell/vars/2": (2, 9),
        "layers/time_distributed/layer/vars/0": (6, 2), "layers/time_distributed/layer/vars/1": (2,),
        "layers/lstm_1/cell/vars/0": (2, 8), "layers/lstm_1/cell/vars/1": (2, 8),
        "layers/dense/vars/0": (2, 1), "layers/dense/vars/1": (1,),
    }
    assert tree["layers/lstm/vars"][1] == {"name": "first"}
    assert tree["layers/lstm/cell/vars"][1] == {"name": "lstm_cell"}
    assert tree["vars"][1] == {"name": "net"}


def test_functional_layout_has_input_layers(tmp_path):
    models = make_models()
    m = models["func_seq2seq"][0]
    m.save_weights(str(tmp_path / "w.weights.h5"))
    with h5py.File(tmp_path / "w.weights.h5") as h5:
        tree = _h5_tree(h5)
    assert tree["layers/input_layer/vars"][1] == {"name": "enc"}
    assert tree["layers/input_layer_1/vars"][1] == {"name": "dec"}
    assert "layers/lstm_1/cell/vars/2" in tree and "layers/time_distributed/layer/vars/1" in tree


@pytest.mark.parametrize("name", ["seq_embed", "seq_bidir_td", "seq_misc", "func_multi", "func_seq2seq",
                                  "func_two_inputs", "loaded_mask_ops"])
def test_roundtrip_load_weights_and_fastlstm_load(tmp_path, name):
    models = make_models()
    model, xs = models[name]
    x = xs[0] if len(xs) == 1 else xs
    want = model.predict(x)
    path = str(tmp_path / f"{name}.keras")
    model.save(path)
    fresh = make_models(seed=1)[name][0]              # same architecture, other weights
    fresh.load_weights(path)
    for a, b in zip(fresh.get_weights(), model.get_weights()):
        npt.assert_array_equal(a, b)
    fresh.save_weights(str(tmp_path / "w.weights.h5"))
    again = make_models(seed=2)[name][0]
    again.load_weights(str(tmp_path / "w.weights.h5"))
    loaded = fastlstm.load(path)
    for m in (again, loaded):
        got = m.predict(x)
        for g, w in zip(got if isinstance(got, list) else [got], want if isinstance(want, list) else [want]):
            npt.assert_allclose(g, w, **TOL32)


KERAS_FILES = os.path.join(os.path.dirname(__file__), "data", "keras")


@pytest.mark.parametrize("case", ["k3_multi_io", "k3_merge_layers", "k3_seq2seq_lstm", "k3_mask_initial_state"])
def test_functional_layers_in_keras_order(case):
    """model.layers (hence get_weights() and the saved groups) in Keras 3's order: the order of the layers in the
    config.json Keras wrote (deepest first, not inputs first or depth-first)."""
    path = os.path.join(KERAS_FILES, case, "model.keras")
    with zipfile.ZipFile(path) as zf:
        keras_order = [lyr["config"]["name"] for lyr in json.loads(zf.read("config.json"))["config"]["layers"]]
    assert [lyr.name for lyr in fastlstm.load(path).layers] == keras_order


def test_layer_classes_in_the_order_keras_reported():
    """The committed real-Keras record lists Keras's model.layers classes for every saved model."""
    rec = json.load(open(RECORD))["models"]
    for name, (model, _) in make_models().items():
        ours = [type(lyr).__name__ for lyr in model.layers if type(lyr).__name__ not in ("OpLayer", "NotEqual")]
        assert ours == rec[name]["layers"], name


def test_keras_op_nodes_and_merge_layers_are_saved(tmp_path):
    """A loaded Keras functional file keeps its op nodes (here NotEqual, an explicit mask) and merge layers."""
    for case in ("k3_mask_initial_state", "k3_shared_lstm"):
        model = fastlstm.load(os.path.join(KERAS_FILES, case, "model.keras"))
        xin = np.load(os.path.join(KERAS_FILES, case, "input.npz"))
        xs = [xin[k] for k in model.input_names]
        path = str(tmp_path / f"{case}.keras")
        model.save(path)
        with zipfile.ZipFile(path) as zf:
            classes = [lyr["class_name"] for lyr in json.loads(zf.read("config.json"))["config"]["layers"]]
        assert ("NotEqual" in classes) == (case == "k3_mask_initial_state"), classes
        want, got = model.predict(xs), fastlstm.load(path).predict(xs)
        for g, w in zip(got if isinstance(got, list) else [got], want if isinstance(want, list) else [want]):
            npt.assert_array_equal(g, w)


def test_load_weights_mismatch_changes_nothing(tmp_path):
    a = fastlstm.Sequential([fastlstm.Input((None, 3)), L.LSTM(4), L.Dense(1)])
    b = fastlstm.Sequential([fastlstm.Input((None, 3)), L.LSTM(4), L.Dense(2)])
    a.save_weights(str(tmp_path / "a.weights.h5"))
    before = b.get_weights()
    with pytest.raises(ValueError, match="shape"):
        b.load_weights(str(tmp_path / "a.weights.h5"))
    c = fastlstm.Sequential([fastlstm.Input((None, 3)), L.GRU(4), L.Dense(1)])
    with pytest.raises(ValueError, match="no weights for layer"):
        c.load_weights(str(tmp_path / "a.weights.h5"))
    for u, v in zip(b.get_weights()[:3], before[:3]):
        npt.assert_array_equal(u, v)


def test_failed_save_keeps_the_good_file(tmp_path, monkeypatch):
    import fastlstm.saving as saving
    m = fastlstm.Sequential([fastlstm.Input((None, 3)), L.LSTM(4)])
    path = tmp_path / "m.keras"
    m.save(str(path))
    good = path.read_bytes()

    def broken(model):
        raise OSError("disk full")

    monkeypatch.setattr(saving, "_weights_bytes", broken)
    with pytest.raises(OSError, match="disk full"):
        m.save(str(path))
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["m.keras"]                        # no temp file left behind

    monkeypatch.undo()                                                # now fail while the zip is being written
    orig = zipfile.ZipFile.writestr

    def writestr(self, name, data, *a, **k):
        if name == "model.weights.h5":
            raise RuntimeError("interrupted")
        return orig(self, name, data, *a, **k)

    monkeypatch.setattr(zipfile.ZipFile, "writestr", writestr)
    with pytest.raises(RuntimeError, match="interrupted"):
        m.save(str(path))
    assert path.read_bytes() == good and os.listdir(tmp_path) == ["m.keras"]
    with pytest.raises(FileExistsError):
        fastlstm.Sequential([fastlstm.Input((None, 3)), L.LSTM(4)]).save(str(path), overwrite=False)
    with pytest.raises(ValueError, match=".keras"):
        m.save(str(tmp_path / "m.h5"))


def test_unsaveable_things_raise(tmp_path):
    m = fastlstm.Sequential([L.LSTM(4)])
    with pytest.raises(ValueError, match="not built"):
        m.save(str(tmp_path / "x.keras"))
    k2 = fastlstm.Sequential([fastlstm.Input((None, 3)), L.LSTM(4, recurrent_activation="hard_sigmoid_keras2")])
    with pytest.raises(ValueError, match="Keras 2 hard_sigmoid"):
        k2.save(str(tmp_path / "x.keras"))
    assert not os.path.exists(tmp_path / "x.keras")


def test_to_json_is_the_saved_config(tmp_path):
    m = make_models()["func_multi"][0]
    cfg = json.loads(m.to_json())
    assert cfg["class_name"] == "Functional"
    assert cfg["config"]["output_layers"] == [["flag", 0, 0], ["score", 0, 0], ["bi", 0, 0]]
    assert cfg["config"]["input_layers"] == ["tokens", 0, 0]


def test_keras_roundtrip_record_is_committed():
    """The last real-Keras verification (tests/keras_roundtrip.py): every model loaded and agreed."""
    rec = json.load(open(RECORD))
    assert rec["keras_version"].startswith("3.")
    assert set(rec["max_abs_diff"]) == set(make_models())
    assert max(rec["max_abs_diff"].values()) < 1e-5


@pytest.mark.skipif(not os.environ.get("KERAS_PYTHON"), reason="needs KERAS_PYTHON (a Python with Keras 3)")
def test_keras3_loads_and_predicts_identically(tmp_path):
    models = save_all(str(tmp_path))
    report = run_keras(os.environ["KERAS_PYTHON"], str(tmp_path))
    assert report["keras_version"].startswith("3.")
    diffs = compare(models, str(tmp_path))
    assert max(diffs.values()) < 1e-5, diffs
