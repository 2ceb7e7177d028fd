"""Recurrent layers with Keras 3 semantics: LSTM, GRU, SimpleRNN, Bidirectional.

Public tensors are batch-first (batch, timesteps, features); the kernels are time-major, so a layer transposes
once on the way in and once on the way out. Masking follows Keras (formats.md section 4): a masked step keeps
the state; a masked step's sequence output repeats the previous output (zeros before the first valid step),
or is zero when zero_output_for_mask is set (Bidirectional with return_sequences sets it).
"""
import copy

import numpy as np

from .. import activations, initializers
from .._kernels import acts as kacts
from ..backend import get_backend
from .base import Layer, float_dtype

_EMPTY_MASK = np.zeros((0, 0), np.uint8)


def _check_rank3(layer, x):
    if x.ndim != 3:
        raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) expects input of shape "
                         f"(batch, timesteps, features), got an array of shape {x.shape}")


def _as_float_input(layer, x):
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise TypeError(f"layer {layer.name!r} expects a numeric array, got dtype {x.dtype}")
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float32)


def _mask_to_kernel(mask, B, T):
    """(batch, timesteps) bool mask -> the kernels' (T, B) uint8 mask (or the empty 'no mask')."""
    if mask is None:
        return _EMPTY_MASK
    m = np.asarray(mask)
    if m.shape != (B, T):
        raise ValueError(f"mask must have shape (batch, timesteps) = {(B, T)}, got {m.shape}")
    return np.ascontiguousarray(m.T, dtype=np.uint8)


