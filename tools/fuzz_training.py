"""Differential fuzzer: fastlstm's fit / evaluate / save / save_weights / export_onnx against the real Keras 3.

Dev machine only, never in CI. Random small models (Embedding or Masking + LSTM/GRU stacks, Bidirectional,
TimeDistributed heads, two-input and two-output functional models), losses, optimizers and clipping options;
the same initial weights and data in both; `fit(..., shuffle=False)` in both; then the trained fastlstm model is
saved and loaded back by Keras 3, by fastlstm itself and (as ONNX) by onnxruntime, and the Keras-trained model
(saved by Keras) is loaded by fastlstm.

Layers around the recurrent ones ("arch" in spec.json): pooled (GlobalMax/GlobalAveragePooling1D over masked
sequences, Flatten), conv (Conv1D causal/same/valid with strides or dilation, Max/AveragePooling1D, before,
between or after the LSTM/GRU layers), seq2seq (RepeatVector between an encoder and a decoder), norm
(Layer/BatchNormalization before, between or after), reshape (ZeroPadding1D, Cropping1D, UpSampling1D, Reshape,
Permute, Flatten); and kind "branches": two recurrent branches (one may go through Conv1D, which drops the mask)
merged by Add/Subtract/Multiply/Average/Maximum/Minimum/Concatenate. Token cases with "project" force fastlstm's
project-each-distinct-token path (Embedding -> LSTM/GRU/Bidirectional, recurrent.PROJECT_* thresholds) when the
Embedding's only reader is the recurrent layer; fastlstm.json records the path taken ("token_path").

    python tools/fuzz_training.py run --n 90 --seed 0        # all stages, any python; prints a summary
    python tools/fuzz_training.py run --n 20 --seed 7 --only c003,c011   # rerun some cases

Stages (each a process, exchanging files under --work, default /tmp/fuzz_train/<seed>/):
    gen       (any python)              spec.json + data.npz per case
    keras     (~/kvenv/bin/python)      build in Keras, perturb, save model.keras, fit in float32 (saved as
                                        k_trained.keras) and float64
    fastlstm  (/work/main/.venv)        load model.keras (or build natively + set_weights), fit, compare; load
                                        k_trained.keras; save fl.keras / fl.weights.h5, reload in fastlstm,
                                        export_onnx + onnxruntime
    kcheck    (~/kvenv/bin/python)      keras.saving.load_model(fl.keras), load_weights(fl.weights.h5) into the
                                        Keras-built model and into keras.models.model_from_json(fl to_json()):
                                        get_weights() and predict must match fastlstm's
A stage run directly re-executes itself under its venv's python. Results: <work>/<case>/fastlstm.json
("problems" lists every mismatch), and the summary that `run` / `summary` print.

Left out on purpose, because Keras 3.15 on the TF backend does something no dense implementation should copy:
repeated token ids with Adam/RMSprop or gradient clipping (TF treats the Embedding gradient as IndexedSlices,
squares / clips / takes norms occurrence by occurrence; this includes the padding id 0 when a layer that ignores
the mask reads the padded steps: Conv1D, pooling, reshaping, LayerNormalization over the steps axis); (n,) sample
weights against per-step losses (Keras
broadcasts them along time, or fails); partial batches in two-output models (Keras logs each output's loss as a
plain mean over batches, the total loss weighted by batch size); class_weight together with sample_weight
(Keras refuses; fastlstm multiplies them).

Tolerance (float32): an element passes when |fastlstm - keras32| <= 1e-5 + 1e-4 |keras32| + 10 |keras64 - keras32|.
The first two terms are the repo's training-fixture tolerance (tests/data/train/README.md); the last one is the
float32 noise of THIS trajectory, measured by training the same model in float64 in Keras: Adam/RMSprop divide by
sqrt(v) + eps, so gradient entries near eps turn float32 rounding into visible weight differences that an exact
implementation cannot remove. A real bug (wrong rule, wrong gradient) shows up orders of magnitude above that.
Predictions of a saved model (same weights in both): 1e-5 + 1e-4 |y|.
"""
import argparse
import json
import os
import subprocess
import sys
import time
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
KERAS_PY = os.path.expanduser("~/kvenv/bin/python")
FAST_PY = os.path.join(REPO, ".venv", "bin", "python")
ATOL, RTOL, NOISE_FACTOR = 1e-5, 1e-4, 10.0
SAVE_ATOL, SAVE_RTOL = 1e-5, 1e-4


# ============================================================================================== specs and data
def make_opt(rng):
    r = lambda p: bool(rng.random() < p)  # noqa: E731
    cls = str(rng.choice(["SGD", "Adam", "RMSprop"]))
    if cls == "SGD":
        cfg = {"learning_rate": float(rng.choice([0.01, 0.05, 0.1, 0.3]))}
        mom = float(rng.choice([0.0, 0.5, 0.9]))
        if mom:
            cfg.update(momentum=mom, nesterov=r(0.5))
    elif cls == "Adam":
        cfg = {"learning_rate": float(rng.choice([1e-3, 3e-3, 0.01]))}
        if r(0.3):
            cfg.update(beta_1=0.8, beta_2=0.99)
        if r(0.35):
            cfg["amsgrad"] = True
        if r(0.2):
            cfg["epsilon"] = 1e-5
    else:
        cfg = {"learning_rate": float(rng.choice([1e-3, 3e-3, 0.01])), "rho": float(rng.choice([0.9, 0.8]))}
        if r(0.4):
            cfg["momentum"] = 0.5
        if r(0.4):
            cfg["centered"] = True
    clip = rng.choice(["none", "none", "clipnorm", "clipvalue", "global_clipnorm"])
    if clip == "clipnorm":
        cfg["clipnorm"] = float(rng.choice([0.05, 0.2, 1.0]))
    elif clip == "clipvalue":
        cfg["clipvalue"] = float(rng.choice([0.005, 0.02, 0.1]))
    elif clip == "global_clipnorm":
        cfg["global_clipnorm"] = float(rng.choice([0.1, 0.3, 1.0]))
    if r(0.1):
        cfg["weight_decay"] = 0.01
    return {"class": cls, "config": cfg}


def make_rnn(rng, return_sequences, allow_bidi=True):
    r = lambda p: bool(rng.random() < p)  # noqa: E731
    spec = {"cls": str(rng.choice(["LSTM", "GRU"])), "units": int(rng.integers(3, 8)),
            "activation": "tanh" if r(0.7) else str(rng.choice(["relu", "sigmoid", "softsign", "linear", "elu"])),
            "recurrent_activation": "sigmoid" if r(0.7) else str(rng.choice(["hard_sigmoid", "tanh"])),
            "use_bias": r(0.8), "go_backwards": False, "return_sequences": bool(return_sequences),
            "bidirectional": None}
    if spec["cls"] == "GRU":
        spec["reset_after"] = r(0.5)
    if allow_bidi and r(0.3):
        spec["bidirectional"] = str(rng.choice(["concat", "sum", "mul", "ave"]))
    elif r(0.25):
        spec["go_backwards"] = True
    return spec


def make_loss(rng):
    name = str(rng.choice(["binary_crossentropy", "categorical_crossentropy", "sparse_categorical_crossentropy",
                           "mean_squared_error", "mean_absolute_error"]))
    if name.startswith(("binary", "categorical", "sparse")):
        logits = bool(rng.random() < 0.4)
        act = "linear" if logits else ("sigmoid" if name.startswith("binary") else "softmax")
        units = int(rng.choice([1, 3])) if name.startswith("binary") else int(rng.integers(3, 6))
        metrics = ["accuracy"] if rng.random() < 0.5 else []
    else:
        logits, act, units = False, str(rng.choice(["linear", "linear", "tanh"])), int(rng.choice([1, 2]))
        metrics = [str(rng.choice(["mae", "mse"]))] if rng.random() < 0.5 else []
    return {"name": name, "from_logits": logits, "activation": act, "units": units, "metrics": metrics,
            "as_string": bool(not logits and rng.random() < 0.3)}


