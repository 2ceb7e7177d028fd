"""torch -> ONNX fixtures -> tests/data/onnx/ (family "onnx_torch", run with ~/tvenv/bin/python).

torch.onnx.export with both exporters: dynamo=False (TorchScript, cases "torch_ts_*", opsets 14 and 17) and
dynamo=True (torch.export + onnxscript, cases "torch_dynamo_*", default opset and 18). Models are exported at
batch 2 / length 5 with dynamic batch and time (dynamic_axes / Dim.AUTO) and recorded at batch 3 / length 7 when
the exported graph runs there; dynamo sometimes specializes a length (static input dim, or a Reshape with the
example's T baked in), which the case's description then records. expected.npz = onnxruntime on the saved file;
"source_max_abs_diff" = its distance to torch eager on the same inputs.

This family also writes the exporter-free cases of onnx_util (hand-built single nodes "helper_*" and the
expect_error cases "bad_*"), and two error cases made from torch exports (truncated protobuf, a Conv1d graph).
"""
import os
import re
import tempfile
import warnings

import numpy as np

from .common import add_cases, case_dir
from .onnx_util import SUITE, build_helper_cases, error_entry, run_ort, wanted, write_case

V = 30                          # vocabulary of the token models
B_EX, T_EX = 2, 5               # export example
B_REC, T_REC = 3, 7             # recorded shape when the graph allows it


def perturb(module, rng):
    """Seeded weights: uniform(+-1.5/sqrt(fan_in)) matrices, uniform(+-0.5) biases, uniform(+-1) embeddings."""
    import torch

    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 1:
                a = 0.5
            elif "emb" in name:
                a = 1.0
            else:
                a = 1.5 / np.sqrt(p.shape[-1])
            p.copy_(torch.from_numpy(rng.uniform(-a, a, tuple(p.shape)).astype(np.float32)))


# ----------------------------------------------------------------------------------------------- models
def _models():
    import torch
    from torch import nn

    class RNN(nn.Module):
        """nn.LSTM / nn.GRU alone; with_state: initial state(s) are inputs and the final state(s) outputs."""

        def __init__(self, cell, with_state, **kw):
            super().__init__()
            self.rnn = getattr(nn, cell)(**kw)
            self.cell, self.with_state = cell, with_state

        def forward(self, x, h0=None, c0=None):
            if h0 is None:
                y, s = self.rnn(x)
            elif self.cell == "LSTM":
                y, s = self.rnn(x, (h0, c0))
            else:
                y, s = self.rnn(x, h0)
            if not self.with_state:
                return y
            return (y, *s) if self.cell == "LSTM" else (y, s)

    class EmbedLSTMClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(V, 8)
            self.lstm = nn.LSTM(8, 10, batch_first=True)
            self.fc = nn.Linear(10, 3)

        def forward(self, tokens):
            y, _ = self.lstm(self.emb(tokens))
            return torch.softmax(self.fc(y[:, -1]), dim=-1)

    class GRUSeq2Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb_src, self.emb_tgt = nn.Embedding(V, 8), nn.Embedding(V, 8)
            self.enc = nn.GRU(8, 10, batch_first=True)
            self.dec = nn.GRU(8, 10, batch_first=True)
            self.out = nn.Linear(10, V)

        def forward(self, src, tgt):
            _, h = self.enc(self.emb_src(src))
            y, _ = self.dec(self.emb_tgt(tgt), h)
            return torch.log_softmax(self.out(y), dim=-1)

    class PackedLSTM(nn.Module):
        """pack_padded_sequence -> LSTM -> pad_packed_sequence: TorchScript maps the lengths to sequence_lens."""

        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(4, 6, batch_first=True)

        def forward(self, x, lengths):
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=True)
            y, (h, _) = self.lstm(packed)
            y, _ = nn.utils.rnn.pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])
            return y, h

    class ConvLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(4, 6, 3, padding=1)
            self.lstm = nn.LSTM(6, 8, batch_first=True)

        def forward(self, x):                       # x [B, T, 4]
            z = torch.relu(self.conv(x.transpose(1, 2))).transpose(1, 2)
            return self.lstm(z)[0]

    return RNN, EmbedLSTMClassifier, GRUSeq2Seq, PackedLSTM, ConvLSTM


