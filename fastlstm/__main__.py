"""The `fastlstm` command line (also `python -m fastlstm`).

    fastlstm info                                   version, backend, BLAS, threads, CPU features
    fastlstm summary MODEL                          layers / inputs / outputs of a model file
    fastlstm predict MODEL --input x.npy|x.npz|-    run a model; prints outputs or saves them (--output)
    fastlstm convert MODEL OUT.onnx|OUT.keras       convert between Keras and ONNX
    fastlstm demo                                   the bundled IMDB sentiment demo
    fastlstm bench [--quick] [--threads 1,2]        benchmark against torch / onnxruntime

Exit status: 0 success, 1 the model or input was rejected, 2 bad command line.
"""
import argparse
import io
import os
import sys


def _load(path, architecture=None):
    import fastlstm
    return fastlstm.load(path, architecture=architecture)


def _read_input(spec, model):
    import numpy as np
    if spec == "-":
        data = sys.stdin.buffer.read()
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    else:
        if not os.path.exists(spec):
            raise ValueError(f"input file {spec!r} does not exist")
        arr = np.load(spec, allow_pickle=False)
    if hasattr(arr, "files"):  # npz: by input name, else in order
        names = list(model.input_names)
        if all(n in arr.files for n in names):
            return {n: arr[n] for n in names}
        if len(arr.files) != len(names):
            raise ValueError(f"{spec}: the npz holds {arr.files}, the model expects inputs {names}")
        return [arr[k] for k in arr.files] if len(names) > 1 else arr[arr.files[0]]
    return arr


def cmd_info(a):
    import fastlstm
    fastlstm.info(print_=True)
    return 0


def cmd_summary(a):
    model = _load(a.model, a.architecture)
    model.summary()
    print(f"inputs:  {model.input_names}")
    print(f"outputs: {model.output_names}")
    return 0


def cmd_predict(a):
    import numpy as np
    model = _load(a.model, a.architecture)
    x = _read_input(a.input, model)
    y = model.predict(x, batch_size=a.batch_size)
    outs = y if isinstance(y, list) else [y]
    if a.output:
        if a.output.endswith(".npz"):
            np.savez(a.output, **dict(zip(model.output_names, outs)))
        elif len(outs) == 1:
            np.save(a.output, outs[0])
        else:
            raise ValueError(f"the model has {len(outs)} outputs: save them with an .npz --output")
        print(f"saved {', '.join(f'{n} {o.shape}' for n, o in zip(model.output_names, outs))} to {a.output}",
              file=sys.stderr)
    else:
        np.set_printoptions(precision=6, suppress=True, threshold=200)
        for n, o in zip(model.output_names, outs):
            print(f"{n} {o.shape} {o.dtype}:\n{o}")
    return 0


def cmd_convert(a):
    model = _load(a.model, a.architecture)
    out = a.out
    if out.endswith(".onnx"):
        if not hasattr(model, "export_onnx"):
            raise ValueError("this model cannot be exported to ONNX")
        model.export_onnx(out)
    elif out.endswith(".keras"):
        if not hasattr(model, "save"):
            raise ValueError("this model cannot be saved as .keras (ONNX -> Keras is not supported)")
        model.save(out)
    else:
        raise ValueError(f"output must end in .onnx or .keras, got {out!r}")
    print(f"wrote {out}", file=sys.stderr)
    return 0


def cmd_demo(a):
    from .demo import main as demo_main
    return demo_main(quick=a.quick)


def cmd_bench(a):
    from .bench import main as bench_main
    return bench_main(a)


def build_parser():
    p = argparse.ArgumentParser(prog="fastlstm", description="Fast CPU LSTM/GRU engine: run, convert and benchmark "
                                                             "Keras and ONNX models without TensorFlow.")
    from . import __version__
    p.add_argument("--version", action="version", version=f"fastlstm {__version__}")
    p.add_argument("--backend", choices=["auto", "cython", "numba", "reference"], help="kernel backend")
    p.add_argument("--threads", type=int, help="threads for BLAS and the kernels (default: all cores)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    s = sub.add_parser("info", help="version, backend, BLAS, threads, CPU features")
    s.set_defaults(func=cmd_info)
    for name, func, hlp in (("summary", cmd_summary, "describe a model file"),
                            ("predict", cmd_predict, "run a model on inputs from .npy/.npz or stdin")):
        s = sub.add_parser(name, help=hlp)
        s.add_argument("model", help=".keras, .h5, .weights.h5 (with --architecture) or .onnx")
        s.add_argument("--architecture", help="model.to_json() file for weights-only files")
        s.set_defaults(func=func)
        if name == "predict":
            s.add_argument("--input", "-i", required=True, help="x.npy, x.npz (arrays by input name) or - for "
                                                                  "an .npy on stdin")
            s.add_argument("--output", "-o", help="save outputs to .npy (one output) or .npz (by output name)")
            s.add_argument("--batch-size", type=int, default=None)
    s = sub.add_parser("convert", help="convert MODEL to OUT.onnx or OUT.keras")
    s.add_argument("model")
    s.add_argument("out")
    s.add_argument("--architecture")
    s.set_defaults(func=cmd_convert)
    s = sub.add_parser("demo", help="IMDB sentiment demo with the bundled model")
    s.add_argument("--quick", action="store_true", help="skip the peer comparison")
    s.set_defaults(func=cmd_demo)
    s = sub.add_parser("bench", help="benchmark fastlstm against torch and onnxruntime")
    from .bench import add_arguments as add_bench_arguments
    add_bench_arguments(s)
    s.set_defaults(func=cmd_bench)
    return p


def main(argv=None):
    p = build_parser()
    a = p.parse_args(argv)
    import fastlstm
    try:
        if a.backend:
            fastlstm.set_backend(a.backend)
        if a.threads:
            fastlstm.set_num_threads(a.threads)
        return a.func(a) or 0
    except (ValueError, TypeError, ImportError, OSError) as e:
        print(f"fastlstm {a.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
