"""Writing Keras 3 files: `model.save("m.keras")`, `model.save_weights("w.weights.h5")`, `model.load_weights`.

A `.keras` file is a zip (members stored, not deflated) of metadata.json, config.json (Keras 3 layer configs)
and model.weights.h5. The HDF5 layout is Keras 3's (formats.md section 1): groups are named after the layer
CLASS, numbered per container in `model.layers` order, not after layer names:

    layers/<snake_class>[_N]/vars/0..                    Dense, Embedding, ...   (attr name = layer name)
    layers/<rnn>[_N]/cell/vars/0..  + layers/<rnn>/vars  LSTM, GRU, SimpleRNN
    layers/bidirectional[_N]/{forward_layer,backward_layer}/cell/vars/0..
    layers/time_distributed[_N]/layer/vars/0..
    layers/input_layer[_N]/vars                          functional models only
    vars                                                 (attr name = model name)

Every file is written to a temporary file in the destination folder and moved into place with os.replace, so
a failed save never leaves a half-written file where a good one was.
"""
import datetime
import io
import json
import os
import re
import tempfile
import zipfile

import numpy as np

from .layers.base import SymbolicTensor, _flatten
from .layers.conv import Conv1D, _GlobalPooling1D, _Pooling1D
from .layers.core import (Activation, ActivityRegularization, Dense, Dropout, Embedding, GaussianDropout,
                          GaussianNoise, InputLayer, Masking, SpatialDropout1D, TimeDistributed)
from .layers.merging import Concatenate, _Merge
from .layers.normalization import BatchNormalization, LayerNormalization
from .layers.ops import OpLayer, _fill
from .layers.recurrent import GRU, LSTM, RNN, Bidirectional, SimpleRNN
from .layers.reshaping import _NoMask

KERAS_VERSION = "3.15.1"      # the Keras 3 release these files were verified against


def _snake(name):
    """keras.src.utils.naming.to_snake_case: a digit before a capital stays joined (Conv1D -> conv1d)."""
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower()


