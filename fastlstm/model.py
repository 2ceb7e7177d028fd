"""Model: a graph of layers with Keras's predict/summary/weights API. No math here.

`Model(inputs, outputs)` is the functional model (symbolic tensors from `fastlstm.Input`); `Sequential([...])`
is a linear stack that builds its graph on first use. The loaders build the same classes.
"""
import threading

import numpy as np

from . import config
from .layers.base import Input, Layer, SymbolicTensor, unique_name

# predict splits a batch across config.NUM_THREADS threads (the kernels release the GIL) when every thread
# gets at least this many rows
PREDICT_MIN_ROWS_PER_THREAD = 8
PREDICT_MAX_ROWS = 1024
_pool = {"n": 0, "pool": None}
_pool_lock = threading.Lock()


def _blas_single_thread():
    """A context in which BLAS runs single-threaded (threadpoolctl; a no-op context without it)."""
    import contextlib
    ctl = _pool.get("blas")
    if ctl is None:
        try:
            from threadpoolctl import ThreadpoolController
            ctl = _pool["blas"] = ThreadpoolController()
        except Exception:  # noqa: BLE001 - no threadpoolctl: nothing to limit
            ctl = _pool["blas"] = False
    return ctl.limit(limits=1, user_api="blas") if ctl else contextlib.nullcontext()


def _predict_pool(n):
    """A shared thread pool with n workers (recreated when config.NUM_THREADS changes)."""
    with _pool_lock:
        if _pool["n"] != n:
            from concurrent.futures import ThreadPoolExecutor
            if _pool["pool"] is not None:
                _pool["pool"].shutdown(wait=False)
            _pool.update(n=n, pool=ThreadPoolExecutor(max_workers=n, thread_name_prefix="fastlstm-predict",
                                                      initializer=config.one_kernel_thread))
        return _pool["pool"]
from .layers.core import InputLayer


def _topo_nodes(outputs):
    """Nodes needed for `outputs`, in an order where every node comes after the nodes it reads from."""
    order, seen = [], set()

    def visit(t):
        if t.history is None:
            return
        node = t.history[0]
        if id(node) in seen:
            return
        seen.add(id(node))
        for src in node.tensor_args():
            visit(src)
        order.append(node)

    for t in outputs:
        visit(t)
    return order


def _keras_layer_order(inputs, outputs):
    """The layers of a functional graph in Keras 3's `model.layers` order, which fixes `get_weights()` order and
    the class-numbered groups of a saved file (keras/src/ops/function.py `map_graph`): deepest first, where a
    node's depth is its longest path to an output and a layer's the largest over its calls; equal depths keep the
    order in which a depth-first walk from the outputs (inputs before keyword tensors) first reached them."""
    first_seen, post_order, done = {}, [], set()   # layer id -> walk index; nodes from inputs to outputs
    layer_of, parents = {}, {}

    def node_key(t):
        if t.history is None:
            lyr = getattr(t, "_input_layer", None)
            return None if lyr is None else ("input", id(lyr)), lyr
        return ("node", id(t.history[0])), t.history[0].layer

    def visit(t):
        key, lyr = node_key(t)
        if key is None or key in done:
            return
        first_seen.setdefault(id(lyr), len(first_seen))
        layer_of[key] = lyr
        srcs = [] if t.history is None else t.history[0].tensor_args()
        parents[key] = [k for k in (node_key(s)[0] for s in srcs) if k is not None]
        for s in srcs:
            visit(s)
        done.add(key)
        post_order.append(key)

    for t in outputs:
        visit(t)
    node_depth, layer_depth = {}, {}
    for key in reversed(post_order):
        lyr = layer_of[key]
        depth = max(node_depth.setdefault(key, 0), layer_depth.get(id(lyr), 0))
        layer_depth[id(lyr)] = node_depth[key] = depth
        for p in parents[key]:
            node_depth[p] = max(depth + 1, node_depth.get(p, 0))
    by_id = {id(lyr): lyr for lyr in layer_of.values()}
    for t in inputs:                                  # inputs no output depends on still count, at depth 0
        lyr = getattr(t, "_input_layer", None)
        if lyr is not None and id(lyr) not in layer_depth:
            by_id[id(lyr)], layer_depth[id(lyr)], first_seen[id(lyr)] = lyr, 0, -1
    order = sorted(layer_depth, key=lambda i: (-layer_depth[i], first_seen[i]))
    return [by_id[i] for i in order]


