"""Differential fuzzing of fastlstm's ONNX loader against onnxruntime on REAL exporter output (dev only, never CI).

Random LSTM/GRU/RNN models are built in the exporting frameworks, exported to ONNX with dynamic batch and time
axes, and fed at batch sizes / lengths the export never saw (incl. batch 1, length 1, a batch that predict splits
across threads). Each file is loaded with fastlstm (one subprocess per case: a crash or hang is caught and named)
and compared with onnxruntime on the same inputs (atol 1e-5, rtol 1e-4); also through predict(batch_size=1 / 3),
with the same shapes and other data (nothing data-dependent may be cached per shape), from an external-data copy
and from onnxruntime's basic-level optimized copy. The exporting framework's own outputs are recorded next to
onnxruntime's: where those two disagree it is the exporter's bug, not fastlstm's (fastlstm must match
onnxruntime). Where onnxruntime's own RNN states overflow (inf / NaN / > 1e6: unbounded activations) a mismatch
is reported apart ("overflow"), not as a bug. Files fastlstm refuses must raise ModelLoadError naming the node
and its op; mutated copies of every loadable file (an unknown op, a bad RNN attribute, a dropped initializer, a
truncated file) are checked the same way.

Halves (each runs in the venv that has its exporter; formats.md section 9):
    ~/tvenv/bin/python tools/fuzz_onnx.py torch -n 80 --seed 0     # nn.LSTM/GRU/RNN, TorchScript + dynamo exporters
    ~/kvenv/bin/python tools/fuzz_onnx.py keras -n 80 --seed 0     # tf_keras + Keras 3, tf2onnx + model.export
    ~/kvenv/bin/python tools/fuzz_onnx.py keras -n 40 --seed 1 --focus loops   # only graphs exported as Loops
    /work/main/.venv/bin/python tools/fuzz_onnx.py check           # fastlstm vs onnxruntime on every case
    python3 tools/fuzz_onnx.py all --torch 80 --keras 80 --seed 0  # torch + keras + check, each in its venv
Cases live in /tmp/fuzz_onnx/cases/<id>/ (model.onnx, meta.json, data.npz); results in /tmp/fuzz_onnx/results.jsonl
(check exits 1 when a case has an issue). `--only SUBSTRING` regenerates / rechecks single cases (ids are
"<half>[loops]_<seed>_<index>", reproducible: the same seed and index give the same model and inputs).
"""
import argparse
import json
import os
import subprocess
import sys
import time
import traceback

import numpy as np

ROOT = "/tmp/fuzz_onnx"
CASES = os.path.join(ROOT, "cases")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENVS = {"torch": os.path.expanduser("~/tvenv/bin/python"), "keras": os.path.expanduser("~/kvenv/bin/python"),
         "check": os.path.join(REPO, ".venv", "bin", "python")}
TOL = dict(atol=1e-5, rtol=1e-4)         # fastlstm vs onnxruntime
SOURCE_TOL = dict(atol=1e-4, rtol=1e-3)  # exporter check: onnxruntime vs the framework (different float paths)
V = 20                                   # vocabulary of token models
EVAL_SHAPES = [(1, 1), (1, 7), (3, 1), (4, 6), (5, 11), (17, 3), (2, 40)]   # (batch, length); never the example


def _choice(rng, seq, p=None):
    return seq[int(rng.choice(len(seq), p=p))]


def _case_dir(case_id):
    d = os.path.join(CASES, case_id)
    os.makedirs(d, exist_ok=True)
    return d


def _write_case(case_id, meta, sets=None):
    """meta.json + data.npz: sets = [(feeds {name: array}, source outputs [array] | None)] in graph input order."""
    d = _case_dir(case_id)
    arrays = {}
    meta["sets"] = []
    for k, (feeds, src) in enumerate(sets or []):
        for j, a in enumerate(feeds.values()):
            arrays[f"s{k}_i{j}"] = a
        for j, a in enumerate(src or []):
            arrays[f"s{k}_o{j}"] = a
        meta["sets"].append({"inputs": list(feeds), "shapes": [list(a.shape) for a in feeds.values()],
                             "n_source": len(src or [])})
    np.savez(os.path.join(d, "data.npz"), **arrays)
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1, default=lambda o: o.item() if isinstance(o, np.generic) else str(o))


def _graph_inputs(path):
    import onnx
    m = onnx.load(path)
    inits = {t.name for t in m.graph.initializer}
    codes = {1: np.float32, 6: np.int32, 7: np.int64, 11: np.float64}
    return [(i.name, codes.get(i.type.tensor_type.elem_type, np.float32)) for i in m.graph.input
            if i.name not in inits]


# =============================================================================================== torch half
def torch_config(rng):
    cell = _choice(rng, ["LSTM", "GRU", "RNN"], p=[0.45, 0.45, 0.1])
    big = bool(rng.random() < 0.12)
    H = int(_choice(rng, [32, 64, 128] if big else [1, 2, 3, 5, 6, 8]))
    cfg = dict(
        cell=cell, input_size=int(_choice(rng, [16, 40] if big else [1, 2, 3, 4, 7])), hidden_size=H,
        num_layers=int(_choice(rng, [1, 2, 3], p=[0.5, 0.35, 0.15])), bidirectional=bool(rng.random() < 0.5),
        batch_first=bool(rng.random() < 0.5), bias=bool(rng.random() < 0.8),
        proj_size=int(rng.integers(1, H)) if cell == "LSTM" and H > 1 and rng.random() < 0.2 else 0,
        embed=bool(rng.random() < 0.3), init_state=bool(rng.random() < 0.35),
        head=_choice(rng, ["none", "linear", "linear_sigmoid", "linear_softmax", "log_softmax"]),
        head_on=_choice(rng, ["seq", "last", "hn", "mean"]),
        returns=_choice(rng, ["y", "y_states", "states", "head", "head_states"]),
        front=_choice(rng, ["none", "conv1d", "maxpool1d", "layernorm"], p=[0.9, 0.035, 0.03, 0.035]),
        exporter=_choice(rng, ["ts", "dynamo"]),
        example=(int(_choice(rng, [2, 3])), int(_choice(rng, [3, 4, 5]))),
        second=_choice(rng, ["none", "LSTM", "GRU"], p=[0.8, 0.1, 0.1]),
        packed=_choice(rng, ["none", "sorted", "unsorted"], p=[0.85, 0.075, 0.075]),
    )
    cfg["dropout"] = 0.3 if cfg["num_layers"] > 1 and rng.random() < 0.3 else 0.0
    cfg["nonlinearity"] = _choice(rng, ["tanh", "relu"]) if cell == "RNN" else "tanh"
    cfg["mid"] = _choice(rng, ["none", "layernorm", "relu", "dropout"], p=[0.7, 0.1, 0.1, 0.1])
    # export options: TorchScript without constant folding / initializers listed as inputs, dynamo unoptimized
    cfg["export_option"] = _choice(rng, ["default", "no_folding", "inits_as_inputs", "no_optimize"],
                                   p=[0.7, 0.1, 0.1, 0.1])
    if cfg["packed"] != "none":      # pack_padded_sequence: y / states only, no front, one RNN module
        cfg.update(front="none", second="none", head="none", returns=_choice(rng, ["y", "y_states", "states"]),
                   exporter="ts")           # the dynamo exporter refuses packed sequences (torch 2.13)
    if cfg["second"] != "none":      # rnn2 reads rnn's output sequence; the outputs are rnn2's
        cfg["second_hidden"] = int(_choice(rng, [1, 3, 4]))
        cfg["init_state"] = False
    if cfg["head"] == "none" and cfg["returns"].startswith("head"):
        cfg["returns"] = "y" + cfg["returns"][4:]
    if cfg["head"] != "none" and not cfg["returns"].startswith("head"):
        cfg["head"] = "none"
    cfg["opset"] = (int(_choice(rng, [9, 11, 13, 14, 15, 16, 17, 18, 19, 20])) if cfg["exporter"] == "ts"
                    else _choice(rng, [None, 18, 20, 17]))
    return cfg


