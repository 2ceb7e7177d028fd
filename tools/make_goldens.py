"""Regenerate the committed test fixtures under tests/data with the REAL exporters (dev machine only, never CI).

Each family lives in tools/goldens/<family>.py and runs in the venv that has its exporter
(../shared/docs/formats.md section 9):

    ~/kvenv/bin/python tools/make_goldens.py keras        # Keras 3 + tf_keras files        -> tests/data/keras/
    ~/kvenv/bin/python tools/make_goldens.py onnx_keras   # tf2onnx + Keras 3 model.export   -> tests/data/onnx/
    ~/tvenv/bin/python tools/make_goldens.py onnx_torch   # torch.onnx.export (TS + dynamo)   -> tests/data/onnx/
    ~/kvenv/bin/python tools/make_goldens.py train        # Keras optimizer steps             -> tests/data/train/
    ~/kvenv/bin/python tools/make_goldens.py training_layers  # fits/gradients of the layers around the RNNs -> tests/data/train_layers/
    ~/kvenv/bin/python tools/make_goldens.py text         # pad_sequences / Tokenizer / TextVectorization -> tests/data/text/

A family writes one folder per case (model file(s), input.npz, expected.npz) and merges its cases into
the suite's manifest.json (same schema as ../shared/conformance/manifest.json; tests/data/README.md).
"""
import argparse
import importlib
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
FAMILIES = ("keras", "onnx_keras", "onnx_torch", "train", "training_layers", "text")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("family", choices=FAMILIES)
    ap.add_argument("-k", default="", help="only cases whose name contains this")
    ap.add_argument("--out", default=os.path.join(HERE, "..", "tests", "data"))
    a = ap.parse_args(argv)
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, HERE)
    mod = importlib.import_module(f"goldens.{a.family}")
    mod.build(os.path.abspath(a.out), a.k)


if __name__ == "__main__":
    main()
