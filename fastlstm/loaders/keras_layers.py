"""Keras layer configs -> fastlstm layers (both config flavours: Keras 3 and Keras 2 / tf.keras / tf_keras).

Only the keys that change numbers are read; initializers, regularizers and constraints are never instantiated
(weights come from the file). Nothing is deserialized generically: a class is built only if it is in
`TRANSLATORS`, and `check_safe` refuses Lambda layers and any custom / registered object anywhere in a config.
"""
import numpy as np

from .. import activations
from ..errors import ModelLoadError
from ..layers import conv, core, merging, normalization, ops, recurrent, reshaping

# initializers that make building a layer for its weight shapes cost nothing (weights are overwritten)
_Z = "zeros"


class Flavour:
    """What the file's Keras version implies for the semantics of a config."""

    def __init__(self, version):
        self.version = version                      # tuple, e.g. (3, 15, 1) or (2, 2, 4)
        self.keras2 = version[0] < 3
        self.pre23 = version[:2] < (2, 3)           # Keras <= 2.2: hard_sigmoid / reset_after=False defaults

    def activation(self, value, where):
        """A config activation -> fastlstm activation name (Keras-2 hard_sigmoid is clip(0.2x+0.5, 0, 1))."""
        name = _activation_name(value, where)
        if name == "hard_sigmoid" and self.keras2:
            return "hard_sigmoid_keras2"
        return name


def _activation_name(value, where):
    if isinstance(value, dict):
        module = value.get("module")
        reg = value.get("registered_name")
        cfg = value.get("config")
        if value.get("class_name") == "__lambda__" or not isinstance(cfg, (str, dict)):
            raise ModelLoadError(f"{where}: activation {value!r} is a serialized Python function; refused")
        if module not in (None, "builtins") and not str(module).startswith(("keras", "tf_keras")):
            raise ModelLoadError(f"{where}: custom activation from module {module!r} is refused "
                                 f"(fastlstm never runs code from a model file)")
        name = cfg if isinstance(cfg, str) else cfg.get("name")
        if reg not in (None, "function", name):
            raise ModelLoadError(f"{where}: registered custom activation {reg!r} is refused")
        value = name
    name = activations.normalize(value)
    try:
        activations.get(name)
    except ValueError as e:
        raise ModelLoadError(f"{where}: {e}") from None
    return name


# ---------------------------------------------------------------------------------------------- safety
_KERAS_MODULES = ("keras", "tf_keras", "tensorflow.python.keras", "tensorflow.keras")


def _keras_module(module):
    return module is None or module == "builtins" or str(module).startswith(_KERAS_MODULES)


def check_safe(obj, where):
    """Raise ModelLoadError if a config (recursively) holds a Lambda, a serialized function or a custom
    registered object."""
    if isinstance(obj, dict):
        cls = obj.get("class_name")
        if cls in ("Lambda", "__lambda__", "TFOpLambda", "SlicingOpLambda"):
            raise ModelLoadError(f"{where}: {cls} holds Python code; fastlstm never deserializes or runs code from a "
                                 f"model file. Replace it with built-in layers and re-export.")
        if cls is not None:
            module = obj.get("module")
            reg = obj.get("registered_name")
            if not _keras_module(module) or (isinstance(reg, str) and ">" in reg) or ">" in str(cls):
                raise ModelLoadError(f"{where}: custom object {cls!r} (module {module!r}, registered_name {reg!r}) "
                                     f"is refused: fastlstm never deserializes custom or registered objects")
        for v in obj.values():
            check_safe(v, where)
    elif isinstance(obj, list):
        for v in obj:
            check_safe(v, where)


# ---------------------------------------------------------------------------------------------- helpers
def _dtype_name(d):
    if isinstance(d, dict):      # Keras 3 DTypePolicy
        d = (d.get("config") or {}).get("name", "float32")
    return d or "float32"


def _common(cfg):
    return {"name": cfg.get("name"), "trainable": bool(cfg.get("trainable", True))}


def _pick(cfg, keys, defaults=None):
    out = dict(defaults or {})
    for k in keys:
        if k in cfg:
            out[k] = cfg[k]
    return out


def _check_dtype(cfg, where):
    d = _dtype_name(cfg.get("dtype"))
    if isinstance(d, str) and (d.startswith(("int8", "int4", "float8")) or "from_" in d):
        raise ModelLoadError(f"{where}: quantized dtype policy {d!r} is not supported")


