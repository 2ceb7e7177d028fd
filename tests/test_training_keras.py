"""Optimizer steps of fastlstm against the same steps made by Keras 3 (tests/data/train, tools/goldens/train.py).

Each case holds a model saved before training, the batches, and what Keras 3 computed: the dense gradient at
every step, the weights after every step and the batch loss (and metrics). fastlstm loads the same file,
compiles with the same optimizer and loss, and must reproduce all of it to float32 tolerance.
"""
import json
import os

import numpy as np
import numpy.testing as npt
import pytest

import fastlstm
from fastlstm.training.trainer import _normalize_targets

ROOT = os.path.join(os.path.dirname(__file__), "data", "train")
MANIFEST = os.path.join(ROOT, "manifest.json")
CASES = json.load(open(MANIFEST))["cases"] if os.path.exists(MANIFEST) else []


def _loss(spec):
    return fastlstm.losses.get({"class_name": spec["class"], "config": spec["config"]})


def _optimizer(spec):
    return fastlstm.optimizers.get({"class_name": spec["class"], "config": spec["config"]})


def _gradients(model, xs, ys, sample_weight=None):
    """Dense gradients of the loss at the current weights, in model.get_weights() order."""
    tr = model._trainer
    tr.setup()
    tr._ensure_grads()
    values, ctxs = tr.forward(xs, training=True)
    _, _, d = tr._losses(values, ctxs, ys, sample_weight)
    tr._zero_grads()
    tr.backward(ctxs, d)
    return [g.copy() for leaf, _ in tr.leaves for g in leaf.grads]


def _inputs(data):
    """x: one array, or a list of arrays x0, x1, ... for a model with several inputs."""
    if "x" in data.files:
        return data["x"]
    return [data[f"x{k}"] for k in range(sum(f.startswith("x") for f in data.files))]


def _rows(x, sl):
    return [a[sl] for a in x] if isinstance(x, list) else x[sl]


def test_fixtures_present():
    assert CASES, f"no training fixtures in {ROOT}"


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_keras_optimizer_steps(case):
    model = fastlstm.load(os.path.join(ROOT, case["model_file"]))
    data = np.load(os.path.join(ROOT, case["data_file"]))
    exp = np.load(os.path.join(ROOT, case["expected_file"]))
    tol = case["tolerance"]
    n_w = len(case["weight_names"])
    w0 = [exp[f"w0_{k}"] for k in range(n_w)]
    for a, b in zip(model.get_weights(), w0):
        npt.assert_array_equal(a, b)
    compiled = case.get("compile_metrics", {"metrics": case["metrics"]})
    model.compile(optimizer=_optimizer(case["optimizer"]), loss=_loss(case["loss"]),
                  metrics=compiled["metrics"] or None, weighted_metrics=compiled.get("weighted_metrics") or None)
    bs = case["batch_size"]
    x, y = _inputs(data), data["y"]
    sw = data["sample_weight"] if "sample_weight" in data.files else None
    for step in range(1, case["steps"] + 1):
        sl = slice((step - 1) * bs, step * bs)
        swb = None if sw is None else sw[sl]
        xs = model._normalize_inputs(_rows(x, sl))
        ys = _normalize_targets(model, y[sl], xs[0].shape[0])
        grads = _gradients(model, xs, ys, swb)
        for k, g in enumerate(grads):
            npt.assert_allclose(g, exp[f"g{step}_{k}"], **tol["grads"],
                                err_msg=f"step {step}: gradient of {case['weight_names'][k]}")
        logs = model.train_on_batch(_rows(x, sl), y[sl], sample_weight=swb, return_dict=True)
        npt.assert_allclose(logs["loss"], exp["loss"][step - 1], **tol["loss"], err_msg=f"step {step}: loss")
        for name in case["metrics"]:
            npt.assert_allclose(logs[name], exp[f"metric_{name}"][step - 1], **tol["metrics"],
                                err_msg=f"step {step}: {name}")
        for k, w in enumerate(model.get_weights()):
            npt.assert_allclose(w, exp[f"w{step}_{k}"], **tol["weights"],
                                err_msg=f"step {step}: weight {case['weight_names'][k]}")


@pytest.mark.parametrize("case", [c for c in CASES if c["name"] == "lstm_bce_adam"], ids=str)
def test_keras_fit_matches_train_on_batch(case):
    """fit(shuffle=False) makes the same steps as train_on_batch, and reports the running mean of the losses."""
    model = fastlstm.load(os.path.join(ROOT, case["model_file"]))
    data = np.load(os.path.join(ROOT, case["data_file"]))
    exp = np.load(os.path.join(ROOT, case["expected_file"]))
    n = case["steps"] * case["batch_size"]
    model.compile(optimizer=_optimizer(case["optimizer"]), loss=_loss(case["loss"]))
    hist = model.fit(data["x"][:n], data["y"][:n], batch_size=case["batch_size"], epochs=1, shuffle=False, verbose=0)
    npt.assert_allclose(hist.history["loss"][0], np.mean(exp["loss"]), atol=1e-5)
    for k, w in enumerate(model.get_weights()):
        npt.assert_allclose(w, exp[f"w{case['steps']}_{k}"], **case["tolerance"]["weights"])
