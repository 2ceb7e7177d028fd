"""ONNX loader: `.onnx` file -> OnnxModel, a model with fastlstm's predict API that runs the graph with NumPy ops
and the fused LSTM/GRU kernels.

    load_onnx(path)
      parse the protobuf (onnx_proto: no `import onnx` on this path)
      -> compile the graph: every node becomes a `run(*inputs)` closure built once (attributes read and checked,
         LSTM/GRU weights converted to the kernels' layout, Loop bodies compiled or mapped to fused kernels)
      -> fold constants: nodes whose inputs are all known at load run once, now
      -> plan (_RunPlan): split the remaining steps into shape-only ones (Shape -> ... -> ConstantOfShape: they
         depend on the input shapes alone, so predict caches their values per input signature) and data ones;
         Identity / inference Dropout become aliases
      -> OnnxModel.predict runs the data steps in order (all steps on a new input signature); the RNN nodes
         reuse their work arrays between calls (onnx_rnn); batch_size / threads split the inputs along the batch
         axis that onnx_batch.py reads from the graph

Errors found at load (ModelLoadError naming file, node and op): unparsable or truncated protobuf, operators
outside the supported set, inputs that nothing provides (missing initializer), absent external data files,
bad attributes. Shapes are never taken from the graph's declarations (except to check the inputs a caller
passes, as onnxruntime does): every shape comes from the arrays at run time, so any batch size and sequence
length work.
"""
import os

import numpy as np

from .. import config
from ..errors import ModelLoadError
from ..model import PREDICT_MAX_ROWS, PREDICT_MIN_ROWS_PER_THREAD, Model
from . import onnx_proto, onnx_rnn
from .onnx_ops import ELEMENTWISE, OPS

SUPPORTED_DOMAINS = ("", "ai.onnx")
_MISSING = object()
_UNSET = object()


class NodeView:
    """What an op builder sees of one node: attributes (decoded), opset, constant inputs, and `fail`."""

    def __init__(self, node, ctx, scope):
        self.node, self.ctx, self.scope = node, ctx, scope
        self.label = _label(node)
        self.name, self.op_type, self.inputs, self.outputs = node.name, node.op_type, node.inputs, node.outputs
        self.attrs = node.attrs
        self.opset = ctx.opsets.get("", 1)
        self.base_dir = ctx.base_dir

    def attr(self, name, default=_MISSING):
        a = self.attrs.get(name)
        if a is None:
            if default is _MISSING:
                self.fail(f"missing required attribute `{name}`")
            return default
        v = a.value
        if isinstance(v, bytes):
            return v.decode("utf-8", "replace")
        if isinstance(v, list) and v and isinstance(v[0], bytes):
            return [s.decode("utf-8", "replace") for s in v]
        return v

    def const(self, k):
        """Input k's value when it is known at load (initializer / folded constant), else None."""
        if k >= len(self.inputs) or not self.inputs[k]:
            return None
        return self.scope.lookup_const(self.inputs[k])

    def fail(self, msg):
        raise ModelLoadError(f"{self.ctx.path}: ONNX node {self.label} (op {self.op_type}): {msg}")

    def subgraph(self, graph, bound=None):
        """Compile a body graph (Loop/If/Scan) in this node's scope; `bound` {body input name: value} are
        inputs known to be constant (loop-invariant weights), folded like initializers."""
        return Program(graph, self.ctx, parent=self.scope, owner=self, bound=bound)


class Context:
    def __init__(self, path, opsets, functions):
        self.path = path
        self.base_dir = os.path.dirname(os.path.abspath(path))
        self.opsets = opsets
        self.functions = functions
        self.n_rnn_fused = 0
        self.loops = []          # descriptions of how each Loop runs ("fused lstm", "generic")


class Step:
    """One node at run time. `args` / `outs` are the names as `_run_steps` reads and writes them: an absent
    optional input is "" (which the run environment maps to None), an omitted output writes to _SINK."""
    __slots__ = ("run", "inputs", "outputs", "node", "args", "outs")

    def __init__(self, run, inputs, outputs, node):
        self.run, self.inputs, self.outputs, self.node = run, inputs, outputs, node
        self.args = tuple(inputs)
        self.outs = tuple(o or _SINK for o in outputs)


_SINK = "\x00omitted"