def _no(cfg, key, where, bad=lambda v: bool(v)):
    if key in cfg and bad(cfg[key]):
        raise ModelLoadError(f"{where}: {key}={cfg[key]!r} is not supported")


# ---------------------------------------------------------------------------------------------- translators
def t_input(cfg, fl, where):
    if cfg.get("sparse") or cfg.get("ragged"):
        raise ModelLoadError(f"{where}: sparse / ragged inputs are not supported")
    shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
    if shape is None:
        raise ModelLoadError(f"{where}: InputLayer without batch_shape")
    return core.InputLayer(batch_shape=tuple(shape), dtype=_dtype_name(cfg.get("dtype")), name=cfg.get("name"))


def t_embedding(cfg, fl, where):
    _no(cfg, "lora_rank", where)
    _no(cfg, "quantization_config", where)
    return core.Embedding(int(cfg["input_dim"]), int(cfg["output_dim"]), embeddings_initializer=_Z,
                          mask_zero=bool(cfg.get("mask_zero", False)), **_common(cfg))


def t_masking(cfg, fl, where):
    return core.Masking(mask_value=cfg.get("mask_value", 0.0), **_common(cfg))


def t_dense(cfg, fl, where):
    _no(cfg, "lora_rank", where)
    _no(cfg, "quantization_config", where)
    return core.Dense(int(cfg["units"]), activation=fl.activation(cfg.get("activation"), where),
                      use_bias=cfg.get("use_bias", True), kernel_initializer=_Z, bias_initializer=_Z, **_common(cfg))


def t_activation(cfg, fl, where):
    return core.Activation(fl.activation(cfg.get("activation"), where), **_common(cfg))


def _identity(cls, *keys):
    def t(cfg, fl, where):
        return cls(*[cfg.get(k, 0.0) for k in keys], **_common(cfg))
    return t


def _rnn_kwargs(cfg, fl, where, recurrent_act=True):
    if cfg.get("time_major"):
        raise ModelLoadError(f"{where}: time_major=True (time-major [T, B, F] tensors) is not supported")
    kw = _pick(cfg, ("use_bias", "return_sequences", "return_state", "go_backwards", "stateful",
                     "zero_output_for_mask", "dropout", "recurrent_dropout"))
    kw["activation"] = fl.activation(cfg.get("activation", "tanh"), where)
    if recurrent_act:
        default = "hard_sigmoid" if fl.pre23 else "sigmoid"
        kw["recurrent_activation"] = fl.activation(cfg.get("recurrent_activation", default), where)
    kw.update(kernel_initializer=_Z, recurrent_initializer=_Z, bias_initializer=_Z)
    kw.update(_common(cfg))
    return kw


def t_lstm(cfg, fl, where):
    return recurrent.LSTM(int(cfg["units"]), unit_forget_bias=cfg.get("unit_forget_bias", True),
                          **_rnn_kwargs(cfg, fl, where))


def t_gru(cfg, fl, where):
    reset_after = cfg.get("reset_after", not fl.pre23)
    return recurrent.GRU(int(cfg["units"]), reset_after=reset_after, **_rnn_kwargs(cfg, fl, where))


def t_simple_rnn(cfg, fl, where):
    return recurrent.SimpleRNN(int(cfg["units"]), **_rnn_kwargs(cfg, fl, where, recurrent_act=False))


def _cudnn_kwargs(cfg):
    kw = _pick(cfg, ("return_sequences", "return_state", "go_backwards", "stateful"))
    kw.update(activation="tanh", recurrent_activation="sigmoid", kernel_initializer=_Z, recurrent_initializer=_Z,
              bias_initializer=_Z, **_common(cfg))
    return kw


def t_cudnn_lstm(cfg, fl, where):
    return recurrent.LSTM(int(cfg["units"]), **_cudnn_kwargs(cfg))


def t_cudnn_gru(cfg, fl, where):
    return recurrent.GRU(int(cfg["units"]), reset_after=True, **_cudnn_kwargs(cfg))


RNN_CLASSES = {"LSTM": t_lstm, "GRU": t_gru, "SimpleRNN": t_simple_rnn, "CuDNNLSTM": t_cudnn_lstm,
               "CuDNNGRU": t_cudnn_gru, "LSTMV1": t_lstm, "GRUV1": t_gru}