def _dtype_policy():
    return {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"}, "registered_name": None}


_INIT_CLASSES = {
    "glorot_uniform": ("GlorotUniform", {"seed": None}), "glorot_normal": ("GlorotNormal", {"seed": None}),
    "he_uniform": ("HeUniform", {"seed": None}), "he_normal": ("HeNormal", {"seed": None}),
    "lecun_uniform": ("LecunUniform", {"seed": None}), "lecun_normal": ("LecunNormal", {"seed": None}),
    "orthogonal": ("Orthogonal", {"seed": None, "gain": 1.0}), "zeros": ("Zeros", {}), "ones": ("Ones", {}),
    "uniform": ("RandomUniform", {"seed": None, "minval": -0.05, "maxval": 0.05}),
    "random_uniform": ("RandomUniform", {"seed": None, "minval": -0.05, "maxval": 0.05}),
    "random_normal": ("RandomNormal", {"seed": None, "mean": 0.0, "stddev": 0.05}),
}


def _initializer(spec):
    if isinstance(spec, dict):
        return spec
    if spec is None or callable(spec):
        return None
    name = str(spec)
    if name in _INIT_CLASSES:
        cls, cfg = _INIT_CLASSES[name]
        return {"module": "keras.initializers", "class_name": cls, "config": dict(cfg), "registered_name": None}
    return name


def _activation(layer, name):
    if name == "hard_sigmoid_keras2":
        raise ValueError(f"layer {layer.name!r} uses the Keras 2 hard_sigmoid (clip(0.2x + 0.5, 0, 1)), which Keras 3 "
                         f"does not have; it cannot be saved as a Keras 3 file")
    return name


def _base(layer):
    return {"name": layer.name, "trainable": bool(layer.trainable), "dtype": _dtype_policy()}


def _rnn_config(layer):
    cfg = _base(layer)
    cfg.update(return_sequences=layer.return_sequences, return_state=layer.return_state,
               go_backwards=layer.go_backwards, stateful=layer.stateful, unroll=False,
               zero_output_for_mask=layer.zero_output_for_mask, units=layer.units,
               activation=_activation(layer, layer.activation))
    if not isinstance(layer, SimpleRNN):
        cfg["recurrent_activation"] = _activation(layer, layer.recurrent_activation)
    cfg.update(use_bias=layer.use_bias, kernel_initializer=_initializer(layer.kernel_initializer),
               recurrent_initializer=_initializer(layer.recurrent_initializer),
               bias_initializer=_initializer(layer.bias_initializer))
    if isinstance(layer, LSTM):
        cfg["unit_forget_bias"] = layer.unit_forget_bias
    cfg.update(kernel_regularizer=None, recurrent_regularizer=None, bias_regularizer=None, activity_regularizer=None,
               kernel_constraint=None, recurrent_constraint=None, bias_constraint=None, dropout=layer.dropout,
               recurrent_dropout=layer.recurrent_dropout)
    if isinstance(layer, GRU):
        cfg["reset_after"] = layer.reset_after
    cfg["seed"] = layer.seed
    return cfg


def _shape_list(shape):
    if shape is None:
        return None
    return [None if d is None else int(d) for d in shape]


# Keras 3 module of each op class (a functional model's config records `keras.ops` calls, e.g. the mask ops)
_OP_MODULES = {"Cast": "keras.src.ops.core", "Sigmoid": "keras.src.ops.nn"}


def layer_config(layer, input_shape=None):
    """The Keras 3 serialized form of one layer: {module, class_name, config, registered_name, build_config}."""
    cls = type(layer).__name__
    if isinstance(layer, OpLayer):
        return {"module": _OP_MODULES.get(layer.op, "keras.src.ops.numpy"), "class_name": layer.op,
                "config": {"name": layer.name, **layer.params}, "registered_name": layer.op}
    if isinstance(layer, InputLayer):
        return {"module": "keras.layers", "class_name": "InputLayer",
                "config": {"batch_shape": _shape_list(layer.batch_shape), "dtype": layer.input_dtype.name,
                           "sparse": False, "ragged": False, "name": layer.name, "optional": False},
                "registered_name": None}
    if isinstance(layer, RNN):
        cfg = _rnn_config(layer)
    elif isinstance(layer, Bidirectional):
        cfg = _base(layer)
        fw_shape = input_shape
        cfg.update(merge_mode=layer.merge_mode, layer=layer_config(layer.forward_layer, fw_shape),
                   backward_layer=layer_config(layer.backward_layer, fw_shape))
    elif isinstance(layer, Embedding):
        cfg = _base(layer)
        cfg.update(input_dim=layer.input_dim, output_dim=layer.output_dim,
                   embeddings_initializer=_initializer(layer.embeddings_initializer), embeddings_regularizer=None,
                   activity_regularizer=None, embeddings_constraint=None, mask_zero=layer.mask_zero)
    elif isinstance(layer, Dense):
        cfg = _base(layer)
        cfg.update(units=layer.units, activation=_activation(layer, layer.activation), use_bias=layer.use_bias,
                   kernel_initializer=_initializer(layer.kernel_initializer),
                   bias_initializer=_initializer(layer.bias_initializer), kernel_regularizer=None,
                   bias_regularizer=None, kernel_constraint=None, bias_constraint=None)
    elif isinstance(layer, TimeDistributed):
        cfg = _base(layer)
        inner_shape = None if input_shape is None else (input_shape[0],) + tuple(input_shape[2:])
        cfg["layer"] = layer_config(layer.layer, inner_shape)
    elif isinstance(layer, Masking):
        cfg = _base(layer)
        cfg["mask_value"] = float(layer.mask_value)
    elif isinstance(layer, SpatialDropout1D):
        cfg = {"rate": layer.rate, "seed": layer.seed, "name": layer.name, "dtype": "float32"}   # Keras 3's keys
    elif isinstance(layer, Dropout):
        cfg = _base(layer)
        cfg.update(rate=layer.rate, seed=layer.seed,
                   noise_shape=None if layer.noise_shape is None else list(layer.noise_shape))
    elif isinstance(layer, GaussianNoise):
        cfg = _base(layer)
        cfg.update(stddev=layer.stddev, seed=layer.seed)
    elif isinstance(layer, GaussianDropout):
        cfg = _base(layer)
        cfg.update(rate=layer.rate, seed=layer.seed)
    elif isinstance(layer, ActivityRegularization):
        cfg = _base(layer)
        cfg.update(l1=layer.l1, l2=layer.l2)
    elif isinstance(layer, Activation):
        cfg = _base(layer)
        cfg["activation"] = _activation(layer, layer.activation)
    elif isinstance(layer, (Conv1D, _Pooling1D, _GlobalPooling1D, _NoMask, BatchNormalization, LayerNormalization)):
        cfg = _base(layer)                    # the layer's own Keras 3 keys, then what Keras adds around them
        cfg.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in layer.get_config().items()
                    if k not in cfg})
        if isinstance(layer, Conv1D):
            cfg["activation"] = _activation(layer, layer.activation)
            cfg.update(kernel_initializer=_initializer(layer.kernel_initializer),
                       bias_initializer=_initializer(layer.bias_initializer), kernel_regularizer=None,
                       bias_regularizer=None, activity_regularizer=None, kernel_constraint=None, bias_constraint=None)
        elif isinstance(layer, (BatchNormalization, LayerNormalization)):
            cfg.update(beta_initializer=_initializer(layer.beta_initializer),
                       gamma_initializer=_initializer(layer.gamma_initializer))
            if isinstance(layer, BatchNormalization):
                cfg.update(moving_mean_initializer=_initializer(layer.moving_mean_initializer),
                           moving_variance_initializer=_initializer(layer.moving_variance_initializer))
            cfg.update(beta_regularizer=None, gamma_regularizer=None, beta_constraint=None, gamma_constraint=None)
            if isinstance(layer, BatchNormalization):
                cfg.update(synchronized=False, renorm=False, renorm_clipping=None, renorm_momentum=0.99)
    elif isinstance(layer, _Merge):           # Concatenate, Add, Subtract, Multiply, Average, Maximum, Minimum
        cfg = _base(layer)
        if isinstance(layer, Concatenate):
            cfg["axis"] = layer.axis
    else:
        raise ValueError(f"layer {layer.name!r} ({cls}) cannot be saved as a Keras 3 file")
    out = {"module": "keras.layers", "class_name": cls, "config": cfg, "registered_name": None}
    if input_shape is not None and (layer.weights or isinstance(layer, (RNN, Bidirectional, TimeDistributed))):
        out["build_config"] = {"input_shape": _shape_list(input_shape)}
    return out


