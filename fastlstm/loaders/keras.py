"""Keras files -> fastlstm models (a translator: file -> config + weights -> layers; no kernels here).

    .keras zip / unzipped dir   metadata.json (keras_version) + config.json + model.weights.h5 (v3 layout)
    legacy .h5 (full model)     attrs keras_version, model_config; model_weights/<layer>/ with weight_names
    legacy weights .h5          (tf_keras save_weights) the same layer groups at the root; needs `architecture`
    .weights.h5 (v3 layout)     layers/<snake_class>[_N]/.../vars/<i>; needs `architecture` (model.to_json())

Weights are matched as Keras matches them (formats.md sections 0-3): v3 files by class name + position in
`model.layers` (groups are NOT named after the layers), legacy files by layer name (position when names do not
match) and `weight_names` order. Optimizer state is never read. The Keras version decides the semantics of
Keras-2 files (hard_sigmoid = clip(0.2x + 0.5, 0, 1); Keras <= 2.2 defaults).
"""
import io
import json
import os
import re
import zipfile
import zlib

import numpy as np

from ..errors import ModelLoadError
from ..layers import core, normalization, recurrent
from . import keras_layers
from .keras_graph import GraphBuilder, snake_case

_H5_ERRORS = (OSError, KeyError, ValueError, RuntimeError, TypeError)


def _h5py():
    import h5py
    return h5py


# ---------------------------------------------------------------------------------------------- versions
def parse_version(v):
    """'3.15.1' / '2.2.4' / '2.1.6-tf' / b'2.4.0' -> (3, 15, 1) ...; None if unknown."""
    if v is None:
        return None
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    nums = re.findall(r"\d+", str(v))
    if not nums:
        return None
    return tuple(int(n) for n in nums[:3]) + (0,) * (3 - min(3, len(nums)))


def _guess_version(config):
    """No version anywhere: guess the generation from the config's flavour."""
    text = json.dumps(config)
    if '"batch_input_shape"' in text or re.search(r'"inbound_nodes": \[\[\[', text) or '"time_major"' in text:
        return (2, 21, 0)
    return (3, 0, 0)


def _attr_str(attrs, key):
    v = attrs.get(key)
    if v is None:
        return None
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.ndarray):
        v = v.tolist()
    return v


# ---------------------------------------------------------------------------------------------- weight stores
class _WeightError(ModelLoadError):
    pass


def _read(ds, path, where):
    try:
        if not hasattr(ds, "shape"):
            raise _WeightError(f"{where}: {path!r} is a group, expected a weight array")
        a = ds[()]
    except ModelLoadError:
        raise
    except _H5_ERRORS as e:
        raise _WeightError(f"{where}: cannot read weight {path!r} (the file is damaged?): {e}") from None
    a = np.asarray(a)
    if a.dtype.kind not in "fiub":
        raise _WeightError(f"{where}: weight {path!r} has non-numeric dtype {a.dtype}")
    return a


class V3Store:
    """Keras 3 / tf_keras v3 weights (`model.weights.h5`): groups by class name + position."""

    kind = "v3"

    def __init__(self, h5, fname):
        self.h5, self.fname = h5, fname

    def close(self):
        try:
            self.h5.file.close()
        except _H5_ERRORS:
            pass

    def _vars(self, path, where):
        try:
            g = self.h5.get(path)
        except _H5_ERRORS as e:
            raise _WeightError(f"{self.fname}: {where}: cannot read group {path!r} (damaged file?): {e}") from None
        if g is None:
            return None
        try:
            keys = sorted(g.keys(), key=lambda k: int(k) if k.isdigit() else 1 << 30)
        except _H5_ERRORS as e:
            raise _WeightError(f"{self.fname}: {where}: cannot list {path!r} (damaged file?): {e}") from None
        return [_read(g[k], f"{path}/{k}", f"{self.fname}: {where}") for k in keys]

    def _layer_arrays(self, layer, path, where):
        """The layer's weights in Keras order, or None if its group is missing."""
        if isinstance(layer, recurrent.Bidirectional):
            fw = self._layer_arrays(layer.forward_layer, f"{path}/forward_layer", where)
            bw = self._layer_arrays(layer.backward_layer, f"{path}/backward_layer", where)
            return None if fw is None or bw is None else fw + bw
        if isinstance(layer, recurrent.RNN):
            return self._vars(f"{path}/cell/vars", where)
        if isinstance(layer, core.TimeDistributed):
            return self._layer_arrays(layer.layer, f"{path}/layer", where)
        return self._vars(f"{path}/vars", where)

    def assign(self, records, prefix="layers"):
        used = {}
        for rec in records:
            base = snake_case(rec.class_name)
            key = base if base not in used else f"{base}_{used[base] + 1}"
            used[base] = used[base] + 1 if base in used else 0
            path = f"{prefix}/{key}"
            if rec.children is not None:
                self.assign(rec.children, f"{path}/layers")
                continue
            where = f"layer {rec.name!r} ({rec.class_name})"
            expected = rec.layer.weights
            arrays = self._layer_arrays(rec.layer, path, where)
            if arrays is None:
                arrays = []
                if expected:
                    raise _WeightError(f"{self.fname}: {where}: missing weights: no group {path!r} in the weights "
                                       f"file (expected {len(expected)} arrays of shapes "
                                       f"{[tuple(w.shape) for w in expected]})")
            set_layer_weights(rec.layer, arrays, self.fname, where, path)


