"""Which axis of each input and output of an ONNX graph holds independent batch rows (OnnxModel.batch_axes,
used by predict(batch_size=...) and by the thread split).

Each graph input's batch axis is one of its symbolic declared dims; every combination of candidates is pushed
through the graph's data steps (the shape-only steps of onnx._RunPlan are recomputed per chunk) with per-op rules:
    RNN node        X has the batch on axis 1 (layout=1: axis 0); initial states on axis 1 (0); sequence_lens
                    on axis 0; a state that is not a batch input must be one value repeated (zeros from
                    ConstantOfShape / Expand), the same in every chunk
    elementwise     NumPy broadcasting moves the axis; constants must have size 1 along it
    Transpose, Squeeze, Unsqueeze, Gather, Slice, Concat, Split, MatMul, Gemm, Softmax, reductions, ...
                    follow or reject (an op that reads across the batch axis rejects)
    Reshape         the batch axis must stay the outermost grouping: dims before it copied, or the batch
                    first with per-row dims after it (Keras TimeDistributed / Tensordot reshapes to (B*T, H) and
                    back are followed as "blocked" rows)
Loop / If / Scan and anything unknown reject. The answer is the one combination that survives.
"""
import itertools

import numpy as np

from .onnx_ops import ELEMENTWISE


class _NoBatchAxis(Exception):
    pass


_MAX_AXIS_HYPOTHESES = 64


def find_batch_axes(program, plan):
    """The axis along which each graph input and output splits into independent rows, or None.

    Every input's batch axis is one of its symbolic (not fixed) declared dims. Each combination of candidates
    is pushed forward through the data steps by per-op rules (_BatchAxes): an RNN node needs the batch on axis 1
    of X (axis 0 with layout=1), elementwise ops follow NumPy broadcasting, Transpose / Squeeze / Gather / Reshape
    move the axis, and anything that could mix rows rejects the combination (a reduction or Softmax over the
    batch axis, a Reshape the rules cannot follow, Loop / If / Scan, a constant with a batch-sized dim, an initial
    state that is neither a batch input nor one value repeated). The answer is the one combination that reaches
    every output with a known axis and reads every input.

    Returns
    -------
    (in_axes, out_axes) : lists of int, or None when no combination or more than one survives.
    """
    cands = []
    for vi in program.inputs:
        if vi.shape is None:
            return None
        c = [k for k, d in enumerate(vi.shape) if not (isinstance(d, int) and d > 0)]
        if not c:
            return None
        cands.append(c)
    found = set()
    for n, combo in enumerate(itertools.product(*cands)):
        if n >= _MAX_AXIS_HYPOTHESES:
            return None
        try:
            found.add((combo, _BatchAxes(program, plan, combo).out_axes))
        except _NoBatchAxis:
            pass
    if len(found) != 1:
        return None
    in_axes, out_axes = found.pop()
    return list(in_axes), list(out_axes)


