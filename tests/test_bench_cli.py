"""`fastlstm bench`: the command runs on a tiny custom workload, writes its JSON and chart, verifies before it times
(a kernel that returns wrong numbers is reported and not timed), and tools/kernel_report.py still wraps it."""
import importlib.util
import json
import platform
import sys
from pathlib import Path

import numpy as np
import pytest

from fastlstm import _kernels
from fastlstm import benchmark as bm
from fastlstm.__main__ import main

TINY = "lstm_b2_t8_i16_h16"
FAST = ["--threads", "1", "--repeats", "2", "--min-time", "0.01"]


def _bench(tmp_path, *extra):
    js, png = tmp_path / "out" / "b.json", tmp_path / "out" / "b.png"
    rc = main(["bench", *FAST, "--json", str(js), "--png", str(png), *extra])
    return rc, (json.loads(js.read_text()) if js.exists() else None), png


def _fast_backend():
    return "cython" if _kernels.cython_built() else "numba"


def test_bench_writes_json_and_chart(tmp_path, capsys):
    rc, res, png = _bench(tmp_path, "--quick", "--workloads", TINY)
    out = capsys.readouterr().out
    assert rc == 0, out
    for key in ("date", "machine", "blas", "versions", "threads", "sgemm_peak_gflops", "backends",
                "fastlstm_backend", "workloads", "failures", "ok"):
        assert key in res, key
    assert res["ok"] and res["failures"] == [] and res["threads"] == [1]
    assert res["versions"]["numpy"] == np.__version__ and res["versions"]["fastlstm"]
    assert res["sgemm_peak_gflops"]["1"] > 0
    if sys.platform == "linux" and platform.libc_ver()[0] == "glibc":    # every runtime timed on a warm heap
        assert res["heap_mallopt"] == bm.HEAP_SETTINGS and "M_MMAP_THRESHOLD" in out
    (w,) = res["workloads"]
    assert w["name"] == TINY and w["kind"] == "kernel"
    assert w["gflop"] == pytest.approx(2 * 2 * 8 * 64 * 32 / 1e9)
    (run,) = w["runs"]
    assert run["threads"] == 1
    assert set(run["verify"]) == set(res["backends"])           # every backend checked
    for d in run["verify"].values():
        assert d["ok"] and 0 <= d["error"] < bm.NORM_TOL
    timed = set(run["times_s"])
    assert "reference" not in timed                               # --quick: the reference is verified, not timed
    assert set(res["backends"]) - {"reference"} <= timed
    assert all(t > 0 for t in run["times_s"].values())
    for peer in ("torch", "onnxruntime"):
        if importlib.util.find_spec(peer) is not None:
            assert run["peer_verify"][peer]["ok"]
            fl = res["fastlstm_backend"]
            assert run["ratios"][fl][peer] == pytest.approx(run["times_s"][fl] / run["times_s"][peer])
    assert "vs " in out and TINY in out and "summary" in out
    if importlib.util.find_spec("matplotlib") is not None:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("workload", ["gru_b1_t12_i8_h16", "lstm_b1_t12_i8_h16", "gru_b3_t5_i8_h16"])
def test_every_cell_and_batch_verifies(tmp_path, workload):
    """Every backend passes verification on GRU and LSTM workloads, batch 1 (packed steps, kept packs) and small
    batches: the kernel runs with the benchmark's own arguments (packs included) give the reference's numbers."""
    rc, res, _ = _bench(tmp_path, "--quick", "--workloads", workload, "--png", "")
    (run,) = res["workloads"][0]["runs"]
    assert rc == 0 and res["ok"], res["failures"]
    assert all(d["ok"] for d in run["verify"].values()) and set(res["backends"]) - {"reference"} <= set(run["times_s"])


@pytest.mark.parametrize("workload", ["lstm_train_b19_t5_i8_h16", "gru_train_b19_t5_i8_h16", "lstm_b19_t5_i8_h16"])
def test_two_threads_split_rows_and_verify(tmp_path, workload):
    """At 2 threads the kernel workloads run the way fit and predict do, one kernel call per share of the batch
    rows (uneven: 19 = 9 + 10); the gathered outputs, and for training the input gradients and the weight
    gradients summed over the shares, pass the float64 reference."""
    rc, res, _ = _bench(tmp_path, "--quick", "--workloads", workload, "--threads", "2", "--png", "")
    (run,) = res["workloads"][0]["runs"]
    assert rc == 0 and res["ok"], res["failures"]
    assert run["threads"] == 2 and all(d["ok"] for d in run["verify"].values())
    split = bm.RowSplitRun(_fast_backend(), workload.split("_")[0], bm.make_args(*bm.kernel_spec(workload)), 2,
                           bm.kernel_spec(workload)[5])
    assert [p.fwd["x"].shape[1] for p in split.parts] == [9, 10]