class Model:
    """A functional graph of layers.

    Parameters
    ----------
    inputs : SymbolicTensor or list of SymbolicTensor (from `fastlstm.Input`)
    outputs : SymbolicTensor or list of SymbolicTensor
    name : str, optional
    """

    def __init__(self, inputs=None, outputs=None, name=None):
        self.name = name or unique_name("functional")
        self.stateful = False
        if inputs is not None:
            self._init_graph(inputs, outputs)

    def _init_graph(self, inputs, outputs):
        self._single_input = not isinstance(inputs, (list, tuple, dict))
        self._single_output = not isinstance(outputs, (list, tuple, dict))
        if isinstance(inputs, dict):
            inputs = list(inputs.values())
        if isinstance(outputs, dict):
            outputs = list(outputs.values())
        self.inputs = [inputs] if self._single_input else list(inputs)
        self.outputs = [outputs] if self._single_output else list(outputs)
        for t in self.inputs + self.outputs:
            if not isinstance(t, SymbolicTensor):
                raise TypeError(f"Model inputs and outputs must be symbolic tensors (fastlstm.Input / layer calls), "
                                f"got {type(t).__name__}")
        self._nodes = _topo_nodes(self.outputs)
        reachable = {t.id for n in self._nodes for t in n.tensor_args() if t.history is None}
        missing = [t for t in reachable if t not in {i.id for i in self.inputs}]
        if missing:
            raise ValueError(f"model {self.name!r}: the outputs depend on inputs that are not in `inputs`")
        self.input_names = [t.name for t in self.inputs]
        self.output_names = [t.name for t in self.outputs]
        self.layers = _keras_layer_order(self.inputs, self.outputs)
        self.stateful = any(getattr(lyr, "stateful", False) for lyr in self.layers)
        self.built = True

    # ---- running ------------------------------------------------------------------------------------
    def _normalize_inputs(self, x):
        """Array / list / dict -> list of arrays in input order, validated against the input specs."""
        if isinstance(x, dict):
            missing = [n for n in self.input_names if n not in x]
            if missing:
                raise ValueError(f"model {self.name!r}: missing input(s) {missing}; expected keys {self.input_names}, "
                                 f"got {sorted(x)}")
            xs = [x[n] for n in self.input_names]
        elif isinstance(x, (list, tuple)) and len(self.inputs) > 1:
            xs = list(x)
        else:
            xs = [x]
        if len(xs) != len(self.inputs):
            raise ValueError(f"model {self.name!r} expects {len(self.inputs)} input(s) {self.input_names}, "
                             f"got {len(xs)}")
        out = []
        for t, a in zip(self.inputs, xs):
            a = np.asarray(a)
            if a.dtype.kind not in "fiub":
                raise TypeError(f"input {t.name!r} must be a numeric array, got dtype {a.dtype}")
            want = t.shape
            if a.ndim != len(want):
                raise ValueError(f"input {t.name!r} expects an array of rank {len(want)} with shape "
                                 f"{_fmt_shape(want)}, got shape {a.shape}")
            for k, (w, g) in enumerate(zip(want, a.shape)):
                if k > 1 and w is not None and w != g:   # batch and time may differ from the built shape
                    raise ValueError(f"input {t.name!r} expects shape {_fmt_shape(want)}, got {a.shape}")
            if t.dtype.kind == "f" and a.dtype.kind != "f":
                a = a.astype(t.dtype)
            out.append(a)
        if len({a.shape[0] for a in out}) > 1:
            raise ValueError(f"model {self.name!r}: all inputs need the same batch size, got "
                             f"{[a.shape[0] for a in out]}")
        return out

    def _walk(self, xs, run_node):
        """Evaluate the graph on input arrays, node by node in order: `run_node(k, node, arg, mask, kwargs)`
        returns what the node's layer returns (the node's inputs, their mask and its other call arguments
        resolved). Shared by predict, training (trainer.forward) and streaming sessions. Returns
        {tensor id: (array, mask)}."""
        values = {t.id: (a, None) for t, a in zip(self.inputs, xs)}
        for k, node in enumerate(self._nodes):
            ins = [values[t.id] for t in node.inputs]
            arrays = [v for v, _ in ins]
            masks = [m for _, m in ins]
            multi = getattr(node, "multi_input", len(arrays) > 1)
            arg = arrays if multi else arrays[0]
            mask = masks if multi else masks[0]
            kwargs = {}
            for key, v in node.kwargs.items():
                if key == "mask":
                    mask = _resolve(v, values)
                elif key != "training":
                    kwargs[key] = _resolve(v, values)
            out = run_node(k, node, arg, mask, kwargs)
            out_mask = node.layer.compute_mask(arg, mask)
            outs = out if isinstance(out, list) else [out]
            out_masks = out_mask if isinstance(out_mask, list) else [out_mask] * len(outs)
            for t, o, m in zip(node.outputs, outs, out_masks):
                values[t.id] = (o, m)
        return values

    def _token_row_nodes(self):
        """Indices of the Embedding nodes whose output feeds exactly one recurrent layer (LSTM, GRU, SimpleRNN,
        Bidirectional), as its only input, and nothing else: they hand it TokenRows (Embedding.rows) instead of
        the gathered array, so that the layer projects each distinct token once."""
        cached = getattr(self, "_token_rows_cache", None)
        if cached is not None and cached[0] is self._nodes:
            return cached[1]
        from .layers.core import Embedding
        from .layers.recurrent import RNN, Bidirectional
        readers = {}
        for node in self._nodes:
            for t in node.tensor_args():
                readers.setdefault(t.id, []).append(node)
        outputs = {t.id for t in self.outputs}
        found = set()
        for k, node in enumerate(self._nodes):
            if not isinstance(node.layer, Embedding) or len(node.outputs) != 1:
                continue
            t = node.outputs[0]
            r = readers.get(t.id, [])
            if t.id not in outputs and len(r) == 1 and isinstance(r[0].layer, (RNN, Bidirectional)) \
                    and len(r[0].inputs) == 1 and r[0].inputs[0].id == t.id:
                found.add(k)
        self._token_rows_cache = (self._nodes, found)
        return found

    def _run_graph(self, xs):
        """Evaluate the graph on validated input arrays; returns the list of output arrays."""
        rows = self._token_row_nodes()

        def run_node(k, node, arg, mask, kwargs):
            if k in rows:
                return node.layer.rows(arg)
            return node.layer.call(arg, mask=mask, **kwargs)

        values = self._walk(xs, run_node)
        return [values[t.id][0] for t in self.outputs]

    def __call__(self, x, training=False):
        return self.predict(x)

    def predict(self, x, batch_size=None, verbose=0):
        """Run the model.

        Parameters
        ----------
        x : array of shape (batch, timesteps, features) or (batch, timesteps) token ids, or a list / dict of
            arrays (by input name) for several inputs.
        batch_size : int, optional. Rows per run; default all rows at once.

        Returns
        -------
        One array for a one-output model, else a list in `output_names` order.
        """
        xs = self._normalize_inputs(x)
        n = xs[0].shape[0]
        if batch_size is not None and int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        threads = 1 if self.stateful else max(1, int(config.NUM_THREADS))
        if batch_size is None:
            # one slice of rows per thread when the batch is large enough to pay for it; at most
            # PREDICT_MAX_ROWS rows per run, which bounds the kernels' workspaces
            k = min(threads, n // PREDICT_MIN_ROWS_PER_THREAD) if threads > 1 else 1
            k = max(k, 1, -(-n // PREDICT_MAX_ROWS))
            chunks = [(n * i // k, n * (i + 1) // k) for i in range(k)]
        else:
            batch_size = int(batch_size)
            chunks = [(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]
        if len(chunks) <= 1:
            outs = self._run_graph(xs)
            return outs[0] if self._single_output else outs
        run = lambda c: self._run_graph([a[c[0]:c[1]] for a in xs])  # noqa: E731
        if threads > 1 and len(chunks) > 1:
            with _blas_single_thread():       # the parallelism is across rows; BLAS threads would oversubscribe
                parts = list(_predict_pool(threads).map(run, chunks))
        else:
            parts = [run(c) for c in chunks]
        outs = [np.concatenate([p[k] for p in parts]) for k in range(len(self.outputs))]
        return outs[0] if self._single_output else outs

    # ---- training (fastlstm/training) -------------------------------------------------------------------
    _trainer = None
    stop_training = False
    history = None

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, loss_weights=None, **kwargs):
        """Configure training (Keras 3).

        Parameters
        ----------
        optimizer : str ("sgd", "adam", "rmsprop") or fastlstm.optimizers.Optimizer
        loss : str ("binary_crossentropy", "categorical_crossentropy", "sparse_categorical_crossentropy", "mse",
            "mae") or fastlstm.losses.Loss; a list or dict (by output name) for several outputs.
        metrics : list of "accuracy", "mae", "mse", ... (a list of lists or a dict for several outputs); as in
            Keras 3 they ignore sample_weight and class_weight
        loss_weights : list or dict of floats, optional
        weighted_metrics : like `metrics`, weighted by sample_weight / class_weight (Keras 3 naming: a name
            already taken by `metrics` becomes "weighted_<name>")
        """
        unknown = set(kwargs) - {"weighted_metrics", "run_eagerly", "steps_per_execution", "jit_compile",
                                 "auto_scale_loss"}
        if unknown:
            raise TypeError(f"compile(): unrecognized arguments {sorted(unknown)}")
        from .training.trainer import Trainer
        self._trainer = Trainer(self, optimizer, loss, metrics, loss_weights, kwargs.get("weighted_metrics"))
        self.optimizer = self._trainer.optimizer
        self.loss = loss
        self.compiled = True

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None, validation_split=0.0,
            validation_data=None, shuffle=True, class_weight=None, sample_weight=None, initial_epoch=0,
            steps_per_epoch=None, validation_batch_size=None, validation_freq=1, seed=None):
        """Train with backpropagation through time (Keras 3 arguments; `seed` makes shuffling, dropout and a
        lazily built model's initial weights deterministic).

        Parameters
        ----------
        x : array of shape (samples, timesteps, features) or (samples, timesteps) token ids; list / dict for
            several inputs.
        y : array of targets (list / dict for several outputs).
        validation_data : tuple (x_val, y_val), optional

        Returns
        -------
        History: `history.history["loss"]`, `["val_loss"]`, metrics, one value per epoch.

        A non-finite loss stops training with a RuntimeWarning; the weights are then those of the last step whose
        loss was finite.
        """
        from .training.trainer import fit
        return fit(self, x, y, batch_size=batch_size, epochs=epochs, verbose=verbose, callbacks=callbacks,
                   validation_split=validation_split, validation_data=validation_data, shuffle=shuffle,
                   class_weight=class_weight, sample_weight=sample_weight, initial_epoch=initial_epoch,
                   steps_per_epoch=steps_per_epoch, validation_batch_size=validation_batch_size,
                   validation_freq=validation_freq, seed=seed)

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None, return_dict=False):
        """Loss (and metrics) on (x, y) in inference mode: a float, or [loss, *metrics] when metrics were
        compiled (a dict with return_dict=True)."""
        from .training.trainer import evaluate
        return evaluate(self, x, y, batch_size=batch_size, verbose=verbose, sample_weight=sample_weight,
                        return_dict=return_dict)

    def train_on_batch(self, x, y, sample_weight=None, return_dict=False, seed=None):
        """One optimizer step on one batch; returns the loss (and metrics) of that batch."""
        from .training.trainer import _normalize_targets
        if self._trainer is None:
            raise RuntimeError("You must call `compile()` before using the model (fit/evaluate)")
        xs = self._normalize_inputs(x)
        ys = _normalize_targets(self, y, xs[0].shape[0])
        tr = self._trainer
        tr.setup()
        for o in tr.metric_list():
            o.reset_state()
        loss, per_out, finite = tr.train_step(xs, ys, np.random.default_rng(seed), sample_weight)
        if not finite:
            import warnings
            warnings.warn(f"train_on_batch: the loss is {loss} (not finite); the weights were not updated",
                          RuntimeWarning, stacklevel=2)
        from .training.trainer import _epoch_logs
        logs = _epoch_logs(tr, loss, per_out)
        if return_dict:
            return logs
        vals = list(logs.values())
        return vals[0] if len(vals) == 1 else vals

    def test_on_batch(self, x, y, sample_weight=None, return_dict=False):
        """Loss (and metrics) of one batch in inference mode."""
        n = self._normalize_inputs(x)[0].shape[0]
        return self.evaluate(x, y, batch_size=max(1, n), verbose=0, sample_weight=sample_weight,
                             return_dict=return_dict)

    def _metric_objects(self):
        return self._trainer.metric_list() if self._trainer is not None else []

    # ---- streaming and saving ------------------------------------------------------------------------
    def stream(self, batch_size=1, dtype="float32"):
        """A streaming session: `session.step(x_k)` runs k more timesteps, keeping every recurrent layer's state.

        Parameters
        ----------
        batch_size : int, the batch every step takes.
        dtype : "float32" or "float64", the compute dtype.

        Returns
        -------
        fastlstm.stream.StreamSession
        """
        from .stream import StreamSession
        return StreamSession(self, batch_size=batch_size, dtype=dtype)

    def save(self, filepath, overwrite=True, zipped=True):
        """Write a Keras 3 `.keras` file (config.json, metadata.json, model.weights.h5) that Keras 3 loads."""
        from .saving import save_model
        save_model(self, filepath, overwrite=overwrite)

    def save_weights(self, filepath, overwrite=True):
        """Write the weights as a Keras 3 `.weights.h5` file."""
        from .saving import save_weights
        save_weights(self, filepath, overwrite=overwrite)

    def load_weights(self, filepath):
        """Read weights from a Keras 3 `.weights.h5` or `.keras` file (layers matched by class and order)."""
        from .saving import load_weights
        load_weights(self, filepath)

    def to_json(self, **kwargs):
        """The Keras 3 model config as a JSON string (what `fastlstm.load(weights, architecture=...)` reads)."""
        import json
        from .saving import model_config
        return json.dumps(model_config(self), **kwargs)

    def get_config(self):
        from .saving import model_config
        return model_config(self)["config"]

    # ---- weights and state ------------------------------------------------------------------------
    def _weighted_layers(self):
        return [lyr for lyr in self.layers if lyr.weights]

    def get_weights(self):
        """All weights, Keras model.get_weights() order (layers in order, each layer's weights in order)."""
        return [w for lyr in self.layers for w in lyr.get_weights()]

    def set_weights(self, weights):
        """Set all weights from a list in get_weights() order and shapes."""
        weights = list(weights)
        expected = sum(len(lyr.weights) for lyr in self.layers)
        if len(weights) != expected:
            raise ValueError(f"model {self.name!r} has {expected} weight arrays, got {len(weights)}")
        k = 0
        for lyr in self.layers:
            n = len(lyr.weights)
            if n:
                lyr.set_weights(weights[k:k + n])
                k += n

    @property
    def weights(self):
        return [w for lyr in self.layers for w in lyr.weights]

    def count_params(self):
        return int(sum(w.size for w in self.weights))

    def export_onnx(self, path, opset=17):
        """Write the model as ONNX that onnxruntime runs (see fastlstm/export_onnx.py for the masking contract)."""
        from .export_onnx import export_onnx
        return export_onnx(self, path, opset=opset)

    def reset_states(self):
        """Zero the carried state of every stateful recurrent layer."""
        for lyr in self.layers:
            if hasattr(lyr, "reset_states"):
                lyr.reset_states()

    def get_layer(self, name=None, index=None):
        if index is not None:
            return self.layers[index]
        for lyr in self.layers:
            if lyr.name == name:
                return lyr
        raise ValueError(f"no layer named {name!r}; layers: {[lyr.name for lyr in self.layers]}")

    # ---- description -------------------------------------------------------------------------------
    def summary(self, print_fn=print):
        """Print a table of layers, output shapes and parameter counts (and return it as a string)."""
        rows = [("Layer (type)", "Output Shape", "Param #")]
        for lyr in self.layers:
            shapes = [_fmt_shape(t.shape) for n in self._nodes if n.layer is lyr for t in n.outputs]
            if isinstance(lyr, InputLayer):
                shapes = [_fmt_shape(lyr.batch_shape)]
            rows.append((f"{lyr.name} ({type(lyr).__name__})", ", ".join(shapes[:3]), f"{lyr.count_params():,}"))
        widths = [max(len(r[k]) for r in rows) + 2 for k in range(3)]
        line = "-" * sum(widths)
        out = [f'Model: "{self.name}"', line]
        for k, r in enumerate(rows):
            out.append("".join(c.ljust(w) for c, w in zip(r, widths)))
            if k == 0:
                out.append(line)
        out += [line, f"Total params: {self.count_params():,}", line]
        text = "\n".join(out)
        if print_fn:
            print_fn(text)
        return text


class Sequential(Model):
    """A linear stack of layers. Without an input shape it builds on its first predict/fit or `build()`.

    Examples
    --------
    >>> model = fastlstm.Sequential([fastlstm.layers.Embedding(100, 8), fastlstm.layers.LSTM(16),
    ...                              fastlstm.layers.Dense(1, activation="sigmoid")])
    >>> model.predict(np.array([[1, 2, 3]])).shape
    (1, 1)
    """

    def __init__(self, layers=None, name=None):
        super().__init__(name=name or unique_name("sequential"))
        self._stack = []
        self.built = False
        self._input_spec = None
        self.layers = []
        self.inputs, self.outputs, self._nodes = [], [], []
        self.input_names, self.output_names = [], []
        for lyr in layers or []:
            self.add(lyr)

    def add(self, layer):
        if isinstance(layer, SymbolicTensor):  # Sequential([Input(...), ...])
            self._input_spec = (layer.shape, layer.dtype, layer.name)
            return
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential.add expects a Layer, got {type(layer).__name__}")
        if isinstance(layer, InputLayer):
            self._input_spec = (layer.batch_shape, layer.input_dtype, layer.name)
            return
        self._stack.append(layer)
        self.layers = list(self._stack)
        self.built = False
        spec = getattr(layer, "_build_input_shape", None)
        if self._input_spec is None and len(self._stack) == 1 and spec is not None:
            self._input_spec = (spec, None, None)
        if self._input_spec is not None:
            self.build(self._input_spec[0])

    def build(self, input_shape=None):
        """Build the graph for inputs of `input_shape` (batch first; None for unknown dims)."""
        if input_shape is None:
            if self._input_spec is None:
                raise ValueError(f"model {self.name!r} needs an input shape: pass input_shape to build(), "
                                 f"give the first layer input_shape=..., or call predict/fit")
            input_shape = self._input_spec[0]
        input_shape = tuple(input_shape)
        dtype = self._input_spec[1] if self._input_spec and self._input_spec[1] is not None else None
        if dtype is None:
            from .layers.core import Embedding
            dtype = "int32" if self._stack and isinstance(self._stack[0], Embedding) else "float32"
        name = self._input_spec[2] if self._input_spec and self._input_spec[2] else unique_name("input_layer")
        t = Input(batch_shape=input_shape, dtype=dtype, name=name)
        x = t
        for lyr in self._stack:
            x = lyr(x)
            if isinstance(x, list):
                raise ValueError(f"layer {lyr.name!r} returns several tensors; use the functional Model instead "
                                 f"of Sequential")
        self._input_spec = (input_shape, np.dtype(dtype), name)
        self._init_graph(t, x)
        self.layers = list(self._stack)
        self.output_names = [self._stack[-1].name] if self._stack else []

    def _normalize_inputs(self, x):
        if not self.built:
            a = np.asarray(x[0] if isinstance(x, (list, tuple)) and not isinstance(x, np.ndarray) else x)
            self.build((None,) * (a.ndim - 1) + (a.shape[-1],) if a.ndim >= 3 else (None,) * a.ndim)
        return super()._normalize_inputs(x)

    def pop(self):
        self._stack.pop()
        self.layers = list(self._stack)
        self.built = False
        if self._input_spec is not None and self._stack:
            self.build(self._input_spec[0])


def _resolve(v, values):
    """A node's call argument with its symbolic tensors replaced by their arrays."""
    if isinstance(v, SymbolicTensor):
        return values[v.id][0]
    if isinstance(v, (list, tuple)):
        return [_resolve(e, values) for e in v]
    return v


def _fmt_shape(shape):
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


__all__ = ["Model", "Sequential", "Input"]
