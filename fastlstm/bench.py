"""`fastlstm bench`: verify every backend and peer against a float64 reference, then time them side by side.

    fastlstm bench --quick                          # under a minute: fewer samples, no batch_b256 workload
    fastlstm bench --threads 1 --workloads model    # the model-level workloads, 1 thread
    fastlstm bench --workloads latency_b1_t100_h128,lstm_b2_t8_i16_h16 --json out.json --png out.png

Prints a table per workload and thread count (time, GFLOP/s, % of the SGEMM peak measured first, time ratio to
each peer: < 1 = fastlstm faster) and a summary; writes a JSON file and a PNG chart of the fastlstm/peer ratios
(matplotlib). Exit status 1 when a backend failed verification. Workloads, peers and tolerances:
fastlstm/benchmark.py. Peers and matplotlib are the optional extra `pip install 'fastlstm[bench]'`.
"""
import argparse
import datetime
import importlib.util
import json
import math
import os
import platform
import sys
import time


def _thread_list(text):
    try:
        threads = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        threads = []
    if not threads or min(threads) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated thread counts >= 1, e.g. 1,2; got {text!r}")
    return threads


def add_arguments(p, threads_dest="bench_threads"):
    """The bench options, on `p` (the `fastlstm bench` subparser or tools/kernel_report.py's parser)."""
    p.add_argument("--threads", dest=threads_dest, type=_thread_list, default=[1, 2], metavar="N,N",
                   help="comma-separated thread counts (default 1,2)")
    p.add_argument("--quick", action="store_true",
                   help="a run under a minute: 3 repeats, shorter sampling, no batch_b256 and no uniform-id "
                        "train_imdb workload, reference verified but not timed (the first run after an install "
                        "also compiles the Numba kernels into their cache: about 40 s more)")
    p.add_argument("--workloads", default=None,
                   help="comma-separated workload names or groups kernel, model, all (default all); a custom "
                        "kernel workload is CELL[_train]_bB_tT_iI_hH, e.g. lstm_b2_t8_i16_h16")
    p.add_argument("--backends", default=None, help="comma-separated backends (default: all available)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (default 7, quick 3)")
    p.add_argument("--min-time", type=float, default=None,
                   help="seconds of sampling per measurement at least (default 1.0, quick 0.1)")
    p.add_argument("--no-reference-timing", action="store_true", help="verify the reference backend, do not time it")
    p.add_argument("--json", default=None,
                   help="JSON results file (default bench_out/bench-DATE.json; '' to skip)")
    p.add_argument("--png", default=None,
                   help="PNG chart of the fastlstm/peer time ratios (default beside the JSON; '' to skip)")
    return p