class RNN(Layer):
    """Shared machinery of LSTM / GRU / SimpleRNN: Keras options, states, masking rules, output assembly."""

    n_states = 1
    gates = 1

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal", bias_initializer="zeros",
                 kernel_regularizer=None, recurrent_regularizer=None, bias_regularizer=None,
                 activity_regularizer=None, kernel_constraint=None, recurrent_constraint=None, bias_constraint=None,
                 dropout=0.0, recurrent_dropout=0.0, seed=None, return_sequences=False, return_state=False,
                 go_backwards=False, stateful=False, unroll=False, zero_output_for_mask=False,
                 implementation=2, time_major=False, use_cudnn="auto", **kwargs):
        super().__init__(**kwargs)
        if not isinstance(units, (int, np.integer)) or isinstance(units, bool) or units <= 0:
            raise ValueError(f"Received an invalid value for argument `units`, expected a positive integer, "
                             f"got {units!r}")
        self.units = int(units)
        self.activation = activations.normalize(activation)
        self.recurrent_activation = activations.normalize(recurrent_activation)
        self._act_specs = self._resolve_acts()
        self.use_bias = bool(use_bias)
        self.kernel_initializer, self.recurrent_initializer = kernel_initializer, recurrent_initializer
        self.bias_initializer = bias_initializer
        self.dropout, self.recurrent_dropout = float(dropout), float(recurrent_dropout)
        self.seed = seed
        self.return_sequences, self.return_state = bool(return_sequences), bool(return_state)
        self.go_backwards, self.stateful = bool(go_backwards), bool(stateful)
        self.unroll, self.zero_output_for_mask = unroll, bool(zero_output_for_mask)
        self.time_major = bool(time_major)
        self.states = None           # stateful: the carried [h, (c)] arrays (batch, units)
        self._cast = {}

    def _resolve_acts(self):
        raise NotImplementedError

    # ---- weights -----------------------------------------------------------------------------------
    def _weights_changed(self):
        self._cast = {}

    def _params(self, dtype):
        """The kernel weights in `dtype`, cast once and cached until the weights change."""
        p = self._cast.get(dtype)
        if p is None:
            p = self._cast[dtype] = self._make_params(dtype)
        return p

    def _init(self, spec, shape):
        return initializers.get(spec)(shape, np.float32, initializers.rng_for(self.seed))

    def build(self, input_shape):
        if input_shape is None:
            raise ValueError(f"layer {self.name!r} cannot be built without an input shape")
        in_dim = input_shape[-1]
        if in_dim is None:
            raise ValueError(f"layer {self.name!r}: the last (features) dimension of the input must be known")
        self.input_dim = int(in_dim)
        self._weights = self._initial_weights(self.input_dim)
        self._weights_changed()
        self.built = True

    def build_from_weights(self, weights):
        self.build((None, None, weights[0].shape[0]))

    # ---- shapes and masks --------------------------------------------------------------------------
    def compute_output_shape(self, input_shape):
        B, T = input_shape[0], input_shape[1]
        out = (B, T, self.units) if self.return_sequences else (B, self.units)
        if self.return_state:
            return [out] + [(B, self.units)] * self.n_states
        return out

    def compute_mask(self, inputs, mask=None):
        out_mask = mask if self.return_sequences else None
        if self.return_state:
            return [out_mask] + [None] * self.n_states
        return out_mask

    def reset_states(self, states=None):
        """Stateful layers: zero the carried states (or set them to `states`)."""
        self.states = None if states is None else [np.array(s) for s in states]

    # ---- calling -----------------------------------------------------------------------------------
    def call(self, inputs, mask=None, training=False, initial_state=None):
        """Run the layer.

        Parameters
        ----------
        inputs : array of shape (batch, timesteps, features)
        mask : bool array of shape (batch, timesteps), optional. False marks a padded step.
        initial_state : list of arrays of shape (batch, units), optional ([h, c] for LSTM, [h] for GRU).

        Returns
        -------
        array of shape (batch, timesteps, units) if return_sequences else (batch, units); with return_state,
        a list [output, *final_states].
        """
        x = _as_float_input(self, inputs)
        if self.time_major:
            x = np.swapaxes(x, 0, 1)
        _check_rank3(self, x)
        if x.shape[2] != self.input_dim:
            raise ValueError(f"layer {self.name!r} expects input of shape (batch, timesteps, {self.input_dim}), "
                             f"got {x.shape}")
        out = self.run(x, mask=mask, initial_state=initial_state)
        return out

    def _initial_states(self, B, dtype, initial_state):
        if initial_state is not None:
            if not isinstance(initial_state, (list, tuple)):
                initial_state = [initial_state]
            if len(initial_state) != self.n_states:
                raise ValueError(f"layer {self.name!r} expects {self.n_states} initial state(s), "
                                 f"got {len(initial_state)}")
            states = []
            for s in initial_state:
                s = np.asarray(s)
                if s.shape != (B, self.units):
                    raise ValueError(f"layer {self.name!r}: initial state must have shape {(B, self.units)}, "
                                     f"got {s.shape}")
                states.append(np.ascontiguousarray(s, dtype=dtype))
            return states
        if self.stateful and self.states is not None:
            if self.states[0].shape[0] != B:
                raise ValueError(f"stateful layer {self.name!r} was called with batch size "
                                 f"{self.states[0].shape[0]} and now with {B}; call reset_states() first")
            return [np.ascontiguousarray(s, dtype=dtype) for s in self.states]
        return [np.zeros((B, self.units), dtype) for _ in range(self.n_states)]

    def run(self, x, mask=None, initial_state=None, training=False):
        """Batch-first run with Keras masking semantics; returns what `call` returns."""
        B, T, _ = x.shape
        dtype = float_dtype(x)
        x_tm = np.ascontiguousarray(np.swapaxes(x, 0, 1), dtype=dtype)
        m = _mask_to_kernel(mask, B, T)
        states0 = self._initial_states(B, dtype, initial_state)
        y_tm, final = self._kernel_forward(x_tm, states0, m, dtype)
        if self.stateful:
            self.states = [s.copy() for s in final]
        return self._assemble(y_tm, final, m)

    def _assemble(self, y_tm, final, m):
        """Keras output rules from the kernel's time-major carried-state sequence y_tm (original time order)."""
        if self.go_backwards:
            y_tm = y_tm[::-1]          # Keras: a go_backwards layer returns its sequence in processing order
            m = m[::-1] if m.shape[0] else m
        if m.shape[0]:
            valid = m.astype(bool)[:, :, None]
            if self.zero_output_for_mask:
                y_tm = np.where(valid, y_tm, 0)
            else:
                # previous output starts at zeros, not at the initial state
                seen = np.logical_or.accumulate(valid, axis=0)
                y_tm = np.where(seen, y_tm, 0)
        if self.return_sequences:
            out = np.ascontiguousarray(np.swapaxes(y_tm, 0, 1))
        else:
            out = y_tm[-1].copy()
        if self.return_state:
            return [out] + list(final)
        return out

    def get_config(self):
        cfg = super().get_config()
        cfg.update(units=self.units, activation=self.activation, recurrent_activation=self.recurrent_activation,
                   use_bias=self.use_bias, return_sequences=self.return_sequences, return_state=self.return_state,
                   go_backwards=self.go_backwards, stateful=self.stateful, unroll=False,
                   zero_output_for_mask=self.zero_output_for_mask, dropout=self.dropout,
                   recurrent_dropout=self.recurrent_dropout, seed=self.seed)
        return cfg