# ---- layers around the recurrent ones: Conv1D + pooling, normalization, reshaping, merges (plain specs
# {"cls": <keras.layers name>, "cfg": {...}}, the same arguments in Keras and fastlstm)
def _win_len(L, window, stride, padding):
    """Output length of a Conv1D / pooling window of `window` steps (Keras rules)."""
    if padding == "valid":
        return (L - window) // stride + 1 if L >= window else 0
    return -(-L // stride)                      # same, causal


def make_conv_block(rng, T, F, allow_shrink=True):
    """1-2 Conv1D (causal / same / valid, strides, dilation), optionally a pooling layer: (layers, T, F)."""
    r = lambda p: bool(rng.random() < p)  # noqa: E731
    out = []
    for _ in range(2 if r(0.3) else 1):
        padding = str(rng.choice(["causal", "same", "valid"])) if allow_shrink else str(rng.choice(["causal",
                                                                                                     "same"]))
        k = int(rng.integers(1, 5))
        strides = int(rng.choice([1, 1, 2])) if allow_shrink else 1
        dil = int(rng.choice([1, 1, 2])) if strides == 1 and k > 1 else 1
        window = dil * (k - 1) + 1
        newT = _win_len(T, window, strides, padding)
        if newT < 2:
            continue
        cfg = {"filters": int(rng.integers(2, 7)), "kernel_size": k, "strides": strides, "padding": padding,
               "dilation_rate": dil, "activation": str(rng.choice(["linear", "relu", "tanh", "sigmoid"])),
               "use_bias": r(0.8)}
        out.append({"cls": "Conv1D", "cfg": cfg})
        T, F = newT, cfg["filters"]
    if allow_shrink and r(0.6):
        pool = int(rng.integers(2, 4))
        strides = rng.choice([None, 1, 2])
        padding = str(rng.choice(["valid", "same"]))
        s_ = pool if strides is None else int(strides)
        newT = _win_len(T, pool, s_, padding)
        if newT >= 2:
            cfg = {"pool_size": pool, "padding": padding}
            if strides is not None:
                cfg["strides"] = int(strides)
            out.append({"cls": str(rng.choice(["MaxPooling1D", "AveragePooling1D"])), "cfg": cfg})
            T = newT
    return out, T, F


def make_norm(rng, seq):
    """A LayerNormalization or BatchNormalization for a (batch, steps, f) (seq) or (batch, f) input."""
    r = lambda p: bool(rng.random() < p)  # noqa: E731
    if r(0.5):
        cfg = {"epsilon": float(rng.choice([1e-3, 1e-2])), "center": r(0.8), "scale": r(0.8)}
        if seq and r(0.3):
            cfg["axis"] = [1, 2]
        if r(0.2):
            cfg["rms_scaling"] = True
        return {"cls": "LayerNormalization", "cfg": cfg}
    cfg = {"momentum": float(rng.choice([0.8, 0.9, 0.99])), "epsilon": float(rng.choice([1e-3, 1e-2])),
           "center": r(0.8), "scale": r(0.8)}
    if seq and r(0.2):
        cfg["axis"] = 1
    return {"cls": "BatchNormalization", "cfg": cfg}


def make_pre_reshape(rng, T, F):
    """A reshaping layer between the input (Embedding / Masking) and the first recurrent layer: (layers, T, F)."""
    op = str(rng.choice(["ZeroPadding1D", "Cropping1D", "UpSampling1D", "Reshape"]))
    if op == "ZeroPadding1D":
        pad = [int(rng.integers(0, 3)), int(rng.integers(1, 3))]
        return [{"cls": op, "cfg": {"padding": pad}}], T + sum(pad), F
    if op == "Cropping1D" and T >= 5:
        crop = [int(rng.integers(0, 2)), int(rng.integers(1, 3))]
        return [{"cls": op, "cfg": {"cropping": crop}}], T - sum(crop), F
    if op == "Reshape" and T % 2 == 0:
        return [{"cls": op, "cfg": {"target_shape": [T // 2, 2 * F]}}], T // 2, 2 * F
    return [{"cls": "UpSampling1D", "cfg": {"size": 2}}], 2 * T, F


def rnn_width(rs):
    return rs["units"] * (2 if rs["bidirectional"] == "concat" else 1)


def make_layout(rng, kind, arch, head, T, F):
    """The layers of a model around its recurrent ones: {"rnns", "pre", "mid", "post", "T_out", "branch"}.
    pre: between the input layer and rnns[0]; mid: between rnns[0] and rnns[1]; post: after the last recurrent
    layer (after the merge for branches); T_out: the steps of a per-step head's output."""
    r = lambda p: bool(rng.random() < p)  # noqa: E731
    per_step = head != "dense"
    pre, mid, post, branch = [], [], [], None
    where = {"conv": str(rng.choice(["pre", "pre", "mid", "post"])), "norm": str(rng.choice(["pre", "mid", "post"])),
             "reshape": str(rng.choice(["pre", "pre", "mid", "post"]))}.get(arch)
    n_rnn = 2 if (r(0.4) or where == "mid" or arch == "seq2seq") else 1
    if kind == "branches":
        n_rnn = 2 if r(0.5) else 1            # rnns[1]: on top of the merge
    # does the last recurrent layer return sequences?
    if arch == "pooled" or (where == "post" and arch in ("conv", "reshape")):
        seq_last = True
    elif where == "post" and arch == "norm" and not per_step:
        seq_last = r(0.5)
    else:
        seq_last = per_step
    if where == "pre":
        if arch == "conv":
            pre, T, F = make_conv_block(rng, T, F)
        elif arch == "norm":
            pre = [make_norm(rng, True)]
            if r(0.4):
                block, T, F = make_conv_block(rng, T, F)
                pre += block
        else:
            pre, T, F = make_pre_reshape(rng, T, F)
    elif kind == "branches" and r(0.3):
        pre = [make_norm(rng, True)]
    rnns = [make_rnn(rng, return_sequences=(n_rnn == 2 and arch != "seq2seq") or (n_rnn == 1 and seq_last))]
    if kind == "branches":
        seq_merge = rnns[0]["return_sequences"] or n_rnn == 2 or r(0.5)
        rnns[0]["return_sequences"] = seq_merge
        b = make_rnn(rng, return_sequences=seq_merge)
        b["units"], b["bidirectional"] = rnns[0]["units"], rnns[0]["bidirectional"]
        b["go_backwards"] = b["go_backwards"] and not b["bidirectional"]
        b_layers = []
        if r(0.4):                  # an unmasked branch: Conv1D drops the mask, keeps the length
            b_layers, _, _ = make_conv_block(rng, T, F, allow_shrink=False)
        merge = str(rng.choice(["Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate"]))
        branch = {"merge": merge, "rnn": b, "layers": b_layers}
        F = rnn_width(rnns[0]) * (2 if merge == "Concatenate" else 1)
        if n_rnn == 2:
            rnns.append(make_rnn(rng, return_sequences=seq_last))
            F = rnn_width(rnns[1])
        elif seq_merge and not seq_last:        # a sequence out of the merge and a dense head: pool it
            post.append({"cls": str(rng.choice(["GlobalMaxPooling1D", "GlobalAveragePooling1D", "Flatten"])),
                         "cfg": {}})
        return {"rnns": rnns, "pre": pre, "mid": mid, "post": post, "T_out": T, "branch": branch}
    F = rnn_width(rnns[0])
    if arch == "seq2seq":
        if r(0.3):
            mid.append(make_norm(rng, False))
        T = int(rng.integers(3, 7))
        mid.append({"cls": "RepeatVector", "cfg": {"n": T}})
    elif where == "mid":
        if arch == "conv":
            mid, T, F = make_conv_block(rng, T, F)
        elif arch == "norm":
            mid = [make_norm(rng, True)]
        elif T % 2 == 0 and r(0.4):
            mid = [{"cls": "Reshape", "cfg": {"target_shape": [T // 2, 2 * F]}}]
            T, F = T // 2, 2 * F
        else:
            mid = [{"cls": "Permute", "cfg": {"dims": [2, 1]}}]
            T, F = F, T
    if n_rnn == 2:
        rnns.append(make_rnn(rng, return_sequences=seq_last))
    last = rnns[-1]
    F = rnn_width(last)
    if arch == "pooled":
        post.append({"cls": str(rng.choice(["GlobalMaxPooling1D", "GlobalAveragePooling1D",
                                            "GlobalAveragePooling1D", "Flatten"])), "cfg": {}})
        if r(0.3):
            post.append(make_norm(rng, False))
    elif where == "post":
        if arch == "conv":
            post, T, F = make_conv_block(rng, T, F)
            if not per_step:
                post.append({"cls": str(rng.choice(["GlobalMaxPooling1D", "GlobalAveragePooling1D", "Flatten"])),
                             "cfg": {}})
        elif arch == "norm":
            post = [make_norm(rng, last["return_sequences"])]
            if last["return_sequences"] and not per_step:
                post.append({"cls": str(rng.choice(["GlobalMaxPooling1D", "GlobalAveragePooling1D", "Flatten"])),
                             "cfg": {}})
        elif per_step:
            if r(0.5):
                post = [{"cls": "UpSampling1D", "cfg": {"size": 2}}]
                T *= 2
            else:
                post = [{"cls": "Cropping1D", "cfg": {"cropping": [1, 0] if r(0.5) else [0, 1]}}]
                T -= 1
        else:
            post = [{"cls": "Flatten", "cfg": {}}]
    return {"rnns": rnns, "pre": pre, "mid": mid, "post": post, "T_out": T, "branch": branch}


def make_spec(rng, name):
    r = lambda p: bool(rng.random() < p)  # noqa: E731
    kind = str(rng.choice(["seq"] * 6 + ["two_inputs"] * 2 + ["two_outputs"] * 2 + ["branches"] * 3))
    # what surrounds the recurrent layers (plain: nothing); branches: two recurrent branches merged
    arch = "plain" if kind == "branches" else str(rng.choice(["plain"] * 2 + ["pooled"] * 2 + ["conv"] * 3 +
                                                            ["seq2seq", "norm", "norm", "reshape", "reshape"]))
    T = int(rng.integers(6, 13)) if arch == "conv" else int(rng.integers(4, 9))
    B, nb = int(rng.integers(3, 6)), int(rng.integers(2, 4))
    # Keras's TF backend logs per-output losses as the plain mean over batches (the batch-size weight is None
    # inside tf.function), the total loss weighted by batch size: two-output cases use full batches only
    partial = r(0.4) and kind != "two_outputs"
    n = B * nb - (int(rng.integers(1, B)) if partial else 0)
    opt = make_opt(rng)
    sgd = opt["class"] == "SGD"      # a dense Adam/RMSprop cannot match TF's sparse Embedding update on repeats
    if r(0.6):
        mask_zero = r(0.5)
        pad = str(rng.choice(["pre", "post", "mid"])) if mask_zero else ("pre" if sgd and r(0.3) else "none")
        distinct = not (sgd and r(0.7))
        vocab = (B * T + int(rng.integers(3, 10)) + 1) if distinct else int(rng.integers(8, 20))
        inp = {"type": "tokens", "vocab": vocab, "dim": int(rng.integers(3, 8)), "mask_zero": mask_zero, "pad": pad,
               "distinct": distinct}
    else:
        masking = r(0.5)
        inp = {"type": "float", "features": int(rng.integers(2, 5)),
               "mask_value": float(rng.choice([0.0, -1.0])) if masking else None,
               "pad": str(rng.choice(["pre", "post", "mid"])) if masking else "none"}
    if inp["type"] == "tokens" and (not inp["distinct"] or (inp["pad"] != "none" and not inp["mask_zero"])):
        # ids repeat in a batch: TF clips the IndexedSlices of the Embedding gradient occurrence by occurrence
        # (norms and clipvalue), which no dense gradient reproduces
        for key in ("clipnorm", "clipvalue", "global_clipnorm"):
            opt["config"].pop(key, None)
    head = "dense" if kind not in ("seq", "branches") else str(rng.choice(["dense", "dense", "td", "dense3d"]))
    if arch == "pooled":
        head = "dense"
    layers = make_layout(rng, kind, arch, head, T, inp["dim"] if inp["type"] == "tokens" else inp["features"])
    loss = make_loss(rng)
    spec = {"name": name, "kind": kind, "arch": arch, "T": T, "batch_size": B, "n": n,
            "epochs": int(rng.integers(1, 3)), "input": inp, "dropout0": r(0.3), "head": head, "loss": loss,
            "opt": opt, "sample_weight": r(0.35), "validation": r(0.35), "native": r(0.4),
            "seed": int(rng.integers(1 << 30))}
    spec.update(layers)
    # a layer that drops the mask (Conv1D, pooling, reshaping) or a LayerNormalization over the steps axis reading
    # the Embedding's padded steps gives token 0 one gradient row per occurrence: repeated ids, which only SGD
    # without clipping takes as a dense sum does
    reads_padding = inp["type"] == "tokens" and inp["pad"] != "none" and (
        any(it["cls"] != "BatchNormalization" and not (it["cls"] == "LayerNormalization"
                                                        and it["cfg"].get("axis", -1) == -1) for it in spec["pre"])
        or (spec["branch"] is not None and spec["branch"]["layers"]))
    if reads_padding:
        if sgd:
            for key in ("clipnorm", "clipvalue", "global_clipnorm"):
                opt["config"].pop(key, None)
        else:
            inp["pad"] = "none"
    # Embedding -> LSTM/GRU: force fastlstm's project-each-distinct-token path for about half the token cases
    # (the thresholds keep small models on the gathered path); it runs when the Embedding's only reader is the
    # recurrent layer
    spec["project"] = inp["type"] == "tokens" and r(0.5)
    spec["validation_split"] = 0.25 if (not spec["validation"] and kind != "two_outputs" and r(0.2)) else 0.0
    if kind != "two_outputs" and head == "dense" and loss["name"].endswith("crossentropy") \
            and not spec["sample_weight"] and r(0.3):         # Keras refuses class_weight with sample_weight
        k = max(loss["units"], 2)
        spec["class_weight"] = {str(c): float(rng.choice([0.5, 1.0, 2.0, 3.0])) for c in range(k)}
    if r(0.3):
        wm = ["accuracy"] if loss["name"].endswith("crossentropy") else [str(rng.choice(["mae", "mse"]))]
        spec["weighted_metrics"] = wm if kind != "two_outputs" else [wm, ["mae"]]
    spec["refit"] = spec["epochs"] == 2 and r(0.3)     # two fit(epochs=1) calls: the optimizer state carries on
    if kind == "two_inputs":
        spec["aux"] = {"T": int(rng.integers(3, 7)), "features": int(rng.integers(2, 5)),
                       "rnn": make_rnn(rng, False, allow_bidi=False), "dense": r(0.5)}
    if kind == "two_outputs":
        spec["loss_b"] = {"name": str(rng.choice(["mean_squared_error", "mean_absolute_error"])),
                          "units": int(rng.choice([1, 2])), "metrics": ["mae"] if r(0.4) else []}
        spec["loss_weights"] = [float(rng.choice([0.3, 1.0, 2.0])), float(rng.choice([0.5, 1.0, 1.5]))]
        spec["loss_as_dict"] = r(0.5)
    return spec


def _lengths(rng, n, T, pad):
    if pad == "none":
        return np.full(n, T)
    return rng.integers(max(1, T // 3), T + 1, size=n)


def _mask_rows(rng, n, T, pad):
    """(n, T) bool: True = valid step."""
    lens = _lengths(rng, n, T, pad)
    m = np.zeros((n, T), bool)
    for i, ln in enumerate(lens):
        if pad == "pre":
            m[i, T - ln:] = True
        elif pad == "post":
            m[i, :ln] = True
        elif pad == "mid":
            m[i] = True
            if ln < T:
                s = int(rng.integers(1, T - (T - ln) + 1)) if T - ln < T else 0
                m[i, s:s + (T - ln)] = False
                if not m[i].any():
                    m[i, 0] = True
        else:
            m[i] = True
    return m


def make_inputs(rng, spec, n, B, pad=None, distinct=None):
    inp, T = spec["input"], spec["T"]
    pad = inp["pad"] if pad is None else pad
    valid = _mask_rows(rng, n, T, pad)
    if inp["type"] == "tokens":
        V = inp["vocab"]
        distinct = inp["distinct"] if distinct is None else distinct
        x = np.zeros((n, T), np.int32)
        for s in range(0, n, B):
            rows = min(B, n - s)
            ids = rng.permutation(np.arange(1, V))[: rows * T] if distinct else rng.integers(1, V, size=rows * T)
            x[s:s + rows] = ids.reshape(rows, T)
        x[~valid] = 0
    else:
        x = rng.normal(size=(n, T, inp["features"])).astype(np.float32)
        if inp["mask_value"] is not None:
            x[~valid] = inp["mask_value"]
    xs = [x]
    if spec["kind"] == "two_inputs":
        a = spec["aux"]
        xs.append(rng.normal(size=(n, a["T"], a["features"])).astype(np.float32))
    return xs


def _labels(rng, loss, n, T, per_step):
    shape = (n, T) if per_step else (n,)
    name, k = loss["name"], loss["units"]
    if name == "binary_crossentropy":
        y = rng.integers(0, 2, size=shape + (k,)).astype(np.float32)
        return y[..., 0] if (k == 1 and not per_step and rng.random() < 0.25) else y
    if name == "categorical_crossentropy":
        return np.eye(k, dtype=np.float32)[rng.integers(0, k, size=shape)]
    if name == "sparse_categorical_crossentropy":
        y = rng.integers(0, k, size=shape).astype(np.int32)
        return y[..., None] if (not per_step and rng.random() < 0.25) else y
    return rng.normal(size=shape + (k,)).astype(np.float32)


def make_targets(rng, spec, n):
    per_step = spec["head"] in ("td", "dense3d")
    ys = [_labels(rng, spec["loss"], n, spec.get("T_out", spec["T"]), per_step)]
    if spec["kind"] == "two_outputs":
        lb = dict(spec["loss_b"])
        ys.append(_labels(rng, lb, n, spec["T"], False))
    return ys


def gen(work, n_cases, seed, only):
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n_cases):
        name = f"c{i:03d}"
        spec = make_spec(rng, name)
        if only and name not in only:
            continue
        d = os.path.join(work, name)
        os.makedirs(d, exist_ok=True)
        for stale in os.listdir(d):          # results of an earlier run in the same folder
            os.remove(os.path.join(d, stale))
        drng = np.random.default_rng(spec["seed"])
        B, n = spec["batch_size"], spec["n"]
        xs, ys = make_inputs(drng, spec, n, B), make_targets(drng, spec, n)
        arrays = {f"x{k}": a for k, a in enumerate(xs)}
        arrays.update({f"y{k}": a for k, a in enumerate(ys)})
        per_step = spec["head"] in ("td", "dense3d")      # Keras broadcasts (n,) weights against (n, T) losses
        if spec["sample_weight"]:                          # from the right: give per-step outputs (n, T) weights
            arrays["sw"] = drng.uniform(0.2, 2.0, size=(n, spec.get("T_out", spec["T"])) if per_step
                                        else n).astype(np.float32)
        if spec["validation"]:
            nv = 2 * B if spec["kind"] == "two_outputs" else B + 1
            arrays.update({f"vx{k}": a for k, a in enumerate(make_inputs(drng, spec, nv, B))})
            arrays.update({f"vy{k}": a for k, a in enumerate(make_targets(drng, spec, nv))})
        # predict data: post-padded (the ONNX export's masking contract), one row unpadded
        pp = make_inputs(drng, spec, 5, 5, pad="post" if spec["input"]["pad"] != "none" else "none", distinct=False)
        arrays.update({f"px{k}": a for k, a in enumerate(pp)})
        np.savez(os.path.join(d, "data.npz"), **arrays)
        with open(os.path.join(d, "spec.json"), "w") as f:
            json.dump(spec, f, indent=1)
        names.append(name)
    return names


def load_data(d):
    z = np.load(os.path.join(d, "data.npz"))

    def group(prefix):
        out, k = [], 0
        while f"{prefix}{k}" in z.files:
            out.append(z[f"{prefix}{k}"])
            k += 1
        return out

    return {"x": group("x"), "y": group("y"), "sw": z["sw"] if "sw" in z.files else None,
            "vx": group("vx"), "vy": group("vy"), "px": group("px")}


def one_or_list(a):
    return a[0] if len(a) == 1 else list(a)


# ============================================================================================== model builder
def build_model(spec, K):
    """The spec's model with framework K (the keras module, or fastlstm): both take Keras 3 arguments."""
    L = K.layers
    inp, T = spec["input"], spec["T"]
    if inp["type"] == "tokens":
        x_in = K.Input(shape=(T,), dtype="int32", name="tok")
        stack = [L.Embedding(inp["vocab"], inp["dim"], mask_zero=inp["mask_zero"], name="emb")]
    else:
        x_in = K.Input(shape=(T, inp["features"]), dtype="float32", name="seq")
        stack = [L.Masking(mask_value=inp["mask_value"], name="masking")] if inp["mask_value"] is not None else []

    def rnn_layer(rs, name):
        kw = dict(units=rs["units"], activation=rs["activation"], recurrent_activation=rs["recurrent_activation"],
                  use_bias=rs["use_bias"], go_backwards=rs["go_backwards"], return_sequences=rs["return_sequences"])
        if rs["cls"] == "GRU":
            layer = L.GRU(reset_after=rs["reset_after"], name=name, **kw)
        else:
            layer = L.LSTM(name=name, **kw)
        if rs["bidirectional"]:
            layer = L.Bidirectional(layer, merge_mode=rs["bidirectional"], name="bi_" + name)
        return layer

    def plain(items, prefix):
        out = []
        for k, it in enumerate(items):
            cfg = {key: (tuple(v) if isinstance(v, list) else v) for key, v in it["cfg"].items()}
            out.append(getattr(L, it["cls"])(name=f"{prefix}{k}", **cfg))
        return out

    stack += plain(spec.get("pre", []), "pre")
    lo = spec["loss"]

    def head_layer():
        if spec["head"] == "td":
            return L.TimeDistributed(L.Dense(lo["units"], activation=lo["activation"], name="head_dense"),
                                     name="head")
        return L.Dense(lo["units"], activation=lo["activation"], name="head")

    if spec["kind"] == "branches":
        br = spec["branch"]
        h = x_in
        for layer in stack:
            h = layer(h)
        a = rnn_layer(spec["rnns"][0], "rnn0")(h)
        b = h
        for layer in plain(br["layers"], "branch"):
            b = layer(b)
        b = rnn_layer(br["rnn"], "rnn_b")(b)
        z = getattr(L, br["merge"])(name="merge")([a, b])
        for k, rs in enumerate(spec["rnns"][1:], start=1):
            z = rnn_layer(rs, f"rnn{k}")(z)
        for layer in plain(spec.get("post", []), "post"):
            z = layer(z)
        return K.Model(x_in, head_layer()(z), name=spec["name"])
    for k, rs in enumerate(spec["rnns"]):
        stack.append(rnn_layer(rs, f"rnn{k}"))
        if k == 0 and spec["dropout0"]:
            stack.append(L.Dropout(0.0, name="drop"))
        if k == 0:
            stack += plain(spec.get("mid", []), "mid")
    stack += plain(spec.get("post", []), "post")
    if spec["kind"] == "seq":
        stack.append(head_layer())
        return K.Sequential([x_in] + stack, name=spec["name"])
    h = x_in
    for layer in stack:
        h = layer(h)
    if spec["kind"] == "two_outputs":
        a = L.Dense(lo["units"], activation=lo["activation"], name="out_a")(h)
        b = L.Dense(spec["loss_b"]["units"], name="out_b")(h)
        return K.Model(x_in, [a, b], name=spec["name"])
    aux = spec["aux"]
    a_in = K.Input(shape=(aux["T"], aux["features"]), dtype="float32", name="aux")
    a = rnn_layer(aux["rnn"], "aux_rnn")(a_in)
    if aux["dense"]:
        a = L.Dense(4, activation="tanh", name="aux_dense")(a)
    z = L.Concatenate(name="cat")([h, a])
    out = L.Dense(lo["units"], activation=lo["activation"], name="head")(z)
    return K.Model([x_in, a_in], out, name=spec["name"])


def loss_objects(spec, K, strings_ok=False):
    def one(name, logits, as_string):
        if strings_ok and as_string:
            return name
        cls = {"binary_crossentropy": K.losses.BinaryCrossentropy,
               "categorical_crossentropy": K.losses.CategoricalCrossentropy,
               "sparse_categorical_crossentropy": K.losses.SparseCategoricalCrossentropy,
               "mean_squared_error": K.losses.MeanSquaredError,
               "mean_absolute_error": K.losses.MeanAbsoluteError}[name]
        return cls(from_logits=True) if logits else cls()

    lo = spec["loss"]
    a = one(lo["name"], lo["from_logits"], lo["as_string"])
    if spec["kind"] != "two_outputs":
        return a, lo["metrics"] or None, None
    b = one(spec["loss_b"]["name"], False, True)
    if spec["loss_as_dict"]:
        return ({"out_a": a, "out_b": b}, {"out_a": lo["metrics"], "out_b": spec["loss_b"]["metrics"]},
                {"out_a": spec["loss_weights"][0], "out_b": spec["loss_weights"][1]})
    return [a, b], [lo["metrics"], spec["loss_b"]["metrics"]], spec["loss_weights"]


def optimizer_object(spec, K):
    return getattr(K.optimizers, spec["opt"]["class"])(**spec["opt"]["config"])


def fit_args(spec, data, cast=None):
    c = cast or (lambda a: a)
    kw = dict(batch_size=spec["batch_size"], epochs=spec["epochs"], shuffle=False, verbose=0)
    if data["sw"] is not None:
        kw["sample_weight"] = c(data["sw"])
    if spec.get("class_weight"):
        kw["class_weight"] = {int(c): w for c, w in spec["class_weight"].items()}
    if spec.get("validation_split"):
        kw["validation_split"] = spec["validation_split"]
    if data["vx"]:
        kw["validation_data"] = (one_or_list([c(a) for a in data["vx"]]), one_or_list([c(a) for a in data["vy"]]))
    return one_or_list([c(a) for a in data["x"]]), one_or_list([c(a) for a in data["y"]]), kw


def perturb(weights, paths, rng):
    out = []
    for w, p in zip(weights, paths):
        if p.endswith(("gamma", "moving_variance")):           # a positive variance, gamma around 1
            out.append(rng.uniform(0.6, 1.4, size=w.shape))
        elif p.endswith(("beta", "moving_mean")):
            out.append(rng.uniform(-0.3, 0.3, size=w.shape))
        elif w.ndim == 3:                                       # Conv1D kernel (k, in, out)
            a = np.sqrt(6.0 / (w.shape[0] * (w.shape[1] + w.shape[2])))
            out.append(rng.uniform(-a, a, size=w.shape))
        elif p.endswith("bias"):
            out.append(rng.uniform(-0.2, 0.2, size=w.shape))
        elif p.endswith("embeddings"):
            out.append(rng.uniform(-0.5, 0.5, size=w.shape))
        else:
            a = np.sqrt(6.0 / (w.shape[0] + w.shape[-1]))
            out.append(rng.uniform(-a, a, size=w.shape))
    return [o.astype(np.float32) for o in out]


# ============================================================================================== keras half
def _keras_env():
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    import keras
    tf.get_logger().setLevel("ERROR")              # retracing warnings: every case is a new model
    tf.config.experimental.enable_op_determinism()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    return keras, tf


def _hist(h):
    return {k: [float(v) for v in vs] for k, vs in h.history.items()}


def _keras_train(keras, spec, data, w0, dtype, save_to=None):
    keras.config.set_floatx(dtype)
    try:
        keras.backend.clear_session()
        model = build_model(spec, keras)
        model.set_weights([w.astype(dtype) for w in w0])
        loss, metrics, lw = loss_objects(spec, keras)
        model.compile(optimizer=optimizer_object(spec, keras), loss=loss, metrics=metrics, loss_weights=lw,
                      weighted_metrics=spec.get("weighted_metrics"), jit_compile=False)
        cast = (lambda a: a.astype(dtype) if a.dtype.kind == "f" else a)
        x, y, kw = fit_args(spec, data, cast)
        if spec.get("refit"):
            model.fit(x, y, **dict(kw, epochs=1))
            kw["epochs"] = 1
        hist = model.fit(x, y, **kw)
        try:
            ev = model.evaluate(x, y, batch_size=spec["batch_size"], sample_weight=kw.get("sample_weight"),
                                return_dict=True, verbose=0)
        except ValueError:       # Keras 3.15 sometimes fails to retrace evaluate after a validated fit
            ev = None
        pred = model.predict(one_or_list([cast(a) for a in data["px"]]), verbose=0)
        pred = pred if isinstance(pred, (list, tuple)) else [pred]
        if save_to:                       # the trained Keras model, for fastlstm.load (moving statistics and all)
            model.save(save_to)
        ev = None if ev is None else {k: float(v) for k, v in ev.items()}
        return model.get_weights(), _hist(hist), ev, [np.asarray(p) for p in pred]
    finally:
        keras.config.set_floatx("float32")


def keras_half(work, names):
    keras, tf = _keras_env()
    for name in names:
        d = os.path.join(work, name)
        spec = json.load(open(os.path.join(d, "spec.json")))
        out = {"name": name}
        t0 = time.time()
        try:
            data = load_data(d)
            keras.backend.clear_session()
            keras.utils.set_random_seed(spec["seed"] % (1 << 31))
            model = build_model(spec, keras)
            w0 = perturb(model.get_weights(), [v.path for v in model.weights], np.random.default_rng(spec["seed"]))
            model.set_weights(w0)
            model.save(os.path.join(d, "model.keras"))
            np.savez(os.path.join(d, "w0.npz"), *w0)
            out["weight_paths"] = [v.path for v in model.weights]
            w32, h32, e32, p32 = _keras_train(keras, spec, data, w0, "float32",
                                              save_to=os.path.join(d, "k_trained.keras"))
            w64, h64, e64, p64 = _keras_train(keras, spec, data, w0, "float64")
            np.savez(os.path.join(d, "k32.npz"), **{f"w{k}": w for k, w in enumerate(w32)},
                     **{f"p{k}": p for k, p in enumerate(p32)})
            np.savez(os.path.join(d, "k64.npz"), **{f"w{k}": w for k, w in enumerate(w64)},
                     **{f"p{k}": p for k, p in enumerate(p64)})
            out.update(status="ok", hist32=h32, hist64=h64, eval32=e32, eval64=e64)
        except Exception as e:  # noqa: BLE001 - record and go on
            out.update(status="keras_error", error=f"{type(e).__name__}: {e}"[:2000],
                       traceback=traceback.format_exc()[-3000:])
        out["seconds"] = round(time.time() - t0, 1)
        with open(os.path.join(d, "keras.json"), "w") as f:
            json.dump(out, f, indent=1)
        print(f"keras {name}: {out['status']} {out['seconds']}s", flush=True)


# ============================================================================================== fastlstm half
def _excess(actual, ref32, ref64):
    """max over elements of |a - k32| - tolerance (<= 0 passes), and the raw max |a - k32|."""
    a, k, k64 = (np.asarray(v, np.float64) for v in (actual, ref32, ref64))
    diff = np.abs(a - k)
    tol = ATOL + RTOL * np.abs(k) + NOISE_FACTOR * np.abs(k64 - k)
    if diff.size == 0:
        return 0.0, 0.0
    return float(np.max(diff - tol)), float(np.max(diff))


def _close(a, b, atol=SAVE_ATOL, rtol=SAVE_RTOL):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return False, f"shape {a.shape} vs {b.shape}"
    d = np.abs(a - b)
    return bool(np.all(d <= atol + rtol * np.abs(b))), float(d.max()) if d.size else 0.0


def fastlstm_half(work, names):
    import fastlstm
    for name in names:
        d = os.path.join(work, name)
        spec = json.load(open(os.path.join(d, "spec.json")))
        kj = json.load(open(os.path.join(d, "keras.json")))
        res = {"name": name, "checks": {}, "problems": []}
        if kj["status"] != "ok":
            res["status"] = "skipped (keras: " + kj.get("error", "")[:200] + ")"
            json.dump(res, open(os.path.join(d, "fastlstm.json"), "w"), indent=1)
            print(f"fastlstm {name}: {res['status']}", flush=True)
            continue
        t0 = time.time()
        try:
            _fastlstm_case(fastlstm, d, spec, kj, res)
        except Exception as e:  # noqa: BLE001
            res["problems"].append(f"exception: {type(e).__name__}: {e}"[:1500])
            res["traceback"] = traceback.format_exc()[-4000:]
        res["status"] = "ok" if not res["problems"] else "FAIL"
        res["seconds"] = round(time.time() - t0, 1)
        with open(os.path.join(d, "fastlstm.json"), "w") as f:
            json.dump(res, f, indent=1)
        print(f"fastlstm {name}: {res['status']} {res['problems'][:3]}", flush=True)


_TOKEN_PATHS = {}          # ("train" | "predict", "projected" | "gathered") -> calls, for the current case


def _token_projection(on):
    """Force (on) or leave to the thresholds (off) fastlstm's Embedding -> LSTM/GRU projection of each distinct
    token, and count which path each recurrent layer fed by TokenRows took (_TOKEN_PATHS)."""
    from fastlstm.layers import recurrent
    if not hasattr(recurrent, "_fuzz_defaults"):
        recurrent._fuzz_defaults = (dict(recurrent.PROJECT_MAX_DISTINCT), recurrent.PROJECT_MIN_WORK_PER_VOCAB)
        original = recurrent.RNN._projected_input

        def counted(self, rows, z_out=None, training=False):
            out = original(self, rows, z_out=z_out, training=training)
            key = ("train" if training else "predict", "gathered" if out is None else "projected")
            _TOKEN_PATHS[key] = _TOKEN_PATHS.get(key, 0) + 1
            return out
        recurrent.RNN._projected_input = counted
    distinct, work = recurrent._fuzz_defaults
    recurrent.PROJECT_MAX_DISTINCT.update({k: 1.0 for k in distinct} if on else distinct)
    recurrent.PROJECT_MIN_WORK_PER_VOCAB = 0 if on else work
    _TOKEN_PATHS.clear()


def _fastlstm_case(fastlstm, d, spec, kj, res):
    _token_projection(spec.get("project", False))
    try:
        _fastlstm_case_body(fastlstm, d, spec, kj, res)
    finally:
        res["token_path"] = {f"{a}:{b}": n for (a, b), n in sorted(_TOKEN_PATHS.items())}


def _fastlstm_case_body(fastlstm, d, spec, kj, res):
    data = load_data(d)
    z0 = np.load(os.path.join(d, "w0.npz"))
    w0 = [z0[f"arr_{k}"] for k in range(len(z0.files))]
    k32, k64 = np.load(os.path.join(d, "k32.npz")), np.load(os.path.join(d, "k64.npz"))
    problems, checks = res["problems"], res["checks"]
    if spec["native"]:
        fastlstm.set_random_seed(0)
        model = build_model(spec, fastlstm)
        model.set_weights(w0)
    else:
        model = fastlstm.load(os.path.join(d, "model.keras"))
    got0 = model.get_weights()
    if [w.shape for w in got0] != [w.shape for w in w0] or any(not np.array_equal(a, b) for a, b in zip(got0, w0)):
        problems.append("initial weights differ from Keras get_weights() (order or values)")
        return
    loss, metrics, lw = loss_objects(spec, fastlstm, strings_ok=True)
    model.compile(optimizer=optimizer_object(spec, fastlstm), loss=loss, metrics=metrics, loss_weights=lw,
                  weighted_metrics=spec.get("weighted_metrics"))
    x, y, kw = fit_args(spec, data)
    if spec.get("refit"):
        model.fit(x, y, **dict(kw, epochs=1))
        kw["epochs"] = 1
    hist = model.fit(x, y, **kw).history
    # ---- weights after training
    worst = -np.inf
    for k, w in enumerate(model.get_weights()):
        ex, raw = _excess(w, k32[f"w{k}"], k64[f"w{k}"])
        checks[f"weight {kj['weight_paths'][k]}"] = {"excess": ex, "max_abs": raw}
        worst = max(worst, ex)
        if ex > 0:
            problems.append(f"weight {kj['weight_paths'][k]}: max |fl-keras| {raw:.3g} (excess {ex:.3g})")
    checks["weights_worst_excess"] = worst
    # ---- History and evaluate
    h32, h64 = kj["hist32"], kj["hist64"]
    if sorted(hist) != sorted(h32):
        problems.append(f"History keys {sorted(hist)} != Keras {sorted(h32)}")
    for key in h32:
        if key in hist:
            ex, raw = _excess(hist[key], h32[key], h64[key])
            checks[f"history {key}"] = {"excess": ex, "max_abs": raw}
            if ex > 0:
                problems.append(f"history[{key!r}] {np.round(hist[key], 6).tolist()} vs Keras "
                                f"{np.round(h32[key], 6).tolist()}")
    ev = model.evaluate(x, y, batch_size=spec["batch_size"], sample_weight=kw.get("sample_weight"), verbose=0,
                        return_dict=True)
    e32, e64 = kj["eval32"] or {}, kj["eval64"] or {}
    if e32 and sorted(ev) != sorted(e32):
        problems.append(f"evaluate keys {sorted(ev)} != Keras {sorted(e32)}")
    for key in e32:
        if key in ev and key in e64:
            ex, raw = _excess(ev[key], e32[key], e64[key])
            if ex > 0:
                problems.append(f"evaluate[{key!r}] {ev[key]:.6g} vs Keras {e32[key]:.6g}")
    # ---- predict after training (same data in Keras)
    px = one_or_list(data["px"])
    pred = model.predict(px)
    preds = pred if isinstance(pred, list) else [pred]
    for k, p in enumerate(preds):
        ex, raw = _excess(p, k32[f"p{k}"], k64[f"p{k}"])
        checks[f"predict {k}"] = {"excess": ex, "max_abs": raw}
        if ex > 0:
            problems.append(f"trained predict output {k}: max |fl-keras| {raw:.3g}")
    # ---- the Keras-trained model, saved by Keras, loaded by fastlstm: the same weights and predictions
    kt_path = os.path.join(d, "k_trained.keras")
    if os.path.exists(kt_path):
        try:
            kt = fastlstm.load(kt_path)
            kws = [k32[f"w{k}"] for k in range(len(kj["weight_paths"]))]
            got = kt.get_weights()
            if [w.shape for w in got] != [w.shape for w in kws] or \
                    any(not np.array_equal(a, b) for a, b in zip(got, kws)):
                problems.append("fastlstm.load(Keras-trained .keras): get_weights() differs from Keras's")
            out = kt.predict(px)
            out = out if isinstance(out, list) else [out]
            for k, a in enumerate(out):
                ok, diff = _close(a, k32[f"p{k}"])
                checks[f"fastlstm load Keras-trained {k}"] = diff
                if not ok:
                    problems.append(f"fastlstm.load(Keras-trained .keras) predict {k} differs from Keras: {diff}")
        except Exception as e:  # noqa: BLE001
            problems.append(f"fastlstm.load(Keras-trained .keras) failed: {type(e).__name__}: {e}"[:500])
    np.savez(os.path.join(d, "fl_pred.npz"), *preds)
    np.savez(os.path.join(d, "fl_w.npz"), *model.get_weights())
    # ---- saving: fastlstm files, reloaded by fastlstm (Keras reloads them in the kcheck stage)
    _saving_checks(fastlstm, d, spec, model, px, preds, problems, checks)


def _saving_checks(fastlstm, d, spec, model, px, preds, problems, checks):
    kpath, wpath = os.path.join(d, "fl.keras"), os.path.join(d, "fl.weights.h5")
    for p in (kpath, wpath):
        if os.path.exists(p):
            os.remove(p)
    try:
        model.save(kpath)
        model.save_weights(wpath)
    except Exception as e:  # noqa: BLE001
        problems.append(f"save failed: {type(e).__name__}: {e}"[:500])
        return
    try:
        back = fastlstm.load(kpath)
        out = back.predict(px)
        out = out if isinstance(out, list) else [out]
        for k, (a, b) in enumerate(zip(out, preds)):
            ok, diff = _close(a, b, 1e-6, 1e-6)
            checks[f"fastlstm reload .keras {k}"] = diff
            if not ok:
                problems.append(f"fastlstm.load(fl.keras) predict {k} differs: {diff}")
        with open(os.path.join(d, "fl.json"), "w") as f:
            f.write(model.to_json())
        arch = fastlstm.load(wpath, architecture=os.path.join(d, "fl.json"))
        out = arch.predict(px)
        out = out if isinstance(out, list) else [out]
        for k, (a, b) in enumerate(zip(out, preds)):
            ok, diff = _close(a, b, 1e-6, 1e-6)
            checks[f"fastlstm load(weights, architecture=to_json()) {k}"] = diff
            if not ok:
                problems.append(f"fastlstm.load(fl.weights.h5, architecture=fl.json) predict {k} differs: {diff}")
        fresh = fastlstm.load(os.path.join(d, "model.keras"))
        fresh.load_weights(wpath)
        out = fresh.predict(px)
        out = out if isinstance(out, list) else [out]
        for k, (a, b) in enumerate(zip(out, preds)):
            ok, diff = _close(a, b, 1e-6, 1e-6)
            checks[f"fastlstm load_weights {k}"] = diff
            if not ok:
                problems.append(f"load_weights(fl.weights.h5) predict {k} differs: {diff}")
    except Exception as e:  # noqa: BLE001
        problems.append(f"fastlstm reload failed: {type(e).__name__}: {e}"[:500])
    # ---- ONNX
    opath = os.path.join(d, "fl.onnx")
    try:
        model.export_onnx(opath)
    except ValueError as e:         # documented refusals (ExportError is a ValueError) are not bugs
        checks["onnx"] = f"refused: {e}"[:300]
        return
    except Exception as e:  # noqa: BLE001
        problems.append(f"export_onnx crashed: {type(e).__name__}: {e}"[:500])
        return
    try:
        import onnxruntime as ort
        sess = ort.InferenceSession(opath, providers=["CPUExecutionProvider"])
        feeds = {}
        xs = px if isinstance(px, list) else [px]
        types = {"tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(float)": np.float32,
                 "tensor(double)": np.float64}
        for i, a in zip(sess.get_inputs(), xs):
            feeds[i.name] = a.astype(types[i.type])
        outs = sess.run(None, feeds)
        for k, (a, b) in enumerate(zip(outs, preds)):
            ok, diff = _close(a, b)
            checks[f"onnx {k}"] = diff
            if not ok:
                problems.append(f"onnxruntime output {k} differs from fastlstm predict: {diff}")
    except Exception as e:  # noqa: BLE001
        problems.append(f"onnxruntime failed on the export: {type(e).__name__}: {e}"[:500])


# ============================================================================================== keras check half
def kcheck_half(work, names):
    keras, tf = _keras_env()
    for name in names:
        d = os.path.join(work, name)
        fj = os.path.join(d, "fastlstm.json")
        if not os.path.exists(os.path.join(d, "fl_pred.npz")) or not os.path.exists(fj):
            continue
        res = json.load(open(fj))
        spec = json.load(open(os.path.join(d, "spec.json")))
        data = load_data(d)
        zp, zw = np.load(os.path.join(d, "fl_pred.npz")), np.load(os.path.join(d, "fl_w.npz"))
        preds = [zp[f"arr_{k}"] for k in range(len(zp.files))]
        fl_w = [zw[f"arr_{k}"] for k in range(len(zw.files))]
        px = one_or_list(data["px"])
        problems = []
        for what in ("load_model", "load_weights", "model_from_json"):
            try:
                keras.backend.clear_session()
                if what == "load_model":
                    if not os.path.exists(os.path.join(d, "fl.keras")):
                        continue
                    m = keras.saving.load_model(os.path.join(d, "fl.keras"), compile=False)
                else:
                    if not os.path.exists(os.path.join(d, "fl.weights.h5")):
                        continue
                    if what == "load_weights":
                        m = build_model(spec, keras)
                    else:
                        if not os.path.exists(os.path.join(d, "fl.json")):
                            continue
                        m = keras.models.model_from_json(open(os.path.join(d, "fl.json")).read())
                    m.load_weights(os.path.join(d, "fl.weights.h5"))
                kw = m.get_weights()
                if [w.shape for w in kw] != [w.shape for w in fl_w] or \
                        any(not np.array_equal(a, b) for a, b in zip(kw, fl_w)):
                    problems.append(f"Keras {what}: get_weights() differs from fastlstm's (order or values)")
                out = m.predict(px, verbose=0)
                out = list(out) if isinstance(out, (list, tuple)) else [out]
                if len(out) != len(preds):
                    problems.append(f"Keras {what}: {len(out)} outputs, fastlstm {len(preds)}")
                for k, (a, b) in enumerate(zip(out, preds)):
                    ok, diff = _close(a, b)
                    res["checks"][f"keras {what} {k}"] = diff
                    if not ok:
                        problems.append(f"Keras {what} predict {k} differs from fastlstm: {diff}")
            except Exception as e:  # noqa: BLE001
                problems.append(f"Keras {what} of the fastlstm file failed: {type(e).__name__}: {e}"[:800])
        res["problems"] += problems
        res["status"] = "ok" if not res["problems"] else "FAIL"
        with open(fj, "w") as f:
            json.dump(res, f, indent=1)
        print(f"kcheck {name}: {'ok' if not problems else problems}", flush=True)


# ============================================================================================== driver
def summarize(work, names):
    fails, ok, skipped = [], 0, []
    for name in names:
        p = os.path.join(work, name, "fastlstm.json")
        if not os.path.exists(p):
            skipped.append((name, "no result"))
            continue
        r = json.load(open(p))
        if r["status"] == "ok":
            ok += 1
        elif r["status"] == "FAIL":
            fails.append((name, r["problems"]))
        else:
            skipped.append((name, r["status"]))
    paths = {}
    for name in names:
        p = os.path.join(work, name, "fastlstm.json")
        if os.path.exists(p):
            tp = json.load(open(p)).get("token_path") or {}
            key = ("projected" if tp.get("train:projected") else "gathered" if tp.get("train:gathered")
                   else "no TokenRows")
            spec = json.load(open(os.path.join(work, name, "spec.json")))
            if spec["input"]["type"] == "tokens":
                paths[key] = paths.get(key, 0) + 1
    print(f"\n{len(names)} configurations: {ok} ok, {len(fails)} failing, {len(skipped)} skipped; token cases "
          f"by fastlstm training path: {paths}")
    for name, why in skipped:
        print(f"  skipped {name}: {why}")
    for name, probs in fails:
        spec = json.load(open(os.path.join(work, name, "spec.json")))
        print(f"  FAIL {name} [{describe(spec)}]")
        for p in probs[:6]:
            print(f"      {p}")
    return fails


def describe(spec):
    inp = spec["input"]
    parts = [spec["kind"], spec.get("arch", "plain"), "native" if spec["native"] else "loaded"]
    parts.append(f"Emb(mask_zero={inp['mask_zero']},pad={inp['pad']})" if inp["type"] == "tokens"
                 else f"float(mask={inp['mask_value']},pad={inp['pad']})")
    if inp["type"] == "tokens":
        parts.append(f"distinct={inp['distinct']} project={spec.get('project')}")

    def rnn(r):
        s = f"{r['cls']}({r['units']},{r['activation']}/{r['recurrent_activation']}"
        s += ",nobias" if not r["use_bias"] else ""
        s += ",back" if r["go_backwards"] else ""
        s += ",rs" if r["return_sequences"] else ""
        s += f",ra={r['reset_after']}" if r["cls"] == "GRU" else ""
        s += ")"
        return f"Bi[{r['bidirectional']}]{s}" if r["bidirectional"] else s

    def plain(items):
        return [f"{it['cls']}{json.dumps(it['cfg'], separators=(',', ':'))}" for it in items]

    parts += plain(spec.get("pre", []))
    for k, r in enumerate(spec["rnns"]):
        parts.append(rnn(r))
        if k == 0 and spec.get("branch"):
            br = spec["branch"]
            parts.append(f"|| [{' '.join(plain(br['layers']) + [rnn(br['rnn'])])}] -> {br['merge']}")
        if k == 0:
            parts += plain(spec.get("mid", []))
    parts += plain(spec.get("post", []))
    lo = spec["loss"]
    parts.append(f"head={spec['head']}({lo['units']},{lo['activation']}) {lo['name']}"
                 f"{'(logits)' if lo['from_logits'] else ''} {lo['metrics']}")
    parts.append(f"{spec['opt']['class']}{spec['opt']['config']}")
    parts.append(f"B={spec['batch_size']} n={spec['n']} ep={spec['epochs']} refit={spec.get('refit')} "
                 f"sw={spec['sample_weight']} "
                 f"val={spec['validation']} drop0={spec['dropout0']} vsplit={spec.get('validation_split')} "
                 f"class_weight={spec.get('class_weight')} weighted_metrics={spec.get('weighted_metrics')}")
    return " ".join(parts)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=["run", "gen", "keras", "fastlstm", "kcheck", "summary"])
    ap.add_argument("--n", type=int, default=90, help="number of random configurations")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="", help="comma-separated case names (c000, ...)")
    ap.add_argument("--work", default=None, help="folder for the exchanged files (default /tmp/fuzz_train/<seed>)")
    a = ap.parse_args(argv)
    want = {"keras": KERAS_PY, "kcheck": KERAS_PY, "fastlstm": FAST_PY}.get(a.stage)
    if want and os.path.realpath(sys.prefix) != os.path.realpath(os.path.dirname(os.path.dirname(want))):
        os.execv(want, [want, os.path.abspath(__file__)] + sys.argv[1:])     # each stage in its own venv
    work = a.work or os.path.join("/tmp/fuzz_train", str(a.seed))
    os.makedirs(work, exist_ok=True)
    only = set(s for s in a.only.split(",") if s)
    if a.stage in ("run", "gen"):
        names = gen(work, a.n, a.seed, only)
        with open(os.path.join(work, "names.json"), "w") as f:
            json.dump(names, f)
    names = json.load(open(os.path.join(work, "names.json")))
    if only:
        names = [n for n in names if n in only]
    if a.stage == "run":
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        base = [__file__, "--seed", str(a.seed), "--work", work] + (["--only", a.only] if a.only else [])
        for py, stage in ((KERAS_PY, "keras"), (FAST_PY, "fastlstm"), (KERAS_PY, "kcheck")):
            t0 = time.time()
            subprocess.run([py, base[0], stage] + base[1:], env=env, check=True)
            print(f"== stage {stage}: {time.time() - t0:.0f}s", flush=True)
        summarize(work, names)
    elif a.stage == "keras":
        keras_half(work, names)
    elif a.stage == "fastlstm":
        sys.path.insert(0, REPO)
        fastlstm_half(work, names)
    elif a.stage == "kcheck":
        kcheck_half(work, names)
    elif a.stage == "summary":
        summarize(work, names)


if __name__ == "__main__":
    main()
