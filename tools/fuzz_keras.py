"""Differential fuzzing of fastlstm's Keras loaders against the real Keras (dev machine only, never in CI).

    ~/kvenv/bin/python tools/fuzz_keras.py --models 80 --seed 1            # 80 random models per Keras flavour
    ~/kvenv/bin/python tools/fuzz_keras.py --models 20 --flavours tk       # tf_keras only
    ~/kvenv/bin/python tools/fuzz_keras.py --replay /tmp/fuzz_keras/failures/<id>.json   # rerun one spec, verbose
    ~/kvenv/bin/python tools/fuzz_keras.py --replay <case dir>/spec.json --minimize      # ... and shrink it

From a seed, a random but valid model *spec* is drawn (JSON: inputs, nodes, outputs, predict calls): Embedding
(mask_zero, padding zeros inside the inputs), Masking, LSTM / GRU / SimpleRNN with random options (activations incl.
hard_sigmoid / relu / linear, use_bias, unit_forget_bias, reset_after, return_sequences / return_state,
go_backwards, stateful with a fixed batch, dropout / recurrent_dropout, unroll, initial_state from other layers'
states), Bidirectional (every merge_mode, backward_layer), Dense / TimeDistributed(Dense), Dropout,
Concatenate / Add, several inputs / outputs, shared layers, nested Sequential / functional models (also called
twice), top-level Sequential (Input, input_shape= or build()), 2-D inputs. The spec is built with the real
Keras 3 (`k3`) or tf_keras (`tk`), weights are randomized (gain so gates saturate sometimes), the model is saved in
every format (k3: .keras, .keras dir, .h5, .weights.h5 + to_json(); tk: .h5, save_weights .h5 + to_json(), .keras,
.weights.h5 + to_json()), each file is RELOADED by Keras and its predict() outputs are the expected outputs
(cross-checked against Keras' eager call and, for unrolled models, against unroll=False; Keras in float64 is
recorded too, to tell float32 rounding from wrong numbers). A subprocess running /work/main/.venv/bin/python
(fastlstm's venv; this file's `_check` mode) loads every file with fastlstm and compares (atol 1e-5, rtol 1e-4).
Failures are minimized (smaller specs tried greedily, kept while the same format still fails the same way) and
written to <work>/failures/ with a Keras-like description.

Statuses: ok, mismatch (values / shapes), numeric (a mismatch float32 rounding explains: fastlstm and Keras agree
in float64 (same weights, dtype policies edited) far better than in float32, and fastlstm in float32 is about as
close to float64 as Keras in float32; an ill-conditioned model, or overflow), names (input / output names differ),
load_error (ModelLoadError on a file Keras reloads), crash (any other exception), keras_reload_error (Keras cannot
reload its own file: expected outputs then come from the in-memory model), keras_predict_quirk (Keras' predict()
disagrees with its own eager call: the eager outputs are expected), keras_unroll_quirk (unroll=True changes
Keras' outputs: the same weights with unroll=False are expected), keras_refused (Keras would not build, run or
save the spec; skipped). The last four are Keras quirks, reported, not fastlstm failures.
"""
import argparse
import copy
import json
import os
import random
import shutil
import subprocess
import sys
import time
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
FASTLSTM_PY = os.path.join(REPO, ".venv", "bin", "python")
TOL = dict(atol=1e-5, rtol=1e-4)
# statuses that are not fastlstm failures
QUIRKS = ("ok", "keras_refused", "keras_reload_error", "keras_predict_quirk", "keras_unroll_quirk", "numeric")
NUMERIC_RATIO = 0.25
MINIMIZE_CHUNK = 6
FORMATS = {"k3": ["k3", "k3dir", "k3h5", "k3w"], "tk": ["tk2", "tk2w", "tk2k", "tk2kw"]}

RNN_ACTS = ["tanh", "sigmoid", "relu", "linear", "hard_sigmoid", "softsign", "elu", "selu", "softplus", "swish",
            "relu6", "gelu", "leaky_relu"]
REC_ACTS = ["sigmoid", "hard_sigmoid", "hard_sigmoid", "tanh", "relu", "linear", "softsign", "relu6"]
DENSE_ACTS = ["linear", "relu", "tanh", "sigmoid", "softmax", "elu", "selu", "softplus", "softsign", "swish", "gelu",
              "hard_sigmoid", "relu6", "leaky_relu", "log_softmax"]
UNBOUNDED = {"relu", "linear", "elu", "selu", "softplus", "swish", "gelu", "leaky_relu"}
CELL_DEFAULTS = dict(activation="tanh", recurrent_activation="sigmoid", use_bias=True, unit_forget_bias=True,
                     reset_after=True, return_sequences=False, return_state=False, go_backwards=False,
                     stateful=False, dropout=0.0, recurrent_dropout=0.0, unroll=False)
PADS = ["none", "none", "pre", "post", "mid", "full", "sprinkle", "last_only", "first_only"]


# ================================================================================================ specs
def n_states(cell):
    return 2 if cell["cls"] == "LSTM" else 1


def node_outputs(node, spec):
    """How many tensors a node returns."""
    if node["op"] == "shared":
        return node_outputs(spec["nodes"][node["of"]], spec)
    if node["op"] != "rnn":
        return 1
    cell, bidi = node["cell"], node.get("bidi")
    mains = 2 if bidi is not None and bidi["merge_mode"] is None else 1
    states = n_states(cell) * (2 if bidi is not None else 1) if cell["return_state"] else 0
    return mains + states


