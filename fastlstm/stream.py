"""Streaming sessions: run a model a few timesteps at a time, keeping every recurrent layer's state.

    session = model.stream(batch_size=1)
    y = session.step(x_k)       # x_k (batch, k, features) or (batch, k) token ids; y = what predict returns
                                # for those k steps, continuing from the steps before
    session.reset();  s = session.state;  session.set_state(s)

A session owns all its buffers (states, kernel workspaces) and only reads the model's weights, so many
sessions can run on one model from many threads at once (the kernels release the GIL). One session must not be
stepped from two threads at the same time. The plan is made once per session: per step there is no graph walk
and no validation beyond a shape/dtype check; the recurrent kernels are called directly on preallocated
buffers, the states ping-pong between two buffers. At batch 1 (float32, Cython or Numba backend) an LSTM or GRU
layer steps through a stepper instead (lstm_cy.LSTMStepper, gru_cy.GRUStepper; step_numba's twins): its weights
are packed once per layer (shared by every session on it, repacked when the weights change) so that a step is one
sequential pass over them, and the step updates the session's state arrays in place. A batch-1 chain of [Embedding ->] recurrent /
Dense layers (a text model scoring or generating token by token) runs a chunk in one compiled call
(chain_cy.ChainStepper: embedding rows, the steppers, the Dense products and activations, GIL released) that
reads the layers' current weights on every call; a chunk it does not take goes the general way.
Threads: a session takes fastlstm.set_num_threads' value when it is made (as an onnxruntime session its intra-op
threads); a large LSTM step (at least 2 MiB of weights) then shares its product among them. A service that steps
many sessions from its own threads sets 1.

Equivalence with predict (tested): streaming T steps in chunks equals predict on the whole sequence, with
Keras masking semantics (a masked step keeps the state; return_sequences outputs repeat the carried state,
zeros with zero_output_for_mask). Bidirectional and go_backwards layers need the whole sequence and are refused.
"""
import numpy as np

from . import config
from ._kernels import kernel_kw
from .backend import get_backend
from .layers.recurrent import GRU, LSTM, RNN, Bidirectional

_EMPTY_MASK = np.zeros((0, 0), np.uint8)
# layers that treat every timestep on its own (a session may run them on any k steps)
_PER_TIMESTEP = {"InputLayer", "Embedding", "Masking", "Dense", "Activation", "Dropout", "SpatialDropout1D",
                 "GaussianNoise", "GaussianDropout", "ActivityRegularization", "TimeDistributed", "Add", "Subtract",
                 "Average", "Maximum", "Minimum", "Multiply", "NotEqual"}


def _specialized(kern, dtype):
    """A Cython fused-type kernel's specialization for dtype (skips the per-call fused-type dispatch)."""
    sigs = getattr(kern, "__signatures__", None)
    if isinstance(sigs, dict):
        return sigs.get("float" if np.dtype(dtype) == np.float32 else "double", kern)
    return kern