class LegacyStore:
    """Legacy HDF5 weights (Keras 3 `.h5`, tf.keras/tf_keras/Keras 2 `.h5`, tf_keras `save_weights('w.h5')`):
    one group per layer name, `weight_names` in order."""

    kind = "legacy"

    def __init__(self, group, fname):
        self.g, self.fname = group, fname
        self.close = V3Store(group, fname).close
        try:
            names = group.attrs.get("layer_names")
            self.layer_names = [n.decode("utf-8") if isinstance(n, bytes) else str(n)
                                for n in (names if names is not None else [])]
        except _H5_ERRORS as e:
            raise ModelLoadError(f"{fname}: cannot read the layer list (damaged file?): {e}") from None

    def arrays(self, name, where):
        try:
            g = self.g[name]
            wn = g.attrs.get("weight_names")
            wn = [] if wn is None else [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in wn]
        except _H5_ERRORS as e:
            raise _WeightError(f"{self.fname}: {where}: cannot read the weights of {name!r} (damaged file?): "
                               f"{e}") from None
        out = []
        for n in wn:
            try:
                ds = g[n]
            except _H5_ERRORS:
                raise _WeightError(f"{self.fname}: {where}: missing weight {name}/{n} listed in weight_names") from None
            out.append(_read(ds, f"{name}/{n}", f"{self.fname}: {where}"))
        return out

    def weighted_names(self):
        out = []
        for n in self.layer_names:
            try:
                wn = self.g[n].attrs.get("weight_names")
            except _H5_ERRORS as e:
                raise _WeightError(f"{self.fname}: cannot read layer group {n!r} (damaged file?): {e}") from None
            if wn is not None and len(wn):
                out.append(n)
        return out

    def assign(self, records):
        with_weights = [r for r in records if any(lyr.weights for lyr in r.flat_layers())]
        in_file = self.weighted_names()
        if all(r.name in in_file for r in with_weights):
            pairs = [(r, r.name) for r in with_weights]
        elif len(in_file) == len(with_weights):        # Keras: layers with weights matched by position
            pairs = list(zip(with_weights, in_file))
        else:
            missing = [r.name for r in with_weights if r.name not in in_file]
            raise _WeightError(f"{self.fname}: missing weights for layer(s) {missing}; the file has weights for "
                               f"{in_file}")
        for rec, fname in pairs:
            where = f"layer {rec.name!r} ({rec.class_name})"
            arrays = self.arrays(fname, where)
            if rec.children is None:
                set_layer_weights(rec.layer, arrays, self.fname, where, fname)
            else:
                _set_nested_legacy(rec, arrays, self.fname, where, fname)


def _trainable_flags(layer):
    if isinstance(layer, normalization.BatchNormalization):
        return layer.trainable_mask
    return [layer.trainable] * len(layer.weights)


def _set_nested_legacy(rec, arrays, fname, where, path):
    """A nested model's legacy group holds its weights trainable-first (Keras `_legacy_weights`)."""
    slots = []                                   # (layer, index, trainable)
    for lyr in rec.flat_layers():
        for k, tr in enumerate(_trainable_flags(lyr)):
            slots.append((lyr, k, tr))
    order = [s for s in slots if s[2]] + [s for s in slots if not s[2]]
    if len(arrays) != len(order):
        raise _WeightError(f"{fname}: {where}: the file has {len(arrays)} weight arrays in {path!r}, the nested "
                           f"model's config needs {len(order)}")
    per_layer = {}
    for (lyr, k, _), a in zip(order, arrays):
        per_layer.setdefault(id(lyr), (lyr, {}))[1][k] = a
    for lyr, ws in per_layer.values():
        set_layer_weights(lyr, [ws[k] for k in range(len(ws))], fname, f"{where} -> layer {lyr.name!r}", path)