class SpecGen:
    """Draws a random valid model spec (JSON-able dict) from a seed."""

    def __init__(self, seed, flavour):
        self.r = random.Random(seed)
        self.fl = flavour
        self.tensors = []      # dict(ref, rank, dim, time, state)
        self.used = set()

    # -- tensors
    def _add(self, ref, rank, dim, time=None, state=False):
        t = dict(ref=ref, rank=rank, dim=dim, time=time, state=state)
        self.tensors.append(t)
        return t

    def _pick3(self):
        c = [t for t in self.tensors if t["rank"] == 3]
        if not c:
            return None
        return c[-1] if self.r.random() < 0.6 else self.r.choice(c)

    def _node(self, node):
        self.spec["nodes"].append(node)
        return len(self.spec["nodes"]) - 1

    def _use(self, *refs):
        for ref in refs:
            self.used.add(tuple(ref))

    # -- options
    def cell(self, cls, stateful_ok, fixed_t, functional):
        r = self.r
        c = dict(cls=cls, units=r.choice([1, 1, 2, 3, 4, 5, 7, 8, 13, 16]))
        c["activation"] = "tanh" if r.random() < 0.45 else r.choice(RNN_ACTS)
        if cls != "SimpleRNN":
            c["recurrent_activation"] = "sigmoid" if r.random() < 0.4 else r.choice(REC_ACTS)
        c["use_bias"] = r.random() < 0.85
        if cls == "LSTM":
            c["unit_forget_bias"] = r.random() < 0.7
        if cls == "GRU":
            c["reset_after"] = r.random() < 0.6
        c["return_sequences"] = r.random() < 0.5
        c["return_state"] = functional and r.random() < 0.25
        c["go_backwards"] = r.random() < 0.2
        c["stateful"] = stateful_ok and r.random() < 0.6
        c["dropout"] = r.choice([0.0, 0.0, 0.0, 0.2, 0.5])
        c["recurrent_dropout"] = r.choice([0.0, 0.0, 0.0, 0.3])
        c["unroll"] = fixed_t and r.random() < 0.4
        return c

    def make(self):
        r = self.r
        self.spec = spec = dict(flavour=self.fl, formats=list(FORMATS[self.fl]), sequential=False, batch=None,
                                gain=r.choice([0.5, 1.0, 1.5, 1.5, 2.5, 4.0]), bias=r.choice([0.3, 1.0, 2.0]),
                                scale=r.choice([0.5, 1.0, 1.0, 3.0]), bump=r.random() < 0.3,
                                names=r.random() < 0.3, inputs=[], nodes=[], outputs=[], out_list=True, calls=[])
        stateful = r.random() < 0.12
        if stateful:
            spec["batch"] = r.choice([1, 2, 3, 4])
        sequential = r.random() < 0.3
        spec["sequential"] = sequential
        if sequential:      # keras.Input first, input_shape= on the first layer, or model.build(shape)
            spec["seq_input"] = r.choice(["Input", "Input", "build"] + (["kwarg"] if not stateful else []))
        n_in = 1 if sequential else r.choice([1, 1, 1, 2, 2, 3])
        for i in range(n_in):
            fixed = r.random() < 0.2
            T = r.choice([1, 3, 5, 7]) if fixed else None
            if r.random() < 0.45:
                inp = dict(kind="tokens", T=T, V=r.choice([3, 5, 12, 40]))
                spec["inputs"].append(inp)
                n = self._node(dict(op="embedding", src=["in", i], V=inp["V"], E=r.choice([1, 2, 3, 4, 5, 8]),
                                    mask_zero=r.random() < 0.6))
                self._add([n, 0], 3, spec["nodes"][n]["E"], time=i)
            else:
                inp = dict(kind="series", T=T, F=r.choice([1, 2, 3, 5]))
                spec["inputs"].append(inp)
                if r.random() < 0.4:
                    n = self._node(dict(op="masking", src=["in", i], value=r.choice([0.0, 0.0, -1.0, 2.5])))
                    self._add([n, 0], 3, inp["F"], time=i)
                else:
                    self._add(["in", i], 3, inp["F"], time=i)
        if not sequential and r.random() < 0.25:       # a 2-D input (initial states, metadata)
            spec["inputs"].append(dict(kind="vector", T=None, F=r.choice([1, 3, 4, 8])))
            self._add(["in", len(spec["inputs"]) - 1], 2, spec["inputs"][-1]["F"])
        for _ in range(r.randint(1, 5)):
            self._step(stateful, sequential)
        if r.random() < 0.5:
            t = self.tensors[-1] if sequential else r.choice(self.tensors)
            self._dense(t)
        self._finish(stateful)
        return prune(spec)

    def _fixed_t(self, t):
        return t["time"] is not None and self.spec["inputs"][t["time"]]["T"] is not None

    def _step(self, stateful, sequential):
        r = self.r
        kinds = ["rnn"] * 5 + ["bidi"] * 2 + ["dense"] * 2 + ["dropout", "nested"]
        if not sequential:
            kinds += ["merge"] * 2 + ["shared"] * 2
        kind = r.choice(kinds)
        last = self.tensors[-1]
        if sequential and kind in ("rnn", "bidi", "nested") and last["rank"] != 3:
            kind = "dense"
        src = last if sequential else (self._pick3() if kind in ("rnn", "bidi", "nested") else r.choice(self.tensors))
        if src is None:
            kind, src = "dense", r.choice(self.tensors)
        if kind in ("rnn", "bidi"):
            self._rnn(src, kind == "bidi", stateful, sequential)
        elif kind == "dense":
            self._dense(src)
        elif kind == "dropout":
            n = self._node(dict(op="dropout", src=src["ref"], rate=r.choice([0.1, 0.5])))
            self._use(src["ref"])
            self._add([n, 0], src["rank"], src["dim"], src["time"])
        elif kind == "nested":
            self._nested(src)
        elif kind == "shared":
            self._shared()
        else:
            self._merge()

    def _rnn(self, src, bidi, stateful, sequential):
        r = self.r
        cls = r.choice(["LSTM", "LSTM", "GRU", "GRU", "SimpleRNN"])
        fixed = self._fixed_t(src)
        cell = self.cell(cls, stateful, fixed, not sequential)
        if {cell["activation"], cell.get("recurrent_activation")} & UNBOUNDED:
            # unbounded recurrences explode with large kernels and biases: keep most of them finite
            limit = 1.0 if cell.get("recurrent_activation") in UNBOUNDED else 1.5
            self.spec["gain"], self.spec["bias"] = min(self.spec["gain"], limit), min(self.spec["bias"], 1.0)
        node = dict(op="rnn", src=src["ref"], cell=cell, bidi=None, init=None, mask_from=None)
        if bidi:
            mm = r.choice(["concat", "concat", "sum", "mul", "ave"] + ([] if sequential else [None]))
            back = None
            if r.random() < 0.35 or (self.fl == "k3" and cell["go_backwards"]):
                back = dict(cell, go_backwards=not cell["go_backwards"])
                back["activation"] = r.choice([back["activation"], "tanh", r.choice(RNN_ACTS)])
                if mm in ("concat", None) and r.random() < 0.4:
                    back["units"] = r.choice([1, 2, 3, 6])
            node["bidi"] = dict(merge_mode=mm, backward=back)
        if not sequential and r.random() < 0.3:
            node["init"] = self._initial_state(node)
            if node["init"] is None:
                pass
            elif self.fl == "k3" and src["time"] is not None and r.random() < 0.5:
                inp = self.spec["inputs"][src["time"]]
                emb = next((nd for nd in self.spec["nodes"] if nd["op"] == "embedding"
                            and nd["src"] == ["in", src["time"]]), None)
                if inp["kind"] == "tokens" and emb is not None and emb["mask_zero"]:
                    node["mask_from"] = src["time"]       # Keras 3: mask=keras.ops.not_equal(tokens, 0)
        self._use(src["ref"], *(node["init"] or []))
        n = self._node(node)
        self._rnn_outputs(n, node, src)

    def _rnn_outputs(self, n, node, src):
        cell, bidi = node["cell"], node["bidi"]
        units = cell["units"]
        back_units = (bidi["backward"] or cell)["units"] if bidi else None
        rank = 3 if cell["return_sequences"] else 2
        time = src["time"] if rank == 3 else None
        if bidi is None:
            mains = [units]
        elif bidi["merge_mode"] is None:
            mains = [units, back_units]
        elif bidi["merge_mode"] == "concat":
            mains = [units + back_units]
        else:
            mains = [units]
            if back_units != units:
                raise AssertionError("sum/mul/ave need equal units")
        k = 0
        for d in mains:
            self._add([n, k], rank, d, time)
            k += 1
        if cell["return_state"]:
            for u in ([units] + ([back_units] if bidi else [])):
                for _ in range(n_states(cell)):
                    self._add([n, k], 2, u, state=True)
                    k += 1

    def _initial_state(self, node):
        """Refs for initial_state: existing 2-D tensors of the right width, or Dense(units) of one."""
        r = self.r
        cell, bidi = node["cell"], node["bidi"]
        widths = [cell["units"]] * n_states(cell)
        if bidi:
            widths += [(bidi["backward"] or cell)["units"]] * n_states(cell)
        flat = [t for t in self.tensors if t["rank"] == 2]
        if not flat:
            return None
        refs = []
        for w in widths:
            same = [t for t in flat if t["dim"] == w]
            if same and r.random() < 0.7:
                refs.append(r.choice(same)["ref"])
            else:
                base = r.choice(flat)
                d = self._node(dict(op="dense", src=base["ref"], units=w, activation=r.choice(["linear", "tanh"]),
                                    use_bias=True, td=False))
                self._use(base["ref"])
                refs.append([d, 0])
        return refs

    def _dense(self, src):
        r = self.r
        node = dict(op="dense", src=src["ref"], units=r.choice([1, 2, 3, 4, 6, 8]), activation=r.choice(DENSE_ACTS),
                    use_bias=r.random() < 0.85, td=src["rank"] == 3 and r.random() < 0.4)
        self._use(src["ref"])
        n = self._node(node)
        self._add([n, 0], src["rank"], node["units"], src["time"])

    def _nested(self, src):
        r = self.r
        layers = []
        rank = 3
        dim = src["dim"]
        for k in range(r.randint(1, 3)):
            kind = r.choice(["rnn", "rnn", "bidi", "dense", "dropout"]) if rank == 3 else r.choice(["dense", "dropout"])
            if kind in ("rnn", "bidi"):
                cell = self.cell(r.choice(["LSTM", "GRU", "SimpleRNN"]), False, False, False)
                bidi = dict(merge_mode=r.choice(["concat", "sum", "ave"]), backward=None) if kind == "bidi" else None
                if bidi and self.fl == "k3" and cell["go_backwards"]:
                    cell["go_backwards"] = False
                layers.append(dict(op="rnn", cell=cell, bidi=bidi))
                rank = 3 if cell["return_sequences"] else 2
                dim = cell["units"] * (2 if bidi and bidi["merge_mode"] == "concat" else 1)
            elif kind == "dense":
                layers.append(dict(op="dense", units=r.choice([2, 3, 5]), activation=r.choice(DENSE_ACTS),
                                   use_bias=True, td=False))
                dim = layers[-1]["units"]
            else:
                layers.append(dict(op="dropout", rate=0.3))
        self._use(src["ref"])
        n = self._node(dict(op="nested", src=src["ref"], layers=layers, input=r.random() < 0.7,
                            functional=r.random() < 0.4))
        self._add([n, 0], rank, dim, src["time"] if rank == 3 else None)

    def _shared(self):
        """Call an existing RNN / Dense layer again on another tensor of the same shape (a siamese graph)."""
        r = self.r
        nodes = self.spec["nodes"]
        pairs = []
        for n, nd in enumerate(nodes):
            if nd["op"] not in ("rnn", "dense", "nested") or nd["op"] == "rnn" and nd["cell"]["stateful"]:
                continue        # one stateful layer called twice in a graph: Keras leaves the update order open
            base = next(t for t in self.tensors if t["ref"] == nd["src"])
            pairs += [(n, t) for t in self.tensors if t["rank"] == base["rank"] and t["dim"] == base["dim"]
                      and t["ref"] != nd["src"] and not t["state"]] * (3 if nd["op"] == "nested" else 1)
        if not pairs:
            return self._dense(r.choice(self.tensors))
        of, src = r.choice(pairs)
        self._use(src["ref"])
        n = self._node(dict(op="shared", of=of, src=src["ref"]))
        base_outs = [t for t in self.tensors if t["ref"][0] == of]
        for t in base_outs:
            self._add([n, t["ref"][1]], t["rank"], t["dim"], src["time"] if t["rank"] == 3 else None, t["state"])

    def _merge(self):
        r = self.r
        groups = {}
        for t in self.tensors:
            groups.setdefault((t["rank"], t["time"]), []).append(t)
        groups = [g for g in groups.values() if len(g) >= 2]
        if not groups:
            return self._dense(r.choice(self.tensors))
        g = r.choice(groups)
        kind = r.choice(["concat", "add"])
        if kind == "add":
            by_dim = {}
            for t in g:
                by_dim.setdefault(t["dim"], []).append(t)
            pairs = [v for v in by_dim.values() if len(v) >= 2]
            if not pairs:
                kind = "concat"
            else:
                g = r.choice(pairs)
        picked = r.sample(g, min(len(g), r.choice([2, 2, 3])))
        dim = sum(t["dim"] for t in picked) if kind == "concat" else picked[0]["dim"]
        self._use(*[t["ref"] for t in picked])
        n = self._node(dict(op="merge", kind=kind, srcs=[t["ref"] for t in picked]))
        self._add([n, 0], picked[0]["rank"], dim, picked[0]["time"])

    def _finish(self, stateful):
        r = self.r
        spec = self.spec
        if spec["sequential"]:
            spec["outputs"] = [self.tensors[-1]["ref"]]
            spec["out_list"] = r.random() < 0.5
        else:
            leaves = [t["ref"] for t in self.tensors if tuple(t["ref"]) not in self.used and not t["state"]
                      and t["ref"][0] != "in"]
            extra = [t["ref"] for t in self.tensors if t["state"] and tuple(t["ref"]) not in self.used]
            outs = leaves + [e for e in extra if r.random() < 0.4]
            if not outs:
                outs = [self.tensors[-1]["ref"]]
            spec["outputs"] = outs[:5]
            spec["out_list"] = len(spec["outputs"]) > 1 or r.random() < 0.5
        # predict calls: batch and lengths vary (length 1 included); fixed lengths are kept where Keras needs them
        n_calls = r.choice([3, 4]) if stateful else 2
        for c in range(n_calls):
            B = spec["batch"] or r.choice([1, 2, 3, 5, 7])
            Ts = []
            for inp in spec["inputs"]:
                if inp["T"] is not None and (not _length_free(spec) or r.random() < 0.5):
                    Ts.append(inp["T"])
                else:
                    Ts.append(r.choice([1, 2, 3, 5, 8, 12]))
            spec["calls"].append(dict(B=B, T=Ts, reset=stateful and c == 2 and r.random() < 0.5))