def _compile_steps(steps):
    """Steps as the tuples _run_steps iterates: (run, args, the one output or None, outs, step)."""
    return [(st.run, st.args, st.outs[0] if len(st.outs) == 1 else None, st.outs, st) for st in steps]


def _run_steps(steps, env):
    """Run compiled `steps` (_compile_steps) on `env` ({name: value}, with env[""] = None); a failing node raises
    _StepError naming it."""
    st = None
    try:
        for run, args, out, outs, st in steps:
            vals = run(*[env[n] for n in args])
            if out is not None:
                env[out] = vals[0]
            else:
                for name, v in zip(outs, vals):
                    env[name] = v
    except (ValueError, TypeError, IndexError, KeyError, FloatingPointError, ArithmeticError) as e:
        if st is None or isinstance(e, _StepError):
            raise
        n = st.node
        raise _StepError(f"ONNX node {_label(n)} (op {n.op_type}) failed: {type(e).__name__}: {e}") from e


class Program:
    """A compiled graph (the model's main graph or a control-flow body).

    consts: values known at load; steps: what runs at predict; outer: names read from the enclosing scope
    at run time (bodies only).
    """

    def __init__(self, graph, ctx, parent=None, owner=None, bound=None):
        self.graph, self.ctx, self.parent = graph, ctx, parent
        self.consts = {}
        self.runtime = set()         # names produced at run time in this scope (inputs, non-constant outputs)
        self.outer = []              # runtime names of enclosing scopes that the steps read
        self.steps = []
        self._compiled = None
        where = f" (in the body of node {owner.label})" if owner is not None else ""
        for t in graph.initializers:
            try:
                self.consts[t.name] = t.array(ctx.base_dir)
            except onnx_proto.ProtoError as e:
                raise ModelLoadError(f"{ctx.path}: initializer {t.name!r}{where}: {e}") from None
        if graph.sparse:
            raise ModelLoadError(f"{ctx.path}: sparse initializers are not supported{where}")
        init_names = set(self.consts)
        # graph inputs that have an initializer are constants with a default (IR < 4 lists them as inputs)
        self.inputs = [vi for vi in graph.inputs if vi.name not in init_names or parent is not None]
        for vi in self.inputs:
            self.consts.pop(vi.name, None)
            if bound and vi.name in bound:
                self.consts[vi.name] = bound[vi.name]
            else:
                self.runtime.add(vi.name)
        self.output_names = [vi.name for vi in graph.outputs]
        for node in _expand_functions(graph.nodes, ctx):
            self._add_node(node, where)
        for name in self.output_names:
            self._require(name, f"{ctx.path}: graph output {name!r}{where}")

    # ---- scopes -----------------------------------------------------------------------------------------
    def lookup_const(self, name):
        if name in self.consts:
            return self.consts[name]
        if name in self.runtime:
            return None
        return self.parent.lookup_const(name) if self.parent is not None else None

    def _require(self, name, label):
        """Make `name` available to this scope's steps: local, an outer constant (copied in) or an outer runtime
        value (passed in at run time); else the file is broken."""
        if name in self.consts or name in self.runtime:
            return
        c = self.parent.lookup_const(name) if self.parent is not None else None
        if c is not None:
            self.consts[name] = c
        elif self._outer_has(name):
            self._note_outer(name)
        else:
            raise ModelLoadError(f"{label} is not produced by any node, initializer or graph input "
                                 f"(missing initializer or truncated file?)")

    def _outer_has(self, name):
        p = self.parent
        while p is not None:
            if name in p.consts or name in p.runtime:
                return True
            p = p.parent
        return False

    def _note_outer(self, name):
        if name not in self.outer and self.lookup_const(name) is None:
            self.outer.append(name)
            if self.parent is not None and name not in self.parent.runtime and name not in self.parent.consts:
                self.parent._note_outer(name)

    # ---- compiling a node ---------------------------------------------------------------------------------
    def _add_node(self, node, where):
        ctx = self.ctx
        label = f"{ctx.path}: ONNX node {_label(node)} (op {node.op_type}){where}"
        if node.domain not in SUPPORTED_DOMAINS:
            raise ModelLoadError(f"{label}: operator domain {node.domain!r} is not supported (only the default "
                                 f"ONNX domain)")
        builder = OPS.get(node.op_type)
        if builder is None:
            raise ModelLoadError(f"{label}: operator {node.op_type!r} is not supported; supported: "
                                 f"{', '.join(sorted(OPS))}")
        for name in node.inputs:
            if not name:
                continue
            self._require(name, f"{label}: input {name!r}")
        view = NodeView(node, ctx, self)
        try:
            run = builder(view)
        except ModelLoadError:
            raise
        except onnx_proto.ProtoError as e:
            raise ModelLoadError(f"{label}: {e}") from None
        except (ValueError, TypeError, KeyError, IndexError) as e:
            raise ModelLoadError(f"{label}: {type(e).__name__}: {e}") from None
        inputs = list(node.inputs) + list(getattr(run, "implicit_inputs", ()))
        known = [self.lookup_const(n) if n else None for n in inputs]
        foldable = getattr(run, "foldable", True) and all(
            v is not None for n, v in zip(inputs, known) if n)
        if foldable:
            try:
                outs = run(*known)
            except Exception as e:  # noqa: BLE001 - a constant subgraph that cannot run is a broken file
                raise ModelLoadError(f"{label}: evaluating constant inputs failed: {type(e).__name__}: {e}") from None
            for name, v in zip(node.outputs, outs):
                if name:
                    self.consts[name] = v
            return
        for name in node.outputs:
            if name:
                self.runtime.add(name)
                self.consts.pop(name, None)
        self.steps.append(Step(run, inputs, list(node.outputs), node))

    # ---- running ------------------------------------------------------------------------------------------
    def run(self, env):
        """Run the steps on `env` (a dict holding this program's inputs and outer values); returns env."""
        if self._compiled is None or len(self._compiled) != len(self.steps):
            self._compiled = _compile_steps(self.steps)
        env[""] = None
        _run_steps(self._compiled, env)
        return env

    def env_for(self, outer_env):
        env = dict(self.consts)
        for name in self.outer:
            if name in outer_env:
                env[name] = outer_env[name]
        return env