def _inner(sub, fl, where, allowed=None):
    if not isinstance(sub, dict) or "class_name" not in sub:
        raise ModelLoadError(f"{where}: missing inner layer config")
    cls = sub["class_name"]
    table = allowed if allowed is not None else TRANSLATORS
    if cls not in table:
        raise ModelLoadError(f"{where}: inner layer class {cls!r} is not supported here; supported: "
                             f"{', '.join(sorted(table))}")
    return make_layer(sub, fl, where=f"{where} -> {cls} {sub.get('config', {}).get('name')!r}", table=table)


def t_bidirectional(cfg, fl, where):
    fw = _inner(cfg.get("layer"), fl, where, RNN_CLASSES)
    bw = None
    if cfg.get("backward_layer"):
        bw = _inner(cfg["backward_layer"], fl, where, RNN_CLASSES)
    return recurrent.Bidirectional(fw, merge_mode=cfg.get("merge_mode", "concat"), backward_layer=bw,
                                   **_common(cfg))


def t_time_distributed(cfg, fl, where):
    inner = _inner(cfg.get("layer"), fl, where)
    if isinstance(inner, (recurrent.RNN, recurrent.Bidirectional)):
        raise ModelLoadError(f"{where}: TimeDistributed around a recurrent layer is not supported")
    return core.TimeDistributed(inner, **_common(cfg))


def t_conv1d(cfg, fl, where):
    kw = _pick(cfg, ("strides", "padding", "data_format", "dilation_rate", "groups", "use_bias"))
    return conv.Conv1D(int(cfg["filters"]), cfg["kernel_size"], activation=fl.activation(cfg.get("activation"), where),
                       kernel_initializer=_Z, bias_initializer=_Z, **kw, **_common(cfg))


def _pool(cls):
    def t(cfg, fl, where):
        return cls(**_pick(cfg, ("pool_size", "strides", "padding", "data_format")), **_common(cfg))
    return t


def _global_pool(cls):
    def t(cfg, fl, where):
        return cls(**_pick(cfg, ("data_format", "keepdims")), **_common(cfg))
    return t


def t_batch_norm(cfg, fl, where):
    _no(cfg, "renorm", where)
    _no(cfg, "virtual_batch_size", where, bad=lambda v: v is not None)
    axis = cfg.get("axis", -1)
    if isinstance(axis, list) and len(axis) == 1:
        axis = axis[0]
    kw = _pick(cfg, ("momentum", "epsilon", "center", "scale"))
    return normalization.BatchNormalization(axis=axis, gamma_initializer=_Z, moving_variance_initializer=_Z,
                                            **kw, **_common(cfg))


def t_layer_norm(cfg, fl, where):
    kw = _pick(cfg, ("axis", "epsilon", "center", "scale", "rms_scaling"))
    return normalization.LayerNormalization(gamma_initializer=_Z, **kw, **_common(cfg))


def _merge(cls):
    def t(cfg, fl, where):
        layer = cls(**_common(cfg))
        layer.keras2_masking = fl.keras2
        return layer
    return t


def t_concatenate(cfg, fl, where):
    layer = merging.Concatenate(axis=cfg.get("axis", -1), **_common(cfg))
    layer.keras2_masking = fl.keras2
    return layer


def _simple(cls, *keys):
    def t(cfg, fl, where):
        return cls(**_pick(cfg, keys), **_common(cfg))
    return t