def _length_free(spec):
    """May a fixed-length input get another length? Only Keras 3 Sequential models accept it (a functional
    model checks its input shapes; tf_keras always does), and not when an RNN is unrolled."""
    return spec["flavour"] == "k3" and spec["sequential"] and not _unrolled(spec)


def _unrolled(spec):
    return any(nd["op"] == "rnn" and (nd["cell"]["unroll"] or (nd["bidi"] and (nd["bidi"]["backward"] or {})
                                                                               .get("unroll")))
               for nd in spec["nodes"])


def _refs_of(node):
    out = []
    if "src" in node:
        out.append(node["src"])
    out += node.get("srcs") or []
    out += node.get("init") or []
    return out


def infer_dims(spec):
    """Last-axis width of every tensor ref (as a tuple), from the spec alone."""
    dims = {}
    for i, inp in enumerate(spec["inputs"]):
        dims[("in", i)] = 1 if inp["kind"] == "tokens" else inp["F"]
        if inp["kind"] == "vector":
            dims[("in", i)] = inp["F"]

    def out_dims(nd, d_in):
        op = nd["op"]
        if op == "embedding":
            return [nd["E"]]
        if op in ("masking", "dropout"):
            return [d_in]
        if op == "dense":
            return [nd["units"]]
        if op == "nested":
            d = d_in
            for sub in nd["layers"]:
                d = out_dims(sub, d)[0]
            return [d]
        cell, bidi = nd["cell"], nd["bidi"]
        u = cell["units"]
        if bidi is None:
            return [u] + [u] * (n_states(cell) if cell["return_state"] else 0)
        ub = (bidi["backward"] or cell)["units"]
        mains = [u, ub] if bidi["merge_mode"] is None else [u + ub if bidi["merge_mode"] == "concat" else u]
        return mains + ([u] * n_states(cell) + [ub] * n_states(cell) if cell["return_state"] else [])

    for n, nd in enumerate(spec["nodes"]):
        if nd["op"] == "merge":
            ds = [dims[tuple(r)] for r in nd["srcs"]]
            outs = [sum(ds) if nd["kind"] == "concat" else ds[0]]
        elif nd["op"] == "shared":
            outs = out_dims(spec["nodes"][nd["of"]], dims[tuple(nd["src"])])
        else:
            outs = out_dims(nd, dims[tuple(nd["src"])])
        for k, d in enumerate(outs):
            dims[(n, k)] = d
    return dims


def prune(spec):
    """Drop nodes and inputs the outputs do not need; renumber refs."""
    spec = copy.deepcopy(spec)
    need_nodes, need_inputs = set(), set()
    stack = [r for r in spec["outputs"]]
    while stack:
        ref = stack.pop()
        if ref[0] == "in":
            need_inputs.add(ref[1])
            continue
        if ref[0] in need_nodes:
            continue
        need_nodes.add(ref[0])
        nd = spec["nodes"][ref[0]]
        stack += _refs_of(nd)
        if nd["op"] == "shared":
            stack.append([nd["of"], 0])
        if nd.get("mask_from") is not None:
            need_inputs.add(nd["mask_from"])
    in_map = {old: new for new, old in enumerate(sorted(need_inputs))}
    nd_map = {old: new for new, old in enumerate(sorted(need_nodes))}

    def fix(ref):
        return ["in", in_map[ref[1]]] if ref[0] == "in" else [nd_map[ref[0]], ref[1]]

    nodes = []
    for old in sorted(need_nodes):
        nd = spec["nodes"][old]
        if "src" in nd:
            nd["src"] = fix(nd["src"])
        if nd.get("srcs"):
            nd["srcs"] = [fix(x) for x in nd["srcs"]]
        if nd.get("init"):
            nd["init"] = [fix(x) for x in nd["init"]]
        if nd.get("mask_from") is not None:
            nd["mask_from"] = in_map[nd["mask_from"]]
        if nd["op"] == "shared":
            nd["of"] = nd_map[nd["of"]]
        nodes.append(nd)
    spec["nodes"] = nodes
    spec["outputs"] = [fix(x) for x in spec["outputs"]]
    keep = sorted(need_inputs)
    spec["inputs"] = [spec["inputs"][i] for i in keep]
    for c in spec["calls"]:
        c["T"] = [c["T"][i] for i in keep]
    return spec


def spec_size(spec):
    """What minimization reduces: structure first, then options, then data."""
    s = 4 * len(spec["nodes"]) + 2 * len(spec["outputs"]) + 2 * len(spec["inputs"]) + 2 * len(spec["calls"])
    for nd in spec["nodes"]:
        for cell in _cells(nd):
            s += sum(1 for k, v in CELL_DEFAULTS.items() if k in cell and cell[k] != v) + cell["units"] / 16
        if nd["op"] == "rnn":
            s += 3 * bool(nd["bidi"]) + 2 * bool(nd["init"]) + bool(nd["mask_from"] is not None)
            s += bool(nd["bidi"] and nd["bidi"]["backward"]) + bool(nd["bidi"] and nd["bidi"]["merge_mode"] != "concat")
        if nd["op"] == "dense":
            s += (nd["activation"] != "linear") + nd["td"] + nd["units"] / 16
        if nd["op"] == "nested":
            s += 3 * len(nd["layers"])
        if nd["op"] == "shared":
            s += 1
    s += sum(c["B"] * sum(c["T"] or [1]) for c in spec["calls"]) / 50
    s += sum(1 for i in spec["inputs"] if i["T"] is not None) + spec["sequential"] + spec["bump"] + spec["names"]
    s += spec.get("seq_input", "Input") != "Input"
    return s


