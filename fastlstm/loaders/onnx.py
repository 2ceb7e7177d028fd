"""ONNX loader: `.onnx` file -> OnnxModel, a model with fastlstm's predict API that runs the graph with NumPy ops
and the fused LSTM/GRU kernels.

    load_onnx(path)
      parse the protobuf (onnx_proto: no `import onnx` on this path)
      -> compile the graph: every node becomes a `run(*inputs)` closure built once (attributes read and checked,
         LSTM/GRU weights converted to the kernels' layout, Loop bodies compiled or mapped to fused kernels)
      -> fold constants: nodes whose inputs are all known at load run once, now
      -> OnnxModel.predict runs the remaining steps in order

Errors found at load (ModelLoadError naming file, node and op): unparsable or truncated protobuf, operators
outside the supported set, inputs that nothing provides (missing initializer), absent external data files,
bad attributes. Shapes are never taken from the graph's declarations (except to check the inputs a caller
passes, as onnxruntime does): every shape comes from the arrays at run time, so any batch size and sequence
length work.
"""
import os

import numpy as np

from ..errors import ModelLoadError
from ..model import Model
from . import onnx_proto
from .onnx_ops import OPS

SUPPORTED_DOMAINS = ("", "ai.onnx")
_MISSING = object()


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
    __slots__ = ("run", "inputs", "outputs", "node")

    def __init__(self, run, inputs, outputs, node):
        self.run, self.inputs, self.outputs, self.node = run, inputs, outputs, node


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
        step = None
        try:
            for step in self.steps:
                outs = step.run(*[env[n] if n else None for n in step.inputs])
                for name, v in zip(step.outputs, outs):
                    if name:
                        env[name] = v
        except (ValueError, TypeError, IndexError, KeyError, FloatingPointError, ArithmeticError) as e:
            if step is None or isinstance(e, _StepError):
                raise
            n = step.node
            raise _StepError(f"ONNX node {_label(n)} (op {n.op_type}) failed: {type(e).__name__}: {e}") from e
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
        self.input_names = [vi.name for vi in program.inputs]
        self.output_names = list(program.output_names)
        self.inputs, self.outputs, self._nodes, self.layers = [], [], [], []
        self._single_output = len(self.output_names) == 1
        self.opset = model_proto.opsets.get("", 1)
        self.producer = f"{model_proto.producer_name} {model_proto.producer_version}".strip()
        self.loops = list(program.ctx.loops)

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
        return [_check_input(vi, a) for vi, a in zip(self._input_infos, xs)]

    def predict(self, x, batch_size=None, verbose=0):
        """Run the graph.

        Parameters
        ----------
        x : array, list of arrays (input_names order) or dict {input name: array}, shaped as the graph
            declares its inputs.
        batch_size : ignored. ONNX graphs do not say which axis is the batch, so the graph always runs on the
            whole input at once (the kernels handle any batch size).

        Returns
        -------
        One array for a one-output graph, else a list in `output_names` order.
        """
        xs = self._normalize_inputs(x)
        prog = self._program
        env = dict(prog.consts)
        env.update(zip(self.input_names, xs))
        try:
            prog.run(env)
        except _StepError as e:
            raise ValueError(f"model {self.name!r}: {e}") from e.__cause__
        outs = [env[n] for n in self.output_names]
        outs = [np.array(o) if o.base is not None or not o.flags.writeable else o for o in outs]
        return outs[0] if self._single_output else outs

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


def _fmt_vi(vi):
    dt = onnx_proto.DTYPE_NAMES.get(vi.elem_type, "?")
    shape = "?" if vi.shape is None else "[" + ", ".join("?" if d is None else str(d) for d in vi.shape) + "]"
    return f"{dt} {shape}"


def _check_input(vi, a):
    a = np.asarray(a)
    want = onnx_proto.DTYPES.get(vi.elem_type)
    if want is not None:
        want = want.newbyteorder("=")
        if a.dtype != want:
            if a.dtype.kind not in "fiub":
                raise TypeError(f"input {vi.name!r} must be a numeric array of {want.name}, got dtype {a.dtype}")
            if want.kind in "iu" and a.dtype.kind == "f":
                if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
                    raise TypeError(f"input {vi.name!r} expects {want.name} values, got non-integer {a.dtype}")
            if want.kind == "b" and a.dtype.kind != "b":
                raise TypeError(f"input {vi.name!r} expects bool, got {a.dtype}")
            a = a.astype(want)
    if vi.shape is not None:
        if a.ndim != len(vi.shape):
            raise ValueError(f"input {vi.name!r} expects rank {len(vi.shape)} with shape {_fmt_vi(vi)}, "
                             f"got shape {a.shape}")
        for d, n in zip(vi.shape, a.shape):
            if isinstance(d, int) and d > 0 and d != n:
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
    from . import onnx_loop, onnx_rnn  # noqa: F401 - importing registers the LSTM/GRU/RNN and Loop/If/Scan ops
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
