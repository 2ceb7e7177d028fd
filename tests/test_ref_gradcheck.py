"""The NumPy reference's backward against 4th-order central finite differences of its forward (float64).

The loss is L = sum(y * wy) + sum(hT * wh) [+ sum(cT * wc)] with fixed random weights, so dL/dy = wy etc.
"""
import numpy as np
import pytest

from fastlstm._kernels import acts, gru_ref, lstm_ref
from fastlstm._kernels.args import copy_args, gru_args, gru_backward_args, lstm_args, lstm_backward_args

EPS = 1e-4


def _fd(loss, arr, idx):
    orig = arr[idx]
    vals = []
    for k in (2, 1, -1, -2):
        arr[idx] = orig + k * EPS
        vals.append(loss())
    arr[idx] = orig
    return (-vals[0] + 8 * vals[1] - 8 * vals[2] + vals[3]) / (12 * EPS)


def _check(fwd, forward, backward_args, backward, seeds, params, rng, n_probe=6):
    """Compare every gradient named in `params` (arg name -> gradient output name) at a few random entries."""
    out_names = list(seeds)

    def loss():
        a = copy_args(fwd)
        forward(*a.values())
        return sum(float((a[n] * seeds[n]).sum()) for n in out_names)

    a = copy_args(fwd)
    forward(*a.values())
    b = backward_args(a, dy=seeds["y_out"], dhT=seeds["hT_out"], **({"dcT": seeds["cT_out"]} if "cT_out" in seeds else {}))
    backward(*b.values())
    for arg, grad in params.items():
        arr = fwd[arg]
        if arr.size == 0:
            continue
        for _ in range(n_probe):
            idx = tuple(rng.integers(0, s) for s in arr.shape)
            num = _fd(loss, arr, idx)
            np.testing.assert_allclose(b[grad][idx], num, rtol=1e-5, atol=1e-7, err_msg=f"d{arg}{idx}")


LSTM_PARAMS = dict(x="dx_out", w_x="dw_x_out", w_h="dw_h_out", b="db_out", p="dp_out", h0="dh0_out", c0="dc0_out")
GRU_PARAMS = dict(x="dx_out", w_x="dw_x_out", w_h="dw_h_out", b_x="db_x_out", b_h="db_h_out", h0="dh0_out")

LSTM_CASES = [
    dict(),
    dict(reverse=True, mask="random"),
    dict(peepholes=True, mask="post"),
    dict(peepholes=True, clip=0.6, input_forget=True, reverse=True),
    dict(act_specs=[(acts.HARD_SIGMOID, 0.2, 0.5), (acts.SOFTSIGN, 0, 0), (acts.ELU, 1.0, 0)]),
    dict(act_specs=[(acts.SIGMOID, 0, 0), (acts.SCALED_TANH, 0.7, 1.3), (acts.SOFTPLUS, 0, 0)]),
    dict(act_specs=[(acts.SILU, 0, 0), (acts.GELU, 0, 0), (acts.SELU, 0, 0)]),
    dict(act_specs=[(acts.LEAKY_RELU, 0.1, 0), (acts.AFFINE, 0.8, 0.1), (acts.EXPONENTIAL, 0, 0)], scale=0.3),
]


@pytest.mark.parametrize("opts", LSTM_CASES, ids=str)
def test_lstm_reference_gradients(opts, rng):
    fwd = lstm_args(4, 3, 5, 3, np.float64, rng, training=True, **opts)
    seeds = {n: rng.standard_normal(fwd[n].shape) for n in ("y_out", "hT_out", "cT_out")}
    _check(fwd, lstm_ref.lstm_forward, lstm_backward_args, lstm_ref.lstm_backward, seeds, LSTM_PARAMS, rng)


GRU_CASES = [
    dict(),
    dict(reset_after=False),
    dict(reverse=True, mask="random"),
    dict(reset_after=False, mask="post", reverse=True, clip=0.7),
    dict(act_specs=[(acts.HARD_SIGMOID, 1 / 6, 0.5), (acts.RELU6, 0, 0)]),
    dict(reset_after=False, act_specs=[(acts.SOFTSIGN, 0, 0), (acts.HARD_SILU, 0, 0)]),
]


@pytest.mark.parametrize("opts", GRU_CASES, ids=str)
def test_gru_reference_gradients(opts, rng):
    fwd = gru_args(4, 3, 5, 3, np.float64, rng, training=True, **opts)
    seeds = {n: rng.standard_normal(fwd[n].shape) for n in ("y_out", "hT_out")}
    _check(fwd, gru_ref.gru_forward, gru_backward_args, gru_ref.gru_backward, seeds, GRU_PARAMS, rng)


def test_keras_constant_initializer_golden():
    """Keras LSTM(3) with kernel 0.01, recurrent 0.02, bias 0.03 (forget slice 1.0) on arange(72).reshape(3,6,4)."""
    H, I = 3, 4
    x = np.arange(72, dtype=np.float64).reshape(3, 6, 4).transpose(1, 0, 2).copy()
    b = np.full(4 * H, 0.03)
    b[H:2 * H] = 1.0
    a = lstm_args(6, 3, I, H, np.float64)
    a.update(x=x, w_x=np.full((I, 4 * H), 0.01), w_h=np.full((H, 4 * H), 0.02), b=b,
             h0=np.zeros((3, H)), c0=np.zeros((3, H)))
    lstm_ref.lstm_forward(*a.values())
    np.testing.assert_allclose(a["hT_out"][:, 0], [0.62886867, 0.86899145, 0.94607728], atol=1e-7)