class LSTM(RNN):
    """Long Short-Term Memory layer, Keras 3 arguments and semantics.

    Weights (Keras order): kernel (input_dim, 4*units), recurrent_kernel (units, 4*units), bias (4*units,);
    gates i, f, c, o.

    Examples
    --------
    >>> lstm = fastlstm.layers.LSTM(8, return_sequences=True)
    >>> lstm(np.zeros((2, 5, 3), np.float32)).shape
    (2, 5, 8)
    """

    n_states = 2
    gates = 4
    weight_names = ("kernel", "recurrent_kernel", "bias")

    def __init__(self, units, unit_forget_bias=True, **kwargs):
        super().__init__(units, **kwargs)
        self.unit_forget_bias = bool(unit_forget_bias)

    def _resolve_acts(self):
        try:
            f = activations.rnn_spec(self.recurrent_activation)
            g = activations.rnn_spec(self.activation)
        except ValueError as e:
            raise ValueError(f"layer {self.name!r}: {e}") from None
        return [f, g, g]

    def _initial_weights(self, I):
        H = self.units
        ws = [self._init(self.kernel_initializer, (I, 4 * H)), self._init(self.recurrent_initializer, (H, 4 * H))]
        if self.use_bias:
            b = self._init(self.bias_initializer, (4 * H,))
            if self.unit_forget_bias:
                b[H:2 * H] = 1.0
            ws.append(b)
        return ws

    def _make_params(self, dtype):
        H = self.units
        w_x = np.ascontiguousarray(self._weights[0], dtype=dtype)
        w_h = np.ascontiguousarray(self._weights[1], dtype=dtype)
        b = np.ascontiguousarray(self._weights[2], dtype=dtype) if self.use_bias else np.zeros(4 * H, dtype)
        codes, ab = kacts.pack(self._act_specs)
        return dict(w_x=w_x, w_h=w_h, b=b, p=np.zeros((0, H), dtype), act_codes=codes, act_ab=ab)

    def _kernel_forward(self, x_tm, states0, m, dtype):
        T, B, _ = x_tm.shape
        H = self.units
        p = self._params(dtype)
        y = np.empty((T, B, H), dtype)
        hT, cT = np.empty((B, H), dtype), np.empty((B, H), dtype)
        none3 = np.empty((0, 0, 0), dtype)
        get_backend().lstm_forward(x_tm, p["w_x"], p["w_h"], p["b"], p["p"], states0[0], states0[1], m,
                                   p["act_codes"], p["act_ab"], 0.0, False, self.go_backwards,
                                   np.empty((T, B, 4 * H), dtype), y, hT, cT, none3, none3)
        return y, [hT, cT]

    def get_config(self):
        cfg = super().get_config()
        cfg["unit_forget_bias"] = self.unit_forget_bias
        return cfg