def _torch_module(cfg):
    import torch
    from torch import nn

    class FuzzRNN(nn.Module):
        def __init__(self):
            super().__init__()
            c = cfg
            I = c["input_size"]
            if c["embed"]:
                self.emb = nn.Embedding(V, I)
            if c["front"] == "conv1d":
                self.front = nn.Conv1d(I, I, 3, padding=1)
            elif c["front"] == "maxpool1d":
                self.front = nn.MaxPool1d(3, stride=1, padding=1)
            elif c["front"] == "layernorm":
                self.front = nn.LayerNorm(I)
            kw = dict(input_size=I, hidden_size=c["hidden_size"], num_layers=c["num_layers"], bias=c["bias"],
                      batch_first=c["batch_first"], dropout=c["dropout"], bidirectional=c["bidirectional"])
            if c["proj_size"]:
                kw["proj_size"] = c["proj_size"]
            if c["cell"] == "RNN":
                kw["nonlinearity"] = c.get("nonlinearity", "tanh")
            self.rnn = getattr(nn, c["cell"])(**kw)
            D = 2 if c["bidirectional"] else 1
            h_out = c["proj_size"] or c["hidden_size"]
            if c["second"] != "none":
                self.rnn2 = getattr(nn, c["second"])(D * h_out, c["second_hidden"], batch_first=c["batch_first"])
                D, h_out = 1, c["second_hidden"]
            feat = {"seq": D * h_out, "last": D * h_out, "mean": D * h_out, "hn": D * h_out}[c["head_on"]]
            if c["head"] != "none":
                self.fc = nn.Linear(feat, 3)
            if c.get("mid") == "layernorm":
                self.mid = nn.LayerNorm(feat)
            elif c.get("mid") == "dropout":
                self.mid = nn.Dropout(0.3)

        def forward(self, x, s1=None, s2=None, s3=None):
            # the inputs after x, in _torch_feeds order: h0 (, c0) (, lengths)
            c = cfg
            extra = dict(zip(_torch_input_names(c)[1:], (s1, s2, s3)))
            h0, c0, lengths = extra.get("h0"), extra.get("c0"), extra.get("lengths")
            if c["packed"] != "none":
                return self.forward_packed(x, h0, c0, lengths)
            state = () if h0 is None else ((h0,) if c0 is None else (h0, c0))
            if c["embed"]:
                x = self.emb(x)
            if c["front"] in ("conv1d", "maxpool1d"):
                x = self.front(x.transpose(1, 2)).transpose(1, 2) if c["batch_first"] else \
                    self.front(x.permute(1, 2, 0)).permute(2, 0, 1)
            elif c["front"] == "layernorm":
                x = self.front(x)
            if not state:
                y, st = self.rnn(x)
            elif c["cell"] == "LSTM":
                y, st = self.rnn(x, (state[0], state[1]))
            else:
                y, st = self.rnn(x, state[0])
            if c["second"] != "none":
                y, st = self.rnn2(y)
            states = tuple(st) if isinstance(st, tuple) else (st,)
            if c["returns"] in ("y", "y_states", "states"):
                outs = {"y": (y,), "y_states": (y,) + states, "states": states}[c["returns"]]
                return outs
            t_axis = 1 if c["batch_first"] else 0
            hn = states[0]
            if c["head_on"] == "seq":
                f = y
            elif c["head_on"] == "last":
                f = y[:, -1] if c["batch_first"] else y[-1]
            elif c["head_on"] == "mean":
                f = y.mean(dim=t_axis)
            else:
                f = torch.cat([hn[-2], hn[-1]], dim=-1) if c["bidirectional"] else hn[-1]
            if c.get("mid") in ("layernorm", "dropout"):
                f = self.mid(f)
            elif c.get("mid") == "relu":
                f = torch.relu(f)
            if c["head"] == "log_softmax":
                out = torch.log_softmax(self.fc(f), dim=-1)
            else:
                out = self.fc(f)
                if c["head"] == "linear_sigmoid":
                    out = torch.sigmoid(out)
                elif c["head"] == "linear_softmax":
                    out = torch.softmax(out, dim=-1)
            return (out,) + (states if c["returns"] == "head_states" else ())

        def forward_packed(self, x, h0, c0, lengths):
            c = cfg
            if c["embed"]:
                x = self.emb(x)
            pack = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=c["batch_first"],
                                                     enforce_sorted=c["packed"] == "sorted")
            if h0 is None:
                y, st = self.rnn(pack)
            else:
                y, st = self.rnn(pack, (h0, c0) if c["cell"] == "LSTM" else h0)
            T = x.shape[1] if c["batch_first"] else x.shape[0]
            y, _ = nn.utils.rnn.pad_packed_sequence(y, batch_first=c["batch_first"], total_length=T)
            states = tuple(st) if isinstance(st, tuple) else (st,)
            return {"y": (y,), "y_states": (y,) + states, "states": states}[c["returns"]]

    return FuzzRNN().eval()


def _torch_input_names(cfg):
    names = ["x"]
    if cfg["init_state"]:
        names += ["h0", "c0"] if cfg["cell"] == "LSTM" else ["h0"]
    return names + (["lengths"] if cfg["packed"] != "none" else [])


def _torch_perturb(module, rng):
    import torch
    with torch.no_grad():
        for name, p in module.named_parameters():
            a = 0.5 if p.dim() == 1 else (1.0 if "emb" in name else 1.5 / np.sqrt(p.shape[-1]))
            p.copy_(torch.from_numpy(rng.uniform(-a, a, tuple(p.shape)).astype(np.float32)))


