"""Control flow: Loop, If and Scan, evaluated generically (the body graph runs once per iteration with the same
op set as the main graph, its constants folded once at load).

tf2onnx and Keras 3's ONNX export turn Keras 3 GRUs, masked LSTMs, hard_sigmoid LSTMs and tf_keras
GRU(reset_after=False) into a `Loop` whose body is one unrolled cell step (formats.md 0.9). onnx_cell.py
recognizes such bodies and runs the whole loop on the fused kernels; what it does not recognize runs here.

Loop semantics (ONNX spec): inputs (M, cond, v_initial...), body (iter_num, cond_in, v_in...) ->
(cond_out, v_out..., scan_out...); outputs are the final v and each scan_out stacked on a new axis 0.
"""
import numpy as np

from .onnx_ops import op


def _body_output(prog, env, name):
    v = env.get(name)
    if v is None:
        v = prog.lookup_const(name)
    return v


class LoopRunner:
    def __init__(self, view, body):
        self.view, self.body = view, body
        self.n_explicit = len(view.inputs)
        self.n_carried = len(view.inputs) - 2
        self.in_names = [vi.name for vi in body.inputs]
        self.out_names = list(body.output_names)
        self.n_scan = len(self.out_names) - 1 - self.n_carried
        if self.n_carried < 0 or len(self.in_names) != 2 + self.n_carried or self.n_scan < 0:
            view.fail(f"the body takes {len(self.in_names)} inputs and returns {len(self.out_names)} outputs for "
                      f"{max(self.n_carried, 0)} loop-carried values (expected {2 + max(self.n_carried, 0)} inputs)")
        has_m = len(view.inputs) > 0 and bool(view.inputs[0])
        has_cond = len(view.inputs) > 1 and bool(view.inputs[1])
        if not has_m and not has_cond:
            view.fail("neither a trip count M nor a condition: the loop would never end")
        self.has_cond = has_cond
        self.implicit_inputs = list(body.outer)
        self.fused = None            # set by onnx_cell when the body is a recognized RNN cell

    def __call__(self, *args):
        if self.fused is not None:
            out = self.fused(*args)
            if out is not None:
                return out
        return self.run_generic(*args)

    def run_generic(self, *args):
        M, cond = args[0], (args[1] if len(args) > 1 else None)
        carried = list(args[2:self.n_explicit])
        body = self.body
        base = dict(body.consts)
        base.update(zip(self.implicit_inputs, args[self.n_explicit:]))
        trip = None if M is None else int(np.asarray(M).reshape(-1)[0])
        keep_going = True if cond is None else bool(np.asarray(cond).reshape(-1)[0])
        scans = [[] for _ in range(self.n_scan)]
        names = self.in_names
        i = 0
        while keep_going and (trip is None or i < trip):
            env = dict(base)
            env[names[0]] = np.array(i, np.int64)
            env[names[1]] = np.array(keep_going)
            for nm, v in zip(names[2:], carried):
                env[nm] = v
            body.run(env)
            outs = [_body_output(body, env, n) for n in self.out_names]
            if self.has_cond:
                keep_going = bool(np.asarray(outs[0]).reshape(-1)[0])
            carried = outs[1:1 + self.n_carried]
            for k, s in enumerate(outs[1 + self.n_carried:]):
                scans[k].append(s)
            i += 1
        stacked = [np.stack(s) if s else np.zeros((0,), np.float32) for s in scans]
        return tuple(carried) + tuple(stacked)


@op("Loop")
def _loop(view):
    a = view.attrs.get("body")
    if a is None or a.value is None:
        view.fail("missing attribute `body`")
    graph = a.value
    # loop-carried values that the body passes through unchanged and that are constant (tf2onnx passes the
    # weights this way): bind them, so everything the body computes from them folds once, at load
    bound = {}
    body_in = [vi.name for vi in graph.inputs]
    body_out = [vi.name for vi in graph.outputs]
    for k in range(2, min(len(view.inputs), len(body_in))):
        if k - 1 < len(body_out) and body_out[k - 1] == body_in[k]:
            c = view.const(k)
            if c is not None:
                bound[body_in[k]] = c
    body = view.subgraph(graph, bound=bound)
    runner = LoopRunner(view, body)
    from . import onnx_cell
    onnx_cell.try_fuse(view, runner)
    view.ctx.loops.append(f"{view.name}: " + ("fused " + runner.fused.description if runner.fused is not None
                                              else f"generic body evaluation ({len(body.steps)} ops per step)"))
    return runner


@op("If")
def _if(view):
    then_g, else_g = view.attrs.get("then_branch"), view.attrs.get("else_branch")
    if then_g is None or else_g is None:
        view.fail("needs then_branch and else_branch")
    branches = [view.subgraph(then_g.value), view.subgraph(else_g.value)]
    implicit = []
    for b in branches:
        for n in b.outer:
            if n not in implicit:
                implicit.append(n)

    def run(cond, *outer):
        b = branches[0] if bool(np.asarray(cond).reshape(-1)[0]) else branches[1]
        env = dict(b.consts)
        env.update(zip(implicit, outer))
        b.run(env)
        return tuple(_body_output(b, env, n) for n in b.output_names)
    run.implicit_inputs = implicit
    return run


@op("Scan")
def _scan(view):
    if view.opset < 9:
        view.fail("Scan before opset 9 (with a batch axis) is not supported")
    a = view.attrs.get("body")
    if a is None:
        view.fail("missing attribute `body`")
    body = view.subgraph(a.value)
    n_scan_in = view.attr("num_scan_inputs")
    n_in = len(view.inputs)
    n_state = n_in - n_scan_in
    n_scan_out = len(body.output_names) - n_state
    in_axes = view.attr("scan_input_axes", None) or [0] * n_scan_in
    in_dirs = view.attr("scan_input_directions", None) or [0] * n_scan_in
    out_axes = view.attr("scan_output_axes", None) or [0] * n_scan_out
    out_dirs = view.attr("scan_output_directions", None) or [0] * n_scan_out
    in_names = [vi.name for vi in body.inputs]
    implicit = list(body.outer)

    def run(*args):
        states = list(args[:n_state])
        xs = list(args[n_state:n_in])
        base = dict(body.consts)
        base.update(zip(implicit, args[n_in:]))
        xs = [np.moveaxis(x, ax if ax >= 0 else ax + x.ndim, 0) for x, ax in zip(xs, in_axes)]
        xs = [x[::-1] if d else x for x, d in zip(xs, in_dirs)]
        T = xs[0].shape[0] if xs else 0
        outs = [[] for _ in range(n_scan_out)]
        for t in range(T):
            env = dict(base)
            env.update(zip(in_names[:n_state], states))
            env.update(zip(in_names[n_state:], [x[t] for x in xs]))
            body.run(env)
            res = [_body_output(body, env, n) for n in body.output_names]
            states = res[:n_state]
            for k, r in enumerate(res[n_state:]):
                outs[k].append(r)
        stacked = []
        for k, o in enumerate(outs):
            s = np.stack(o) if o else np.zeros((0,), np.float32)
            if out_dirs[k]:
                s = s[::-1]
            ax = out_axes[k]
            stacked.append(np.moveaxis(s, 0, ax if ax >= 0 else ax + s.ndim))
        return tuple(states) + tuple(stacked)
    run.implicit_inputs = implicit
    return run