class GRU(RNN):
    """Gated Recurrent Unit layer, Keras 3 arguments and semantics.

    Weights (Keras order): kernel (input_dim, 3*units), recurrent_kernel (units, 3*units), bias (2, 3*units)
    when reset_after (the default) else (3*units,); gates z, r, h.
    """

    n_states = 1
    gates = 3
    weight_names = ("kernel", "recurrent_kernel", "bias")

    def __init__(self, units, reset_after=True, **kwargs):
        super().__init__(units, **kwargs)
        self.reset_after = bool(reset_after)

    def _resolve_acts(self):
        try:
            return [activations.rnn_spec(self.recurrent_activation), activations.rnn_spec(self.activation)]
        except ValueError as e:
            raise ValueError(f"layer {self.name!r}: {e}") from None

    def _initial_weights(self, I):
        H = self.units
        ws = [self._init(self.kernel_initializer, (I, 3 * H)), self._init(self.recurrent_initializer, (H, 3 * H))]
        if self.use_bias:
            ws.append(self._init(self.bias_initializer, (2, 3 * H) if self.reset_after else (3 * H,)))
        return ws

    def build_from_weights(self, weights):
        if self.use_bias and len(weights) == 3:
            self.reset_after = weights[2].ndim == 2
        super().build_from_weights(weights)

    def _make_params(self, dtype):
        H = self.units
        zeros = np.zeros(3 * H, dtype)
        if not self.use_bias:
            b_x, b_h = zeros, zeros.copy()
        elif self.reset_after:
            b_x = np.ascontiguousarray(self._weights[2][0], dtype=dtype)
            b_h = np.ascontiguousarray(self._weights[2][1], dtype=dtype)
        else:
            b_x, b_h = np.ascontiguousarray(self._weights[2], dtype=dtype), zeros
        codes, ab = kacts.pack(self._act_specs)
        return dict(w_x=np.ascontiguousarray(self._weights[0], dtype=dtype),
                    w_h=np.ascontiguousarray(self._weights[1], dtype=dtype),
                    b_x=b_x, b_h=b_h, act_codes=codes, act_ab=ab)

    def _kernel_forward(self, x_tm, states0, m, dtype):
        T, B, _ = x_tm.shape
        H = self.units
        p = self._params(dtype)
        y = np.empty((T, B, H), dtype)
        hT = np.empty((B, H), dtype)
        get_backend().gru_forward(x_tm, p["w_x"], p["w_h"], p["b_x"], p["b_h"], states0[0], m,
                                  p["act_codes"], p["act_ab"], 0.0, self.reset_after, self.go_backwards,
                                  np.empty((T, B, 3 * H), dtype), np.empty((T, B, 3 * H), dtype), y, hT,
                                  np.empty((0, 0, 0), dtype))
        return y, [hT]

    def get_config(self):
        cfg = super().get_config()
        cfg["reset_after"] = self.reset_after
        return cfg


class SimpleRNN(RNN):
    """Fully connected RNN: h = activation(x @ kernel + h_prev @ recurrent_kernel + bias). NumPy loop
    (no fused kernel: SimpleRNN models are small)."""

    n_states = 1
    weight_names = ("kernel", "recurrent_kernel", "bias")

    def _resolve_acts(self):
        return [activations.rnn_spec(self.activation)]

    def _initial_weights(self, I):
        H = self.units
        ws = [self._init(self.kernel_initializer, (I, H)), self._init(self.recurrent_initializer, (H, H))]
        if self.use_bias:
            ws.append(self._init(self.bias_initializer, (H,)))
        return ws

    def _make_params(self, dtype):
        b = self._weights[2] if self.use_bias else np.zeros(self.units)
        return dict(w_x=self._weights[0].astype(dtype), w_h=self._weights[1].astype(dtype), b=b.astype(dtype))

    def _kernel_forward(self, x_tm, states0, m, dtype):
        p = self._params(dtype)
        code, alpha, beta = self._act_specs[0]
        T = x_tm.shape[0]
        z = x_tm @ p["w_x"] + p["b"]
        h = states0[0]
        y = np.empty(z.shape, dtype)
        for t in (range(T - 1, -1, -1) if self.go_backwards else range(T)):
            h_new = kacts.activate(code, alpha, beta, z[t] + h @ p["w_h"])
            h = np.where(m[t].astype(bool)[:, None], h_new, h) if m.shape[0] else h_new
            y[t] = h
        return y, [h.copy()]


