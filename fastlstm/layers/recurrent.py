"""Recurrent layers with Keras 3 semantics: LSTM, GRU, SimpleRNN, Bidirectional.

Public tensors are batch-first (batch, timesteps, features); the kernels are time-major. In inference the layers
hand the kernels the batch-first arrays themselves (batch_major: the steps read and write rows with a stride, no
transposed copies); training transposes once on the way in and once on the way out, and with several kernel
threads runs one share of the batch rows per thread (TRAIN_MIN_ROWS_PER_THREAD). Masking follows Keras
(formats.md section 4): a masked step keeps the state; a masked step's sequence output repeats the previous
output (zeros before the first valid step), or is zero when zero_output_for_mask is set (Bidirectional with
return_sequences sets it).
"""
import copy

import numpy as np

from .. import activations, config, initializers
from .._kernels import acts as kacts, batch_first, kernel_kw
from ..backend import get_backend
from .base import Layer, float_dtype
from .core import TokenRows, TokenRowsGrad

_EMPTY_MASK = np.zeros((0, 0), np.uint8)
# Training on several threads (config.kernel_threads()): an LSTM/GRU forward and backward split the batch into one
# share of rows per thread, each share a single-threaded kernel call on its own workspace (the kernels release the
# GIL), the weight gradients of the shares summed. From this many rows per share on: B=32, T=200, H=128 forward +
# backward, 2 threads of 16 rows, took 39.9 ms against 63.7 ms on one thread (kernel calls, this 2-core VM).
TRAIN_MIN_ROWS_PER_THREAD = 8
# An Embedding feeding an LSTM/GRU: project each distinct token once (kernel projected-input mode) when at most
# this fraction of the positions hold distinct tokens. Past it, the gather into (T, B, G) (and in training the
# per-token sum of dz) cost more than the input GEMMs saved. Break-even measured on the IMDB model (Embedding
# 20000x128 -> LSTM(128)), 1 thread: a training step about 0.8, predict about 0.65; a real IMDB batch of 32
# reviews has 0.24, uniform random ids over the vocabulary 0.86.
PROJECT_MAX_DISTINCT = {"train": 0.75, "predict": 0.5}
# ... and only when the input GEMM (positions x E x G) is large against the distinct-id pass, which costs about
# as much as a sweep over the vocabulary: a one-review predict of a small model (the demo's 200 words,
# Embedding(10000, 32) -> LSTM(32)) is faster without (measured 27 us for the pass, about as much as it saves)
PROJECT_MIN_WORK_PER_VOCAB = 150
# Inference only: once a layer has projected as many token positions as the vocabulary has ids, it keeps the whole
# table[V] @ w_x (at most this many bytes) until its or the Embedding's weights change; predict then only gathers
# rows (no distinct-id pass, no input GEMM). Built after that much work, it costs at most what it already saved.
TOKEN_TABLE_MAX_BYTES = 64 << 20


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
    # tf_keras / Keras 2 (base_rnn.py; the loader sets it for Keras-2 files): a stateful layer called with
    # initial_state runs from its carried state instead once that state is non-zero. Keras 3 always uses
    # initial_state.
    keras2_stateful_initial_state = False

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
        if isinstance(inputs, TokenRows):
            proj = self._projected_input(inputs)
            if proj is not None:
                return self.run(None, mask=mask, initial_state=initial_state, projected=proj)
            inputs = inputs.gather()
        x = self._batch_first_input(inputs)
        out = self.run(x, mask=mask, initial_state=initial_state)
        return out

    def _projected_input(self, rows, z_out=None, training=False):
        """For token rows from an Embedding: (z, e_u) with z (T, B, G) = table[ids] @ w_x time-major, every
        distinct token projected once, and e_u (U, E) the distinct rows; the kernels take z in their
        projected-input mode (x of shape (T, B, 0)). None when this layer runs on the gathered rows instead:
        SimpleRNN, time_major, input dropout in training, or too many distinct tokens for it to pay.
        z_out: None, or a function returning the (T, B, G) array to write z into (called only when projecting)."""
        if not getattr(self, "projects_tokens", False) or self.time_major or not self.built \
                or rows.shape[2] != self.input_dim:
            return None
        B, T, E = rows.shape
        if not training:
            table = self._token_table(rows)
            if table is not None:
                return np.take(table, rows.ids.T, axis=0, out=z_out and z_out(), mode="clip"), None
        if B * T * E * self.gates * self.units < PROJECT_MIN_WORK_PER_VOCAB * rows.layer.input_dim:
            return None
        uids, inv_tm = rows.unique()
        if uids.size > PROJECT_MAX_DISTINCT["train" if training else "predict"] * inv_tm.size:
            return None
        dtype = rows.dtype
        e_u = np.take(rows.layer._weights[0], uids, axis=0)
        table = e_u @ self._params(dtype)["w_x"]
        # (mode='clip': inv_tm is in range by construction, and NumPy buffers `out` in the default mode: 5x slower)
        z = np.take(table, inv_tm, axis=0, out=z_out and z_out(), mode="clip")
        return z, e_u

    def _token_table(self, rows):
        """Inference: the whole table[V] @ w_x (V, G) for these rows' Embedding, built once this layer has seen
        V token positions (counted here) and kept in the weight cache (`_cast`, cleared when this layer's weights
        change; the Embedding's weight version is checked); None before that or over TOKEN_TABLE_MAX_BYTES."""
        emb, dtype = rows.layer, np.dtype(rows.dtype)
        V = emb.input_dim
        if V * self.gates * self.units * dtype.itemsize > TOKEN_TABLE_MAX_BYTES:
            return None
        # kept with the embedding array it came from (a replaced array is seen even without _weights_changed)
        source, stamp = emb._weights[0], (getattr(emb, "_version", 0), dtype)
        entry = self._cast.get("token_table")
        if entry is not None and entry[0] is source and entry[1] == stamp:
            return entry[2]
        seen = self._cast.get("token_positions", 0) + rows.ids.size
        self._cast["token_positions"] = seen
        if seen < V:
            return None
        table = np.ascontiguousarray(source, dtype=dtype) @ self._params(dtype)["w_x"]
        self._cast["token_table"] = (source, stamp, table)
        return table

    def _batch_first_input(self, inputs):
        """The input as a float array (batch, timesteps, features) (time_major swapped), checked."""
        x = _as_float_input(self, inputs)
        if self.time_major:
            x = np.swapaxes(x, 0, 1)
        _check_rank3(self, x)
        if x.shape[2] != self.input_dim:
            raise ValueError(f"layer {self.name!r} expects input of shape (batch, timesteps, {self.input_dim}), "
                             f"got {x.shape}")
        return x

    def _initial_states(self, B, dtype, initial_state):
        if (initial_state is not None and self.keras2_stateful_initial_state and self.stateful
                and self.states is not None and any(np.any(s) for s in self.states)):
            initial_state = None
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

    def run(self, x, mask=None, initial_state=None, training=False, projected=None):
        """Batch-first run with Keras masking semantics; returns what `call` returns. projected: (z, _) from
        _projected_input instead of x."""
        if projected is None:
            B, T, _ = x.shape
            dtype = float_dtype(x)
            x_tm, z = np.swapaxes(np.ascontiguousarray(x, dtype=dtype), 0, 1), None    # (a view)
        else:
            z = projected[0]
            T, B, _ = z.shape
            dtype = z.dtype
            x_tm = np.empty((T, B, 0), dtype)
        m = _mask_to_kernel(mask, B, T)
        states0 = self._initial_states(B, dtype, initial_state)
        y_tm, final = self._kernel_forward(x_tm, states0, m, dtype, z_ws=z)
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

    # ---- training (BPTT through the backend kernels) -------------------------------------------------
    def _train_workspace(self, key, T, B, I, dtype):
        """Buffers of one training forward/backward, reused across steps (keyed by call site and shape)."""
        cache = self.__dict__.setdefault("_train_ws", {})
        k = (key, T, B, I, np.dtype(dtype).str)
        ws = cache.get(k)
        if ws is None:
            if len(cache) >= 8:            # (one per call site and share of rows)
                cache.pop(next(iter(cache)))
            H, G = self.units, self.gates * self.units
            ws = cache[k] = dict(z=np.empty((T, B, G), dtype), z2=np.empty((T, B, G), dtype),
                                 y=np.empty((T, B, H), dtype), cs=np.empty((T, B, H), dtype),
                                 gates=np.empty((T, B, G), dtype), dz=np.empty((T, B, G), dtype),
                                 dz2=np.empty((T, B, G), dtype), dx=np.empty((T, B, I), dtype),
                                 dy=np.zeros((T, B, H), dtype))
        return ws

    def forward(self, inputs, mask=None, training=False, initial_state=None, rng=None, ws_key=0, **kwargs):
        """Training forward: returns (what `call` returns, ctx for `backward`)."""
        if training and self.recurrent_dropout > 0:
            raise NotImplementedError(f"layer {self.name!r}: recurrent_dropout is not supported in fastlstm training "
                                      f"(the fused kernels have one recurrent GEMM per step); use dropout= or a "
                                      f"Dropout layer instead")
        rows = inputs if isinstance(inputs, TokenRows) else None
        proj = dp = None
        if rows is not None and not (training and self.dropout > 0):
            # token rows from an Embedding: each distinct token projected once, straight into the workspace (with
            # row shares into a new array, which the shares take slices of)
            B, T, _ = rows.shape
            dtype = rows.dtype
            z_out = None if training and self._row_shares(B) else (
                lambda: self._train_workspace(ws_key, T, B, 0, dtype)["z"])
            proj = self._projected_input(rows, training=training, z_out=z_out)
        if proj is not None:
            x, extra = np.empty((B, T, 0), dtype), dict(rows=rows, e_u=proj[1])
        else:
            x = self._batch_first_input(rows.gather() if rows is not None else inputs)
            B, T, I = x.shape
            dtype = float_dtype(x)
            if training and self.dropout > 0:
                # Keras 3: one input dropout mask per sequence, shared by every timestep
                rng = rng if rng is not None else np.random.default_rng()
                dp = (rng.random((B, 1, I)) >= self.dropout).astype(dtype) * dtype.type(1.0 / (1.0 - self.dropout))
                x = x * dp
            extra = {}
        m = _mask_to_kernel(mask, B, T)
        states0 = self._initial_states(B, dtype, initial_state)
        shares = self._row_shares(B) if training else None
        if shares is not None:
            parts = self._forward_shares(shares, x, states0, m, dtype, ws_key, None if proj is None else proj[0])
            final = [np.concatenate([c["final"][k] for c in parts]) for k in range(self.n_states)]
            x_tm, ws = None, None
            y_tm = np.concatenate([c["ws"]["y"] for c in parts], axis=1)
        else:
            x_tm, parts = np.ascontiguousarray(np.swapaxes(x, 0, 1), dtype=dtype), None
            ws = self._train_workspace(ws_key, T, B, x_tm.shape[2], dtype)     # (projected: z is in it already)
            _, final = self._kernel_forward(x_tm, states0, m, dtype, ws=ws)
            y_tm = ws["y"]
        if self.stateful:
            self.states = [s.copy() for s in final]
        out = self._assemble(y_tm, final, m)
        return out, dict(x_tm=x_tm, T=T, B=B, states0=states0, m=m, dtype=dtype, ws=ws, dp=dp, shares=parts,
                         **extra)

    def _row_shares(self, B):
        """[(r0, r1), ...]: one share of the batch rows per kernel thread (TRAIN_MIN_ROWS_PER_THREAD rows at
        least) for a training forward and backward, or None (one kernel call on all rows)."""
        if not isinstance(self, (LSTM, GRU)):
            return None
        k = min(config.kernel_threads(), B // TRAIN_MIN_ROWS_PER_THREAD)
        return [(B * i // k, B * (i + 1) // k) for i in range(k)] if k > 1 else None

    def _forward_shares(self, shares, x, states0, m, dtype, ws_key, z=None):
        """The training forward on each share of rows in its own thread and workspace; x (B, T, I) batch-first
        (each share takes its time-major copy). Returns the shares' contexts for _kernel_backward (their final
        states in "final"). z: the projected input (T, B, G) of a projected-input forward (x (B, T, 0)), copied
        into the shares' workspaces."""
        from ..model import _predict_pool
        _, T, I = x.shape
        parts = [dict(x_tm=np.ascontiguousarray(np.swapaxes(x[r0:r1], 0, 1), dtype=dtype),
                      states0=[s[r0:r1].copy() for s in states0],
                      m=np.ascontiguousarray(m[:, r0:r1]) if m.shape[0] else m, dtype=dtype, rows=(r0, r1),
                      ws=self._train_workspace((ws_key, i), T, r1 - r0, I, dtype))
                 for i, (r0, r1) in enumerate(shares)]
        if z is not None:
            for c in parts:
                c["ws"]["z"][...] = z[:, c["rows"][0]:c["rows"][1]]

        def run(c):
            c["final"] = self._kernel_forward(c["x_tm"], c["states0"], c["m"], dtype, ws=c["ws"])[1]

        list(_predict_pool(config.NUM_THREADS).map(run, parts))
        return parts

    def _backward_shares(self, ctx, dy, dfinal):
        """_kernel_backward on each share of rows in its own thread; the first adds to self.grads, the others
        to zeroed arrays that are added after. Returns (dx_tm (T, B, I), d_init) as _kernel_backward does."""
        from ..model import _predict_pool
        parts = ctx["shares"]
        for i, c in enumerate(parts):
            c["grads"] = None if i == 0 else [np.zeros(g.shape, g.dtype) for g in self.grads]

        def run(c):
            r0, r1 = c["rows"]
            return self._kernel_backward(c, np.ascontiguousarray(dy[:, r0:r1]), [d[r0:r1].copy() for d in dfinal])

        done = list(_predict_pool(config.NUM_THREADS).map(run, parts))
        for c in parts[1:]:
            for g, gs in zip(self.grads, c.pop("grads")):
                g += gs
        dx_tm = np.concatenate([d[0] for d in done], axis=1)
        if "rows" in ctx:                 # projected input: _projected_backward reads dz of all rows
            ctx["ws"] = dict(dz=np.concatenate([c["ws"]["dz"] for c in parts], axis=1))
        return dx_tm, [np.concatenate([d[1][k] for d in done]) for k in range(self.n_states)]

    def backward(self, ctx, d_out):
        """BPTT: d loss / d input (batch-first); weight gradients are added to self.grads.
        d_out is what `call` returned, as gradients (None where the loss does not depend on it).
        ctx["d_initial_state"] receives the gradients of the initial states."""
        d_main, d_states = (d_out[0], list(d_out[1:])) if self.return_state else (d_out, [])
        ws, m, dtype, T, B = ctx["ws"], ctx["m"], ctx["dtype"], ctx["T"], ctx["B"]
        dy = ws["dy"] if ws is not None else np.zeros((T, B, self.units), dtype)    # all zeros between calls
        dfinal = [np.zeros((B, self.units), dtype) for _ in range(self.n_states)]
        touched = None
        if d_main is not None:
            d_main = np.asarray(d_main, dtype=dtype)
            if self.return_sequences:
                d = np.swapaxes(d_main, 0, 1)                        # (T, B, H), output (processing) order
            else:
                d = d_main[None]                                     # the last output in processing order
            if m.shape[0]:
                valid = (m[::-1] if self.go_backwards else m).astype(bool)[:, :, None]
                if not self.return_sequences:
                    valid = valid[-1:] if self.zero_output_for_mask else valid.any(axis=0, keepdims=True)
                elif not self.zero_output_for_mask:
                    valid = np.logical_or.accumulate(valid, axis=0)
                d = np.where(valid, d, 0)
            if self.return_sequences:
                dy[...] = d[::-1] if self.go_backwards else d
                touched = slice(None)
            else:
                touched = 0 if self.go_backwards else T - 1
                dy[touched] = d[0]
        for k, ds in enumerate(d_states):
            if ds is not None:
                dfinal[k] += ds
        if ctx["shares"] is not None:
            dx_tm, d_init = self._backward_shares(ctx, dy, dfinal)
        else:
            dx_tm, d_init = self._kernel_backward(ctx, dy, dfinal)
        if touched is not None:
            dy[touched] = 0
        ctx["d_initial_state"] = d_init
        if "rows" in ctx:
            return self._projected_backward(ctx)
        dx = np.swapaxes(dx_tm, 0, 1)
        if ctx["dp"] is not None:
            dx = dx * ctx["dp"]
        if self.time_major:
            dx = np.swapaxes(dx, 0, 1)
        return dx

    def _projected_backward(self, ctx):
        """The input side of a projected-input backward: the kernel left dz (T, B, G), the gradient w.r.t.
        each position's x_t @ w_x. Summed per distinct token, S (U, G):  dw_x += e_u^T S;  the gradient w.r.t.
        each distinct token's row is S w_x^T (a TokenRowsGrad for the Embedding)."""
        from ..training._fused import scatter_add_rows
        rows, e_u, dz, dtype = ctx["rows"], ctx["e_u"], ctx["ws"]["dz"], ctx["dtype"]
        uids, inv_tm = rows.unique()
        G = dz.shape[2]
        s = np.zeros((uids.size, G), dtype)
        scatter_add_rows(s, inv_tm.reshape(-1), dz.reshape(-1, G))
        w_x = self._params(dtype)["w_x"]
        g = self.grads[0]
        g += (e_u.T @ s).astype(g.dtype, copy=False)
        return TokenRowsGrad(rows, s @ w_x.T)

    def _grad_out(self, k, dtype, shape=None, grads=None):
        """Where a kernel accumulates weight k's gradient: (grads or self.grads)[k] itself, or a scratch to add
        later."""
        g = (grads or self.grads)[k]
        if shape is not None or g.dtype != dtype or not g.flags.c_contiguous:
            return np.zeros(shape or g.shape, dtype), True
        return g, False

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
    projects_tokens = True       # takes an Embedding's TokenRows in the kernels' projected-input mode
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

    def _kernel_forward(self, x_tm, states0, m, dtype, ws=None, z_ws=None):
        """z_ws: the projected input (then x_tm is (T, B, 0)), else None. Returns y (T, B, H) (a view of a
        batch-first array when x_tm is one) and the final states."""
        T, B, _ = x_tm.shape
        H = self.units
        p = self._params(dtype)
        hT, cT = np.empty((B, H), dtype), np.empty((B, H), dtype)
        x = batch_first(x_tm) if ws is None and z_ws is None else None
        if ws is None:
            lead = (T, B) if x is None else (B, T)
            none3 = np.empty((0, 0, 0), dtype)
            y, gates, cs = np.empty(lead + (H,), dtype), none3, none3
            z_ws = np.empty(lead + (4 * H,), dtype) if z_ws is None else z_ws
        else:
            y, z_ws, gates, cs = ws["y"], ws["z"], ws["gates"], ws["cs"]
        w_x = p["w_x"] if x_tm.shape[2] else p["w_x"][:0]
        kern = get_backend()
        kern.lstm_forward(x_tm if x is None else x, w_x, p["w_h"], p["b"], p["p"], states0[0], states0[1], m,
                          p["act_codes"], p["act_ab"], 0.0, False, self.go_backwards, z_ws, y, hT, cT, gates, cs,
                          batch_major=x is not None, **kernel_kw(kern, p))
        return (y if x is None else y.transpose(1, 0, 2)), [hT, cT]

    def _kernel_backward(self, ctx, dy, dfinal):
        x_tm, ws, dtype = ctx["x_tm"], ctx["ws"], ctx["dtype"]
        T, B, _ = x_tm.shape
        H = self.units
        p = self._params(dtype)
        grads = ctx.get("grads") or self.grads            # (a share of rows other than the first: its own)
        dw_x, add_x = self._grad_out(0, dtype, grads=grads)
        dw_h, add_h = self._grad_out(1, dtype, grads=grads)
        db, add_b = self._grad_out(2, dtype, grads=grads) if self.use_bias else (np.zeros(4 * H, dtype), False)
        dh0, dc0 = np.empty((B, H), dtype), np.empty((B, H), dtype)
        w_x, dw_x = (p["w_x"], dw_x) if x_tm.shape[2] else (p["w_x"][:0], dw_x[:0])   # projected input: none
        get_backend().lstm_backward(x_tm, w_x, p["w_h"], p["b"], p["p"], ctx["states0"][0], ctx["states0"][1],
                                    ctx["m"], p["act_codes"], p["act_ab"], 0.0, False, self.go_backwards,
                                    ws["z"], ws["gates"], ws["cs"], ws["y"], dy, dfinal[0], dfinal[1],
                                    ws["dz"], ws["dx"], dw_x, dw_h, db, np.zeros_like(p["p"]), dh0, dc0)
        for k, (g, add) in enumerate(((dw_x, add_x), (dw_h, add_h), (db, add_b))):
            if add:
                grads[k] += g
        return ws["dx"], [dh0, dc0]

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
    projects_tokens = True
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

    def _kernel_forward(self, x_tm, states0, m, dtype, ws=None, z_ws=None):
        """z_ws: the projected input (then x_tm is (T, B, 0)), else None. Returns y (T, B, H) (a view of a
        batch-first array when x_tm is one) and the final state."""
        T, B, _ = x_tm.shape
        H = self.units
        p = self._params(dtype)
        hT = np.empty((B, H), dtype)
        x = batch_first(x_tm) if ws is None and z_ws is None else None
        if ws is None:
            lead = (T, B) if x is None else (B, T)
            y, hz_ws = np.empty(lead + (H,), dtype), np.empty((T, B, 3 * H), dtype)
            z_ws = np.empty(lead + (3 * H,), dtype) if z_ws is None else z_ws
            gates = np.empty((0, 0, 0), dtype)
        else:
            y, z_ws, hz_ws, gates = ws["y"], ws["z"], ws["z2"], ws["gates"]
        w_x = p["w_x"] if x_tm.shape[2] else p["w_x"][:0]
        kern = get_backend()
        kern.gru_forward(x_tm if x is None else x, w_x, p["w_h"], p["b_x"], p["b_h"], states0[0], m, p["act_codes"],
                         p["act_ab"], 0.0, self.reset_after, self.go_backwards, z_ws, hz_ws, y, hT, gates,
                         batch_major=x is not None, **kernel_kw(kern, p))
        return (y if x is None else y.transpose(1, 0, 2)), [hT]

    def _kernel_backward(self, ctx, dy, dfinal):
        x_tm, ws, dtype = ctx["x_tm"], ctx["ws"], ctx["dtype"]
        T, B, _ = x_tm.shape
        H = self.units
        p = self._params(dtype)
        grads = ctx.get("grads") or self.grads            # (a share of rows other than the first: its own)
        dw_x, add_x = self._grad_out(0, dtype, grads=grads)
        dw_h, add_h = self._grad_out(1, dtype, grads=grads)
        if not self.use_bias:
            db_x, db_h, add_b = np.zeros(3 * H, dtype), np.zeros(3 * H, dtype), None
        elif self.reset_after:
            db, add_b = self._grad_out(2, dtype, grads=grads)
            db_x, db_h = db[0], db[1]
        else:
            db_x, add_b = self._grad_out(2, dtype, grads=grads)
            db_h = np.zeros(3 * H, dtype)          # Keras reset_after=False has no recurrent bias
        dh0 = np.empty((B, H), dtype)
        w_x, dw_x_k = (p["w_x"], dw_x) if x_tm.shape[2] else (p["w_x"][:0], dw_x[:0])   # projected input: none
        get_backend().gru_backward(x_tm, w_x, p["w_h"], p["b_x"], p["b_h"], ctx["states0"][0], ctx["m"],
                                   p["act_codes"], p["act_ab"], 0.0, self.reset_after, self.go_backwards,
                                   ws["z"], ws["z2"], ws["gates"], ws["y"], dy, dfinal[0],
                                   ws["dz"], ws["dz2"], ws["dx"], dw_x_k, dw_h, db_x, db_h, dh0)
        if add_x:
            grads[0] += dw_x
        if add_h:
            grads[1] += dw_h
        if add_b:
            grads[2] += np.stack([db_x, db_h]) if self.reset_after else db_x
        return ws["dx"], [dh0]

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

    def _kernel_forward(self, x_tm, states0, m, dtype, ws=None, z_ws=None):
        p = self._params(dtype)
        code, alpha, beta = self._act_specs[0]
        T = x_tm.shape[0]
        z = x_tm @ p["w_x"] + p["b"]
        h = states0[0]
        y = np.empty(z.shape, dtype) if ws is None else ws["y"]
        for t in (range(T - 1, -1, -1) if self.go_backwards else range(T)):
            a = z[t] + h @ p["w_h"]
            if ws is not None:
                ws["z"][t] = a
            h_new = kacts.activate(code, alpha, beta, a)
            h = np.where(m[t].astype(bool)[:, None], h_new, h) if m.shape[0] else h_new
            y[t] = h
        return y, [h.copy()]

    def _kernel_backward(self, ctx, dy, dfinal):
        # h_t = act(a_t),  a_t = x_t @ w_x + h_{t-1} @ w_h + b;  a masked step carries h (and dh) through
        x_tm, ws, dtype, m = ctx["x_tm"], ctx["ws"], ctx["dtype"], ctx["m"]
        T, B, I = x_tm.shape
        p = self._params(dtype)
        code, alpha, beta = self._act_specs[0]
        order = list(range(T - 1, -1, -1) if self.go_backwards else range(T))
        da_all = np.zeros((T, B, self.units), dtype)
        dw_h = np.zeros_like(p["w_h"])
        dh = dfinal[0].copy()
        for k in range(T - 1, -1, -1):
            t = order[k]
            h_prev = ws["y"][order[k - 1]] if k > 0 else ctx["states0"][0]
            dh = dh + dy[t]
            a = ws["z"][t]
            da = dh * kacts.derivative(code, alpha, beta, a, kacts.activate(code, alpha, beta, a))
            if m.shape[0]:
                valid = m[t].astype(bool)[:, None]
                da = np.where(valid, da, 0)
                dh = np.where(valid, da @ p["w_h"].T, dh)
            else:
                dh = da @ p["w_h"].T
            dw_h += h_prev.T @ da
            da_all[t] = da
        da2 = da_all.reshape(T * B, -1)
        self.grads[0] += x_tm.reshape(T * B, I).T @ da2
        self.grads[1] += dw_h
        if self.use_bias:
            self.grads[2] += da2.sum(axis=0)
        return (da2 @ p["w_x"].T).reshape(T, B, I), [dh]


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
        # a backward_layer may have its own width (concat / merge_mode=None)
        fw = self.forward_layer.compute_output_shape(input_shape)
        bw = self.backward_layer.compute_output_shape(input_shape)
        fw_out, fw_states = (fw[0], fw[1:]) if self.return_state else (fw, [])
        bw_out, bw_states = (bw[0], bw[1:]) if self.return_state else (bw, [])
        if self.merge_mode == "concat":
            outs = [fw_out[:-1] + (fw_out[-1] + bw_out[-1],)]
        elif self.merge_mode is None:
            outs = [fw_out, bw_out]
        else:
            outs = [fw_out]
        if self.return_state:
            return outs + list(fw_states) + list(bw_states)
        return outs if self.merge_mode is None else outs[0]

    def compute_mask(self, inputs, mask=None):
        out_mask = mask if self.return_sequences else None
        n_out = 2 if self.merge_mode is None else 1
        if self.return_state:
            return [out_mask] * n_out + [None] * (2 * self.forward_layer.n_states)
        return [out_mask] * 2 if self.merge_mode is None else out_mask

    @staticmethod
    def _split_initial_state(initial_state):
        """[forward states..., backward states...] -> (forward, backward); (None, None) without one."""
        if initial_state is None:
            return None, None
        n = len(initial_state) // 2
        return initial_state[:n], initial_state[n:]

    def call(self, inputs, mask=None, training=False, initial_state=None):
        x = inputs if isinstance(inputs, TokenRows) else _as_float_input(self, inputs)   # token rows: each half
        if not isinstance(x, TokenRows):                                                # projects them itself
            _check_rank3(self, x)
        fw_init, bw_init = self._split_initial_state(initial_state)
        fw = self.forward_layer.call(x, mask=mask, initial_state=fw_init)
        bw = self.backward_layer.call(x, mask=mask, initial_state=bw_init)
        return self._merge(fw, bw)

    def forward(self, inputs, mask=None, training=False, initial_state=None, **kwargs):
        x = inputs if isinstance(inputs, TokenRows) else _as_float_input(self, inputs)   # token rows: each half
        if not isinstance(x, TokenRows):                                                # projects them itself
            _check_rank3(self, x)
        fw_init, bw_init = self._split_initial_state(initial_state)
        fw, cf = self.forward_layer.forward(x, mask=mask, training=training, initial_state=fw_init, **kwargs)
        bw, cb = self.backward_layer.forward(x, mask=mask, training=training, initial_state=bw_init, **kwargs)
        fw_main = fw[0] if self.return_state else fw
        bw_main = bw[0] if self.return_state else bw
        return self._merge(fw, bw), dict(cf=cf, cb=cb, fw=fw_main, bw=bw_main[:, ::-1] if self.return_sequences
                                         else bw_main, has_init=initial_state is not None)

    def backward(self, ctx, d_out):
        n_out = 2 if self.merge_mode is None else 1
        d_list = list(d_out) if isinstance(d_out, (list, tuple)) else [d_out]
        d_main, d_states = d_list[:n_out], d_list[n_out:]
        n_s = self.forward_layer.n_states
        if self.merge_mode is None:
            d_fw, d_bw = d_main
        else:
            d = d_main[0]
            if d is None:
                d_fw = d_bw = None
            elif self.merge_mode == "concat":
                d_fw, d_bw = d[..., :self.units], d[..., self.units:]
            elif self.merge_mode == "sum":
                d_fw = d_bw = d
            elif self.merge_mode == "ave":
                d_fw = d_bw = d / 2
            else:  # mul
                d_fw, d_bw = d * ctx["bw"], d * ctx["fw"]
        if d_bw is not None and self.return_sequences:
            d_bw = d_bw[:, ::-1]             # the backward layer's sequence was flipped back before merging
        dx = None
        for lyr, c, dm, ds in ((self.forward_layer, ctx["cf"], d_fw, d_states[:n_s]),
                               (self.backward_layer, ctx["cb"], d_bw, d_states[n_s:])):
            d_sub = [dm] + list(ds) + [None] * (n_s - len(ds)) if lyr.return_state else dm
            dxi = lyr.backward(c, d_sub)
            dx = dxi if dx is None else dx + dxi
        if ctx["has_init"]:
            ctx["d_initial_state"] = ctx["cf"]["d_initial_state"] + ctx["cb"]["d_initial_state"]
        return dx

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