class _StepError(ValueError):
    pass


def _label(node):
    """How messages name a node: its name, or (unnamed nodes are legal) its first output."""
    if node.name:
        return repr(node.name)
    outs = [o for o in node.outputs if o]
    return f"<unnamed, output {outs[0]!r}>" if outs else "<unnamed>"


def _expand_functions(nodes, ctx):
    """Inline calls of model-local functions (FunctionProto) into plain nodes (torch's dynamo exporter)."""
    if not ctx.functions:
        yield from nodes
        return
    for node in nodes:
        fn = ctx.functions.get((node.domain, node.op_type))
        if fn is None:
            yield node
            continue
        yield from _inline(node, fn, ctx)


def _inline(call, fn, ctx, depth=0):
    if depth > 20:
        raise ModelLoadError(f"{ctx.path}: function {fn.name!r} calls itself too deeply")
    prefix = f"{call.name or fn.name}/"
    rename = {}
    for formal, actual in zip(fn.inputs, call.inputs):
        rename[formal] = actual
    for formal in fn.inputs[len(call.inputs):]:
        rename[formal] = ""
    for formal, actual in zip(fn.outputs, call.outputs):
        rename[formal] = actual
    attrs = dict(fn.attribute_defaults)
    attrs.update(call.attrs)
    for node in fn.nodes:
        new = onnx_proto.Node()
        new.name, new.op_type, new.domain, new.overload = prefix + node.name, node.op_type, node.domain, ""
        new.inputs = [rename.get(n, prefix + n) if n else "" for n in node.inputs]
        new.outputs = [rename.get(n, prefix + n) if n else "" for n in node.outputs]
        new.attrs = {}
        for k, a in node.attrs.items():
            if a.ref_attr_name:
                if a.ref_attr_name in attrs:
                    ref = attrs[a.ref_attr_name]
                    b = onnx_proto.Attribute()
                    b.name, b.type, b.value, b.ref_attr_name = k, ref.type, ref.value, None
                    new.attrs[k] = b
            else:
                new.attrs[k] = a
        inner = ctx.functions.get((new.domain, new.op_type))
        if inner is not None:
            yield from _inline(new, inner, ctx, depth + 1)
        else:
            yield new


# ---- how predict runs the main graph ---------------------------------------------------------------------------
# Shape-only values: the graph's Shape -> Gather -> Concat -> ConstantOfShape chains (initial states, reshape
# targets) depend only on the input shapes. predict computes them once per input signature (shapes, dtypes) and
# then runs only the data steps: at batch 1 each small NumPy op costs about as much as 1% of the LSTM itself.