def _node_input_shape(node):
    t = node.inputs[0]
    return t.shape


def _sequential_config(model):
    layers = [layer_config(InputLayer(batch_shape=model.inputs[0].shape, dtype=model.inputs[0].dtype,
                                      name=model.input_names[0]))]
    for node in model._nodes:
        layers.append(layer_config(node.layer, _node_input_shape(node)))
    shape = _shape_list(model.inputs[0].shape)
    return {"module": "keras", "class_name": "Sequential",
            "config": {"name": model.name, "trainable": True, "dtype": _dtype_policy(), "layers": layers,
                       "build_input_shape": shape},
            "registered_name": None, "build_config": {"input_shape": shape}}


def _functional_config(model):
    # node index of each node among its layer's calls in this model (Keras keras_history numbering)
    node_pos, per_layer = {}, {}
    for node in model._nodes:
        k = per_layer.get(id(node.layer), 0)
        node_pos[id(node)] = k
        per_layer[id(node.layer)] = k + 1

    def tensor_ref(t):
        if t.history is None:
            name = getattr(getattr(t, "_input_layer", None), "name", t.name)
            hist = [name, 0, 0]
        else:
            node, k = t.history
            hist = [node.layer.name, node_pos[id(node)], k]
        return {"class_name": "__keras_tensor__",
                "config": {"shape": _shape_list(t.shape), "dtype": t.dtype.name, "keras_history": hist}}

    layers = []
    for t in model.inputs:
        if getattr(t, "_input_layer", None) is None:
            cfg = layer_config(InputLayer(batch_shape=t.shape, dtype=t.dtype, name=t.name))
            cfg.update(name=t.name, inbound_nodes=[])
            layers.append(cfg)
    for lyr in model.layers:                  # Keras's order, as Keras writes it (and numbers the weight groups)
        if isinstance(lyr, InputLayer):
            cfg = layer_config(lyr)
            cfg.update(name=lyr.name, inbound_nodes=[])
            layers.append(cfg)
            continue
        calls = [n for n in model._nodes if n.layer is lyr]
        node = calls[0]
        cfg = layer_config(lyr, _node_input_shape(node))
        inbound = []
        for n in calls:
            args = [tensor_ref(t) for t in n.inputs]
            if isinstance(lyr, OpLayer):
                args = _fill(lyr.template, args)          # the op's constants back between its tensors
            elif getattr(n, "multi_input", False):
                args = [args]
            kwargs = {}
            for key, v in n.kwargs.items():
                if key == "training" or v is None:
                    continue
                if key == "mask" and not all(isinstance(e, SymbolicTensor) for e in _flatten(v)):
                    raise ValueError(f"layer {lyr.name!r} is called with a constant mask, which a Keras 3 file "
                                     f"cannot hold")
                if isinstance(v, SymbolicTensor):
                    kwargs[key] = tensor_ref(v)
                elif isinstance(v, (list, tuple)):
                    kwargs[key] = [tensor_ref(e) if isinstance(e, SymbolicTensor) else e for e in v]
                else:
                    kwargs[key] = v
            inbound.append({"args": args, "kwargs": kwargs})
        cfg.update(name=lyr.name, inbound_nodes=inbound)
        layers.append(cfg)

    def refs(ts, single):
        triples = [tensor_ref(t)["config"]["keras_history"] for t in ts]
        return triples[0] if single else triples

    return {"module": "keras.src.models.functional", "class_name": "Functional",
            "config": {"name": model.name, "trainable": True, "layers": layers,
                       "input_layers": refs(model.inputs, model._single_input),
                       "output_layers": refs(model.outputs, model._single_output)},
            "registered_name": "Functional", "build_config": {"input_shape": None}}