def _specs():
    """Each: name, exporter ('ts'|'dynamo'), opset (None = exporter default), make() -> module, inputs, outputs,
    description, features. inputs: list of (name, kind, axes); kind 'x:<I>' float features, 'tok' int64 ids,
    'len' int64 lengths, 'state:<L*D>,<H>'; axes name the batch ('B') and time ('T', 'T2') dims."""
    RNN, EmbedLSTMClassifier, GRUSeq2Seq, PackedLSTM, _ = _models()
    s = []

    def rnn_spec(name, exporter, opset, cell, with_state, description, features, **kw):
        bf = kw.get("batch_first", False)
        D = 2 if kw.get("bidirectional") else 1
        L = kw.get("num_layers", 1)
        H = kw["hidden_size"]
        xaxes = ("B", "T") if bf else ("T", "B")
        inputs = [("x", f"x:{kw['input_size']}", xaxes)]
        outputs = ["y"]
        if with_state:
            inputs.append(("h0", f"state:{L * D},{H}", (None, "B")))
            outputs.append("hn")
            if cell == "LSTM":
                inputs.append(("c0", f"state:{L * D},{H}", (None, "B")))
                outputs.append("cn")
        feats = [cell.lower(), "batch_first" if bf else "time_major_input", "float_input"] + features
        if D == 2:
            feats.append("bidirectional")
        if L > 1:
            feats.append("stacked")
        if with_state:
            feats += ["initial_state_input", "state_outputs"]
        s.append(dict(name=name, exporter=exporter, opset=opset, make=lambda: RNN(cell, with_state, **kw),
                      inputs=inputs, outputs=outputs, description=description, features=feats))

    for exporter, opsets in (("ts", (14, 17)), ("dynamo", (None, 18))):
        o1, o2 = opsets
        tag = "TorchScript exporter (dynamo=False)" if exporter == "ts" else "dynamo exporter (dynamo=True)"
        on = lambda o: f"opset {o}" if o else "default opset"  # noqa: E731
        sfx = lambda o: f"_op{o}" if o else ""  # noqa: E731
        rnn_spec(f"torch_{exporter}_lstm_seqfirst_states{sfx(o1)}", exporter, o1, "LSTM", True,
                 f"nn.LSTM(4, 6) seq-first: x [T,B,4], h0/c0 [1,B,6] graph inputs, outputs y [T,B,6], hn, cn; "
                 f"{tag}, {on(o1)}", [], input_size=4, hidden_size=6)
        rnn_spec(f"torch_{exporter}_lstm_bf_bidir_2layer{sfx(o2)}", exporter, o2, "LSTM", True,
                 f"nn.LSTM(4, 5, num_layers=2, batch_first=True, bidirectional=True), h0/c0 [4,B,5] inputs (split per "
                 f"layer with Slice, final states re-joined with Concat); {tag}, {on(o2)}", [],
                 input_size=4, hidden_size=5, num_layers=2, batch_first=True, bidirectional=True)
        rnn_spec(f"torch_{exporter}_gru_bf{sfx(o1)}", exporter, o1, "GRU", False,
                 f"nn.GRU(4, 6, batch_first=True), output y [B,T,6] only; {tag}, {on(o1)}", [],
                 input_size=4, hidden_size=6, batch_first=True)
        rnn_spec(f"torch_{exporter}_gru_seqfirst_bidir_2layer_states{sfx(o2)}", exporter, o2, "GRU", True,
                 f"nn.GRU(3, 5, num_layers=2, bidirectional=True) seq-first, h0 [4,B,5] input, outputs y [T,B,10] "
                 f"and hn; {tag}, {on(o2)}", [], input_size=3, hidden_size=5, num_layers=2, bidirectional=True)
        rnn_spec(f"torch_{exporter}_lstm_nobias_bf{sfx(o1)}", exporter, o1, "LSTM", False,
                 f"nn.LSTM(4, 6, bias=False, batch_first=True): LSTM node without B; {tag}, {on(o1)}", ["no_bias"],
                 input_size=4, hidden_size=6, batch_first=True, bias=False)
        s.append(dict(name=f"torch_{exporter}_embed_lstm_linear{sfx(o2)}", exporter=exporter, opset=o2,
                      make=EmbedLSTMClassifier, inputs=[("tokens", "tok", ("B", "T"))], outputs=["probs"],
                      description=f"Embedding(30,8) -> LSTM(8,10, batch_first) -> Linear(y[:,-1]) -> softmax over 3 "
                                  f"classes, int64 token input; {tag}, {on(o2)}",
                      features=["embedding", "lstm", "batch_first", "int64_input", "dense:softmax"]))
        s.append(dict(name=f"torch_{exporter}_gru_seq2seq{sfx(o1)}", exporter=exporter, opset=o1, make=GRUSeq2Seq,
                      inputs=[("src", "tok", ("B", "T")), ("tgt", "tok", ("B", "T2"))], outputs=["logprobs"],
                      description=f"GRU encoder-decoder: src tokens -> Embedding -> GRU(8,10) -> h_n; tgt tokens -> "
                                  f"Embedding -> GRU(8,10, h0 = encoder h_n) -> Linear(10,30) -> log_softmax; two "
                                  f"int64 inputs with independent lengths; {tag}, {on(o1)}",
                      features=["embedding", "gru", "batch_first", "int64_input", "multi_input", "encoder_decoder",
                                "log_softmax"]))
    s.append(dict(name="torch_ts_lstm_packed_seqlens_op14", exporter="ts", opset=14, make=PackedLSTM,
                  inputs=[("x", "x:4", ("B", "T")), ("lengths", "len", ("B",))], outputs=["y", "hn"],
                  description="pack_padded_sequence(x, lengths, batch_first, enforce_sorted=True) -> nn.LSTM(4, 6) "
                              "-> pad_packed_sequence(total_length=T): TorchScript turns the int64 lengths input into "
                              "the LSTM's sequence_lens (Cast to int32); y is 0 past each row's length, hn = state at "
                              "the last valid step; lengths sorted descending (x past them is non-zero); opset 14 "
                              "(the dynamo exporter fails on packed sequences in torch 2.13)",
                  features=["lstm", "batch_first", "float_input", "multi_input", "packed_sequence", "int64_input"]))
    return s