# ops whose output shapes follow from the input shapes alone, except for the inputs at these positions, whose
# values matter (shape parameters); anything else (NonZero, Loop, If, ...) may depend on the data
_SHAPE_PARAMS = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "Slice": (1, 2, 3, 4), "Squeeze": (1,), "Unsqueeze": (1,),
    "Split": (1,), "Pad": (1, 3), "ConstantOfShape": (0,), "OneHot": (1,), "Range": (0, 1, 2), "TopK": (1,),
    "CumSum": (), "Shape": (), "Size": (),
}
_SHAPE_STABLE = ELEMENTWISE | set(_SHAPE_PARAMS) | {
    "MatMul", "Gemm", "Transpose", "Concat", "Gather", "GatherElements", "GatherND", "ScatterND", "ScatterElements",
    "Scatter", "Flatten", "Softmax", "LogSoftmax", "LSTM", "GRU", "RNN", "Dropout", "LayerNormalization",
    "BatchNormalization", "GlobalAveragePool", "GlobalMaxPool", "ReverseSequence", "ArgMax", "ArgMin", "Einsum",
    "CastLike", "EyeLike", "Trilu"} | \
    {n for n in OPS if n.startswith("Reduce")}
_SHAPE_CACHE_ENTRIES = 8                 # input signatures remembered per model
_SHAPE_CACHE_MAX_BYTES = 1 << 22         # a signature whose shape-only values are larger is not cached


class _RunPlan:
    """What OnnxModel.predict runs, decided once at load.

    shape_steps: steps whose outputs depend only on the input shapes (cached per input signature);
    data_steps: the rest, with Identity / inference Dropout nodes removed (their outputs alias their inputs);
    all_steps: both, in graph order (a cache miss runs these);
    outputs: the graph output names after aliasing.
    """

    def __init__(self, program):
        self.program = program
        is_const = lambda n: not n or program.lookup_const(n) is not None      # noqa: E731
        shape_known = {vi.name for vi in program.inputs}         # values whose shape follows from input shapes
        shape_only = set()                                       # values that follow from input shapes
        self.shape_steps, self.data_steps, self.all_steps = [], [], []
        alias = {}
        for st in program.steps:
            op = st.node.op_type
            ins = [alias.get(n, n) for n in st.inputs]
            if op in ("Shape", "Size") and (ins[0] in shape_known or is_const(ins[0])):
                only = True
            else:
                only = all(is_const(n) or n in shape_only for n in ins)
            outs = [o for o in st.outputs if o]
            if only:
                shape_only.update(outs)
                shape_known.update(outs)
                step = Step(st.run, ins, list(st.outputs), st.node)
                self.shape_steps.append(step)
                self.all_steps.append(step)
                continue
            params = _SHAPE_PARAMS.get(op, ())
            if op in _SHAPE_STABLE and all(is_const(n) or n in shape_only or (k not in params and n in shape_known)
                                           for k, n in enumerate(ins)):
                shape_known.update(outs)
            if op == "Identity" or (op == "Dropout" and len(outs) == 1 and st.outputs[0]):
                alias[st.outputs[0]] = ins[0]
                continue
            step = Step(st.run, ins, list(st.outputs), st.node)
            self.data_steps.append(step)
            self.all_steps.append(step)
        self.shape_values = [o for st in self.shape_steps for o in st.outputs if o]
        self.outputs = [alias.get(n, n) for n in program.output_names]
        # outputs that predict must copy even when they are fresh-looking arrays: cached shape-only values,
        # constants and inputs passed straight through belong to the model or to the caller
        keep = set(self.shape_values) | {vi.name for vi in program.inputs}
        self.copy_always = [n in keep or program.lookup_const(n) is not None for n in self.outputs]
        self.cache = {}
        self._all, self._data = _compile_steps(self.all_steps), _compile_steps(self.data_steps)
        # the constants each list of steps reads (not every initializer: fewer entries to copy per call)
        self._all_consts = self._consts_read(self.all_steps)
        self._data_consts = self._consts_read(self.data_steps)

    def _consts_read(self, steps):
        prog = self.program
        names = {n for st in steps for n in st.args if n} | set(self.outputs)
        return {n: prog.consts[n] for n in names if n in prog.consts}

    def run(self, names, xs):
        """The graph outputs (list, `outputs` order) for inputs xs (checked arrays, in `names` order)."""
        key = cached = None
        if self.shape_steps:
            key = tuple([(a.shape, a.dtype.char) for a in xs])
            cached = self.cache.get(key)
        if cached is not None:
            env = dict(self._data_consts)
            env[""] = None
            env.update(zip(names, xs))
            env.update(cached)
            _run_steps(self._data, env)
        else:                                    # in graph order: a Shape may read a data value
            env = dict(self._all_consts)
            env[""] = None
            env.update(zip(names, xs))
            _run_steps(self._all, env)
            if key is not None:
                self._remember(key, {n: env[n] for n in self.shape_values})
        return [env[n] for n in self.outputs]

    def _remember(self, key, values):
        if sum(getattr(v, "nbytes", 0) for v in values.values()) > _SHAPE_CACHE_MAX_BYTES:
            return
        cache = self.cache
        while len(cache) >= _SHAPE_CACHE_ENTRIES:
            try:
                cache.pop(next(iter(cache)))
            except (KeyError, StopIteration, RuntimeError):     # another thread changed it: good enough
                break
        cache[key] = values