def model_config(model):
    """The Keras 3 config.json content for `model` (a dict)."""
    from .model import Sequential
    if not model.built:
        raise ValueError(f"model {model.name!r} is not built yet: call build(input_shape), predict or fit first")
    if isinstance(model, Sequential):
        return _sequential_config(model)
    return _functional_config(model)


# ---- weights ----------------------------------------------------------------------------------------------
def _container_layers(model):
    """The layers Keras 3 numbers in layers/..., in model.layers order (Keras's): Sequential without its
    InputLayer, functional with them; op nodes are no Keras layers."""
    from .model import Sequential
    if isinstance(model, Sequential):
        return [lyr for lyr in model.layers if not isinstance(lyr, InputLayer)]
    return [lyr for lyr in model.layers if not isinstance(lyr, OpLayer)]


def _group_names(layers):
    used, names = {}, []
    for lyr in layers:
        base = _snake(type(lyr).__name__)
        if base in used:
            used[base] += 1
            names.append(f"{base}_{used[base]}")
        else:
            used[base] = 0
            names.append(base)
    return names


def _own_vars_path(lyr, path):
    """Where `lyr`'s own weight datasets live under its group, and the name attribute of that vars group."""
    if isinstance(lyr, RNN):
        return f"{path}/cell/vars", f"{_snake(type(lyr).__name__)}_cell"
    return f"{path}/vars", lyr.name


def _write_layer(h5, path, lyr):
    if isinstance(lyr, Bidirectional):
        _write_layer(h5, f"{path}/forward_layer", lyr.forward_layer)
        _write_layer(h5, f"{path}/backward_layer", lyr.backward_layer)
        h5.create_group(f"{path}/vars").attrs["name"] = lyr.name
        return
    if isinstance(lyr, TimeDistributed):
        _write_layer(h5, f"{path}/layer", lyr.layer)
        h5.create_group(f"{path}/vars").attrs["name"] = lyr.name
        return
    vpath, vname = _own_vars_path(lyr, path)
    g = h5.create_group(vpath)
    g.attrs["name"] = vname
    for k, w in enumerate(lyr._weights):
        g.create_dataset(str(k), data=np.asarray(w, dtype=np.float32))
    if isinstance(lyr, RNN):
        h5.create_group(f"{path}/vars").attrs["name"] = lyr.name


def _write_weights(model, h5):
    h5.create_group("layers")
    layers = _container_layers(model)
    for lyr, name in zip(layers, _group_names(layers)):
        _write_layer(h5, f"layers/{name}", lyr)
    h5.create_group("vars").attrs["name"] = model.name