class Bidirectional(Layer):
    """Runs `layer` forward and a copy of it backward over the sequence, then merges (Keras semantics:
    the backward sequence is flipped back to input order; merge_mode concat, sum, mul, ave or None).

    Weights: the forward layer's, then the backward layer's.
    """

    def __init__(self, layer, merge_mode="concat", weights=None, backward_layer=None, **kwargs):
        if not isinstance(layer, RNN):
            raise ValueError(f"Bidirectional expects an LSTM, GRU or SimpleRNN layer, got {type(layer).__name__}")
        if merge_mode not in ("concat", "sum", "mul", "ave", None):
            raise ValueError(f"merge_mode must be one of 'concat', 'sum', 'mul', 'ave', None; got {merge_mode!r}")
        super().__init__(**kwargs)
        self.merge_mode = merge_mode
        self.forward_layer = layer
        if backward_layer is None:
            backward_layer = copy.deepcopy(layer)
            backward_layer.go_backwards = not layer.go_backwards
            backward_layer.name = f"backward_{layer.name}"
        self.backward_layer = backward_layer
        self.forward_layer.name = layer.name if layer.name.startswith("forward_") else f"forward_{layer.name}"
        self.return_sequences, self.return_state = layer.return_sequences, layer.return_state
        self.stateful = layer.stateful
        for lyr in (self.forward_layer, self.backward_layer):
            lyr.zero_output_for_mask = self.return_sequences

    @property
    def units(self):
        return self.forward_layer.units

    def build(self, input_shape):
        self.forward_layer._ensure_built(input_shape)
        self.backward_layer._ensure_built(input_shape)
        self.built = True

    def build_from_weights(self, weights):
        n = len(weights) // 2
        self.forward_layer.set_weights(weights[:n])
        self.backward_layer.set_weights(weights[n:])
        self.built = True

    @property
    def _weights(self):
        return self.forward_layer._weights + self.backward_layer._weights

    @_weights.setter
    def _weights(self, value):
        pass

    def set_weights(self, weights):
        weights = list(weights)
        if not self.built:
            self.build_from_weights(weights)
            return
        n = len(self.forward_layer._weights)
        if len(weights) != 2 * n:
            raise ValueError(f"layer {self.name!r} (Bidirectional) expects {2 * n} weights, got {len(weights)}")
        self.forward_layer.set_weights(weights[:n])
        self.backward_layer.set_weights(weights[n:])

    def reset_states(self, states=None):
        self.forward_layer.reset_states()
        self.backward_layer.reset_states()

    def compute_output_shape(self, input_shape):
        fw = self.forward_layer.compute_output_shape(input_shape)
        out = fw[0] if self.return_state else fw
        states = fw[1:] if self.return_state else []
        if self.merge_mode == "concat":
            out = out[:-1] + (2 * self.units,)
        outs = [out, out] if self.merge_mode is None else [out]
        if self.return_state:
            return outs + states + states
        return outs if self.merge_mode is None else out

    def compute_mask(self, inputs, mask=None):
        out_mask = mask if self.return_sequences else None
        n_out = 2 if self.merge_mode is None else 1
        if self.return_state:
            return [out_mask] * n_out + [None] * (2 * self.forward_layer.n_states)
        return [out_mask] * 2 if self.merge_mode is None else out_mask

    def call(self, inputs, mask=None, training=False, initial_state=None):
        x = _as_float_input(self, inputs)
        _check_rank3(self, x)
        fw_init = bw_init = None
        if initial_state is not None:
            n = len(initial_state) // 2
            fw_init, bw_init = initial_state[:n], initial_state[n:]
        fw = self.forward_layer.call(x, mask=mask, initial_state=fw_init)
        bw = self.backward_layer.call(x, mask=mask, initial_state=bw_init)
        return self._merge(fw, bw)

    def _merge(self, fw, bw):
        fw_states = bw_states = []
        if self.return_state:
            fw, fw_states = fw[0], fw[1:]
            bw, bw_states = bw[0], bw[1:]
        if self.return_sequences:
            bw = bw[:, ::-1]
        if self.merge_mode == "concat":
            out = [np.concatenate([fw, bw], axis=-1)]
        elif self.merge_mode == "sum":
            out = [fw + bw]
        elif self.merge_mode == "mul":
            out = [fw * bw]
        elif self.merge_mode == "ave":
            out = [(fw + bw) / 2]
        else:
            out = [fw, np.ascontiguousarray(bw)]
        if self.return_state:
            return out + list(fw_states) + list(bw_states)
        return out if self.merge_mode is None else out[0]

    def get_config(self):
        cfg = super().get_config()
        cfg.update(merge_mode=self.merge_mode)
        return cfg