def _convert_rnn(layer, arrays):
    """CuDNNLSTM / CuDNNGRU weights (recognized by their bias shape, as Keras does) -> LSTM / GRU layout."""
    if isinstance(layer, recurrent.Bidirectional):
        n = len(arrays) // 2
        return _convert_rnn(layer.forward_layer, arrays[:n]) + _convert_rnn(layer.backward_layer, arrays[n:])
    if isinstance(layer, recurrent.LSTM):
        return keras_layers.convert_cudnn_lstm(arrays)
    if isinstance(layer, recurrent.GRU):
        return keras_layers.convert_cudnn_gru(arrays)
    return arrays


def set_layer_weights(layer, arrays, fname, where, path):
    """Check the file's arrays against the layer built from the config, then set them."""
    arrays = _convert_rnn(layer, list(arrays))
    expected = layer.weights
    if len(arrays) != len(expected):
        raise _WeightError(f"{fname}: {where}: the file has {len(arrays)} weight arrays at {path!r} "
                           f"{[tuple(a.shape) for a in arrays]}, the config needs {len(expected)} "
                           f"{[tuple(w.shape) for w in expected]}")
    labels = _labels(layer)
    for k, (a, w) in enumerate(zip(arrays, expected)):
        if tuple(a.shape) != tuple(w.shape):
            label = labels[k] if k < len(labels) else f"#{k}"
            raise _WeightError(f"{fname}: {where}: weight {k} ({label}) has shape {tuple(a.shape)} in the file, "
                               f"the config expects {tuple(w.shape)}")
    if expected:
        layer.set_weights(arrays)


def _labels(layer):
    if isinstance(layer, recurrent.Bidirectional):
        return ([f"forward {n}" for n in _labels(layer.forward_layer)]
                + [f"backward {n}" for n in _labels(layer.backward_layer)])
    inner = getattr(layer, "layer", None)
    if inner is not None and hasattr(inner, "weight_names"):
        return list(inner.weight_names)
    return list(layer.weight_names)


# ---------------------------------------------------------------------------------------------- sources
def _json(text, what):
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{what}: not valid JSON ({e})") from None


def _read_architecture(architecture):
    if isinstance(architecture, dict):
        return architecture, "architecture"
    s = os.fspath(architecture) if not isinstance(architecture, str) else architecture
    if isinstance(s, bytes):
        s = s.decode("utf-8")
    if s.lstrip().startswith("{"):
        return _json(s, "architecture string"), "architecture string"
    try:
        with open(s, "rb") as f:
            return _json(f.read(), s), s
    except OSError as e:
        raise ModelLoadError(f"{s}: cannot read the architecture file ({e.strerror or e})") from None


def _open_h5_bytes(data, fname):
    try:
        return _h5py().File(io.BytesIO(data), "r")
    except _H5_ERRORS as e:
        raise ModelLoadError(f"{fname}: the weights file is not readable HDF5 (truncated or corrupt?): {e}") from None


def _read_keras_archive(path, kind):
    """(.keras zip | unzipped dir) -> (config, version, store, h5 handle)."""
    members = {}
    if kind == "keras_dir":
        for n in ("config.json", "metadata.json"):
            p = os.path.join(path, n)
            if os.path.exists(p):
                with open(p, "rb") as f:
                    members[n] = f.read()
        names = os.listdir(path)
    else:
        try:
            zf = zipfile.ZipFile(path)
            names = zf.namelist()
            for n in ("config.json", "metadata.json"):
                if n in names:
                    members[n] = zf.read(n)
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
            raise ModelLoadError(f"{path}: not a readable .keras zip archive (truncated or corrupt?): {e}") from None
    if "config.json" not in members:
        raise ModelLoadError(f"{path}: no config.json: not a Keras .keras model")
    config = _json(members["config.json"], f"{path}: config.json")
    meta = _json(members["metadata.json"], f"{path}: metadata.json") if "metadata.json" in members else {}
    version = parse_version(meta.get("keras_version")) or _guess_version(config)
    if "model.weights.h5" in names:
        wname = f"{path}/model.weights.h5"
        if kind == "keras_dir":
            try:
                h5 = _h5py().File(os.path.join(path, "model.weights.h5"), "r")
            except _H5_ERRORS as e:
                raise ModelLoadError(f"{wname}: not readable HDF5 (truncated or corrupt?): {e}") from None
        else:
            try:
                data = zf.read("model.weights.h5")
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
                raise ModelLoadError(f"{path}: cannot read model.weights.h5 from the archive (truncated or "
                                     f"corrupt?): {e}") from None
            h5 = _open_h5_bytes(data, wname)
        store = V3Store(h5, wname)
    elif "model.weights.npz" in names:
        raise ModelLoadError(f"{path}: weights stored as model.weights.npz (pickled object arrays) are refused; "
                             f"re-save with the default HDF5 weights format")
    elif any(n.endswith(".weights.json") for n in names):
        raise ModelLoadError(f"{path}: sharded weights (*.weights.json + shards) are not supported")
    else:
        raise ModelLoadError(f"{path}: missing weights: no model.weights.h5 in the archive")
    return config, version, store