def _cells(nd):
    if nd["op"] == "rnn":
        yield nd["cell"]
        if nd["bidi"] and nd["bidi"]["backward"]:
            yield nd["bidi"]["backward"]
    if nd["op"] == "nested":
        for sub in nd["layers"]:
            yield from _cells(sub)


def describe(spec):
    """A Keras-like one-line-per-layer description of a spec."""
    lines = [f"# {spec['flavour']} {'Sequential' if spec['sequential'] else 'functional'}"
             + (f", batch fixed {spec['batch']}" if spec["batch"] else "")
             + f", weights gain {spec['gain']} bias +-{spec['bias']}"]

    def name(ref):
        return f"x{ref[1]}" if ref[0] == "in" else (f"t{ref[0]}" if ref[1] == 0 else f"t{ref[0]}[{ref[1]}]")

    def cell_s(c):
        opts = [str(c["units"])] + [f"{k}={c[k]!r}" for k, v in CELL_DEFAULTS.items() if k in c and c[k] != v]
        return f"{c['cls']}({', '.join(opts)})"

    def layer_s(nd):
        if nd["op"] == "rnn":
            s = cell_s(nd["cell"])
            if nd["bidi"]:
                b = nd["bidi"]
                s = f"Bidirectional({s}, merge_mode={b['merge_mode']!r}" + (
                    f", backward_layer={cell_s(b['backward'])}" if b["backward"] else "") + ")"
            return s
        if nd["op"] == "dense":
            s = f"Dense({nd['units']}, {nd['activation']!r}" + ("" if nd["use_bias"] else ", use_bias=False") + ")"
            return f"TimeDistributed({s})" if nd["td"] else s
        if nd["op"] == "dropout":
            return f"Dropout({nd['rate']})"
        if nd["op"] == "embedding":
            return f"Embedding({nd['V']}, {nd['E']}" + (", mask_zero=True" if nd["mask_zero"] else "") + ")"
        if nd["op"] == "masking":
            return f"Masking({nd['value']})"
        if nd["op"] == "merge":
            return "Concatenate()" if nd["kind"] == "concat" else "Add()"
        if nd["op"] == "shared":
            return f"<the layer of t{nd['of']}>"
        if nd["op"] == "nested" and nd.get("functional"):
            return "Model(Input((None, d)) -> " + " -> ".join(layer_s(s) for s in nd["layers"]) + ")"
        if nd["op"] == "nested":
            head = "Input((None, d)), " if nd.get("input", True) else ""
            return "Sequential([" + head + ", ".join(layer_s(s) for s in nd["layers"]) + "])"
        return nd["op"]

    if spec["sequential"] and spec.get("seq_input", "Input") != "Input":
        lines.append("# the Sequential gets its input shape " + ("from input_shape= on its first layer"
                     if spec["seq_input"] == "kwarg" else "from model.build(shape)") + ", not from an Input")
    for i, inp in enumerate(spec["inputs"]):
        shape = {"tokens": f"({inp['T']},)", "series": f"({inp['T']}, {inp.get('F')})",
                 "vector": f"({inp.get('F')},)"}[inp["kind"]]
        lines.append(f"x{i} = Input({shape}" + (", dtype='int32'" if inp["kind"] == "tokens" else "")
                     + (f", batch_size={spec['batch']}" if spec["batch"] else "") + ")")
    for n, nd in enumerate(spec["nodes"]):
        args = name(nd["src"]) if "src" in nd else "[" + ", ".join(name(x) for x in nd["srcs"]) + "]"
        if nd.get("init"):
            args += ", initial_state=[" + ", ".join(name(x) for x in nd["init"]) + "]"
        if nd.get("mask_from") is not None:
            args += f", mask=ops.not_equal(x{nd['mask_from']}, 0)"
        k = node_outputs(nd, spec)
        lhs = f"t{n}" if k == 1 else f"t{n}[0..{k - 1}]"
        lines.append(f"{lhs} = {layer_s(nd)}({args})")
    lines.append("outputs = [" + ", ".join(name(x) for x in spec["outputs"]) + "]")
    lines.append("calls: " + "; ".join(f"B={c['B']} T={c['T']}" + (" reset_states() first" if c["reset"] else "")
                                       for c in spec["calls"]))
    return "\n".join(lines)


# ================================================================================================ inputs
def make_inputs(spec, seed):
    """One list of arrays per predict call (token padding / mask-valued steps inside)."""
    rng = np.random.default_rng(seed)
    mask_values = {}
    for nd in spec["nodes"]:
        if nd["op"] == "masking" and nd["src"][0] == "in":
            mask_values[nd["src"][1]] = nd["value"]
    calls = []
    for c in spec["calls"]:
        xs = []
        for i, (inp, T) in enumerate(zip(spec["inputs"], c["T"])):
            B = c["B"]
            if inp["kind"] == "vector":
                xs.append((rng.standard_normal((B, inp["F"])) * spec["scale"]).astype(np.float32))
                continue
            if inp["kind"] == "tokens":
                x = rng.integers(1, inp["V"], size=(B, T)).astype(np.int32)
                pad = 0
            else:
                x = (rng.standard_normal((B, T, inp["F"])) * spec["scale"]).astype(np.float32)
                pad = mask_values.get(i)
            if pad is not None:
                for b in range(B):
                    _pad_row(x, b, PADS[rng.integers(len(PADS))], pad, rng)
            xs.append(x)
        calls.append(xs)
    return calls