TRANSLATORS = {
    "InputLayer": t_input,
    "Embedding": t_embedding,
    "Masking": t_masking,
    "Dense": t_dense,
    "Activation": t_activation,
    "Dropout": _identity(core.Dropout, "rate"),
    "AlphaDropout": _identity(core.Dropout, "rate"),
    "SpatialDropout1D": _identity(core.SpatialDropout1D, "rate"),
    "GaussianNoise": _identity(core.GaussianNoise, "stddev"),
    "GaussianDropout": _identity(core.GaussianDropout, "rate"),
    "ActivityRegularization": _simple(core.ActivityRegularization, "l1", "l2"),
    **RNN_CLASSES,
    "Bidirectional": t_bidirectional,
    "TimeDistributed": t_time_distributed,
    "Conv1D": t_conv1d,
    "Convolution1D": t_conv1d,
    "MaxPooling1D": _pool(conv.MaxPooling1D),
    "MaxPool1D": _pool(conv.MaxPooling1D),
    "AveragePooling1D": _pool(conv.AveragePooling1D),
    "AvgPool1D": _pool(conv.AveragePooling1D),
    "GlobalMaxPooling1D": _global_pool(conv.GlobalMaxPooling1D),
    "GlobalMaxPool1D": _global_pool(conv.GlobalMaxPooling1D),
    "GlobalAveragePooling1D": _global_pool(conv.GlobalAveragePooling1D),
    "GlobalAvgPool1D": _global_pool(conv.GlobalAveragePooling1D),
    "BatchNormalization": t_batch_norm,
    "LayerNormalization": t_layer_norm,
    "Concatenate": t_concatenate,
    "Add": _merge(merging.Add),
    "Subtract": _merge(merging.Subtract),
    "Multiply": _merge(merging.Multiply),
    "Average": _merge(merging.Average),
    "Maximum": _merge(merging.Maximum),
    "Minimum": _merge(merging.Minimum),
    "RepeatVector": _simple(reshaping.RepeatVector, "n"),
    "Flatten": _simple(reshaping.Flatten, "data_format"),
    "Reshape": _simple(reshaping.Reshape, "target_shape"),
    "Permute": _simple(reshaping.Permute, "dims"),
    "ZeroPadding1D": _simple(reshaping.ZeroPadding1D, "padding"),
    "Cropping1D": _simple(reshaping.Cropping1D, "cropping"),
    "UpSampling1D": _simple(reshaping.UpSampling1D, "size"),
}
MODEL_CLASSES = ("Sequential", "Functional", "Model")


def supported_names():
    return sorted(set(TRANSLATORS) | set(MODEL_CLASSES) | {f"op:{k}" for k in ops.OPS})


def is_op_node(entry):
    """A Keras 3 `keras.ops` node (e.g. NotEqual) rather than a layer."""
    module = str(entry.get("module") or "")
    if ".ops." in module or module.endswith(".ops"):
        return True
    if module:
        return False
    cls = entry.get("class_name")
    cfg = entry.get("config") or {}
    return cls in ops.OPS and (cls not in TRANSLATORS or set(cfg) <= {"name", "axis", "dtype", "keepdims"}
                               and "trainable" not in cfg)


def make_layer(entry, fl, where, table=None):
    """A layer config entry {"class_name", "config", ...} -> a fastlstm layer."""
    table = TRANSLATORS if table is None else table
    cls = entry.get("class_name")
    cfg = entry.get("config") or {}
    if cls not in table:
        raise ModelLoadError(f"{where}: layer class {cls!r} is not supported by fastlstm; supported layers: "
                             f"{', '.join(supported_names())}")
    _check_dtype(cfg, where)
    try:
        layer = table[cls](cfg, fl, where)
    except ModelLoadError:
        raise
    except (ValueError, TypeError, KeyError) as e:
        raise ModelLoadError(f"{where}: cannot build {cls} from its config: {e}") from None
    if isinstance(layer, recurrent.RNN):
        layer.keras2_stateful_initial_state = fl.keras2
    return layer


# ---------------------------------------------------------------------------------------------- CuDNN weights
def _cudnn_kernel(kernel, n_gates):
    """cuDNN-layout input kernel -> Keras (tf_keras hdf5_format._convert_rnn_weights, from_cudnn=True)."""
    blocks = np.hsplit(np.asarray(kernel), n_gates)
    return np.hstack([b.T.reshape(b.shape, order="F") for b in blocks])


def _cudnn_recurrent(kernel, n_gates):
    return np.hstack([b.T for b in np.hsplit(np.asarray(kernel), n_gates)])


def convert_cudnn_lstm(ws):
    """CuDNNLSTM [kernel, recurrent_kernel (H, 4H), bias (8H,)] -> LSTM weights (bias halves summed).
    Weights already in LSTM layout (bias (4H,)) are returned unchanged, as Keras decides by the bias shape."""
    if len(ws) != 3:
        return ws
    k, r, b = ws
    b = np.asarray(b)
    if b.shape != (8 * np.shape(r)[0],):
        return ws
    return [_cudnn_kernel(k, 4), _cudnn_recurrent(r, 4), b[:b.shape[0] // 2] + b[b.shape[0] // 2:]]


def convert_cudnn_gru(ws):
    """CuDNNGRU [kernel, recurrent_kernel (H, 3H), bias (6H,)] -> GRU(reset_after=True) weights, bias (2, 3H)."""
    if len(ws) != 3:
        return ws
    k, r, b = ws
    b = np.asarray(b)
    if b.shape != (6 * np.shape(r)[0],):
        return ws
    return [_cudnn_kernel(k, 3), _cudnn_recurrent(r, 3), b.reshape(2, -1)]