def _torch_feeds(cfg, rng, B, T):
    bf = cfg["batch_first"]
    shape = (B, T) if bf else (T, B)
    if cfg["embed"]:
        feeds = {"x": rng.integers(0, V, shape).astype(np.int64)}
    else:
        feeds = {"x": rng.normal(0, 1, shape + (cfg["input_size"],)).astype(np.float32)}
    if cfg["init_state"]:
        D = 2 if cfg["bidirectional"] else 1
        n = cfg["num_layers"] * D
        feeds["h0"] = rng.normal(0, 0.5, (n, B, cfg["proj_size"] or cfg["hidden_size"])).astype(np.float32)
        if cfg["cell"] == "LSTM":
            feeds["c0"] = rng.normal(0, 0.5, (n, B, cfg["hidden_size"])).astype(np.float32)
    if cfg["packed"] != "none":      # lengths in [1, T], the longest = T; sorted descending when enforce_sorted
        lens = np.concatenate([[T], rng.integers(1, T + 1, B - 1)]).astype(np.int64)
        feeds["lengths"] = np.sort(lens)[::-1].copy() if cfg["packed"] == "sorted" else rng.permutation(lens)
    return feeds


def _torch_export(cfg, module, example, path):
    import torch
    names = list(example)
    args = tuple(torch.from_numpy(v) for v in example.values())
    n_out = len(module(*args))
    kw = dict(input_names=names, output_names=[f"out{k}" for k in range(n_out)])
    if cfg["opset"]:
        kw["opset_version"] = cfg["opset"]
    bt = ("B", "T") if cfg["batch_first"] else ("T", "B")
    axes = {"x": {0: bt[0], 1: bt[1]}, "h0": {1: "B"}, "c0": {1: "B"}, "lengths": {0: "B"}}
    option = cfg.get("export_option", "default")
    if cfg["exporter"] == "ts":
        if option == "no_folding":
            kw["do_constant_folding"] = False
        elif option == "inits_as_inputs":
            kw["keep_initializers_as_inputs"] = True
        torch.onnx.export(module, args, path, dynamo=False, dynamic_axes={n: axes[n] for n in names}, **kw)
    else:
        auto = torch.export.Dim.AUTO
        params = ["x", "s1", "s2", "s3"]         # FuzzRNN.forward's parameter names
        shapes = {params[j]: {k: auto for k in axes[n]} for j, n in enumerate(names)}
        torch.onnx.export(module, args, path, dynamo=True, dynamic_shapes=shapes, verbose=False,
                          optimize=option != "no_optimize", **kw)


def gen_torch(n, seed, only):
    import logging
    import warnings

    import torch
    import onnx
    import onnxscript
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    versions = dict(torch=torch.__version__, onnx=onnx.__version__, onnxscript=onnxscript.__version__)
    for i in range(n):
        case_id = f"torch_{seed}_{i}"
        if only and only not in case_id:
            continue
        rng = np.random.default_rng([seed, i, 1])
        torch.manual_seed(int(rng.integers(1 << 30)))
        cfg = torch_config(rng)
        exporter = f"torch-{cfg['exporter']}"
        meta = dict(id=case_id, half="torch", exporter=exporter, config=cfg, versions=versions,
                    source="torch eager (eval, no_grad)")
        t0 = time.time()
        try:
            module = _torch_module(cfg)
            _torch_perturb(module, rng)
            example = _torch_feeds(cfg, rng, *cfg["example"])
            path = os.path.join(_case_dir(case_id), "model.onnx")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _torch_export(cfg, module, example, path)
        except Exception as e:  # noqa: BLE001 - the exporter refusing a config is news about the exporter
            meta.update(status="export_failed", error=f"{type(e).__name__}: {str(e)[:400]}")
            _write_case(case_id, meta)
            print(f"{case_id:16s} {exporter:13s} export failed: {meta['error'][:120]}", flush=True)
            continue
        sets = []
        for B, T in EVAL_SHAPES + [cfg["example"]]:
            feeds = _torch_feeds(cfg, rng, B, T)
            with torch.no_grad():
                src = module(*(torch.from_numpy(v) for v in feeds.values()))
            sets.append((feeds, [s.numpy() for s in src]))
        meta.update(status="exported", export_seconds=round(time.time() - t0, 1))
        _write_case(case_id, meta, sets)
        print(f"{case_id:16s} {exporter:13s} {_torch_summary(cfg)}", flush=True)


def _torch_summary(c):
    parts = [c["cell"] + ("(relu)" if c.get("nonlinearity") == "relu" else ""), f"I{c['input_size']}",
             f"H{c['hidden_size']}", f"L{c['num_layers']}"]
    parts += [k for k in ("bidirectional", "batch_first", "embed", "init_state") if c[k]]
    parts += [] if c["bias"] else ["nobias"]
    parts += [f"proj{c['proj_size']}"] if c["proj_size"] else []
    parts += [f"head={c['head']}:{c['head_on']}" + (f"+{c['mid']}" if c.get("mid", "none") != "none" else "")
              ] if c["head"] != "none" else []
    parts += [f"front={c['front']}"] if c["front"] != "none" else []
    parts += [f"then {c['second']}{c['second_hidden']}"] if c.get("second", "none") != "none" else []
    parts += [f"packed={c['packed']}"] if c.get("packed", "none") != "none" else []
    parts += [f"ret={c['returns']}", f"opset={c['opset']}"]
    parts += [c["export_option"]] if c.get("export_option", "default") != "default" else []
    return " ".join(parts)


# =============================================================================================== Keras half
ACTIVATIONS = ["tanh", "tanh", "relu", "sigmoid", "linear", "softsign", "hard_sigmoid", "elu", "relu6", "leaky_relu",
               "silu", "gelu", "softplus", "selu", "exponential", "mish", "hard_silu"]
RECURRENT_ACTIVATIONS = ["sigmoid", "sigmoid", "hard_sigmoid", "tanh", "relu", "softsign", "relu6", "linear"]