def _pad_row(x, b, how, v, rng):
    T = x.shape[1]
    k = max(1, T // 3)
    if how == "pre":
        x[b, :k] = v
    elif how == "post":
        x[b, T - k:] = v
    elif how == "mid" and T > 2:
        x[b, 1:T - 1] = v
    elif how == "full":
        x[b] = v
    elif how == "sprinkle":
        x[b, rng.random(T) < 0.4] = v
    elif how == "last_only":
        x[b, :-1] = v
    elif how == "first_only":
        x[b, 1:] = v


# ================================================================================================ Keras side
class KerasSide:
    """Builds specs with the real Keras, saves every format, records Keras' outputs on the reloaded files."""

    def __init__(self):
        sys.path.insert(0, HERE)
        from goldens import keras as gk
        self.gk = gk
        self.gens = {}

    def gen(self, flavour):
        if flavour not in self.gens:
            self.gens[flavour] = self.gk.Gen(flavour)
        return self.gens[flavour]

    # -- layers
    def _cell_layer(self, g, c, name=None, **extra):
        kw = dict(units=c["units"], activation=c["activation"], use_bias=c["use_bias"],
                  return_sequences=c["return_sequences"], return_state=c["return_state"],
                  go_backwards=c["go_backwards"], stateful=c["stateful"], dropout=c["dropout"],
                  recurrent_dropout=c["recurrent_dropout"], unroll=c["unroll"])
        if c["cls"] != "SimpleRNN":
            kw["recurrent_activation"] = c["recurrent_activation"]
        if c["cls"] == "LSTM":
            kw["unit_forget_bias"] = c["unit_forget_bias"]
        if c["cls"] == "GRU":
            kw["reset_after"] = c["reset_after"]
        if name:
            kw["name"] = name
        return getattr(g.L, c["cls"])(**kw, **extra)

    def _layer(self, g, nd, name=None, **kw):
        L = g.L
        if name:
            kw["name"] = name
        op = nd["op"]
        if op == "embedding":
            return L.Embedding(nd["V"], nd["E"], mask_zero=nd["mask_zero"], **kw)
        if op == "masking":
            return L.Masking(mask_value=nd["value"], **kw)
        if op == "dropout":
            return L.Dropout(nd["rate"], **kw)
        if op == "dense":
            d = L.Dense(nd["units"], activation=nd["activation"], use_bias=nd["use_bias"],
                        **({} if nd["td"] else kw))
            return L.TimeDistributed(d, **kw) if nd["td"] else d
        if op == "merge":
            return (L.Concatenate if nd["kind"] == "concat" else L.Add)(**kw)
        if op == "rnn":
            if nd["bidi"] is None:
                return self._cell_layer(g, nd["cell"], **kw)
            b = nd["bidi"]
            back = self._cell_layer(g, b["backward"]) if b["backward"] else None
            return L.Bidirectional(self._cell_layer(g, nd["cell"]), merge_mode=b["merge_mode"], backward_layer=back,
                                   **kw)
        if op == "nested" and nd.get("functional"):
            x = inner_in = g.K.Input((None, nd["in_dim"]))
            for sub in nd["layers"]:
                x = self._layer(g, sub)(x)
            return g.K.Model(inner_in, x, **kw)
        if op == "nested":   # with an Input, or built on its first call
            head = [g.K.Input((None, nd["in_dim"]))] if nd.get("input", True) else []
            return g.K.Sequential(head + [self._layer(g, s) for s in nd["layers"]], **kw)
        raise ValueError(op)

    def build(self, spec):
        g = self.gen(spec["flavour"])
        K = g.K
        if spec["bump"]:
            g.bump("lstm", "gru", "dense", "embedding")
        names = random.Random(spec.get("seed", 0))
        ins = []
        for i, inp in enumerate(spec["inputs"]):
            shape = {"tokens": (inp["T"],), "series": (inp["T"], inp.get("F")), "vector": (inp.get("F"),)}[inp["kind"]]
            kw = dict(batch_size=spec["batch"]) if spec["batch"] else {}
            ins.append(K.Input(shape, dtype="int32" if inp["kind"] == "tokens" else "float32", name=f"in{i}", **kw))
        produced = {}

        def get(ref):
            return ins[ref[1]] if ref[0] == "in" else produced[ref[0]][ref[1]]

        layers = []
        dims = infer_dims(spec)
        for n, nd in enumerate(spec["nodes"]):
            if nd["op"] == "nested":
                nd = dict(nd, in_dim=dims[tuple(nd["src"])])
            name = f"n{n}_{nd['op']}" if spec["names"] and names.random() < 0.5 else None
            if nd["op"] == "shared":
                layer = layers[nd["of"]]
            elif spec["sequential"] and n == 0 and spec.get("seq_input") == "kwarg" and nd["op"] != "nested":
                layer = self._layer(g, nd, name, input_shape=ins[0].shape[1:])
            else:
                layer = self._layer(g, nd, name)
            layers.append(layer)
            if spec["sequential"]:
                continue
            x = [get(s) for s in nd["srcs"]] if nd["op"] == "merge" else get(nd["src"])
            kw = {}
            if nd.get("init"):
                kw["initial_state"] = [get(s) for s in nd["init"]]
            if nd.get("mask_from") is not None:
                kw["mask"] = K.ops.not_equal(ins[nd["mask_from"]], 0)
            out = layer(x, **kw)
            produced[n] = list(out) if isinstance(out, (list, tuple)) else [out]
            if len(produced[n]) != node_outputs(nd, spec):
                raise RuntimeError(f"node {n} returned {len(produced[n])} tensors, spec says "
                                   f"{node_outputs(nd, spec)}")
        if spec["sequential"]:
            style = spec.get("seq_input", "Input")
            if style == "Input":
                return K.Sequential([ins[0]] + layers, name="fuzz_seq")
            model = K.Sequential(layers, name="fuzz_seq")
            if style == "build" or spec["nodes"][0]["op"] == "nested":
                model.build((spec["batch"],) + tuple(ins[0].shape[1:]))
            return model
        outs = [get(r) for r in spec["outputs"]]
        return K.Model(ins if len(ins) > 1 else ins[0], outs if spec["out_list"] else outs[0], name="fuzz")

    def predict_calls(self, g, model, spec, calls):
        outs = []
        for c, xs in zip(spec["calls"], calls):
            if c["reset"]:
                g.reset_states(model)
            outs.append(self.gk.predict(model, xs, c["B"]))
        return outs

    def eager_calls(self, g, model, spec, calls):
        """The same calls as direct model(x) calls (static shapes: no retraced tf.function)."""
        outs = []
        g.reset_states(model)
        for c, xs in zip(spec["calls"], calls):
            if c["reset"]:
                g.reset_states(model)
            y = model(xs[0] if len(xs) == 1 else list(xs), training=False)
            outs.append([np.asarray(o) for o in (y if isinstance(y, (list, tuple)) else [y])])
        return outs

    def keras_outputs(self, g, model, spec, calls, rows, fmt):
        """predict() on every call; when it raises or disagrees with Keras' own eager call (Keras 3.15
        TimeDistributed maps over the batch size instead of the time steps in a retraced predict function),
        the eager outputs, and the quirk is recorded."""
        g.reset_states(model)
        try:
            got = self.predict_calls(g, model, spec, calls)
        except Exception as e:  # noqa: BLE001
            got, quirk = None, "predict() raises " + _short(e)
        eager = self.eager_calls(g, model, spec, calls)
        if got is not None:
            quirk = _disagree(got, eager)
        if quirk:
            rows.append(dict(case=spec["id"], fmt=fmt, status="keras_predict_quirk",
                             detail=f"Keras predict() vs model(x): {quirk}"))
        return eager if quirk else got

    def _unroll_check(self, g, spec, model, calls, eager, rows):
        """unroll must not change numbers. Keras' unrolled masked RNN with go_backwards and zero_output_for_mask
        (the backward half of Bidirectional(return_sequences=True)) zeroes the steps of the UNreversed mask:
        then the same weights without unroll are the reference (returned), and the quirk is recorded."""
        if not _unrolled(spec):
            return None
        plain = copy.deepcopy(spec)
        for nd in plain["nodes"]:
            for cell in _cells(nd):
                cell["unroll"] = False
        ref_model = self.build(plain)
        ref_model.set_weights(model.get_weights())
        ref = self.eager_calls(g, ref_model, spec, calls)
        diff = _disagree(eager, ref)
        if not diff:
            return None
        rows.append(dict(case=spec["id"], fmt="*", status="keras_unroll_quirk",
                         detail=f"Keras with unroll=True vs the same weights with unroll=False: {diff}"))
        return ref

    def float64_reference(self, g, spec, model, calls):
        """Keras itself in float64 (dtype policies edited in the config, same weights, unroll cleared): the truth
        that tells float32 rounding from a wrong computation."""
        cfg = json.loads(model.to_json())

        def edit(o):
            if isinstance(o, dict):
                if o.get("class_name") in ("DTypePolicy", "Policy") and isinstance(o.get("config"), dict):
                    o["config"]["name"] = "float64"
                for k, v in o.items():
                    if k == "dtype" and v == "float32":
                        o[k] = "float64"
                    elif k == "unroll":
                        o[k] = False
                    else:
                        edit(v)
            elif isinstance(o, list):
                for v in o:
                    edit(v)

        edit(cfg)
        m64 = g.K.models.model_from_json(json.dumps(cfg))
        m64.set_weights([np.asarray(w, np.float64) if np.asarray(w).dtype.kind == "f" else w
                         for w in model.get_weights()])
        calls64 = [[x.astype(np.float64) if x.dtype.kind == "f" else x for x in xs] for xs in calls]
        return self.eager_calls(g, m64, spec, calls64)

    def make_case(self, spec, d):
        """Build + save + reload; writes d/case.json, inputs and expected outputs. Returns a list of status rows
        for Keras-side events (refused / reload errors)."""
        if os.path.exists(d):
            shutil.rmtree(d)
        os.makedirs(d)
        g = self.gen(spec["flavour"])
        seed = spec["seed"]
        g.reset(seed)
        rows = []
        with open(os.path.join(d, "spec.json"), "w") as f:
            json.dump(spec, f, indent=1)
        try:
            model = self.build(spec)
            self.gk.perturb(g, model, np.random.default_rng(seed), spec["gain"], spec["bias"])
            in_names, out_names = g.io_names(model)
        except Exception as e:  # noqa: BLE001 - Keras refuses this combination: recorded, skipped
            return None, [dict(case=spec["id"], fmt="*", status="keras_refused", detail=_short(e))]
        calls = make_inputs(spec, seed + 1)
        for k, xs in enumerate(calls):
            self.gk.save_npz(os.path.join(d, f"input_{k}.npz"), **{f"x{i}": x for i, x in enumerate(xs)})
        g.reset_states(model)
        try:
            mem = eager = self.keras_outputs(g, model, spec, calls, [], "*")
            truth = self._unroll_check(g, spec, model, calls, eager, rows)
        except Exception as e:  # noqa: BLE001
            return None, [dict(case=spec["id"], fmt="*", status="keras_refused", detail="predict: " + _short(e))]
        try:
            for k, ys in enumerate(self.float64_reference(g, spec, model, calls)):
                self.gk.save_npz(os.path.join(d, f"keras64_{k}.npz"), **{f"y{i}": y for i, y in enumerate(ys)})
        except Exception:  # noqa: BLE001 - no float64 twin (the checker then falls back to a heuristic)
            pass
        g.reset_states(model)
        files = []
        for fmt in spec["formats"]:
            fd = os.path.join(d, fmt)
            os.makedirs(fd)
            try:
                path = g.save(model, fmt, fd)
            except Exception as e:  # noqa: BLE001
                rows.append(dict(case=spec["id"], fmt=fmt, status="keras_refused", detail="save: " + _short(e)))
                continue
            entry = dict(fmt=fmt, path=path, arch=os.path.join(fd, self.gk.FORMATS[fmt]["arch"])
                         if "arch" in self.gk.FORMATS[fmt] else None)
            try:
                loaded = g.load(fmt, fd)
                got = self.keras_outputs(g, loaded, spec, calls, rows, fmt)
                entry["keras_reload_vs_memory"] = _disagree(mem, got)
            except Exception as e:  # noqa: BLE001 - Keras cannot reload its own file: in-memory outputs instead
                got = mem
                entry["keras_reload_error"] = _short(e)
                rows.append(dict(case=spec["id"], fmt=fmt, status="keras_reload_error", detail=_short(e)))
            if truth is not None:
                got = truth
            for k, ys in enumerate(got):
                self.gk.save_npz(os.path.join(fd, f"expected_{k}.npz"), **{f"y{i}": y for i, y in enumerate(ys)})
            files.append(entry)
        case = dict(id=spec["id"], dir=d, input_names=in_names, output_names=out_names, n_inputs=len(spec["inputs"]),
                    calls=[dict(reset=c["reset"]) for c in spec["calls"]], files=files)
        with open(os.path.join(d, "case.json"), "w") as f:
            json.dump(case, f, indent=1)
        return case, rows


def _disagree(a_calls, b_calls):
    """None if two runs' outputs agree within TOL, else where they differ first."""
    for k, (a_list, b_list) in enumerate(zip(a_calls, b_calls)):
        for i, (a, b) in enumerate(zip(a_list, b_list)):
            if a.shape != b.shape:
                return f"call {k} output {i}: shape {a.shape} vs {b.shape}"
            if not np.allclose(a, b, equal_nan=True, **TOL):
                return f"call {k} output {i}: max abs diff {float(np.nanmax(np.abs(a - b))):.3g}"
    return None


def _short(e):
    s = str(e).strip().splitlines()
    return f"{type(e).__name__}: {s[0][:300] if s else ''}"


# ================================================================================================ fastlstm side
def check_main(jobs_path, out_path):
    """Runs under fastlstm's venv: load every file, replay the calls, compare; one JSON line per file."""
    sys.path.insert(0, REPO)
    import fastlstm
    with open(jobs_path) as f:
        cases = json.load(f)
    done = set()
    if os.path.exists(out_path):
        with open(out_path) as f:
            done = {(r["case"], r["fmt"]) for r in map(json.loads, f)}
    with open(out_path, "a") as out:
        for case in cases:
            for entry in case["files"]:
                if (case["id"], entry["fmt"]) in done:
                    continue
                out.write(json.dumps(_check_file(fastlstm, case, entry)) + "\n")
                out.flush()


def _run_calls(fastlstm, case, entry, as_f64=False):
    kw = {"architecture": entry["arch"]} if entry["arch"] else {}
    model = fastlstm.load(entry["path"], **kw)
    if as_f64:       # float64 embeddings make everything downstream float64 too
        for lyr in model.layers:
            if type(lyr).__name__ == "Embedding":
                lyr._weights = [w.astype(np.float64) for w in lyr._weights]
    results = []
    for k, c in enumerate(case["calls"]):
        if c["reset"]:
            model.reset_states()
        xin = np.load(os.path.join(case["dir"], f"input_{k}.npz"))
        xs = [xin[f"x{i}"] for i in range(case["n_inputs"])]
        if as_f64:
            xs = [x.astype(np.float64) if x.dtype.kind == "f" else x for x in xs]
        y = model.predict(xs[0] if len(xs) == 1 else xs)
        results.append(y if isinstance(y, list) else [y])
    return model, results


def _check_file(fastlstm, case, entry):
    row = dict(case=case["id"], fmt=entry["fmt"], status="ok")
    if entry.get("keras_reload_error"):
        row["keras_reload_error"] = entry["keras_reload_error"]
    try:
        model, results = _run_calls(fastlstm, case, entry)
    except fastlstm.ModelLoadError as e:
        row.update(status="load_error", detail=_short(e))
        return row
    except Exception as e:  # noqa: BLE001 - every other exception is a fastlstm crash
        row.update(status="crash", detail=_short(e), trace=traceback.format_exc()[-1500:])
        return row
    worst = (0.0, None)
    for k, ys in enumerate(results):
        exp = np.load(os.path.join(os.path.dirname(entry["path"]), f"expected_{k}.npz"))
        es = [exp[f"y{i}"] for i in range(len(exp.files))]
        if len(ys) != len(es):
            row.update(status="mismatch", detail=f"call {k}: {len(ys)} outputs, Keras has {len(es)}")
            return row
        for i, (y, e) in enumerate(zip(ys, es)):
            y = np.asarray(y)
            if y.shape != e.shape:
                row.update(status="mismatch", detail=f"call {k} output {i}: shape {y.shape}, Keras {e.shape}")
                return row
            if not e.size:
                continue
            with np.errstate(invalid="ignore", over="ignore"):
                diff = np.abs(y.astype(np.float64) - e)
                excess = diff - (TOL["atol"] + TOL["rtol"] * np.abs(e))
            # where Keras itself overflowed (inf / nan) float32 rounding decides: not compared
            finite = np.isfinite(e)
            if not finite.all():
                row["keras_nonfinite"] = row.get("keras_nonfinite", 0) + int((~finite).sum())
            bad = np.where(finite, np.nan_to_num(excess, nan=np.inf), -1.0)
            if bad.max() > 0 and bad.max() > worst[0]:
                j = np.unravel_index(np.argmax(bad), bad.shape)
                worst = (float(bad.max()), f"call {k} output {i} at {tuple(int(v) for v in j)}: fastlstm "
                                           f"{float(y[j]):.6g}, Keras {float(e[j]):.6g} (max abs diff "
                                           f"{float(np.nanmax(diff)):.3g})")
    if worst[1]:
        row.update(status="mismatch", detail=worst[1])
        try:        # ill-conditioned model? Keras and fastlstm (float32) vs fastlstm in float64
            _, r64 = _run_calls(fastlstm, case, entry, as_f64=True)
            exp = [[e[f"y{i}"] for i in range(len(e.files))] for e in
                   (np.load(os.path.join(os.path.dirname(entry["path"]), f"expected_{k}.npz"))
                    for k in range(len(results)))]
            k64_paths = [os.path.join(case["dir"], f"keras64_{k}.npz") for k in range(len(results))]
            if all(os.path.exists(p) for p in k64_paths):
                # float32 rounding, not a wrong computation, when fastlstm and Keras agree in float64 far better
                # than Keras float32 agrees with float64 (TF's float64 gelu is only good to 5e-9, so not to 1e-12),
                # and fastlstm in float32 is about as close to float64 as Keras in float32 (ill-conditioned models
                # scatter rounding errors by ~10x either way). Overflow (inf / |y| > 1e30) is numeric too.
                k64 = [[z[f"y{i}"] for i in range(len(z.files))] for z in map(np.load, k64_paths)]
                d64 = row["fastlstm64_vs_keras64"] = _maxdiff(r64, k64)
                d32 = row["fastlstm32_vs_keras64"] = _maxdiff(results, k64)
                k32 = row["keras32_vs_keras64"] = _maxdiff(exp, k64)
                overflow = row.get("keras_nonfinite") or max(
                    (float(np.nanmax(np.abs(a))) for ra in k64 for a in ra if np.size(a)), default=0.0) > 1e30
                if overflow or (d64 <= max(1e-8, 0.1 * k32) and d32 <= 10 * k32 + TOL["atol"]):
                    row["status"] = "numeric"
            else:
                # no Keras float64 twin: float32 rounding explains the difference when fastlstm's own float32
                # error (against its float64 run) is of the same order as Keras' error
                row["f64_vs_fastlstm"] = _maxdiff(results, r64)
                row["f64_vs_keras"] = _maxdiff(exp, r64)
                if row["f64_vs_fastlstm"] >= NUMERIC_RATIO * row["f64_vs_keras"]:
                    row["status"] = "numeric"
        except Exception:  # noqa: BLE001
            pass
        return row
    if model.input_names != case["input_names"] or model.output_names != case["output_names"]:
        row.update(status="names", detail=f"fastlstm {model.input_names} -> {model.output_names}, Keras "
                                          f"{case['input_names']} -> {case['output_names']}")
    return row


def _maxdiff(a_calls, b_calls):
    with np.errstate(invalid="ignore", over="ignore"):
        return max((float(np.nanmax(np.abs(np.asarray(a, np.float64) - b))) if np.size(a) else 0.0)
                   for ra, rb in zip(a_calls, b_calls) for a, b in zip(ra, rb))


def run_checker(cases, work, tag):
    """fastlstm side in a subprocess (restarted after a hard crash, which is then recorded for that file)."""
    jobs = os.path.join(work, f"jobs_{tag}.json")
    out = os.path.join(work, f"results_{tag}.jsonl")
    if os.path.exists(out):
        os.remove(out)
    with open(jobs, "w") as f:
        json.dump(cases, f)
    todo = [(c["id"], e["fmt"]) for c in cases for e in c["files"]]
    for _ in range(len(todo) + 1):
        p = subprocess.run([FASTLSTM_PY, os.path.abspath(__file__), "_check", jobs, out], capture_output=True,
                           text=True, cwd=REPO)
        rows = _read_rows(out)
        if p.returncode == 0:
            break
        done = {(r["case"], r["fmt"]) for r in rows}
        left = [t for t in todo if t not in done]
        if not left:
            break
        with open(out, "a") as f:        # the file being checked killed the process
            f.write(json.dumps(dict(case=left[0][0], fmt=left[0][1], status="crash",
                                    detail=f"checker process died (exit {p.returncode}): "
                                           f"{p.stderr.strip().splitlines()[-1:]}")) + "\n")
    return _read_rows(out)


def _read_rows(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# ================================================================================================ minimization
def _bypassable(spec, n):
    nd = spec["nodes"][n]
    if nd["op"] == "embedding":
        return False
    for other in spec["nodes"]:
        for ref in _refs_of(other):
            if ref[0] == n and ref[1] > 0:
                return False
    return all(not (r[0] == n and r[1] > 0) for r in spec["outputs"])


def _bypass(spec, n):
    s = copy.deepcopy(spec)
    src = s["nodes"][n]["src"] if "src" in s["nodes"][n] else s["nodes"][n]["srcs"][0]

    def fix(ref):
        return src if ref[0] == n else ref

    for nd in s["nodes"]:
        if "src" in nd:
            nd["src"] = fix(nd["src"])
        if nd.get("srcs"):
            nd["srcs"] = [fix(r) for r in nd["srcs"]]
        if nd.get("init"):
            nd["init"] = [fix(r) for r in nd["init"]]
    s["outputs"] = [fix(r) for r in s["outputs"]]
    return prune(s)


def candidates(spec, fail_call):
    """Smaller variants of a spec, structure first (tier 0), then options and data (tier 1)."""
    tiers = ([], [])

    def add(tier, s):
        try:
            s = prune(s)
            dims = infer_dims(s)
            if any(tuple(r) not in dims for r in s["outputs"]):
                return
        except (KeyError, IndexError):
            return
        if s != spec:
            tiers[tier].append(s)

    if len(spec["outputs"]) > 1:
        for r in spec["outputs"]:
            add(0, dict(copy.deepcopy(spec), outputs=[r]))
    for n in range(len(spec["nodes"])):
        if _bypassable(spec, n):
            add(0, _bypass(spec, n))
    if spec["batch"] is None and len(spec["calls"]) > 1:
        add(0, dict(copy.deepcopy(spec), calls=[copy.deepcopy(spec["calls"][fail_call or 0])]))
    elif len(spec["calls"]) > (fail_call or 0) + 1:
        add(0, dict(copy.deepcopy(spec), calls=copy.deepcopy(spec["calls"][:(fail_call or 0) + 1])))
    if spec["sequential"] and len(spec["outputs"]) == 1:
        add(1, dict(copy.deepcopy(spec), sequential=False))
    if spec.get("seq_input", "Input") != "Input":
        add(1, dict(copy.deepcopy(spec), seq_input="Input"))
    for key, val in (("bump", False), ("names", False), ("out_list", len(spec["outputs"]) > 1)):
        if spec[key] != val:
            add(1, dict(copy.deepcopy(spec), **{key: val}))
    for k, c in enumerate(spec["calls"]):
        for B in sorted({1, c["B"] // 2} - {0, c["B"]}):
            if spec["batch"] is None:
                s = copy.deepcopy(spec)
                s["calls"][k]["B"] = B
                add(1, s)
        for i, T in enumerate(c["T"]):
            if spec["inputs"][i]["T"] is not None and not _length_free(spec):
                continue
            for t in sorted({1, 2, T // 2} - {0, T}):
                s = copy.deepcopy(spec)
                s["calls"][k]["T"][i] = t
                add(1, s)
        if c["reset"]:
            s = copy.deepcopy(spec)
            s["calls"][k]["reset"] = False
            add(1, s)
    if spec["batch"] is not None and not any(c.get("stateful") for nd in spec["nodes"] for c in _cells(nd)):
        add(1, dict(copy.deepcopy(spec), batch=None))
    for i, inp in enumerate(spec["inputs"]):
        if inp["T"] is not None and not _unrolled(spec):
            s = copy.deepcopy(spec)
            s["inputs"][i]["T"] = None
            add(1, s)
    for n, nd in enumerate(spec["nodes"]):
        def variant(fn, tier=1):
            s = copy.deepcopy(spec)
            fn(s["nodes"][n])
            add(tier, s)
        op = nd["op"]
        if op == "rnn":
            if nd["init"]:
                variant(lambda x: x.update(init=None, mask_from=None), 0)
            if nd["mask_from"] is not None:
                variant(lambda x: x.update(mask_from=None))
            if nd["bidi"]:
                if not nd["cell"]["return_state"]:
                    variant(lambda x: x.update(bidi=None), 0)
                if nd["bidi"]["backward"]:
                    variant(lambda x: x["bidi"].update(backward=None))
                    back = nd["bidi"]["backward"]
                    for key, v in CELL_DEFAULTS.items():
                        if key in back and back[key] != v and key not in ("go_backwards", "return_sequences",
                                                                          "return_state", "stateful"):
                            variant(lambda x, key=key, v=v: x["bidi"]["backward"].update({key: v}))
                    if back["units"] != nd["cell"]["units"]:
                        variant(lambda x: x["bidi"]["backward"].update(units=x["cell"]["units"]))
                if nd["bidi"]["merge_mode"] != "concat":
                    variant(lambda x: x["bidi"].update(merge_mode="concat"))
            for path in _cell_paths(nd):
                cell = _at(nd, path)
                for key, v in CELL_DEFAULTS.items():
                    if key in cell and cell[key] != v:
                        variant(lambda x, path=path, key=key, v=v: _at(x, path).update({key: v}))
                for u in sorted({1, cell["units"] // 2} - {0, cell["units"]}):
                    variant(lambda x, path=path, u=u: _at(x, path).update(units=u))
                if cell["cls"] != "SimpleRNN" and not cell["return_state"]:
                    variant(lambda x, path=path: _at(x, path).update(cls="SimpleRNN"))
        elif op == "nested":
            for path in _cell_paths(nd):
                cell = _at(nd, path)
                for key, v in CELL_DEFAULTS.items():
                    if key in cell and cell[key] != v:
                        variant(lambda x, path=path, key=key, v=v: _at(x, path).update({key: v}))
            for j in range(len(nd["layers"])):
                if len(nd["layers"]) > 1:
                    variant(lambda x, j=j: x["layers"].pop(j), 0)
            if nd.get("functional"):
                variant(lambda x: x.update(functional=False))
        elif op == "dense":
            if nd["activation"] != "linear":
                variant(lambda x: x.update(activation="linear"))
            if nd["td"]:
                variant(lambda x: x.update(td=False))
            if not nd["use_bias"]:
                variant(lambda x: x.update(use_bias=True))
            if nd["units"] > 1:
                variant(lambda x: x.update(units=1))
        elif op == "embedding":
            if nd["mask_zero"]:
                variant(lambda x: x.update(mask_zero=False))
            if nd["E"] > 1:
                variant(lambda x: x.update(E=1))
        elif op == "masking" and nd["value"] != 0.0:
            variant(lambda x: x.update(value=0.0))
        elif op == "shared":        # an independent copy of the layer instead of the shared one
            base = copy.deepcopy(spec["nodes"][nd["of"]])
            base.update(src=nd["src"])
            if base["op"] == "rnn":
                base.update(init=None, mask_from=None)
            variant(lambda x, base=base: (x.clear(), x.update(base)))
        elif op == "merge" and len(nd["srcs"]) > 2:
            for j in range(len(nd["srcs"])):
                variant(lambda x, j=j: x["srcs"].pop(j), 0)
    return tiers


def _cell_paths(nd):
    if nd["op"] == "rnn":
        return [("cell",)]
    return [("layers", j, "cell") for j, s in enumerate(nd["layers"]) if s["op"] == "rnn"]


def _at(obj, path):
    for p in path:
        obj = obj[p]
    return obj


# ================================================================================================ driver
class Fuzzer:
    def __init__(self, work, verbose=False):
        self.work = work
        self.keras = KerasSide()
        self.verbose = verbose
        self.n_checked = 0

    def run_specs(self, specs, tag):
        """Build + check specs; returns (result rows, {id: case})."""
        cases, rows = [], []
        for spec in specs:
            t0 = time.time()
            try:
                case, krows = self.keras.make_case(spec, os.path.join(self.work, tag, spec["id"]))
            except Exception as e:  # noqa: BLE001 - a fuzzer bug or Keras crash: recorded
                case, krows = None, [dict(case=spec["id"], fmt="*", status="keras_refused",
                                          detail="fuzzer: " + _short(e))]
                traceback.print_exc()
            rows += [r for r in krows if r["status"] in ("keras_refused", "keras_predict_quirk", "keras_unroll_quirk")]
            if case is not None and case["files"]:
                cases.append(case)
            if self.verbose:
                print(f"    built {spec['id']} in {time.time() - t0:.1f}s", flush=True)
        rows += run_checker(cases, self.work, tag) if cases else []
        self.n_checked += sum(len(c["files"]) for c in cases)
        return rows, {c["id"]: c for c in cases}

    def minimize(self, spec, row, max_rounds=25):
        """Greedy: the smallest variant that still fails the same way in the same format, until none does."""
        fmt, status = row["fmt"], row["status"]
        cur = dict(copy.deepcopy(spec), formats=[fmt])
        cur_row = row
        for rnd in range(max_rounds):
            fail_call = _call_of(cur_row)
            tiers = candidates(cur, fail_call)
            best = None
            for tier in tiers:
                # smallest candidates first, a few per build/check round trip; the first chunk that still
                # fails gives the next spec
                tier = sorted((c for c in tier if spec_size(c) < spec_size(cur)), key=spec_size)
                for start in range(0, len(tier), MINIMIZE_CHUNK):
                    cands = [dict(s, id=f"{spec['id']}_m{rnd}_{start + k}")
                             for k, s in enumerate(tier[start:start + MINIMIZE_CHUNK])]
                    rows, _ = self.run_specs(cands, "minimize")
                    by_id = {s["id"]: s for s in cands}
                    failing = [(spec_size(by_id[r["case"]]), r["case"], r) for r in rows
                               if r["status"] == status and r["fmt"] == fmt and r["case"] in by_id]
                    if failing:
                        best = min(failing, key=lambda t: t[0])
                        break
                if best is not None:
                    break
            if best is None:
                break
            cur, cur_row = by_id[best[1]], best[2]
            print(f"    minimize round {rnd}: size {spec_size(cur):.1f}", flush=True)
        return cur, cur_row


def _call_of(row):
    d = row.get("detail") or ""
    if d.startswith("call "):
        try:
            return int(d.split()[1].rstrip(":"))
        except ValueError:
            return None
    return None


def signature(row):
    """Failures that look alike are minimized once."""
    d = row.get("detail", "")
    if row["status"] == "mismatch":
        d = "shape" if "shape" in d else ("count" if "outputs" in d else "values")
    else:
        d = d.split(":")[0] + ":" + "".join(ch for ch in d.split(":", 1)[-1][:60] if not ch.isdigit())
    return (row["fmt"], row["status"], d)


def main(argv=None):
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "_check":
        return check_main(sys.argv[2], sys.argv[3])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=80, help="random models per flavour")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--flavours", default="k3,tk")
    ap.add_argument("--work", default="/tmp/fuzz_keras")
    ap.add_argument("--chunk", type=int, default=20, help="models built per fastlstm check process")
    ap.add_argument("--no-minimize", action="store_true")
    ap.add_argument("--max-minimize", type=int, default=8, help="distinct failure signatures to minimize")
    ap.add_argument("--replay", help="a spec.json (or failure .json) to rebuild and check")
    ap.add_argument("--minimize", action="store_true", help="with --replay: minimize the first failure")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args(argv)
    for k, v in (("TF_ENABLE_ONEDNN_OPTS", "0"), ("CUDA_VISIBLE_DEVICES", ""), ("KERAS_BACKEND", "tensorflow"),
                 ("TF_CPP_MIN_LOG_LEVEL", "3")):
        os.environ.setdefault(k, v)
    import logging
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    import warnings
    warnings.filterwarnings("ignore")
    os.makedirs(a.work, exist_ok=True)
    fz = Fuzzer(a.work, a.verbose)
    if a.replay:
        with open(a.replay) as f:
            spec = json.load(f)
        spec = spec.get("spec", spec)
        print(describe(spec))
        spec.setdefault("id", "replay")
        rows, _ = fz.run_specs([spec], "replay")
        for r in rows:
            print(json.dumps(r))
        bad = [r for r in rows if r["status"] not in QUIRKS]
        if a.minimize and bad:
            small, row = fz.minimize(spec, bad[0])
            path = os.path.join(a.work, "failures", f"min_{spec['id']}_{row['fmt']}.json")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                json.dump(dict(row=row, spec=small, description=describe(small)), f, indent=1)
            print(f"\nsmallest reproducer ({path}):\n{describe(small)}\n{json.dumps(row)}")
        return 0
    t0 = time.time()
    all_rows, specs = [], {}
    for fl in a.flavours.split(","):
        ids = list(range(a.models))
        for start in range(0, len(ids), a.chunk):
            batch = []
            for i in ids[start:start + a.chunk]:
                seed = a.seed * 100000 + i
                spec = SpecGen(seed * 2 + (fl == "tk"), fl).make()
                spec.update(id=f"{fl}_{seed:06d}", seed=seed)
                specs[spec["id"]] = spec
                batch.append(spec)
            rows, _ = fz.run_specs(batch, "run")
            all_rows += rows
            bad = [r for r in rows if r["status"] not in QUIRKS]
            print(f"[{time.time() - t0:6.0f}s] {fl} models {start}-{start + len(batch) - 1}: {len(rows)} rows, "
                  f"{len(bad)} failing", flush=True)
            for r in bad:
                print(f"    {r['case']} {r['fmt']}: {r['status']}: {r.get('detail', '')[:200]}", flush=True)
    _summary(all_rows, specs, fz, a, t0)
    return 0


def _summary(all_rows, specs, fz, a, t0):
    fail_dir = os.path.join(a.work, "failures")
    os.makedirs(fail_dir, exist_ok=True)
    counts = {}
    for r in all_rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    reload_errs = [r for r in all_rows if r.get("keras_reload_error")]
    groups = {}
    for r in all_rows:
        if r["status"] in QUIRKS:
            continue
        groups.setdefault(signature(r), []).append(r)
    print(f"\n{len(specs)} models, {fz.n_checked} files checked in {time.time() - t0:.0f}s; statuses: {counts}; "
          f"Keras could not reload its own file in {len(reload_errs)} cases")
    for k, (sig, rows) in enumerate(sorted(groups.items(), key=lambda kv: -len(kv[1]))):
        r0 = min(rows, key=lambda r: spec_size(specs[r["case"]]))
        spec = specs[r0["case"]]
        if not a.no_minimize and k < a.max_minimize:
            print(f"minimizing {r0['case']} {r0['fmt']} ({r0['status']})", flush=True)
            spec, r0 = fz.minimize(spec, r0)
        path = os.path.join(fail_dir, f"{k:02d}_{r0['fmt']}_{r0['status']}.json")
        with open(path, "w") as f:
            json.dump(dict(signature=list(sig), count=len(rows), cases=sorted({r["case"] for r in rows}), row=r0,
                           spec=spec, description=describe(spec)), f, indent=1)
        print(f"\n== {sig[1]} in {sig[0]} ({len(rows)} files, e.g. {', '.join(sorted({r['case'] for r in rows})[:4])})"
              f"\n   {r0.get('detail', '')[:300]}\n   smallest reproducer ({path}):")
        print("   " + describe(spec).replace("\n", "\n   "))
    seen = set()
    for r in reload_errs:
        key = (r["fmt"], r["keras_reload_error"][:80])
        if key not in seen:
            seen.add(key)
            print(f"Keras quirk: {r['fmt']} {r['case']}: Keras cannot reload its own file: {r['keras_reload_error']}")
    with open(os.path.join(a.work, "summary.json"), "w") as f:
        json.dump(dict(counts=counts, models=len(specs), files=fz.n_checked, rows=all_rows), f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