def main(a):
    """Run the benchmark for parsed options `a` (see add_arguments). Returns the exit status."""
    missing = [m for m in ("torch", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"note: {' and '.join(missing)} not installed: those peers are skipped (pip install 'fastlstm[bench]')",
              file=sys.stderr)
    stamp = datetime.datetime.now()
    json_path = a.json if a.json is not None else os.path.join("bench_out", f"bench-{stamp:%Y%m%d-%H%M%S}.json")
    png_path = a.png if a.png is not None else (os.path.splitext(json_path)[0] + ".png" if json_path else
                                                os.path.join("bench_out", f"bench-{stamp:%Y%m%d-%H%M%S}.png"))
    results = run(a, stamp)
    if json_path:
        write_json(results, json_path)
        print(f"wrote {json_path}")
    if png_path:
        if write_png(results, png_path):
            print(f"wrote {png_path}")
    return 0 if results["ok"] else 1


def cli(argv=None, prog=None, **defaults):
    """Stand-alone entry (tools/kernel_report.py): parse argv, run, return the exit status."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.set_defaults(**defaults)
    return main(p.parse_args(argv))


# ------------------------------------------------------------------------------------------------ running

def _fmt_ms(t):
    return f"{t * 1e3:.4g}" if t * 1e3 < 1000 else f"{t * 1e3:.0f}"


def run(a, stamp=None):
    """Verify and time every workload; prints the tables and returns the results dict (the JSON's content)."""
    from threadpoolctl import threadpool_limits

    import fastlstm
    from . import benchmark as bm

    stamp = stamp or datetime.datetime.now()
    threads = a.bench_threads
    quick = bool(a.quick)
    repeats = a.repeats or (3 if quick else 7)
    min_time = a.min_time if a.min_time is not None else (0.1 if quick else 1.0)
    names = bm.resolve_workloads(a.workloads, quick=quick)
    backends = a.backends.split(",") if a.backends else bm.available_backends()
    for be in backends:
        fastlstm.backend._kernels.get_backend(be)          # a named backend that is missing: ImportError, exit 1
    time_reference = not (a.no_reference_timing or quick)
    auto = fastlstm.backend._kernels.get_backend("auto").name
    main_backend = auto if auto in backends else next((b for b in backends if b != "reference"), backends[0])

    heap_warm = bm.keep_heap_warm()
    peaks = {n: bm.sgemm_peak(n, repeats=3 if quick else 5) for n in threads}
    res = dict(
        date=stamp.isoformat(timespec="seconds"),
        machine={"cpu": bm.cpu_line(), "cores": os.cpu_count(), "platform": platform.platform()},
        blas=bm.blas_line(), versions=bm.versions(), threads=threads, quick=quick, repeats=repeats,
        min_time_s=min_time, backends=backends, fastlstm_backend=main_backend,
        heap_mallopt=dict(bm.HEAP_SETTINGS) if heap_warm else {},
        sgemm_peak_gflops={str(n): g for n, g in peaks.items()},
        tolerance={"norm": bm.NORM_TOL, "elem_rtol": bm.ELEM_RTOL, "elem_atol_of_max": bm.ELEM_ATOL},
        workloads=[], failures=[], ok=True)
    v = res["versions"]
    print(f"fastlstm {v['fastlstm']}, numpy {v['numpy']}, torch {v['torch'] or '-'}, onnxruntime "
          f"{v['onnxruntime'] or '-'};  {stamp:%Y-%m-%d %H:%M}")
    print(f"CPU: {res['machine']['cpu']} ({res['machine']['cores']} cores);  BLAS: {res['blas']};  "
          f"backends: {', '.join(backends)};  repeats: {repeats}, >= {min_time:g} s each")
    if heap_warm:
        print("heap (every runtime alike): glibc mallopt " + ", ".join(f"{k} {v >> 20} MiB" for k, v in
              bm.HEAP_SETTINGS.items()) + ": large temporaries come from the heap and freed memory stays mapped")
    print("SGEMM 2048^3 peak: " + ", ".join(f"{n} thread{'s' * (n > 1)} {g:.1f} GFLOP/s" for n, g in peaks.items()))
    print(f"verify: relative error ||got - ref|| / ||ref|| against a float64 reference run, tolerance "
          f"{bm.NORM_TOL:g} (and per element {bm.ELEM_RTOL:g} |ref| + {bm.ELEM_ATOL:g} max|ref|)")

    saved = _thread_settings()
    try:
        for name in names:
            t0 = time.perf_counter()
            if name in bm.MODEL_WORKLOADS:
                entry = _run_model(bm, name, threads, backends, repeats, min_time, time_reference, peaks)
            else:
                entry = _run_kernel(bm, name, threads, backends, repeats, min_time, time_reference,
                                    threadpool_limits, peaks)
            entry["elapsed_s"] = time.perf_counter() - t0
            print(f"   ({entry['elapsed_s']:.1f} s)")
            res["workloads"].append(entry)
            for r in entry["runs"]:
                for be, d in r["verify"].items():
                    if not d["ok"]:
                        res["failures"].append(f"{be} on {name} (threads {r['threads']}): error {d['error']:.3g}")
    finally:
        _restore_thread_settings(saved)
    res["ok"] = not res["failures"]
    _print_summary(res)
    if res["failures"]:
        print(f"\n{len(res['failures'])} verification failure(s): " + "; ".join(res["failures"]))
    return res


def _finish_run(r, gflop, peak, peer_names):
    r["gflops"] = {k: gflop / t for k, t in r["times_s"].items()}
    r["peak_fraction"] = {k: g / peak for k, g in r["gflops"].items()}
    r["ratios"] = {be: {p: t / r["times_s"][p] for p in peer_names if p in r["times_s"]}
                   for be, t in r["times_s"].items() if be not in peer_names}


def _print_run(r, peer_names):
    t = r["times_s"]
    peers = [p for p in peer_names if p in t]
    line = f"   threads={r['threads']:<2d} verify: " + ", ".join(bm_verdict(k, d) for k, d in r["verify"].items())
    if r["peer_verify"]:
        line += ";  peers: " + ", ".join(bm_verdict(k, d) for k, d in r["peer_verify"].items())
    print(line)
    print(f"   {'':10s} {'':12s} {'time ms':>10s} {'GFLOP/s':>8s} {'%peak':>6s} " +
          " ".join(f"{'vs ' + p:>15s}" for p in peers))
    for k, secs in t.items():
        ratios = " ".join(f"{r['ratios'][k][p]:14.2f}x" if k in r["ratios"] else f"{'':15s}" for p in peers)
        print(f"   {'':10s} {k:12s} {_fmt_ms(secs):>10s} {r['gflops'][k]:8.2f} {100 * r['peak_fraction'][k]:5.1f}% "
              f"{ratios}")


def bm_verdict(name, d):
    from .benchmark import verdict
    return verdict(name, d)


def _set_numba_threads(n):
    from . import _kernels
    if "numba" in _kernels._cache:
        import numba
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def _thread_settings():
    """torch's and numba's thread counts (the run changes them; restored after)."""
    from . import _kernels
    torch = sys.modules.get("torch")
    numba = sys.modules.get("numba") if "numba" in _kernels._cache else None
    return (torch, torch.get_num_threads() if torch else None, numba, numba.get_num_threads() if numba else None)


def _restore_thread_settings(saved):
    torch, t_threads, numba, n_threads = saved
    torch = torch or sys.modules.get("torch")
    if torch is not None and t_threads is not None:
        torch.set_num_threads(t_threads)
    if numba is not None:
        numba.set_num_threads(n_threads)
    elif "numba" in sys.modules and "numba" in _kernels_cache():      # loaded by the run: fastlstm's setting
        from . import config
        nb = sys.modules["numba"]
        nb.set_num_threads(min(config.NUM_THREADS, nb.config.NUMBA_NUM_THREADS))


def _kernels_cache():
    from . import _kernels
    return _kernels._cache


def _raised(e):
    """A failed check for a backend or peer that raised instead of returning results."""
    return {"ok": False, "error": float("inf"), "score": float("inf"), "arrays": {},
            "exception": f"{type(e).__name__}: {e}"}


def _checked(backends, n, threads, time_reference):
    """The backends to verify (and time) at thread count n: an untimed reference is checked once."""
    return [be for be in backends if be != "reference" or time_reference or n == threads[0]]


def _blas_one_thread():
    from threadpoolctl import threadpool_limits
    return threadpool_limits(1, user_api="blas")


def _run_kernel(bm, name, threads, backends, repeats, min_time, time_reference, threadpool_limits, peaks):
    cell, B, T, I, H, training = bm.kernel_spec(name)
    args = bm.make_args(cell, B, T, I, H, training)
    ref = bm.reference_outputs(cell, args, training)
    fl = bm.flops(cell, B, T, I, H, training)
    entry = {"name": name, "kind": "kernel", "gflop": fl / 1e9,
             "description": f"{cell.upper()} B={B} T={T} I={I} H={H}, {'forward+backward' if training else 'forward'}",
             "runs": []}
    print(f"\n== {name}  ({entry['description']}, {fl / 1e9:.3g} GFLOP)")
    peer_names = ("torch", "onnxruntime")
    for n in threads:
        bm.set_peer_threads(n)
        _set_numba_threads(n)
        r = {"threads": n, "verify": {}, "peer_verify": {}, "times_s": {}}
        with threadpool_limits(n):
            runners = {}                  # verified, then timed together in alternating blocks
            # fastlstm's parallelism is across batch rows (model.predict, fit), one kernel call per share of rows
            row_split = n > 1
            for be in _checked(backends, n, threads, time_reference):
                try:
                    kr = (bm.RowSplitRun(be, cell, args, n, training) if row_split
                          else bm.KernelRun(be, cell, args, training))
                    d = r["verify"][be] = bm.verify_detail(kr.check_run(), ref)
                except Exception as e:  # noqa: BLE001 - a backend that raises fails its check; the run goes on
                    d = r["verify"][be] = _raised(e)
                if d["ok"] and be == "reference" and time_reference:
                    r["times_s"][be] = bm.median_time(kr.run, min(repeats, 3), min_time)
                elif d["ok"] and be != "reference":
                    runners[be] = (kr.run, _blas_one_thread if row_split else None)
            peers = {}
            tp = bm.torch_peer(cell, args, training)
            if tp is not None:
                peers["torch"] = tp
            if not training:
                op = bm.ort_peer(cell, args)
                if op is not None:
                    peers["onnxruntime"] = op
            for pn, (prun, pout) in peers.items():
                try:
                    out = pout()
                    r["peer_verify"][pn] = bm.verify_detail(out, {k: ref[k] for k in out})
                    runners[pn] = (prun, None)
                except Exception as e:  # noqa: BLE001 - a peer that raises is reported, not timed
                    r["peer_verify"][pn] = _raised(e)
            r["times_s"].update(bm.interleaved_times(runners, repeats, min_time))
        _finish_run(r, fl / 1e9, peaks[n], peer_names)
        _print_run(r, peer_names)
        entry["runs"].append(r)
    return entry


def _run_model(bm, name, threads, backends, repeats, min_time, time_reference, peaks):
    wl = bm.model_workload(name)
    wl.prepare()
    entry = {"name": name, "kind": "model", "gflop": wl.gflop, "description": wl.description, "runs": []}
    print(f"\n== {name}  ({wl.description}, {wl.gflop:.3g} GFLOP)")
    peer_names = ("torch", "onnxruntime")
    for n in threads:
        r = {"threads": n, "verify": {}, "peer_verify": {}, "times_s": {}}
        runners = {}                      # verified, then timed together in alternating blocks
        for be in _checked(backends, n, threads, time_reference):
            with bm._Backend(be, n):
                try:
                    fn, d = wl.fastlstm(be)
                except Exception as e:  # noqa: BLE001 - a backend that raises fails its check; the run goes on
                    fn, d = None, _raised(e)
                r["verify"][be] = d
                if d["ok"] and be == "reference" and time_reference:
                    r["times_s"][be] = bm.median_time(fn, min(repeats, 3), min_time)
            if d["ok"] and be != "reference":
                runners[be] = (fn, lambda be=be: bm._Backend(be, n))
        bm.set_peer_threads(n)
        try:
            peers = wl.peers(n)
        except Exception as e:  # noqa: BLE001 - a peer that cannot be set up is reported, not timed
            peers = {}
            r["peer_verify"]["peers"] = _raised(e)
        for pn, (prun, d) in sorted(peers.items(), key=lambda kv: peer_names.index(kv[0])):
            r["peer_verify"][pn] = d
            runners[pn] = (prun, None)
        r["times_s"].update(bm.interleaved_times(runners, repeats, min_time))
        _finish_run(r, wl.gflop, peaks[n], peer_names)
        _print_run(r, peer_names)
        entry["runs"].append(r)
    return entry


def _print_summary(res):
    fl = res["fastlstm_backend"]
    peers = [p for p in ("torch", "onnxruntime")
             if any(p in r["times_s"] for w in res["workloads"] for r in w["runs"])]
    print(f"\n== summary: fastlstm ({fl}) time and its ratio to each peer's time (< 1 = fastlstm faster)")
    print(f"{'workload':26s} {'threads':>7s} {fl + ' ms':>12s} " + " ".join(f"{p + ' ms':>15s}" for p in peers) +
          " " + " ".join(f"{'vs ' + p:>15s}" for p in peers))
    for w in res["workloads"]:
        for r in w["runs"]:
            t = r["times_s"]
            mine = _fmt_ms(t[fl]) if fl in t else ("FAIL" if not r["verify"].get(fl, {"ok": True})["ok"] else "-")
            cols = " ".join(f"{_fmt_ms(t[p]) if p in t else '-':>15s}" for p in peers)
            ratios = " ".join(f"{(f'{t[fl] / t[p]:.2f}x' if fl in t and p in t else '-'):>15s}" for p in peers)
            print(f"{w['name']:26s} {r['threads']:7d} {mine:>12s} {cols} {ratios}")


# ------------------------------------------------------------------------------------------------ output files

def _clean(obj):
    """JSON-safe: non-finite floats become None, numpy scalars plain Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(results, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(_clean(results), f, indent=1)


def write_png(results, path):
    """Bar chart of fastlstm time / peer time per workload and thread count (log scale; < 1 = fastlstm faster).
    Returns False (with a note on stderr) when matplotlib is not installed or there is nothing to draw."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print("note: matplotlib not installed: no chart written (pip install 'fastlstm[bench]')", file=sys.stderr)
        return False
    fl = results["fastlstm_backend"]
    peers = ["torch", "onnxruntime"]
    labels, values = [], {p: [] for p in peers}
    for w in results["workloads"]:
        for r in w["runs"]:
            ratios = r["ratios"].get(fl, {})
            if not ratios:
                continue
            labels.append(f"{w['name']}\n{r['threads']} thr")
            for p in peers:
                values[p].append(ratios.get(p, float("nan")))
    peers = [p for p in peers if any(math.isfinite(x) for x in values[p])]
    if not labels or not peers:
        print("note: no fastlstm/peer ratios to chart (no peer installed or nothing timed)", file=sys.stderr)
        return False
    fig = Figure(figsize=(max(6.0, 0.9 * len(labels) + 2), 4.8), dpi=110)
    ax = fig.add_subplot()
    width = 0.8 / len(peers)
    for k, p in enumerate(peers):
        xs = [i + (k - (len(peers) - 1) / 2) * width for i in range(len(labels))]
        bars = ax.bar(xs, values[p], width, label=f"vs {p}")
        for b, val in zip(bars, values[p]):
            if math.isfinite(val):
                ax.annotate(f"{val:.2f}", (b.get_x() + b.get_width() / 2, val), ha="center", va="bottom", fontsize=7)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=7)
    ax.set_ylabel(f"time ratio fastlstm ({fl}) / peer")
    ax.set_title(f"fastlstm vs peers, < 1 = fastlstm faster ({results['date'][:10]}, {results['machine']['cpu']})",
                 fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    return True