def keras_config(rng):
    flavor = _choice(rng, ["tf_keras", "keras3"])
    exporter = (_choice(rng, ["from_keras", "from_function"]) if flavor == "tf_keras"
                else _choice(rng, ["model.export", "from_function"]))
    tokens = bool(rng.random() < 0.5)
    cfg = dict(flavor=flavor, exporter=exporter, opset=int(_choice(rng, [13, 14, 15, 16, 17, 18])),
               tokens=tokens, emb=int(_choice(rng, [2, 3, 5])), features=int(_choice(rng, [1, 2, 3, 5])),
               mask_zero=bool(tokens and rng.random() < 0.35), masking=bool(not tokens and rng.random() < 0.25),
               front=_choice(rng, ["none", "conv1d", "maxpool1d"], p=[0.93, 0.035, 0.035]))
    n_layers = int(_choice(rng, [1, 2], p=[0.7, 0.3]))
    big = bool(rng.random() < 0.1)
    layers = []
    for j in range(n_layers):
        last = j == n_layers - 1
        lc = dict(cell=_choice(rng, ["LSTM", "GRU"]),
                  units=int(_choice(rng, [32, 64]) if big else _choice(rng, [1, 2, 3, 5, 8])),
                  activation=_choice(rng, ACTIVATIONS[:-1] if flavor == "tf_keras" else ACTIVATIONS)
                  if rng.random() < 0.4 else "tanh",
                  recurrent_activation=_choice(rng, RECURRENT_ACTIVATIONS) if rng.random() < 0.4 else "sigmoid",
                  use_bias=bool(rng.random() < 0.85), reset_after=bool(rng.random() < 0.6),
                  go_backwards=bool(rng.random() < 0.2), return_sequences=bool(not last or rng.random() < 0.5),
                  return_state=bool(last and rng.random() < 0.2), bidirectional=bool(rng.random() < 0.35),
                  merge=_choice(rng, ["concat", "sum", "mul", "ave", None], p=[0.4, 0.2, 0.15, 0.15, 0.1]),
                  dropout=float(_choice(rng, [0.0, 0.2], p=[0.8, 0.2])),
                  recurrent_dropout=float(_choice(rng, [0.0, 0.2], p=[0.9, 0.1])),
                  implementation=int(_choice(rng, [1, 2], p=[0.25, 0.75])),
                  backward=_choice(rng, ["same", "LSTM", "GRU"], p=[0.85, 0.075, 0.075]))
        if lc["bidirectional"] and flavor == "keras3":
            lc["go_backwards"] = False      # Keras 3 refuses a Bidirectional whose layer has go_backwards
        if lc["merge"] is None and (not last or lc["return_state"]):
            lc["merge"] = "concat"
        layers.append(lc)
    cfg["layers"] = layers
    cfg["head"] = _choice(rng, ["none", "linear", "sigmoid", "softmax"])
    cfg["pool"] = (_choice(rng, ["none", "gap", "gmp", "timedistributed"], p=[0.6, 0.15, 0.1, 0.15])
                   if layers[-1]["return_sequences"] else "none")
    if layers[-1]["bidirectional"] and layers[-1]["merge"] is None:
        cfg["head"] = "none"
    cfg["out_states"] = bool(layers[-1]["return_state"] and rng.random() < 0.7)
    cfg["example"] = (2, int(_choice(rng, [4, 5])))
    cfg["mid"] = _choice(rng, ["none", "dropout", "layernorm", "batchnorm", "dense_relu"],
                         p=[0.6, 0.1, 0.1, 0.1, 0.1]) if n_layers > 1 else "none"
    cfg["mask_value"] = float(_choice(rng, [0.0, -1.0], p=[0.7, 0.3])) if cfg["masking"] else 0.0
    # unroll=True needs a fixed length: the model is then fed that length at other batch sizes
    cfg["unroll_T"] = int(_choice(rng, [1, 3, 6])) if rng.random() < 0.08 else 0
    # encoder-decoder: the encoder's final states are the decoder's initial_state; a second token input x2
    if rng.random() < 0.15:
        cfg.update(arch="seq2seq", unroll_T=0, front="none", s2s=dict(
            cell=_choice(rng, ["LSTM", "GRU"]), units=int(_choice(rng, [2, 5, 8])),
            enc_bidirectional=bool(rng.random() < 0.3), dec_mask_zero=bool(rng.random() < 0.4),
            dec_go_backwards=bool(rng.random() < 0.15)))
    return cfg


def _keras_seq2seq(k, cfg):
    """x (tokens / series) -> encoder RNN (return_state) -> states -> decoder RNN over Embedding(x2) with
    initial_state=states -> Dense(3, softmax) on every step."""
    L = k.layers
    c = cfg["s2s"]
    if cfg["tokens"]:
        inp = k.Input(shape=(None,), dtype="int32", name="x")
        z = L.Embedding(V, cfg["emb"], mask_zero=cfg["mask_zero"])(inp)
    else:
        inp = k.Input(shape=(None, cfg["features"]), name="x")
        z = L.Masking(cfg.get("mask_value", 0.0))(inp) if cfg["masking"] else inp
    inp2 = k.Input(shape=(None,), dtype="int32", name="x2")
    z2 = L.Embedding(V, 3, mask_zero=c["dec_mask_zero"])(inp2)
    Cell = getattr(L, c["cell"])
    if c["enc_bidirectional"]:
        r = L.Bidirectional(Cell(c["units"], return_state=True))(z)
        n = 2 if c["cell"] == "LSTM" else 1                 # [out, fwd states..., bwd states...]
        states = [L.Concatenate()([r[1 + j], r[1 + n + j]]) for j in range(n)]
        units = 2 * c["units"]
    else:
        r = Cell(c["units"], return_state=True)(z)
        states, units = list(r[1:]), c["units"]
    y = Cell(units, return_sequences=True, go_backwards=c["dec_go_backwards"])(z2, initial_state=states)
    return k.Model([inp, inp2], L.Dense(3, activation="softmax")(y))


def _keras_model(k, cfg):
    if cfg.get("arch") == "seq2seq":
        return _keras_seq2seq(k, cfg)
    L = k.layers
    T_in = cfg.get("unroll_T") or None
    if cfg["tokens"]:
        inp = k.Input(shape=(T_in,), dtype="int32", name="x")
        z = L.Embedding(V, cfg["emb"], mask_zero=cfg["mask_zero"])(inp)
    else:
        inp = k.Input(shape=(T_in, cfg["features"]), name="x")
        z = L.Masking(cfg.get("mask_value", 0.0))(inp) if cfg["masking"] else inp
    if cfg["front"] == "conv1d":
        z = L.Conv1D(4, 3, padding="same")(z)
    elif cfg["front"] == "maxpool1d":
        z = L.MaxPooling1D(2, strides=1, padding="same")(z)
    states = []
    for j, lc in enumerate(cfg["layers"]):
        mid = cfg.get("mid", "none")
        if j == 1 and mid != "none":          # between the two recurrent layers (masks pass through)
            z = {"dropout": lambda: L.Dropout(0.3), "layernorm": lambda: L.LayerNormalization(),
                 "batchnorm": lambda: L.BatchNormalization(),
                 "dense_relu": lambda: L.Dense(4, activation="relu")}[mid]()(z)
        kw = dict(units=lc["units"], activation=lc["activation"], recurrent_activation=lc["recurrent_activation"],
                  use_bias=lc["use_bias"], go_backwards=lc["go_backwards"],
                  return_sequences=lc["return_sequences"], return_state=lc["return_state"],
                  dropout=lc.get("dropout", 0.0), recurrent_dropout=lc.get("recurrent_dropout", 0.0))
        if lc["cell"] == "GRU":
            kw["reset_after"] = lc["reset_after"]
        kw["implementation"] = lc.get("implementation", 2)
        kw["unroll"] = bool(cfg.get("unroll_T"))
        layer = getattr(L, lc["cell"])(**kw)
        if lc["bidirectional"]:
            back = lc.get("backward", "same")
            if back != "same":            # another cell type as the backward layer
                bkw = dict(kw, go_backwards=not kw["go_backwards"])
                if back == "GRU":
                    bkw["reset_after"] = lc["reset_after"]
                else:
                    bkw.pop("reset_after", None)
                back = getattr(L, back)(**bkw)
                layer = L.Bidirectional(layer, backward_layer=back, merge_mode=lc["merge"])
            else:
                layer = L.Bidirectional(layer, merge_mode=lc["merge"])
        r = layer(z)
        if lc["return_state"]:
            z, states = r[0], list(r[1:])
        else:
            z = r
    outs = list(z) if isinstance(z, (list, tuple)) else [z]
    pool = cfg.get("pool", "none")
    if pool in ("gap", "gmp") and len(outs) == 1:       # GlobalAveragePooling1D honours the mask
        outs = [(L.GlobalAveragePooling1D() if pool == "gap" else L.GlobalMaxPooling1D())(outs[0])]
    elif pool == "timedistributed" and len(outs) == 1:
        outs = [L.TimeDistributed(L.Dense(2, activation="tanh"))(outs[0])]
    if cfg["head"] != "none":
        act = None if cfg["head"] == "linear" else cfg["head"]
        outs = [L.Dense(3, activation=act)(outs[0])]
    if cfg["out_states"]:
        outs += states
    return k.Model(inp, outs if len(outs) > 1 else outs[0])