def test_broken_kernel_fails_verification_and_is_not_timed(tmp_path, monkeypatch, capsys):
    be = _fast_backend()
    k = _kernels.get_backend(be)
    real = k.lstm_forward

    def wrong_forward(*args, **kw):
        real(*args, **kw)
        np.multiply(args[14], 1.001, out=args[14])      # y_out a little off: fast and wrong
    monkeypatch.setattr(k, "lstm_forward", wrong_forward)
    rc, res, _ = _bench(tmp_path, "--workloads", TINY, "--backends", f"reference,{be}", "--png", "")
    out = capsys.readouterr().out
    assert rc == 1
    run = res["workloads"][0]["runs"][0]
    assert run["verify"]["reference"]["ok"] and "reference" in run["times_s"]
    assert not run["verify"][be]["ok"] and be not in run["times_s"]
    assert run["verify"][be]["error"] > bm.NORM_TOL
    assert not res["ok"] and any(be in f for f in res["failures"])
    assert f"{be} FAIL" in out


def test_broken_kernel_fails_model_workload(tmp_path, monkeypatch):
    """A model-level workload (one streaming step) checks the backend before timing it too."""
    k = _kernels.get_backend("numba")
    monkeypatch.delattr(k, "Packed64", raising=False)       # no packed stepper: the session calls lstm_forward
    real = k.lstm_forward

    def wrong_forward(*args, **kw):
        real(*args, **kw)
        args[15][0, 0] += 0.1                           # one state element off
    monkeypatch.setattr(k, "lstm_forward", wrong_forward)
    rc, res, _ = _bench(tmp_path, "--workloads", "stream_step_b1_h128", "--backends", "numba", "--png", "")
    assert rc == 1
    run = res["workloads"][0]["runs"][0]
    assert not run["verify"]["numba"]["ok"] and "numba" not in run["times_s"]
    for peer, d in run["peer_verify"].items():                   # the peers are right and timed
        assert d["ok"] and peer in run["times_s"]


def test_verify_norm_tolerance():
    rng = np.random.default_rng(0)
    ref = {"a": rng.standard_normal((50, 40))}
    near = {"a": (ref["a"] * (1 + 1e-6 * rng.standard_normal((50, 40)))).astype(np.float32)}
    d = bm.verify_detail(near, ref)
    assert d["ok"] and d["error"] < 1e-5
    off = {"a": ref["a"].copy()}
    off["a"][3, 4] += 0.5                                      # one element wrong
    assert not bm.verify_detail(off, ref)["ok"]
    nan = {"a": ref["a"].copy()}
    nan["a"][0, 0] = np.nan
    assert not bm.verify_detail(nan, ref)["ok"]


def test_bench_command_line_errors(tmp_path, capsys):
    assert main(["bench", "--workloads", "no_such_workload", "--json", "", "--png", ""]) == 1
    assert "unknown workload" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["bench", "--threads", "0"])
    assert e.value.code == 2
    assert bm.kernel_spec("gru_train_b3_t7_i5_h6") == ("gru", 3, 7, 5, 6, True)


def test_chart_skipped_without_matplotlib(tmp_path, monkeypatch, capsys):
    from fastlstm.bench import write_png
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    res = {"fastlstm_backend": "cython", "workloads": [], "date": "", "machine": {"cpu": ""}}
    assert write_png(res, str(tmp_path / "x.png")) is False
    assert "matplotlib not installed" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_kernel_report_wrapper(tmp_path, monkeypatch):
    path = Path(__file__).resolve().parents[1] / "tools" / "kernel_report.py"
    spec = importlib.util.spec_from_file_location("kernel_report_under_test", path)
    kr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kr)
    assert kr.WORKLOADS is bm.WORKLOADS and kr.verify is bm.verify
    monkeypatch.chdir(tmp_path)
    assert kr.main(["--quick", *FAST, "--workloads", "gru_b2_t5_i4_h8", "--backends", "reference"]) == 0
    assert not (tmp_path / "bench_out").exists()                 # no files unless asked