class _RecurrentStep:
    """One recurrent layer inside a session: its state buffers and kernel workspaces."""

    def __init__(self, layer, B, dtype):
        self.layer, self.B, self.dtype = layer, B, np.dtype(dtype)
        self.H = layer.units
        self.kind = "lstm" if isinstance(layer, LSTM) else "gru" if isinstance(layer, GRU) else "simple"
        self.n_states = layer.n_states
        self.params = layer._params(self.dtype)
        self.bufs = {}
        self.states = [np.zeros((B, self.H), self.dtype) for _ in range(self.n_states)]
        self.spare = [np.zeros((B, self.H), self.dtype) for _ in range(self.n_states)]
        self.none3 = np.empty((0, 0, 0), self.dtype)
        self._cast_seen = layer._cast
        self.stepper = self._make_stepper()

    def _make_stepper(self):
        """A batch-1 LSTM/GRU stepper over packed weights (Cython or Numba backend, float32), else None. It works
        on self.states in place, so with a stepper the states never swap with the spares."""
        if not (self.kind in ("lstm", "gru") and self.B == 1 and self.dtype == np.float32):
            return None
        backend = get_backend()
        if not hasattr(backend, "Packed64"):
            return None
        lyr, p, H = self.layer, self.params, self.H
        key = ("stream_packed", backend.name)          # shared by every session on this layer and backend
        packed = lyr._cast.get(key)
        if packed is None:
            try:
                if self.kind == "lstm":
                    packed = (backend.Packed64(np.ascontiguousarray(np.concatenate([p["w_x"], p["w_h"]]))),)
                elif lyr.reset_after:
                    packed = (backend.Packed64(p["w_x"]), backend.Packed64(p["w_h"]), None)
                else:
                    packed = (backend.Packed64(p["w_x"]), backend.Packed64(np.ascontiguousarray(p["w_h"][:, :2 * H])),
                              backend.Packed64(np.ascontiguousarray(p["w_h"][:, 2 * H:])))
            except RuntimeError:            # a build without AVX2/FMA: the general kernels
                return None
            lyr._cast[key] = packed
        if self.kind == "lstm":
            stepper = backend.LSTMStepper(packed[0], p["b"], p["p"], p["act_codes"], p["act_ab"], 0.0, False,
                                          self.states[0], self.states[1])
        else:
            stepper = backend.GRUStepper(*packed, p["b_x"], p["b_h"], p["act_codes"], p["act_ab"], 0.0,
                                         lyr.reset_after, self.states[0])
        if isinstance(getattr(stepper, "threads", None), int):
            stepper.threads = config.kernel_threads()    # (Cython LSTM: a large step's product on the threads)
        return stepper

    def refresh(self):
        """Re-read the layer's weights when they changed since the plan was made."""
        if self.layer._cast is not self._cast_seen:
            self._cast_seen = self.layer._cast
            self.params = self.layer._params(self.dtype)
            if self.stepper is not None:
                self.stepper = self._make_stepper()

    def workspace(self, k):
        ws = self.bufs.get(k)
        if ws is None:
            G = self.layer.gates * self.H
            ws = self.bufs[k] = (np.empty((k, self.B, G), self.dtype), np.empty((k, self.B, G), self.dtype),
                                 np.empty((k, self.B, self.H), self.dtype))
            if len(self.bufs) > 8:
                self.bufs.pop(next(iter(self.bufs)))
        return ws

    def run(self, x_tm, m):
        """Advance over x_tm (k, B, I); returns y (k, B, H) (the carried state after each step) and the new
        states. y lives in a session buffer until the next run."""
        self.refresh()
        k = x_tm.shape[0]
        z_ws, hz_ws, y = self.workspace(k)
        if self.stepper is not None and not m.shape[0] and x_tm.dtype == np.float32:
            self.stepper.run(np.ascontiguousarray(x_tm), y)
            return y
        p, s, out = self.params, self.states, self.spare
        kern = get_backend()
        if self.kind == "lstm":
            kern.lstm_forward(x_tm, p["w_x"], p["w_h"], p["b"], p["p"], s[0], s[1], m, p["act_codes"], p["act_ab"],
                              0.0, False, False, z_ws, y, out[0], out[1], self.none3, self.none3, **kernel_kw(kern, p))
        elif self.kind == "gru":
            kern.gru_forward(x_tm, p["w_x"], p["w_h"], p["b_x"], p["b_h"], s[0], m, p["act_codes"], p["act_ab"], 0.0,
                             self.layer.reset_after, False, z_ws, hz_ws, y, out[0], self.none3, **kernel_kw(kern, p))
        else:
            y_new, final = self.layer._kernel_forward(x_tm, s, m, self.dtype)
            y = y_new
            out[0][...] = final[0]
        if self.stepper is not None:         # the stepper holds the state arrays: copy, do not swap
            for a, b in zip(s, out):
                a[...] = b
        else:
            self.states, self.spare = out, s
        return y

    def outputs(self, y, m):
        """What the layer returns for these k steps (batch-first), from the run's y and states."""
        lyr = self.layer
        if lyr.return_sequences:
            if m.shape[0] and lyr.zero_output_for_mask:
                y = np.where(m.astype(bool)[:, :, None], y, 0)
            out = np.ascontiguousarray(y.swapaxes(0, 1)) if self.B > 1 else y.reshape(1, y.shape[0], self.H).copy()
        else:
            out = self.states[0].copy()
            if m.shape[0] and lyr.zero_output_for_mask:
                out *= m[-1].astype(bool)[:, None]
        if lyr.return_state:
            return [out] + [s.copy() for s in self.states]
        return out