# ----------------------------------------------------------------------------------------------- export + record
def _make_inputs(spec, rng, B, T, T2):
    feeds = {}
    for name, kind, axes in spec["inputs"]:
        size = {"B": B, "T": T, "T2": T2}
        if kind == "len":              # descending lengths in [1, T], the first row full
            feeds[name] = np.sort(np.concatenate([[T], rng.integers(1, T + 1, size=B - 1)]))[::-1].astype(np.int64)
        elif kind == "tok":
            feeds[name] = rng.integers(0, V, size=[size[a] for a in axes]).astype(np.int64)
        elif kind.startswith("x:"):
            feeds[name] = rng.normal(0, 1, [size[a] for a in axes] + [int(kind[2:])]).astype(np.float32)
        else:
            n, h = (int(v) for v in kind[6:].split(","))
            feeds[name] = rng.normal(0, 0.5, (n, B, h)).astype(np.float32)
    return feeds


def _export(spec, module, example, path):
    import torch

    names = [n for n, _, _ in spec["inputs"]]
    args = tuple(torch.from_numpy(example[n]) for n in names)
    kw = dict(input_names=names, output_names=spec["outputs"])
    if spec["opset"]:
        kw["opset_version"] = spec["opset"]
    if spec["exporter"] == "ts":
        axes = {n: {k: a for k, a in enumerate(ax) if a} for n, _, ax in spec["inputs"]}
        torch.onnx.export(module, args, path, dynamo=False, dynamic_axes=axes, **kw)
    else:
        auto = torch.export.Dim.AUTO            # dynamic where tracing allows, specialized silently otherwise
        shapes = {n: {k: auto for k, a in enumerate(ax) if a} for n, _, ax in spec["inputs"]}
        torch.onnx.export(module, args, path, dynamo=True, dynamic_shapes=shapes, verbose=False, **kw)