# ---- the model ----------------------------------------------------------------------------------------------
class OnnxModel(Model):
    """An ONNX graph with fastlstm's model API.

    `predict(x)` takes one array, a list in `input_names` order or a dict by input name, with the shapes and
    dtypes the graph declares (often time-major); it returns one array, or a list in `output_names` order.
    """

    def __init__(self, program, path, model_proto, buf):
        self._bytes = buf
        self.name = program.graph.name or os.path.splitext(os.path.basename(path))[0]
        self.stateful = False
        self.built = True
        self.path = path
        self._program = program
        self._input_infos = program.inputs
        self._input_specs = [_input_spec(vi) for vi in program.inputs]
        self.input_names = [vi.name for vi in program.inputs]
        self.output_names = list(program.output_names)
        self.inputs, self.outputs, self._nodes, self.layers = [], [], [], []
        self._single_output = len(self.output_names) == 1
        self.opset = model_proto.opsets.get("", 1)
        self.producer = f"{model_proto.producer_name} {model_proto.producer_version}".strip()
        self.loops = list(program.ctx.loops)
        self._plan = _RunPlan(program)
        self._batch_axes = _UNSET

    @property
    def batch_axes(self):
        """(input axes, output axes): the axis of each input and output that holds independent batch rows, or
        None when the graph does not say unambiguously (then predict runs the whole input at once). Worked out
        on first use (find_batch_axes)."""
        if self._batch_axes is _UNSET:
            from .onnx_batch import find_batch_axes      # imported on first use: not on the load path
            self._batch_axes = find_batch_axes(self._program, self._plan)
        return self._batch_axes

    def _normalize_inputs(self, x):
        names = self.input_names
        if isinstance(x, dict):
            missing = [n for n in names if n not in x]
            if missing:
                raise ValueError(f"model {self.name!r}: missing input(s) {missing}; expected keys {names}, "
                                 f"got {sorted(x)}")
            xs = [x[n] for n in names]
        elif isinstance(x, (list, tuple)) and (len(names) > 1 or (len(x) == 1 and isinstance(x[0], np.ndarray))):
            xs = list(x)
        else:
            xs = [x]
        if len(xs) != len(names):
            raise ValueError(f"model {self.name!r} expects {len(names)} input(s) {names}, got {len(xs)}")
        return [_check_input(spec, a) for spec, a in zip(self._input_specs, xs)]

    def predict(self, x, batch_size=None, verbose=0):
        """Run the graph.

        Parameters
        ----------
        x : array, list of arrays (input_names order) or dict {input name: array}, shaped as the graph
            declares its inputs (often time-major: (T, N, features)).
        batch_size : int, optional
            Rows per run. The batch axis of each input and output is read from the graph (`batch_axes`: the
            symbolic input dim that reaches the RNN nodes' batch axis, axis 1 of a time-major X); with
            threads > 1 (`fastlstm.set_num_threads`) and no batch_size, large batches are split across the
            threads as Model.predict does. When the batch axis is ambiguous (no RNN node pins it down, a Loop
            or an op that may mix rows sits between input and output, several symbolic dims fit), the whole
            input runs at once and batch_size is ignored.

        Returns
        -------
        One array for a one-output graph, else a list in `output_names` order.
        """
        xs = self._normalize_inputs(x)
        if batch_size is not None and int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        threads = max(1, int(config.NUM_THREADS))
        chunks = None
        if batch_size is not None or threads > 1:
            axes = self.batch_axes
            if axes is not None:
                chunks = self._chunks(xs, axes[0], batch_size, threads)
        if chunks is None:
            outs = self._run(xs)
        else:
            in_axes, out_axes = self.batch_axes
            run = lambda c: self._run([_take(a, ax, c) for a, ax in zip(xs, in_axes)])    # noqa: E731
            if threads > 1:
                from ..model import _blas_single_thread, _predict_pool
                with _blas_single_thread():       # the parallelism is across rows; BLAS threads would oversubscribe
                    parts = list(_predict_pool(threads).map(run, chunks))
            else:
                parts = [run(c) for c in chunks]
            outs = [np.concatenate([p[k] for p in parts], axis=ax) for k, ax in enumerate(out_axes)]
        return outs[0] if self._single_output else outs

    def _chunks(self, xs, in_axes, batch_size, threads):
        """[(start, stop), ...] row ranges along the batch axis, or None for one run on everything."""
        sizes = {a.shape[ax] for a, ax in zip(xs, in_axes)}
        if len(sizes) != 1:
            return None                           # inconsistent batch sizes: let the graph report it
        n = sizes.pop()
        if batch_size is None:                    # as Model.predict: a slice of rows per thread when it pays
            if n < 2 * PREDICT_MIN_ROWS_PER_THREAD and n <= PREDICT_MAX_ROWS:
                return None
            k = min(threads, n // PREDICT_MIN_ROWS_PER_THREAD)
            k = max(k, 1, -(-n // PREDICT_MAX_ROWS))
            chunks = [(i * n // k, (i + 1) * n // k) for i in range(k)]
        else:
            chunks = [(s, min(n, s + int(batch_size))) for s in range(0, n, int(batch_size))]
        return chunks if len(chunks) > 1 else None

    def _run(self, xs):
        """One run of the graph on checked inputs: the outputs as fresh arrays the caller owns."""
        plan = self._plan
        token = onnx_rnn.begin_run()              # RNN outputs in reused arrays, given back below
        try:
            outs = plan.run(self.input_names, xs)
            return [np.array(o) if keep or not o.flags.writeable
                    or (o.base is not None and not onnx_rnn.hand_over(o, outs)) else o
                    for o, keep in zip(outs, plan.copy_always)]
        except _StepError as e:
            raise ValueError(f"model {self.name!r}: {e}") from e.__cause__
        finally:
            onnx_rnn.end_run(token)

    def __call__(self, x, training=False):
        return self.predict(x)

    def get_weights(self):
        """The graph's initializers (file order), as copies."""
        return [np.array(t.array(self._program.ctx.base_dir)) for t in self._program.graph.initializers]

    @property
    def weights(self):
        return self.get_weights()

    def count_params(self):
        return int(sum(t.array(self._program.ctx.base_dir).size for t in self._program.graph.initializers))

    def set_weights(self, weights):
        raise NotImplementedError("ONNX models are read-only in fastlstm: set_weights is not supported")

    def reset_states(self):
        pass

    def summary(self, print_fn=print):
        """Print the graph's inputs, outputs and the operators that run at predict time."""
        lines = [f'ONNX model "{self.name}" ({os.path.basename(self.path)}, opset {self.opset}, '
                 f'{self.producer or "unknown producer"})']
        for vi in self._input_infos:
            lines.append(f"  input  {vi.name}: {_fmt_vi(vi)}")
        for vi in self._program.graph.outputs:
            lines.append(f"  output {vi.name}: {_fmt_vi(vi)}")
        counts = {}
        for s in self._program.steps:
            counts[s.node.op_type] = counts.get(s.node.op_type, 0) + 1
        lines.append("  runs: " + ", ".join(f"{k} x{v}" if v > 1 else k for k, v in counts.items()))
        for d in self.loops:
            lines.append(f"  loop: {d}")
        lines.append(f"  Total params: {self.count_params():,}")
        text = "\n".join(lines)
        if print_fn:
            print_fn(text)
        return text

    def _unsupported(self, *a, **k):
        raise NotImplementedError(f"model {self.name!r} was loaded from ONNX: only predict/summary are supported")

    fit = evaluate = compile = save = stream = _unsupported

    def export_onnx(self, path, opset=None):
        """Write the graph back out (a copy of the file it was loaded from)."""
        with open(path, "wb") as f:
            f.write(self._bytes)


def _take(a, axis, rows):
    """a[..., start:stop, ...] along `axis` (a view)."""
    return a[(slice(None),) * axis + (slice(rows[0], rows[1]),)]


def _fmt_vi(vi):
    dt = onnx_proto.DTYPE_NAMES.get(vi.elem_type, "?")
    shape = "?" if vi.shape is None else "[" + ", ".join("?" if d is None else str(d) for d in vi.shape) + "]"
    return f"{dt} {shape}"


_NATIVE_DTYPES = {k: np.dtype(v).newbyteorder("=") for k, v in onnx_proto.DTYPES.items()}


def _input_spec(vi):
    """What _check_input needs of a graph input: (value info, dtype or None, rank or None, fixed dims)."""
    fixed = () if vi.shape is None else tuple((k, d) for k, d in enumerate(vi.shape) if isinstance(d, int) and d > 0)
    return vi, _NATIVE_DTYPES.get(vi.elem_type), None if vi.shape is None else len(vi.shape), fixed


def _check_input(spec, a):
    """a as an array of the declared dtype (converted when that is lossless in kind), with the declared rank and
    fixed dims (onnxruntime's checks)."""
    vi, want, rank, fixed = spec
    if type(a) is not np.ndarray:
        a = np.asarray(a)
    if want is not None and a.dtype != want:
        if a.dtype.kind not in "fiub":
            raise TypeError(f"input {vi.name!r} must be a numeric array of {want.name}, got dtype {a.dtype}")
        if want.kind in "iu" and a.dtype.kind == "f":
            if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
                raise TypeError(f"input {vi.name!r} expects {want.name} values, got non-integer {a.dtype}")
        if want.kind == "b" and a.dtype.kind != "b":
            raise TypeError(f"input {vi.name!r} expects bool, got {a.dtype}")
        a = a.astype(want)
    if rank is not None:
        if a.ndim != rank:
            raise ValueError(f"input {vi.name!r} expects rank {rank} with shape {_fmt_vi(vi)}, got shape {a.shape}")
        for k, d in fixed:
            if a.shape[k] != d:
                raise ValueError(f"input {vi.name!r} expects shape {_fmt_vi(vi)}, got {a.shape}")
    return a


def load_onnx(path):
    """Load an ONNX file as an OnnxModel.

    Parameters
    ----------
    path : str

    Returns
    -------
    OnnxModel

    Raises
    ------
    ModelLoadError
        The file does not parse, uses an unsupported operator, reads a value nothing provides, or points at
        external data that is absent. The message names the file, the node and the op.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            buf = f.read()
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read the file ({e.strerror or e})") from e
    return load_onnx_bytes(buf, path)


def load_onnx_bytes(buf, path="<bytes>"):
    """Load a serialized ONNX model from memory; `path` names it in messages and anchors external data."""
    from . import onnx_loop  # noqa: F401 - importing registers the Loop/If/Scan ops (onnx_rnn: LSTM/GRU/RNN)
    try:
        proto = onnx_proto.parse_model(buf)
    except onnx_proto.ProtoError as e:
        raise ModelLoadError(f"{path}: not a readable ONNX protobuf: {e}") from None
    except (TypeError, ValueError, IndexError, OverflowError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path}: not a readable ONNX protobuf (corrupt data: {type(e).__name__})") from None
    if proto.graph is None or (not proto.graph.nodes and not proto.graph.outputs):
        raise ModelLoadError(f"{path}: not an ONNX model (no graph found; truncated or not a .onnx file?)")
    if "" not in proto.opsets and proto.ir_version <= 0:
        raise ModelLoadError(f"{path}: not an ONNX model (no ir_version / default opset)")
    # other domains are refused only when a node uses one (tf2onnx imports ai.onnx.ml and never uses it)
    functions = {(f.domain, f.name): f for f in proto.functions}
    ctx = Context(path, proto.opsets, functions)
    program = Program(proto.graph, ctx)
    if not proto.graph.outputs:
        raise ModelLoadError(f"{path}: the graph declares no outputs")
    return OnnxModel(program, path, proto, buf)