def _keras_perturb(model, rng):
    ws = []
    for v, w in zip(model.weights, model.get_weights()):
        if "bias" in v.name or "beta" in v.name or "moving_mean" in v.name:
            ws.append(rng.uniform(-0.5, 0.5, w.shape))
        elif "variance" in v.name or "gamma" in v.name:
            ws.append(rng.uniform(0.5, 1.5, w.shape))
        elif "embeddings" in v.name:
            ws.append(rng.uniform(-1.0, 1.0, w.shape))
        else:
            a = 1.3 * np.sqrt(6.0 / (w.shape[0] + w.shape[-1]))
            ws.append(rng.uniform(-a, a, w.shape))
    model.set_weights([w.astype(np.float32) for w in ws])


def _keras_x(cfg, rng, B, T):
    """Inputs with padding where the model masks: rows pre-, post-, mid-padded or unpadded (token 0 / zero
    feature vectors)."""
    masked = cfg["mask_zero"] or cfg["masking"]
    T = cfg.get("unroll_T") or T
    if cfg["tokens"]:
        x = rng.integers(1 if masked else 0, V, (B, T)).astype(np.int32)
    else:
        x = rng.normal(0, 1, (B, T, cfg["features"])).astype(np.float32)
    if masked:
        for b in range(B):
            kind = _choice(rng, ["none", "post", "pre", "mid", "all"], p=[0.3, 0.3, 0.2, 0.15, 0.05])
            n = int(rng.integers(1, T + 1)) if T > 1 else 1
            if kind == "post" and T > 1:
                x[b, T - min(n, T - 1):] = 0
            elif kind == "pre" and T > 1:
                x[b, :min(n, T - 1)] = 0
            elif kind == "mid" and T > 2:
                x[b, 1:T - 1] = 0
            elif kind == "all":
                x[b] = 0
        if cfg["masking"] and cfg.get("mask_value", 0.0) != 0.0:
            x[x == 0] = cfg["mask_value"]
    return x