class StreamSession:
    """A stateful streaming run of `model` with a fixed batch size (see the module docstring).

    Parameters
    ----------
    model : fastlstm.Model
    batch_size : int
    dtype : "float32" (default) or "float64": the compute dtype; float inputs of another dtype are cast.

    Raises
    ------
    ValueError
        The model has a Bidirectional or go_backwards layer (they need the whole sequence), or a recurrent layer
        fed with initial_state tensors.
    """

    def __init__(self, model, batch_size=1, dtype="float32"):
        self.model = model
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        for lyr in model.layers:
            self._check_streamable(lyr)
        self._plan = None
        if model.built:
            self._make_plan()

    # ---- plan ----------------------------------------------------------------------------------------------
    @staticmethod
    def _check_streamable(lyr):
        if isinstance(lyr, Bidirectional):
            raise ValueError(f"model.stream(): layer {lyr.name!r} is Bidirectional; its backward direction needs the "
                             f"whole sequence, so it cannot run step by step. Use predict() on whole sequences.")
        if isinstance(lyr, RNN) and lyr.go_backwards:
            raise ValueError(f"model.stream(): layer {lyr.name!r} has go_backwards=True; it needs the whole sequence, "
                             f"so it cannot run step by step. Use predict() on whole sequences.")
        if isinstance(lyr, RNN) and lyr.time_major:
            raise ValueError(f"model.stream(): layer {lyr.name!r} is time_major; streaming is batch-first only")
        inner = getattr(lyr, "layer", None)
        if isinstance(inner, (RNN, Bidirectional)):
            raise ValueError(f"model.stream(): layer {lyr.name!r} wraps a recurrent layer; not supported in streaming")
        cls = type(lyr).__name__
        per_step = cls in _PER_TIMESTEP or isinstance(lyr, RNN)
        if cls == "Concatenate":
            per_step = getattr(lyr, "axis", -1) not in (1, -2)            # not along time
        elif cls in ("LayerNormalization", "BatchNormalization"):
            per_step = getattr(lyr, "axis", -1) in (-1, 2)
        if not per_step:
            raise ValueError(f"model.stream(): layer {lyr.name!r} ({cls}) may combine several timesteps, so it cannot "
                             f"run step by step; streaming supports recurrent layers and per-timestep layers "
                             f"({', '.join(sorted(_PER_TIMESTEP))}, Concatenate on features, normalization over "
                             f"features). Use predict() on whole sequences.")

    def _make_plan(self):
        m = self.model
        if len(m.inputs) != 1:
            raise ValueError(f"model.stream() supports single-input models; model {m.name!r} has inputs "
                             f"{m.input_names}")
        inp = m.inputs[0]
        self._in_id = inp.id
        self._in_shape = inp.shape
        self._token_input = inp.dtype.kind in "iub"
        self._rnn = []
        self._rnn_of = {}                   # id(node) -> its _RecurrentStep, for the general path
        self._ops = []
        uses_masks = False
        for node in m._nodes:
            lyr = node.layer
            if isinstance(lyr, RNN):
                if any(k not in ("mask", "training") for k in node.kwargs):
                    raise ValueError(f"model.stream(): layer {lyr.name!r} is called with "
                                     f"{sorted(k for k in node.kwargs if k not in ('mask', 'training'))}; only plain "
                                     f"recurrent calls can stream")
                r = _RecurrentStep(lyr, self.batch_size, self.dtype)
                self._rnn.append((self._state_key(lyr), r))
                self._rnn_of[id(node)] = r
                self._ops.append(("rnn", node, r))
            else:
                self._ops.append(("call", node, None))
            if getattr(lyr, "mask_zero", False) or type(lyr).__name__ == "Masking" or "mask" in node.kwargs:
                uses_masks = True
        self._out_ids = [t.id for t in m.outputs]
        self._single_output = m._single_output
        # the fast path: one recurrent layer on float input, nothing else
        self._fast = None
        if (len(self._ops) == 1 and self._ops[0][0] == "rnn" and not uses_masks and not self._token_input
                and not self._rnn[0][1].layer.return_state and self._rnn[0][1].kind in ("lstm", "gru")
                and m.outputs[0] is self._ops[0][1].outputs[0]):
            self._fast = self._make_fast(self._rnn[0][1])
        self._chain_ops = None
        self._chain = None if self._fast is not None else self._make_chain()
        # a chain in one compiled call (Cython backend): it hands what it does not take to the general path
        self._compiled = None if self._chain is None else self._make_compiled_chain()
        if self._compiled is not None:
            self._fast = self._compiled.step
        self._plan = True
        if self._fast is not None:
            # session.step(x) calls the bound closure (or the compiled chain's step) directly: one Python call
            # less per step (a service's hot path); it does what step() documents
            if self._compiled is None:
                self._fast.__doc__ = StreamSession.step.__doc__
            self.step = self._fast

    def _make_chain(self):
        """Batch 1, float32, a plain chain of nodes (each feeds the next; one input, one output) of Embedding,
        Dense, inference no-ops and recurrent layers that have a stepper: a closure running the chunk through
        them on time-major (k, 1, features) arrays, skipping the graph walk and the per-layer checks of the
        general path. It returns None for a chunk it must not take (a padding token 0 of a mask_zero Embedding:
        masking needs the general path, which works on the same states). None when the model is not such a chain.
        """
        if self.batch_size != 1 or self.dtype != np.float32 or len(self.model.outputs) != 1:
            return None
        identity = {"InputLayer", "Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout",
                    "ActivityRegularization"}
        ops, prev, seq = [], self._in_id, True
        for kind, node, r in self._ops:
            lyr = node.layer
            if len(node.inputs) != 1 or node.inputs[0].id != prev or len(node.outputs) != 1 \
                    or any(k != "training" for k in node.kwargs):
                return None
            prev = node.outputs[0].id
            cls = type(lyr).__name__
            if kind == "rnn":
                if r.stepper is None or lyr.return_state or not seq:
                    return None
                ops.append(("rnn", r))
                seq = lyr.return_sequences
            elif cls == "Embedding" and not ops and self._token_input:
                ops.append(("embed", lyr))
            elif cls == "Dense":
                ops.append(("dense", lyr))
            elif cls not in identity:
                return None
        if prev != self._out_ids[0] or not any(op == "rnn" for op, _ in ops):
            return None
        self._chain_ops = ops
        I = self._in_shape[-1]

        def run(x):
            k = x.shape[1]
            if self._token_input:
                if not ops or ops[0][0] != "embed":
                    return None
                ids = x[0]
                lyr = ops[0][1]
                if ids.dtype.kind not in "iu" or (lyr.mask_zero and not ids.all()):
                    return None                     # float ids, or padding: the general path checks / masks
                if ids.min() < 0 or ids.max() >= lyr.input_dim:
                    return None                     # the general path raises the error
                v = lyr._weights[0].take(ids, axis=0).reshape(k, 1, lyr.output_dim)
                todo = ops[1:]
            else:
                v = x.reshape(k, 1, I)
                todo = ops
            for op, obj in todo:
                if op == "rnn":
                    if obj.layer._cast is not obj._cast_seen:
                        obj.refresh()
                    y = obj.workspace(k)[2]
                    obj.stepper.run(np.ascontiguousarray(v, dtype=np.float32), y)
                    v = y if obj.layer.return_sequences else obj.states[0]
                else:                               # Dense on the last axis
                    w = obj._weights
                    z = v @ w[0]
                    if obj.use_bias:
                        z += w[1]
                    v = obj._act(z)
            # (k, 1, F) time-major is (1, k, F) batch-first at batch 1
            return v.reshape(1, k, v.shape[-1]).astype(np.float32) if v.ndim == 3 else v.astype(np.float32)

        return run

    def _make_compiled_chain(self):
        """The chain of _make_chain (self._chain_ops) as one chain_cy.ChainStepper call: ids or float input,
        embedding rows, the recurrent steppers and the Dense products and activations in C, the GIL released.
        None when the backend has no ChainStepper or a Dense activation has no C version (softmax and the
        kernel activation codes have one). The ChainStepper reads the layers' weights on every call and gets a
        rebuilt stepper from renew() when a recurrent layer's weights changed (new `_cast`), so set_weights and
        fit are seen as on the other paths."""
        make = getattr(get_backend(), "ChainStepper", None)
        if make is None or not self._chain_ops:
            return None
        from ._kernels import acts
        specs = []
        for op, obj in self._chain_ops:
            if op == "embed":
                specs.append(("embed", obj, obj.input_dim, obj.output_dim, obj.mask_zero))
            elif op == "rnn":
                def renew(r=obj):
                    r.refresh()
                    return r._cast_seen, r.stepper
                specs.append(("rnn", obj.layer, renew, obj.stepper.n_in, obj.H, obj.layer.return_sequences))
            else:
                if obj.activation == "softmax":
                    code, alpha, beta = -1, 0.0, 0.0
                elif obj.activation in acts.KERAS_ACTIVATIONS:
                    code, alpha, beta = acts.KERAS_ACTIVATIONS[obj.activation]
                else:
                    return None                       # e.g. log_softmax, mish: the closure's NumPy activation
                specs.append(("dense", obj, obj._weights[0].shape[0], obj.units, obj.use_bias, code, alpha, beta))
        first = specs[0]
        n_in = 0 if self._token_input else first[3] if first[0] == "rnn" else first[2]
        try:
            return make(specs, self._token_input, n_in, self._step_general)
        except ValueError:
            return None

    def _state_key(self, lyr):
        keys = [k for k, _ in getattr(self, "_rnn", [])]
        key, n = lyr.name, 1
        while key in keys:
            key, n = f"{lyr.name}#{n}", n + 1
        return key

    def _make_fast(self, r):
        """A closure with everything bound: shape check, one kernel call, a state swap, one copy. With a
        batch-1 stepper (see _RecurrentStep) the step is a single call into it."""
        if r.stepper is not None:
            lyr, seq = r.layer, r.layer.return_sequences
            coerce = self._coerce

            def step_packed(x):
                if lyr._cast is not r._cast_seen:          # the weights changed: re-read and repack them
                    r.refresh()
                y = r.stepper.step(x, seq)
                if y is None:                               # not a float32 (1, k, I) C-contiguous array
                    y = r.stepper.step(coerce(x), seq)
                return y

            return step_packed
        B, dt, H = self.batch_size, np.dtype(self.dtype), r.H
        lyr = r.layer
        I = lyr.input_dim
        seq = lyr.return_sequences
        lstm = r.kind == "lstm"
        backend = get_backend()
        kern = _specialized(backend.lstm_forward if lstm else backend.gru_forward, dt)
        none3, empty = r.none3, _EMPTY_MASK
        ndarray = np.ndarray
        reset_after = getattr(lyr, "reset_after", True)
        z1, hz1, y1 = r.workspace(1)
        # what the kernel reads, re-bound whenever the layer's weights change (a new _cast dict)
        bound = {"cast": None}

        def rebind():
            r.refresh()
            p = r.params
            w = (p["w_x"], p["w_h"], p["b"], p["p"]) if lstm else (p["w_x"], p["w_h"], p["b_x"], p["b_h"])
            bound.update(cast=lyr._cast, w=w, acts=(p["act_codes"], p["act_ab"]))

        rebind()

        shape1 = (B, 1, I)

        def step(x):
            if x.__class__ is ndarray and x.dtype is dt and x.shape == shape1 and x.flags.c_contiguous:
                # one step: (B, 1, I) is already the kernel's (T=1, B, I) memory layout
                k = 1
                x_tm = x if B == 1 else x.reshape(1, B, I)
                z_ws, hz_ws, y = z1, hz1, y1
            else:
                if x.__class__ is not ndarray or x.dtype is not dt or x.ndim != 3 or x.shape[0] != B \
                        or x.shape[2] != I or not x.flags.c_contiguous:
                    x = self._coerce(x)
                k = x.shape[1]
                x_tm = x.reshape(k, 1, I) if B == 1 else np.ascontiguousarray(x.swapaxes(0, 1))
                z_ws, hz_ws, y = r.workspace(k)
            if lyr._cast is not bound["cast"]:        # the weights changed: re-read them
                rebind()
            w_x, w_h, b1, b2 = bound["w"]
            codes, ab = bound["acts"]
            s, out = r.states, r.spare
            if lstm:
                kern(x_tm, w_x, w_h, b1, b2, s[0], s[1], empty, codes, ab, 0.0, False, False, z_ws, y, out[0], out[1],
                     none3, none3)
            else:
                kern(x_tm, w_x, w_h, b1, b2, s[0], empty, codes, ab, 0.0, reset_after, False, z_ws, hz_ws, y, out[0],
                     none3)
            r.states, r.spare = out, s
            if seq:
                return y.reshape(1, k, H).copy() if B == 1 else np.ascontiguousarray(y.swapaxes(0, 1))
            return out[0].copy()

        return step

    # ---- running -------------------------------------------------------------------------------------------
    def _coerce(self, x):
        """Validate and convert an input chunk (the slow path of the shape check)."""
        x = np.asarray(x)
        want = self._in_shape
        if x.dtype.kind not in "fiub":
            raise TypeError(f"session.step expects a numeric array, got dtype {x.dtype}")
        if x.ndim != len(want):
            raise ValueError(f"session.step expects an array of rank {len(want)} (batch, k"
                             f"{', features' if len(want) == 3 else ''}), got shape {x.shape}")
        if x.shape[0] != self.batch_size:
            raise ValueError(f"this session has batch size {self.batch_size}, got an input of shape {x.shape}")
        if x.ndim >= 2 and x.shape[1] < 1:
            raise ValueError(f"session.step needs k >= 1 timesteps, got shape {x.shape}")
        for k in range(2, x.ndim):
            if want[k] is not None and want[k] != x.shape[k]:
                raise ValueError(f"session.step expects input of shape (batch, k, {want[k]}), got {x.shape}")
        if self._token_input:
            return np.ascontiguousarray(x)
        return np.ascontiguousarray(x, dtype=self.dtype)

    def step(self, x):
        """Run the next k timesteps.

        Parameters
        ----------
        x : array of shape (batch, k, features), or (batch, k) token ids for an Embedding model; k >= 1.

        Returns
        -------
        What `model.predict` returns for these k steps of the running sequence: for a return_sequences=False
        model the output after the last of them; a list for several outputs.
        """
        if self._plan is None:
            x = np.asarray(x)
            self.model.predict(x[:, :1] if x.ndim >= 2 else x)     # builds a lazy Sequential
            self._make_plan()
        if self._fast is not None:
            return self._fast(x)
        return self._step_general(x)

    def _step_general(self, x):
        """step() without the fast path: validate / convert x, then the compiled chain, the chain closure or
        the graph walk, the first that takes x."""
        x = self._coerce(x)
        if self._compiled is not None:
            out = self._compiled.run(x)
            if out is not None:
                return out
        if self._chain is not None:
            out = self._chain(x)
            if out is not None:
                return out
        rnn_of = self._rnn_of

        def run_node(k, node, arg, mask, kwargs):
            r = rnn_of.get(id(node))
            if r is None:                                 # a per-timestep layer: as in predict
                return node.layer.call(arg, mask=mask, **kwargs)
            a = arg if arg.dtype == self.dtype else arg.astype(self.dtype)
            k = a.shape[1]
            x_tm = np.ascontiguousarray(a.swapaxes(0, 1)) if self.batch_size > 1 else \
                np.ascontiguousarray(a).reshape(k, 1, a.shape[2])
            mk = _EMPTY_MASK if mask is None else np.ascontiguousarray(np.asarray(mask).T, dtype=np.uint8)
            return r.outputs(r.run(x_tm, mk), mk)

        values = self.model._walk([x], run_node)
        res = [values[i][0] for i in self._out_ids]
        return res[0] if self._single_output else res

    # ---- state ---------------------------------------------------------------------------------------------
    def reset(self):
        """Back to the start of a sequence: every state zero."""
        for _, r in getattr(self, "_rnn", []):
            for s in r.states:
                s.fill(0)

    @property
    def state(self):
        """{layer name: [h, (c)]}: copies of every recurrent layer's state, arrays of shape (batch, units).
        Plain NumPy arrays (picklable); give them to `set_state` to resume."""
        if self._plan is None:
            return {}
        return {key: [s.copy() for s in r.states] for key, r in self._rnn}

    def set_state(self, state):
        """Resume from a `state` dict (as returned by `.state`)."""
        if self._plan is None:
            raise ValueError("this session has not run yet (the model is not built); call step() first")
        missing = [k for k, _ in self._rnn if k not in state]
        if missing:
            raise ValueError(f"state is missing layer(s) {missing}; expected keys {[k for k, _ in self._rnn]}")
        for key, r in self._rnn:
            arrs = list(state[key])
            if len(arrs) != r.n_states:
                raise ValueError(f"state[{key!r}] must hold {r.n_states} arrays, got {len(arrs)}")
            for s, a in zip(r.states, arrs):
                a = np.asarray(a)
                if a.shape != s.shape:
                    raise ValueError(f"state[{key!r}] arrays must have shape {s.shape}, got {a.shape}")
                s[...] = a

    def __repr__(self):
        return f"<StreamSession model={self.model.name!r} batch_size={self.batch_size} dtype={self.dtype.name}>"


__all__ = ["StreamSession"]