class _BatchAxes:
    """One hypothesis of find_batch_axes pushed through the data steps.

    ann[name] = (axis, rank, exact) for every value that carries batch rows: `axis` holds the rows, independent of
    each other; `exact` is False when that axis has B * k entries (k per-row entries, as after a
    Reshape(x, [-1, H]) of a batch-first x), still in contiguous per-row blocks, so chunks concatenate.
    Shape-only values are described symbolically where the rules need them: `vec` (a shape vector, elements
    ("const", v) or ("dim", value, axis)) and `fill` (the one value a repeated tensor holds).
    """

    def __init__(self, program, plan, in_axes):
        self.prog, self.plan = program, plan
        self.shape_only = set(plan.shape_values)
        self.producer = {o: st for st in plan.all_steps for o in st.outputs if o}
        self.opset = program.ctx.opsets.get("", 1)
        self.ann = {vi.name: (a, len(vi.shape), True) for vi, a in zip(program.inputs, in_axes)}
        used = set()
        for st in plan.data_steps:
            used.update(n for n in st.args if n in self.ann)
            outs = self.rule(st)
            for name, a in zip(st.outputs, outs):
                if name and a is not None:
                    self.ann[name] = a
        if any(vi.name not in used for vi in program.inputs):
            raise _NoBatchAxis              # an input no data step reads: its axis cannot be checked
        if any(n not in self.ann for n in plan.outputs):
            raise _NoBatchAxis
        self.out_axes = tuple(self.ann[n][0] for n in plan.outputs)

    # ---- symbolic shape-only values -------------------------------------------------------------------------
    def const(self, name):
        return self.prog.lookup_const(name) if name else None

    def rank(self, name):
        if name in self.ann:
            return self.ann[name][1]
        c = self.const(name)
        return None if c is None else c.ndim

    def vec(self, name, depth=0):
        """A 1-D (or 0-D) integer shape-only value as a list of elements ("const", v) | ("dim", value, axis),
        or None when the rules cannot follow it."""
        c = self.const(name)
        if c is not None:
            return [("const", int(v)) for v in c.reshape(-1)] if c.dtype.kind in "iu" and c.ndim <= 1 else None
        st = self.producer.get(name)
        if st is None or name not in self.shape_only or depth > 40:
            return None
        op, ins = st.node.op_type, st.args
        if op == "Shape":
            r = self.rank(ins[0])
            if r is None:
                return None
            dims = [("dim", ins[0], k) for k in range(r)]
            start, end = _attr(st.node, "start", 0), _attr(st.node, "end", None)
            return dims[start:end]
        if op in ("Cast", "Identity", "Squeeze", "Unsqueeze", "Reshape"):
            return self.vec(ins[0], depth + 1)
        if op == "Mul":                     # products of dims (torch: the size of merged axes)
            x, y = self.vec(ins[0], depth + 1), self.vec(ins[1], depth + 1)
            if x is None or y is None or (len(x) != len(y) and 1 not in (len(x), len(y))):
                return None
            n = max(len(x), len(y))
            x, y = (x * n)[:n] if len(x) == 1 else x, (y * n)[:n] if len(y) == 1 else y
            return [("prod", (e, f)) for e, f in zip(x, y)]
        if op == "ReduceProd" and not _attr(st.node, "keepdims", 1):
            x = self.vec(ins[0], depth + 1)
            return None if x is None else [("prod", tuple(x))]
        if op == "Concat":
            parts = [self.vec(n, depth + 1) for n in ins if n]
            return None if any(p is None for p in parts) else [e for p in parts for e in p]
        if op == "Gather" and _attr(st.node, "axis", 0) == 0:
            data, idx = self.vec(ins[0], depth + 1), self.const(ins[1])
            if data is None or idx is None:
                return None
            try:
                return [data[int(i)] for i in idx.reshape(-1)]
            except IndexError:
                return None
        if op == "Slice" and self.opset >= 10:
            data = self.vec(ins[0], depth + 1)
            p = ([self.const(n) if n else None for n in ins[1:5]] + [None] * 4)[:4]
            if data is None or p[0] is None or p[1] is None or (len(ins) > 3 and ins[3] and p[2] is None) or \
                    (len(ins) > 4 and ins[4] and p[3] is None):
                return None
            if p[2] is not None and [int(v) for v in p[2].reshape(-1)] not in ([0], [-1]):
                return None
            step = 1 if p[3] is None else int(p[3].reshape(-1)[0])
            return data[int(p[0].reshape(-1)[0]):int(p[1].reshape(-1)[0]):step] if step else None
        return None

    def fill(self, name, depth=0):
        """("const", v) or ("dim", value, axis) when every element of the shape-only value `name` equals that
        one value, else None."""
        c = self.const(name)
        if c is not None:
            flat = c.reshape(-1)
            return ("const", flat[0].item()) if flat.size and np.all(flat == flat[0]) else None
        st = self.producer.get(name)
        if st is None or name not in self.shape_only or depth > 40:
            return None
        op, ins = st.node.op_type, st.args
        if op == "ConstantOfShape":
            a = st.node.attrs.get("value")
            return ("const", 0.0 if a is None else a.value.array(self.prog.ctx.base_dir).reshape(-1)[0].item())
        if op == "Concat":
            fs = {self.fill(n, depth + 1) for n in ins if n}
            return fs.pop() if len(fs) == 1 and None not in fs else None
        if op in ("Expand", "Unsqueeze", "Squeeze", "Reshape", "Transpose", "Cast", "Identity", "Tile", "Slice",
                  "Gather"):
            f = self.fill(ins[0], depth + 1)
            if f is None:
                v = self.vec(ins[0], depth + 1)
                f = v[0] if v is not None and len(v) == 1 else None
            return f
        return None

    def per_chunk(self, e):
        """True when shape element / fill value e is the same for every chunk of the batch."""
        if e is None:
            return False
        if e[0] == "const":
            return True
        if e[0] == "prod":
            return all(self.per_chunk(f) for f in e[1])
        a = self.ann.get(e[1])
        return a[0] != e[2] if a is not None else self.const(e[1]) is not None

    def batch_dim(self, e):
        """True when shape element e is the batch size itself."""
        if e is None or e[0] != "dim":
            return False
        a = self.ann.get(e[1])
        return a is not None and a[0] == e[2] and a[2]

    # ---- the rules ------------------------------------------------------------------------------------------
    def rule(self, st):
        """(axis, rank, exact) | None for each output of data step `st`; raises _NoBatchAxis."""
        node, names = st.node, list(st.args)
        op = node.op_type
        anns = [self.ann.get(n) for n in names]
        fail = _NoBatchAxis
        batch = [k for k, a in enumerate(anns) if a is not None]
        n_out = len(st.outputs)
        const = lambda k: self.const(names[k]) if k < len(names) else None      # noqa: E731

        def consts_only():
            # every input that does not carry the batch must be a constant known at load
            if any(n and anns[k] is None and const(k) is None for k, n in enumerate(names)):
                raise fail

        if op in ELEMENTWISE or op == "Dropout":
            if op == "Dropout":
                names, anns, n_out = names[:1], anns[:1], 1
            consts_only()
            R = max(a[1] if a is not None else const(k).ndim for k, a in enumerate(anns) if names[k])
            placed = {(a[0] + R - a[1], a[2]) for a in anns if a is not None}
            if len(placed) != 1:
                raise fail                  # batch inputs that disagree (or mix exact and blocked rows)
            ax, exact = placed.pop()
            for k, a in enumerate(anns):
                c = const(k) if a is None else None
                if c is not None and c.ndim - (R - ax) >= 0 and c.shape[c.ndim - (R - ax)] != 1:
                    raise fail              # a constant with a fixed size along the batch axis
            return [(ax, R, exact)] * n_out
        if not batch or op in ("Shape", "Size"):
            return [None] * n_out           # shape values: recomputed per chunk, read as shapes only
        a, r, ex = anns[batch[0]]
        single = batch == [0]

        def axis_attr(name, default):
            v = _attr(node, name, default)
            if v is None:
                raise fail
            return v + r if v < 0 else v

        if op == "CastLike":
            return [anns[0]]
        if op == "Transpose" and single:
            perm = _attr(node, "perm", None)
            perm = list(range(r))[::-1] if perm is None else list(perm)
            return [(perm.index(a), r, ex)]
        if op in ("Squeeze", "Unsqueeze") and single:
            axes = _attr(node, "axes", None) if self.opset < 13 else const(1)
            if axes is None:
                raise fail                  # squeeze every size-1 dim: a chunk of one row would lose its axis
            axes = [int(v) for v in np.asarray(axes).reshape(-1)]
            if op == "Squeeze":
                axes = [v + r if v < 0 else v for v in axes]
                if a in axes:
                    raise fail
                return [(a - sum(v < a for v in axes), r - len(axes), ex)]
            R = r + len(axes)
            axes = [v + R if v < 0 else v for v in axes]
            kept = [k for k in range(R) if k not in axes]
            return [(kept[a], R, ex)]
        if op == "Reshape" and single:
            return [self.reshape(node, names, a, r, ex)]
        if op == "Expand" and single:
            shape = self.vec(names[1])
            if shape is None:
                raise fail
            R = max(r, len(shape))
            k = a + R - r - (R - len(shape))    # the shape element that meets the batch axis, if any
            if k >= 0 and not (shape[k] == ("const", 1) or (ex and self.batch_dim(shape[k]))):
                raise fail
            return [(a + R - r, R, ex)]
        if op == "Flatten" and single and a == 0:
            axis = axis_attr("axis", 1)
            if axis < 1:
                raise fail
            return [(0, 2, ex and axis == 1)]
        if op == "Slice" and single:
            if self.opset < 10:
                starts, ends, axes, steps = _attr(node, "starts", None), _attr(node, "ends", None), \
                    _attr(node, "axes", None), None
            else:
                starts, ends, axes, steps = const(1), const(2), const(3), const(4)
                if (len(names) > 3 and names[3] and axes is None) or (len(names) > 4 and names[4] and steps is None):
                    raise fail
            if starts is None or ends is None:
                raise fail
            starts, ends = np.asarray(starts).reshape(-1), np.asarray(ends).reshape(-1)
            axes = range(len(starts)) if axes is None else [int(v) for v in np.asarray(axes).reshape(-1)]
            steps = [1] * len(starts) if steps is None else [int(v) for v in np.asarray(steps).reshape(-1)]
            for s_, e_, ax_, sp in zip(starts, ends, axes, steps):
                if (ax_ + r if ax_ < 0 else ax_) == a and not (s_ == 0 and sp == 1 and e_ >= 2 ** 31 - 1):
                    raise fail              # slicing the batch axis itself
            return [(a, r, ex)]
        if op == "Concat":
            if any(n and x is None for n, x in zip(names, anns)) or len({x for x in anns if x is not None}) != 1 \
                    or axis_attr("axis", None) == a:
                raise fail
            return [(a, r, ex)]
        if op == "Split" and single:
            if axis_attr("axis", 0) == a:
                raise fail
            return [(a, r, ex)] * n_out
        if op in ("Softmax", "LogSoftmax") and single:
            if self.opset >= 13:
                if axis_attr("axis", -1) == a:
                    raise fail
            elif a >= axis_attr("axis", 1):
                raise fail                  # coerced to 2-D at `axis`: the batch must be in the row part
            return [(a, r, ex)]
        if op in ("MatMul", "Gemm") and single:
            consts_only()
            b = const(1)
            if op == "Gemm":
                c = const(2)
                if a != (1 if _attr(node, "transA", 0) else 0) or (c is not None and c.ndim == 2 and c.shape[0] != 1):
                    raise fail
                return [(0, 2, ex)]
            if r < 2 or a == r - 1:
                raise fail                  # the contracted axis
            if b.ndim <= 2:
                return [(a, r if b.ndim == 2 else r - 1, ex)]
            R = max(r, b.ndim)
            ax = a + R - r
            k = ax - (R - b.ndim)           # b's dim broadcast against the batch axis (stacked matrices)
            if ax < R - 2 and k >= 0 and b.shape[k] != 1:
                raise fail
            return [(ax, R, ex)]
        if op == "Gather" and len(batch) == 1:
            if batch == [1]:                # embedding lookup: constant table, the indices carry the batch
                data = const(0)
                if data is None:
                    raise fail
                g = _attr(node, "axis", 0)
                g = g + data.ndim if g < 0 else g
                return [(g + a, data.ndim - 1 + r, ex)]
            idx = const(1)
            g = axis_attr("axis", 0)
            if idx is None or g == a:
                raise fail
            return [(a if a < g else a - 1 + idx.ndim, r - 1 + idx.ndim, ex)]
        if op == "LayerNormalization" and single:
            consts_only()
            if a >= axis_attr("axis", -1):
                raise fail
            return [(a, r, ex)] * n_out
        if op in ("GlobalAveragePool", "GlobalMaxPool") and single:
            if a >= 2:
                raise fail                  # pooled over
            return [(a, r, ex)]
        if op == "BatchNormalization" and single:
            consts_only()
            if a == 1 or n_out > 1:
                raise fail
            return [(a, r, ex)]
        if (op.startswith("Reduce") or op in ("ArgMax", "ArgMin", "CumSum")) and single:
            if op in ("ArgMax", "ArgMin"):
                axes, keep = [_attr(node, "axis", 0)], _attr(node, "keepdims", 1)
            elif op == "CumSum":
                axes, keep = const(1), 1
            else:
                axes = const(1) if len(names) > 1 and names[1] else _attr(node, "axes", None)
                keep = _attr(node, "keepdims", 1)
            if axes is None or np.asarray(axes).size == 0:
                raise fail                  # over every axis, the batch axis included
            axes = [int(v) + r if int(v) < 0 else int(v) for v in np.asarray(axes).reshape(-1)]
            if a in axes:
                raise fail
            return [(a, r, ex) if keep else (a - sum(v < a for v in axes), r - len(axes), ex)]
        if op == "ReverseSequence" and batch[0] == 0:
            if _attr(node, "batch_axis", 1) != a:
                raise fail
            if anns[1] is None:
                if not self.per_chunk(self.fill(names[1])):
                    raise fail              # the same length for every row, the same in every chunk
            elif anns[1][:2] != (0, 1):
                raise fail
            return [(a, r, ex)]
        if op in ("LSTM", "GRU", "RNN") and batch[0] == 0:
            layout = _attr(node, "layout", 0) if self.opset >= 14 else 0
            want = 0 if layout else 1
            if (a, r) != (want, 3):
                raise fail
            for k, n in enumerate(names[1:], 1):
                if not n:
                    continue
                if k in (1, 2, 3, 7):       # weights: constants (checked at load) or not splittable
                    if anns[k] is not None:
                        raise fail
                elif anns[k] is None:
                    if not self.per_chunk(self.fill(n)):
                        raise fail          # states / lengths of a fixed batch, or not one repeated value
                elif anns[k][:2] != ((0, 1) if k == 4 else (want, 3)):
                    raise fail
            y, s = ((0, 4, ex), (0, 3, ex)) if layout else ((2, 4, ex), (1, 3, ex))
            return [y] + [s] * (n_out - 1)
        raise fail

    def reshape(self, node, names, a, r, ex):
        """Reshape of a value with its batch on axis a: where the batch goes, or _NoBatchAxis."""
        allowzero = _attr(node, "allowzero", 0)
        if self.opset < 5:
            shape = _attr(node, "shape", None)
            target = None if shape is None else [("const", int(v)) for v in shape]
        else:
            target = self.vec(names[1])
        if target is None:
            raise _NoBatchAxis
        x = names[0]
        elems = [("copy", i) if (e == ("const", 0) and not allowzero) or e == ("dim", x, i) else e
                 for i, e in enumerate(target)]
        R = len(elems)
        if a < R and all(elems[i] == ("copy", i) for i in range(a)):
            e = elems[a]
            if e == ("copy", a):
                return (a, R, ex)
            if ex and self.batch_dim(e):
                return (a, R, True)
        if a == 0 and R >= 1:
            def per_row(e):                 # a dim of the same size for every row and every chunk
                return e is not None and ((e[0] == "const" and e[1] > 0) or (e[0] == "copy" and e[1] != 0) or
                                          (e[0] in ("dim", "prod") and self.per_chunk(e)))
            rest = elems[1:]
            n_infer = sum(e == ("const", -1) for e in rest)
            if n_infer <= 1 and all(per_row(e) or e == ("const", -1) for e in rest):
                e0 = elems[0]
                if e0 == ("copy", 0):
                    return (0, R, ex)
                if self.batch_dim(e0):
                    return (0, R, True)
                blocks = e0 == ("const", -1) and n_infer == 0
                if e0 is not None and e0[0] == "prod":          # batch x per-row dims (TensorDot's reshape)
                    fs = e0[1]
                    blocks = sum(self.batch_dim(f) for f in fs) == 1 and \
                        all(self.batch_dim(f) or self.per_chunk(f) for f in fs)
                if blocks:
                    return (0, R, False)    # rows regrouped in contiguous per-row blocks
        raise _NoBatchAxis


def _attr(node, name, default):
    """A node attribute's decoded value (bytes as str), or `default`."""
    a = node.attrs.get(name)
    if a is None:
        return default
    v = a.value
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v