def build_torch(out, name_filter):
    import onnx
    import torch

    fw = {"torch": torch.__version__, "onnx": onnx.__version__}
    try:
        import onnxscript
        fw_dynamo = dict(fw, onnxscript=onnxscript.__version__)
    except ImportError:
        fw_dynamo = fw
    cases = []
    for idx, spec in enumerate(_specs()):
        if not wanted(spec["name"], name_filter):
            continue
        rng = np.random.default_rng(300 + idx)
        torch.manual_seed(idx)
        module = spec["make"]().eval()
        perturb(module, rng)
        example = _make_inputs(spec, rng, B_EX, T_EX, T_EX - 2)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.onnx")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _export(spec, module, example, path)
            proto = onnx.load(path)
            # Record at a shape the export never saw; fall back when the graph specialized a dim.
            note, reason = "", ""
            for B, T, T2, label in ((B_REC, T_REC, T_REC - 3, ""),
                                    (B_REC, T_EX, T_EX - 2, f"recorded at the export length T={T_EX}"),
                                    (B_EX, T_EX, T_EX - 2, f"recorded at the export shape B={B_EX}, T={T_EX}")):
                feeds = _make_inputs(spec, rng, B, T, T2)
                try:
                    run_ort(path, feeds)
                    note = f"{label}: {reason}" if label else ""
                    break
                except Exception as e:  # noqa: BLE001 - the graph baked a dim; try the next shape
                    reason = reason or _why_static(proto, str(e))
            else:
                raise RuntimeError(f"{spec['name']}: exported graph runs at no tried shape")
        with torch.no_grad():
            src = module(*(torch.from_numpy(feeds[n]) for n, _, _ in spec["inputs"]))
        src = [t.numpy() for t in (src if isinstance(src, tuple) else (src,))]
        shape_txt = ", ".join(f"{n} {list(feeds[n].shape)}" for n, _, _ in spec["inputs"])
        desc = (spec["description"] + f"; exported at batch {B_EX}, length {T_EX} with dynamic batch/time axes, "
                f"recorded with {shape_txt}" + (f". NOTE {note}" if note else ""))
        feats = spec["features"] + ["dynamic_axes"] + (["static_dim_baked"] if note else [])
        cases.append(write_case(
            out, spec["name"], proto, feeds, fmt="onnx-torch", description=desc, features=feats,
            source_outputs=src, source="torch eager (eval, no_grad)",
            framework=dict(fw if spec["exporter"] == "ts" else fw_dynamo,
                           exporter="TorchScript (dynamo=False)" if spec["exporter"] == "ts" else "dynamo=True"),
            extra={"recorded_at_export_shape": bool(note)}))
    return cases


def _why_static(proto, err):
    """One line on why the graph refused the recording shape (a baked Reshape target, or a static input dim)."""
    node = re.search(r"Name:'([^']*)'", err)
    target = re.search(r"requested shape:(\{[^}]*\})", err)
    if node and target:
        return f"the exporter baked the example's length into {node.group(1)} (target shape {target.group(1)})"
    declared = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    return f"declared input dims {declared}; onnxruntime: {err.strip().splitlines()[0][:160]}"


# ----------------------------------------------------------------------------------------------- error cases
def build_torch_errors(out, name_filter):
    import onnx
    import torch

    RNN, _, _, _, ConvLSTM = _models()
    rng = np.random.default_rng(9)
    cases = []
    name = "bad_truncated_protobuf"
    if wanted(name, name_filter):
        m = RNN("LSTM", False, input_size=4, hidden_size=6, num_layers=2, bidirectional=True).eval()
        perturb(m, rng)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "m.onnx")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(m, (torch.randn(T_EX, B_EX, 4),), path, dynamo=False, opset_version=17,
                                  input_names=["x"], output_names=["y"])
            data = open(path, "rb").read()
        cut = len(data) // 2
        while _parses(data[:cut]):           # make sure the cut lands inside a field
            cut += 1
        d = case_dir(out, SUITE, name)
        with open(os.path.join(d, "model.onnx"), "wb") as f:
            f.write(data[:cut])
        cases.append(error_entry(name, "onnx-torch", ["error:truncated_protobuf"],
                                 f"a TorchScript-exported 2-layer bidirectional nn.LSTM .onnx ({len(data)} bytes) cut "
                                 f"to its first {cut} bytes (onnx.load raises DecodeError)",
                                 "ModelLoadError (a clear parse error), no crash / hang"))
    name = "bad_unsupported_op_conv"
    if wanted(name, name_filter):
        m = ConvLSTM().eval()
        perturb(m, rng)
        d = case_dir(out, SUITE, name)
        path = os.path.join(d, "model.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(m, (torch.randn(B_EX, T_EX, 4),), path, dynamo=False, opset_version=17,
                              input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "B", 1: "T"}})
        run_ort(path, {"x": rng.normal(size=(B_REC, T_REC, 4)).astype(np.float32)})
        ops = sorted({n.op_type for n in onnx.load(path).graph.node})
        cases.append(error_entry(name, "onnx-torch", ["error:unsupported_op", "onnx:Conv", "onnx:LSTM"],
                                 f"valid TorchScript export (onnxruntime runs it) of Conv1d(4,6,3) -> relu -> "
                                 f"LSTM(6,8): Conv is outside the LSTM-engine op set; ops {ops}",
                                 "ModelLoadError naming the unsupported op (Conv) and its node"))
    return cases


def _parses(data):
    import onnx

    try:
        onnx.load_from_string(data)
        return True
    except Exception:  # noqa: BLE001 - any parse failure is what we want
        return False


def build(out, name_filter):
    cases = build_torch(out, name_filter) + build_torch_errors(out, name_filter)
    add_cases(out, SUITE, cases)
    build_helper_cases(out, name_filter)