def _read_layer(h5, path, lyr, where):
    if isinstance(lyr, Bidirectional):
        fw = _read_layer(h5, f"{path}/forward_layer", lyr.forward_layer, where)
        bw = _read_layer(h5, f"{path}/backward_layer", lyr.backward_layer, where)
        return fw + bw
    if isinstance(lyr, TimeDistributed):
        return _read_layer(h5, f"{path}/layer", lyr.layer, where)
    n = len(lyr._weights)
    if n == 0:
        return []
    vpath, _ = _own_vars_path(lyr, path)
    if vpath not in h5:
        raise ValueError(f"{where}: no weights for layer {lyr.name!r} ({type(lyr).__name__}) at {vpath!r}")
    g = h5[vpath]
    if len(g.keys()) != n:
        raise ValueError(f"{where}: layer {lyr.name!r} expects {n} weights, {vpath!r} holds {len(g.keys())}")
    return [np.asarray(g[str(k)]) for k in range(n)]


def _read_weights(model, h5, where):
    layers = _container_layers(model)
    new = {}
    for lyr, name in zip(layers, _group_names(layers)):
        new[id(lyr)] = _read_layer(h5, f"layers/{name}", lyr, where)
    # set only after everything was read and checked
    for lyr, name in zip(layers, _group_names(layers)):
        cur = [w.shape for w in lyr.weights]
        got = [w.shape for w in new[id(lyr)]]
        if cur != got:
            raise ValueError(f"{where}: layer {lyr.name!r} ({type(lyr).__name__}) has weights of shape {cur}, the "
                             f"file's layers/{name} holds {got}")
    for lyr in layers:
        ws = new[id(lyr)]
        if ws:
            lyr.set_weights(ws)


# ---- files ------------------------------------------------------------------------------------------------
def _atomic_write(path, write, overwrite):
    path = os.fspath(path)
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _weights_bytes(model):
    import h5py
    buf = io.BytesIO()
    with h5py.File(buf, "w") as h5:
        _write_weights(model, h5)
    return buf.getvalue()


def save_model(model, filepath, overwrite=True):
    """Write `model` as a Keras 3 `.keras` zip (see the module docstring)."""
    filepath = os.fspath(filepath)
    if not filepath.endswith(".keras"):
        raise ValueError(f"model.save() writes Keras 3 `.keras` files; the filepath must end in .keras, got {filepath}")
    config = json.dumps(model_config(model))
    metadata = json.dumps({"keras_version": KERAS_VERSION,
                           "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S")})
    weights = _weights_bytes(model)

    def write(f):
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr("metadata.json", metadata)
            zf.writestr("config.json", config)
            zf.writestr("model.weights.h5", weights)

    _atomic_write(filepath, write, overwrite)


def save_weights(model, filepath, overwrite=True):
    """Write the weights as a Keras 3 `.weights.h5` file."""
    filepath = os.fspath(filepath)
    if not filepath.endswith(".weights.h5"):
        raise ValueError(f"save_weights() writes Keras 3 weights files; the filepath must end in .weights.h5, "
                         f"got {filepath}")
    if not model.built:
        raise ValueError(f"model {model.name!r} is not built yet: call build(input_shape), predict or fit first")
    data = _weights_bytes(model)
    _atomic_write(filepath, lambda f: f.write(data), overwrite)


def load_weights(model, filepath):
    """Set `model`'s weights from a Keras 3 `.weights.h5` or `.keras` file (layers matched by class and order,
    as Keras does). The model must be built; nothing changes when the file does not fit."""
    import h5py
    filepath = os.fspath(filepath)
    if not model.built:
        raise ValueError(f"model {model.name!r} is not built yet: call build(input_shape) or predict first")
    with open(filepath, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04":
        with zipfile.ZipFile(filepath) as zf:
            data = zf.read("model.weights.h5")
        with h5py.File(io.BytesIO(data), "r") as h5:
            _read_weights(model, h5, filepath)
    else:
        with h5py.File(filepath, "r") as h5:
            if "layers" not in h5:
                raise ValueError(f"{filepath}: not a Keras 3 weights file (no 'layers' group)")
            _read_weights(model, h5, filepath)
    for lyr in model.layers:
        lyr._weights_changed() if hasattr(lyr, "_weights_changed") else None