def _keras_inputs(cfg, rng, B, T):
    """The model's inputs: [x] or, for seq2seq, [x, x2] (decoder tokens of another length)."""
    xs = [_keras_x(cfg, rng, B, T)]
    if cfg.get("arch") == "seq2seq":
        T2 = max(1, T - 2) if T % 2 else T + 1
        x2 = rng.integers(1, V, (B, T2)).astype(np.int32)
        if cfg["s2s"]["dec_mask_zero"] and T2 > 1:
            x2[::2, -(T2 // 2):] = 0                    # post-padded decoder rows
        xs.append(x2)
    return xs


def _keras_export(cfg, model, k, path, xs):
    import tensorflow as tf
    import tf2onnx
    T = cfg.get("unroll_T") or None
    shape = (None, T) if cfg["tokens"] else (None, T, cfg["features"])
    spec = [tf.TensorSpec(shape, tf.as_dtype(xs[0].dtype), name="x")]
    if len(xs) > 1:
        spec.append(tf.TensorSpec((None, None), tf.int32, name="x2"))
    if cfg["exporter"] == "model.export":
        model.export(path, format="onnx", verbose=False, opset_version=cfg["opset"])
    elif cfg["exporter"] == "from_keras":
        tf2onnx.convert.from_keras(model, input_signature=spec, opset=cfg["opset"], output_path=path)
    elif len(xs) > 1:
        fn = tf.function(lambda x, x2: model([x, x2], training=False), input_signature=spec)
        tf2onnx.convert.from_function(fn, input_signature=spec, opset=cfg["opset"], output_path=path)
    else:
        fn = tf.function(lambda x: model(x, training=False), input_signature=spec)
        tf2onnx.convert.from_function(fn, input_signature=spec, opset=cfg["opset"], output_path=path)


def _match_inputs(graph_inputs, xs):
    """{graph input name: array}: x2 is the input whose name says so, x the other."""
    if len(xs) == 1:
        (name, dtype), = graph_inputs
        return {name: xs[0].astype(dtype)}
    second = [n for n, _ in graph_inputs if "x2" in n]
    if len(second) != 1:
        raise RuntimeError(f"cannot tell x from x2 in {graph_inputs}")
    return {n: (xs[1] if n == second[0] else xs[0]).astype(dt) for n, dt in graph_inputs}


def loop_focus(cfg, rng):
    """--focus loops: models the exporters turn into ONNX Loops (Keras 3 GRUs, masked LSTM/GRU, Keras 3
    hard_sigmoid), every layer with random activations: the cases onnx_cell's cell recognizer must get right."""
    cfg.update(arch="plain", front="none", unroll_T=0)
    if cfg["flavor"] == "tf_keras" or rng.random() < 0.5:
        if cfg["tokens"]:
            cfg["mask_zero"] = True
        else:
            cfg["masking"] = True
    for lc in cfg["layers"]:
        lc["activation"] = _choice(rng, ACTIVATIONS[:-1] if cfg["flavor"] == "tf_keras" else ACTIVATIONS)
        lc["recurrent_activation"] = _choice(rng, RECURRENT_ACTIVATIONS + ["sigmoid", "hard_sigmoid"])
        lc["implementation"], lc["dropout"], lc["recurrent_dropout"] = 2, 0.0, 0.0
    return cfg


def gen_keras(n, seed, only, focus=""):
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import logging

    import keras
    import tensorflow as tf
    import tf2onnx
    import tf_keras
    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    versions = dict(keras=keras.__version__, tf_keras=tf_keras.__version__, tensorflow=tf.__version__,
                    tf2onnx=tf2onnx.__version__)
    for i in range(n):
        case_id = f"keras{focus}_{seed}_{i}"
        if only and only not in case_id:
            continue
        rng = np.random.default_rng([seed, i, 2])
        cfg = keras_config(rng)
        if focus == "loops":
            cfg = loop_focus(cfg, rng)
        k = tf_keras if cfg["flavor"] == "tf_keras" else keras
        exporter = f"{cfg['flavor']}-{cfg['exporter']}"
        meta = dict(id=case_id, half="keras", exporter=exporter, config=cfg, versions=versions,
                    source=f"{cfg['flavor']} model call (training=False)")
        t0 = time.time()
        path = os.path.join(_case_dir(case_id), "model.onnx")
        try:
            k.backend.clear_session()
            tf.random.set_seed(int(rng.integers(1 << 30)))
            model = _keras_model(k, cfg)
            _keras_perturb(model, rng)
            xs_ex = _keras_inputs(cfg, rng, *cfg["example"])
            model(xs_ex if len(xs_ex) > 1 else xs_ex[0])     # Keras 3 export wants a called model
            _keras_export(cfg, model, k, path, xs_ex)
            graph_inputs = _graph_inputs(path)
        except Exception as e:  # noqa: BLE001
            meta.update(status="export_failed", error=f"{type(e).__name__}: {str(e)[:400]}")
            _write_case(case_id, meta)
            print(f"{case_id:16s} {exporter:22s} export failed: {meta['error'][:120]}", flush=True)
            continue
        sets = []
        for B, T in EVAL_SHAPES + [cfg["example"]]:
            xs = _keras_inputs(cfg, rng, B, T)
            src = model(xs if len(xs) > 1 else xs[0], training=False)
            src = [np.asarray(s) for s in (src if isinstance(src, (list, tuple)) else [src])]
            sets.append((_match_inputs(graph_inputs, xs), src))
        meta.update(status="exported", export_seconds=round(time.time() - t0, 1))
        _write_case(case_id, meta, sets)
        print(f"{case_id:16s} {exporter:22s} {_keras_summary(cfg)}", flush=True)


def _keras_summary(c):
    if c.get("arch") == "seq2seq":
        s = c["s2s"]
        enc = f"{s['cell']}{s['units']}" + (" bidirectional" if s["enc_bidirectional"] else "")
        src = ("tokens" + ("(mask_zero)" if c["mask_zero"] else "") if c["tokens"] else
               f"F{c['features']}" + ("(Masking)" if c["masking"] else ""))
        return (f"seq2seq {src} -> encoder {enc} -> decoder tokens{'(mask_zero)' if s['dec_mask_zero'] else ''}"
                f"{' go_backwards' if s['dec_go_backwards'] else ''} opset={c['opset']}")
    parts = ["tokens" + ("(mask_zero)" if c["mask_zero"] else "") if c["tokens"] else
             f"F{c['features']}" + (f"(Masking {c.get('mask_value', 0.0)})" if c["masking"] else "")]
    parts += [f"unroll T={c['unroll_T']}"] if c.get("unroll_T") else []
    parts += [f"front={c['front']}"] if c["front"] != "none" else []
    for lc in c["layers"]:
        s = f"{lc['cell']}{lc['units']}"
        if lc["activation"] != "tanh" or lc["recurrent_activation"] != "sigmoid":
            s += f"[{lc['activation']},{lc['recurrent_activation']}]"
        s += "" if lc["use_bias"] else ",nobias"
        s += ",ra" if lc["cell"] == "GRU" and lc["reset_after"] else (",rb" if lc["cell"] == "GRU" else "")
        s += ",back" if lc["go_backwards"] else ""
        s += ",seq" if lc["return_sequences"] else ""
        s += ",state" if lc["return_state"] else ""
        s += ",impl1" if lc.get("implementation") == 1 else ""
        s += f",backward={lc['backward']}" if lc["bidirectional"] and lc.get("backward", "same") != "same" else ""
        s += ",dropout" if lc.get("dropout") or lc.get("recurrent_dropout") else ""
        if lc["bidirectional"]:
            s = f"Bi({s};{lc['merge']})"
        parts.append(s)
    parts += [f"pool={c['pool']}"] if c.get("pool", "none") != "none" else []
    if c.get("mid", "none") != "none":
        parts.insert(2, f"mid={c['mid']}")
    parts += [f"head={c['head']}", f"opset={c['opset']}"] + (["out_states"] if c["out_states"] else [])
    return " ".join(parts)


# =============================================================================================== fastlstm check
def _ort_session(path):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    ort.set_default_logger_severity(3)
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _max_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def _compare(got, want, tol):
    """None when got matches want (shape and values), else a short reason."""
    got = np.asarray(got)
    if got.shape != want.shape:
        return f"shape {got.shape} vs {want.shape}"
    if want.dtype.kind == "f" and got.dtype != want.dtype:
        return f"dtype {got.dtype} vs {want.dtype}"
    if not np.allclose(got, want, equal_nan=True, **tol):
        return f"max abs err {_max_err(got, want):.3g}"
    return None


_NODE_RE = r"ONNX node (.+?) \(op ([A-Za-z0-9_]+)\)"


def _names_node_and_op(msg):
    """(ok, op): ok when a ModelLoadError message names a node (name or output) and its op."""
    import re
    m = re.search(_NODE_RE, msg)
    if not m:
        return False, None
    return True, m.group(2)


def check_case(case_id):
    """One case in this process: returns a result dict (status, details)."""
    import fastlstm
    import onnx

    from fastlstm.loaders.onnx_ops import OPS
    d = os.path.join(CASES, case_id)
    meta = json.load(open(os.path.join(d, "meta.json")))
    res = dict(id=case_id, exporter=meta["exporter"], half=meta["half"], issues=[], notes=[])
    if meta["status"] != "exported":
        res["status"] = "export_failed"
        res["notes"].append(meta.get("error", ""))
        return res
    path = os.path.join(d, "model.onnx")
    proto = onnx.load(path)
    res["ops"] = sorted({n.op_type for n in proto.graph.node})
    data = np.load(os.path.join(d, "data.npz"))
    try:
        sess = _ort_session(path)
    except Exception as e:  # noqa: BLE001
        sess = None
        res["notes"].append(f"onnxruntime refuses the file: {str(e)[:200]}")
    try:
        model = fastlstm.load(path)
    except fastlstm.ModelLoadError as e:
        ok, op = _names_node_and_op(str(e))
        res["load_error"] = str(e)[:400]
        supported = op in OPS if op else None
        if not ok:
            res["issues"].append(f"ModelLoadError does not name node and op: {str(e)[:300]}")
        elif supported and sess is not None:
            res["issues"].append(f"declined a file onnxruntime runs, at a supported op: {str(e)[:300]}")
        res["status"] = "declined" if not res["issues"] else "bug"
        return res              # mutants would fail at the same node first
    except Exception as e:  # noqa: BLE001
        res["issues"].append(f"load raised {type(e).__name__} (not ModelLoadError): {e}\n"
                             f"{traceback.format_exc(limit=4)}")
        res["status"] = "bug"
        return res
    res["loops"] = list(model.loops)
    if sess is not None:
        if model.input_names != [i.name for i in sess.get_inputs()]:
            res["issues"].append(f"input_names {model.input_names} vs {[i.name for i in sess.get_inputs()]}")
        if model.output_names != [o.name for o in sess.get_outputs()]:
            res["issues"].append(f"output_names {model.output_names} vs {[o.name for o in sess.get_outputs()]}")
    n_cmp = 0
    for k, s in enumerate(meta["sets"]):
        feeds = {name: data[f"s{k}_i{j}"] for j, name in enumerate(s["inputs"])}
        src = [data[f"s{k}_o{j}"] for j in range(s["n_source"])]
        label = "x".join(str(v) for v in s["shapes"][0])
        if sess is None:
            break
        try:
            want = sess.run(None, feeds)
        except Exception as e:  # noqa: BLE001 - a baked dim: onnxruntime refuses this shape too
            res["notes"].append(f"{label}: onnxruntime refuses: {str(e).splitlines()[0][:160]}")
            try:                  # fastlstm should refuse too (ValueError / TypeError), not answer or crash
                model.predict(feeds)
                res.setdefault("answered_where_ort_refused", []).append(label)
            except (ValueError, TypeError):
                pass
            except Exception as e2:  # noqa: BLE001
                res["issues"].append(f"{label}: predict raised {type(e2).__name__} where onnxruntime refused: "
                                     f"{str(e2)[:200]}")
            continue
        if src:
            errs = [_compare(w, np.asarray(sv, w.dtype), SOURCE_TOL) for w, sv in zip(want, src)]
            bad = [f"out{j} {e}" for j, e in enumerate(errs) if e]
            if bad:
                res.setdefault("exporter_mismatch", []).append(f"{label}: onnxruntime vs {meta['source']}: "
                                                              + "; ".join(bad))
        try:
            got = model.predict(feeds)
        except Exception as e:  # noqa: BLE001
            res["issues"].append(f"{label}: predict raised {type(e).__name__}: {str(e)[:300]}")
            continue
        if not _variant(res, f"{label}: fastlstm", want, lambda: got, proto, feeds):
            continue
        n_cmp += 1
        axes = _batch_axes(meta, list(feeds))
        B = feeds[s["inputs"][0]].shape[axes[0]]
        # the same through the batch split (batch axis read from the graph) and positional inputs
        for bs in (1, 3) if B >= 2 else ():
            _variant(res, f"{label}: predict(batch_size={bs})", want,
                     lambda: model.predict(list(feeds.values()), batch_size=bs))
        # the same shapes again with other data (rows reversed, float features negated): nothing computed from
        # the data may be cached per input shape
        other = {}
        for (name, a), ax in zip(feeds.items(), axes):
            b = np.flip(a, ax).copy()
            if a.dtype.kind == "f" and name == "x" and not meta["config"].get("masking"):
                b = -b
            other[name] = b
        _variant(res, f"{label}: same shapes, other data", sess.run(None, other), lambda: model.predict(other),
                 proto, other)
        if n_cmp == 1:           # the file with its weights in an external data file; onnxruntime's offline
            # basic-level optimization of it (constant folding, redundant nodes removed: standard ops only)
            _variant(res, f"{label}: external-data copy", want, lambda: _external_copy(proto, d).predict(feeds))
            _variant(res, f"{label}: onnxruntime-optimized copy", want, lambda: _ort_optimized(path, d).predict(feeds))
    res["compared_shapes"] = n_cmp
    if sess is not None and n_cmp == 0 and not res["issues"]:
        res["notes"].append("no shape compared")
    _check_mutations(path, proto, res)
    res["status"] = "bug" if res["issues"] else ("ok" if n_cmp else "skipped")
    return res


def _batch_axes(meta, names):
    """The batch axis of each fuzzer input: Keras inputs are batch-first; torch x follows batch_first, states
    [L*D, B, H], lengths [B]."""
    if meta["half"] == "keras":
        return [0] * len(names)
    bf = meta["config"].get("batch_first")
    return [(0 if bf else 1) if n == "x" else (0 if n == "lengths" else 1) for n in names]


def _variant(res, label, want, run, proto=None, feeds=None):
    """run() must give `want` (onnxruntime's outputs); a mismatch or an exception is an issue, except where
    onnxruntime's own RNN states overflow on these inputs: such a case is numerically degenerate (inf / NaN
    arithmetic decides the outputs) and goes to res["overflow"]. True when it matched."""
    try:
        got = run()
    except Exception as e:  # noqa: BLE001
        res["issues"].append(f"{label} raised {type(e).__name__}: {str(e)[:300]}")
        return False
    got = got if isinstance(got, list) else [got]
    bad = [f"out{j} {e}" for j, (g, w) in enumerate(zip(got, want)) if (e := _compare(g, w, TOL))]
    if len(got) != len(want):
        bad.append(f"{len(got)} outputs vs {len(want)}")
    if not bad:
        return True
    msg = f"{label} vs onnxruntime: " + "; ".join(bad)
    if proto is not None and _rnn_states_overflow(proto, feeds):
        res.setdefault("overflow", []).append(msg)
    else:
        res["issues"].append(msg)
    return False


def _rnn_states_overflow(proto, feeds, limit=1e6):
    """True when an LSTM / GRU / RNN / Loop output of the main graph, run by onnxruntime on `feeds`, holds inf /
    NaN or values beyond `limit` (an exploding recurrence: unbounded activations)."""
    import onnx
    import onnxruntime as ort
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    names = [o for n in m.graph.node if n.op_type in ("LSTM", "GRU", "RNN", "Loop") for o in n.output if o]
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.helper.make_empty_tensor_value_info(o) for o in names if o not in have)
    try:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        outs = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(names, feeds)
    except Exception:  # noqa: BLE001
        return False
    return any(o.dtype.kind == "f" and o.size and not (np.all(np.isfinite(o)) and np.abs(o).max() <= limit)
               for o in map(np.asarray, outs))


def _external_copy(proto, case_dir):
    """fastlstm model of `proto` saved with every initializer in one external data file."""
    import onnx

    import fastlstm
    d = os.path.join(case_dir, "external")
    os.makedirs(d, exist_ok=True)
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    onnx.save(m, os.path.join(d, "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    return fastlstm.load(os.path.join(d, "model.onnx"))


def _ort_optimized(path, case_dir):
    import onnxruntime as ort

    import fastlstm
    out = os.path.join(case_dir, "ort_basic.onnx")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = out
    so.log_severity_level = 3
    ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return fastlstm.load(out)


def _check_mutations(path, proto, res):
    """Broken / unsupported copies of the file: each must raise ModelLoadError naming the node and op."""
    import onnx

    import fastlstm
    rng = np.random.default_rng(abs(hash(res["id"])) % (1 << 32))
    mutants = []
    nodes = list(proto.graph.node)
    plain = [k for k, n in enumerate(nodes) if n.op_type not in ("Constant",)]
    if plain:
        k = int(rng.choice(plain))
        m = onnx.ModelProto()
        m.CopyFrom(proto)
        m.graph.node[k].op_type = "FuzzUnknownOp"
        mutants.append(("unknown_op", m, m.graph.node[k], "FuzzUnknownOp"))
    rnn = [k for k, n in enumerate(nodes) if n.op_type in ("LSTM", "GRU")]
    if rnn:
        k = int(rng.choice(rnn))
        m = onnx.ModelProto()
        m.CopyFrom(proto)
        node = m.graph.node[k]
        bad = _choice(rng, ["direction", "activations", "hidden_size"])
        for a in list(node.attribute):
            if a.name == bad:
                node.attribute.remove(a)
        if bad == "direction":
            node.attribute.append(onnx.helper.make_attribute("direction", "sideways"))
        elif bad == "activations":
            n_act = (3 if node.op_type == "LSTM" else 2)
            node.attribute.append(onnx.helper.make_attribute("activations", ["FuzzAct"] * n_act))
        else:
            node.attribute.append(onnx.helper.make_attribute("hidden_size", 0))
        mutants.append((f"bad_{bad}", m, node, node.op_type))
    used = {i for n in nodes for i in n.input}
    declared = {i.name for i in proto.graph.input}     # an initializer listed as an input becomes a real input
    inits = [t.name for t in proto.graph.initializer if t.name in used and t.name not in declared]
    if inits:
        name = _choice(rng, inits)
        m = onnx.ModelProto()
        m.CopyFrom(proto)
        for t in list(m.graph.initializer):
            if t.name == name:
                m.graph.initializer.remove(t)
        consumer = next(n for n in m.graph.node if name in n.input)
        mutants.append(("drop_initializer", m, consumer, consumer.op_type))
    out = []
    for tag, m, node, op in mutants:
        try:
            fastlstm.loaders.onnx.load_onnx_bytes(m.SerializeToString(), f"<{tag}>")
            out.append(f"{tag}: loaded without error")
            continue
        except fastlstm.ModelLoadError as e:
            msg = str(e)
        except Exception as e:  # noqa: BLE001
            out.append(f"{tag}: raised {type(e).__name__} (not ModelLoadError): {str(e)[:200]}")
            continue
        ok, got_op = _names_node_and_op(msg)
        who = node.name or (node.output[0] if node.output else "")
        if not ok or who not in msg or (got_op != op and op not in msg):
            out.append(f"{tag}: message does not name node {who!r} / op {op}: {msg[:200]}")
    data = proto.SerializeToString()
    for cut in sorted({int(len(data) * f) for f in (0.13, 0.5, 0.77)}):
        try:
            fastlstm.loaders.onnx.load_onnx_bytes(data[:cut], "<truncated>")
            out.append(f"truncated at {cut}/{len(data)}: loaded without error")
        except fastlstm.ModelLoadError:
            pass
        except Exception as e:  # noqa: BLE001
            out.append(f"truncated at {cut}/{len(data)}: raised {type(e).__name__}: {str(e)[:200]}")
    res["mutations_checked"] = len(mutants) + 3
    for o in out:
        res["issues"].append("mutation " + o)


def check_all(only, timeout):
    """Every case, each in its own fastlstm process (a crash or hang is recorded against the case)."""
    ids = sorted(c for c in os.listdir(CASES) if not only or only in c) if os.path.isdir(CASES) else []
    results_path = os.path.join(ROOT, "results.jsonl")
    results = []
    for case_id in ids:
        t0 = time.time()
        try:
            p = subprocess.run([VENVS["check"], os.path.abspath(__file__), "check-one", case_id],
                               capture_output=True, text=True, timeout=timeout, cwd=REPO)
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
            if p.returncode != 0 or not line:
                res = dict(id=case_id, status="bug", exporter="?", half=case_id.split("_")[0],
                           issues=[f"checker process died (rc {p.returncode}): {p.stderr[-800:]}"], notes=[])
            else:
                res = json.loads(line[-1])
        except subprocess.TimeoutExpired:
            res = dict(id=case_id, status="bug", exporter="?", half=case_id.split("_")[0],
                       issues=[f"hang: no answer in {timeout} s"], notes=[])
        res["check_seconds"] = round(time.time() - t0, 1)
        results.append(res)
        flag = {"ok": "ok", "bug": "BUG", "declined": "declined", "export_failed": "no export",
                "skipped": "skipped"}.get(res["status"], res["status"])
        extra = ""
        if res.get("exporter_mismatch"):
            extra += " [exporter != framework]"
        if res.get("overflow"):
            extra += f" [RNN states overflow in onnxruntime: {len(res['overflow'])} comparison(s) not counted]"
        if res.get("answered_where_ort_refused"):
            extra += f" [fastlstm answered where onnxruntime refused: {res['answered_where_ort_refused']}]"
        if res.get("load_error"):
            import re
            m = re.search(_NODE_RE + r": (.{0,60})", res["load_error"])
            extra += f" [{m.group(0) if m else res['load_error'][:120]}]"
        print(f"{case_id:16s} {res['exporter']:24s} {flag:9s}{extra}", flush=True)
        for iss in res["issues"]:
            print("      " + iss.replace("\n", "\n      ")[:1500], flush=True)
    mode = "a" if only else "w"
    with open(results_path, mode) as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    _summary(results)
    return 1 if any(r["status"] == "bug" for r in results) else 0


def _summary(results):
    by = {}
    for r in results:
        by.setdefault(r["exporter"], {}).setdefault(r["status"], 0)
        by[r["exporter"]][r["status"]] += 1
    print("\nper exporter:")
    for ex in sorted(by):
        mism = sum(1 for r in results if r["exporter"] == ex and r.get("exporter_mismatch"))
        print(f"  {ex:26s} " + ", ".join(f"{k} {v}" for k, v in sorted(by[ex].items()))
              + (f"; exporter disagrees with its framework on {mism}" if mism else ""))
    n = len(results)
    print(f"total {n} cases: " + ", ".join(f"{s} {sum(r['status'] == s for r in results)}"
                                           for s in ("ok", "bug", "declined", "skipped", "export_failed")))


# =============================================================================================== entry point
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["torch", "keras", "check", "check-one", "all"])
    ap.add_argument("case", nargs="?", help="check-one: the case id")
    ap.add_argument("-n", type=int, default=80, help="models to generate (torch / keras)")
    ap.add_argument("--torch", type=int, default=80, help="all: torch models")
    ap.add_argument("--keras", type=int, default=80, help="all: Keras models")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="", help="only case ids containing this")
    ap.add_argument("--focus", default="", choices=["", "loops"],
                    help="keras: only models exported as ONNX Loops, with random activations (ids kerasloops_*)")
    ap.add_argument("--timeout", type=int, default=300, help="check: seconds per case")
    a = ap.parse_args(argv)
    os.makedirs(CASES, exist_ok=True)
    if a.what == "torch":
        gen_torch(a.n, a.seed, a.only)
    elif a.what == "keras":
        gen_keras(a.n, a.seed, a.only, a.focus)
    elif a.what == "check-one":
        sys.path.insert(0, REPO)
        print(json.dumps(check_case(a.case)))
    elif a.what == "check":
        sys.exit(check_all(a.only, a.timeout))
    else:
        me = os.path.abspath(__file__)
        for half, n in (("torch", a.torch), ("keras", a.keras)):
            if n:
                subprocess.run([VENVS[half], me, half, "-n", str(n), "--seed", str(a.seed), "--only", a.only],
                               check=True)
        sys.exit(subprocess.run([VENVS["check"], me, "check", "--only", a.only]).returncode)


if __name__ == "__main__":
    main()