def _read_hdf5(path, architecture):
    try:
        f = _h5py().File(path, "r")
    except _H5_ERRORS as e:
        raise ModelLoadError(f"{path}: not readable HDF5 (truncated or corrupt?): {e}") from None
    try:
        attrs = f.attrs
        model_config = _attr_str(attrs, "model_config")
        version = parse_version(_attr_str(attrs, "keras_version"))
        if model_config is not None or "model_weights" in f:
            if "model_weights" not in f:
                raise ModelLoadError(f"{path}: missing weights: legacy HDF5 model without a model_weights group")
            g = f["model_weights"]
            version = version or parse_version(_attr_str(g.attrs, "keras_version"))
            store = LegacyStore(g, path)
            if architecture is None:
                if model_config is None:
                    raise ModelLoadError(f"{path}: the HDF5 file holds no model_config; pass architecture=")
                config = _json(model_config, f"{path}: model_config")
            else:
                config, _ = _read_architecture(architecture)
        elif "layer_names" in attrs:                 # tf_keras / Keras 2 save_weights("w.h5")
            store = LegacyStore(f, path)
            if architecture is None:
                raise ModelLoadError(f"{path}: a weights-only HDF5 file (save_weights); pass "
                                     f"architecture=<model.to_json() file or string>")
            config, _ = _read_architecture(architecture)
        elif "layers" in f or "vars" in f:            # Keras 3 / tf_keras .weights.h5 (v3 layout)
            store = V3Store(f, path)
            if architecture is None:
                raise ModelLoadError(f"{path}: a weights-only .weights.h5 file; pass "
                                     f"architecture=<model.to_json() file or string>")
            config, _ = _read_architecture(architecture)
        else:
            raise ModelLoadError(f"{path}: an HDF5 file, but not a Keras model or weights file (no model_config, "
                                 f"model_weights, layer_names or layers/)")
    except ModelLoadError:
        _close(f)
        raise
    except _H5_ERRORS as e:
        _close(f)
        raise ModelLoadError(f"{path}: cannot read the HDF5 file (truncated or corrupt?): {e}") from None
    if isinstance(config, dict) and "keras_version" in config:
        version = parse_version(config.get("keras_version")) or version
    return config, version or _guess_version(config), store


def _close(h5):
    try:
        h5.close()
    except _H5_ERRORS:
        pass


def _root_config(config, fname):
    """Unwrap {"class_name", "config"} (to_json / config.json / model_config)."""
    if not isinstance(config, dict) or "class_name" not in config:
        raise ModelLoadError(f"{fname}: the model config has no class_name: not a Keras model config")
    return config


# ---------------------------------------------------------------------------------------------- entry point
def load_keras(path, kind, architecture=None):
    """Load a Keras model file (kind: 'keras_zip', 'keras_dir' or 'hdf5') into a fastlstm Model.

    Parameters
    ----------
    path : str
    kind : str
        What `fastlstm.loaders.sniff` found.
    architecture : str, dict or path-like, optional
        `model.to_json()` (a path or the JSON string) for weights-only files; overrides an archive's config.

    Returns
    -------
    fastlstm.Model (Sequential for Sequential configs) with predict, input_names, output_names, summary.

    Raises
    ------
    ModelLoadError
        Damaged file, missing or mismatched weights, unsupported or unsafe layer (the message names the file,
        the layer and what is wrong).
    """
    if kind in ("keras_zip", "keras_dir"):
        config, version, store = _read_keras_archive(path, kind)
    elif kind == "hdf5":
        config, version, store = _read_hdf5(path, architecture)
    else:
        raise ModelLoadError(f"{path}: not a Keras file ({kind})")
    try:
        if architecture is not None and kind != "hdf5":
            config, _ = _read_architecture(architecture)
            if isinstance(config, dict) and "keras_version" in config:
                version = parse_version(config["keras_version"]) or version
        if version[0] < 2:
            raise ModelLoadError(f"{path}: Keras {'.'.join(map(str, version))} files (per-gate weights) are not "
                                 f"supported; re-save with Keras >= 2")
        root = _root_config(config, path)
        flavour = keras_layers.Flavour(version)
        model, records = GraphBuilder(flavour, path).build(root)
        store.assign(records)
    except ModelLoadError:
        raise
    except _H5_ERRORS as e:
        raise ModelLoadError(f"{path}: cannot load the model (damaged file?): {type(e).__name__}: {e}") from None
    finally:
        store.close()
    model.keras_version = ".".join(map(str, version))
    return model
