"""`fastlstm.load`: sniff the file format from its content and hand it to the right loader.

    zip (PK\\x03\\x04) or a directory with config.json  -> Keras .keras         (loaders/keras.py)
    HDF5 signature (\\x89HDF\\r\\n\\x1a\\n)              -> Keras .h5 / .weights.h5 (loaders/keras.py)
    anything else                                      -> ONNX protobuf         (loaders/onnx.py)
"""
import os

from ..errors import ModelLoadError

ZIP_MAGIC = b"PK\x03\x04"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def sniff(path):
    """'keras_dir', 'keras_zip', 'hdf5' or 'onnx' (by content, not by file name)."""
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "config.json")):
            return "keras_dir"
        raise ModelLoadError(f"{path}: a directory without config.json is not a Keras model folder")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read the file ({e.strerror or e})") from e
    if not head:
        raise ModelLoadError(f"{path}: the file is empty")
    if head.startswith(ZIP_MAGIC):
        return "keras_zip"
    if head == HDF5_MAGIC:
        return "hdf5"
    return "onnx"


def load(path, architecture=None, compile=False, safe_mode=True):
    """Load a model from a Keras (.keras zip or folder, .h5, .weights.h5 + architecture) or ONNX file.

    Parameters
    ----------
    path : str or path-like
    architecture : str, optional
        For weights-only files: the model's `to_json()` as a path or as the JSON string itself.

    Returns
    -------
    Model (Keras files) or OnnxModel (ONNX files): both have predict, input_names, output_names, summary.

    Raises
    ------
    ModelLoadError
        The file is broken, unsafe (Lambda layers, custom objects) or uses an unsupported layer/op.
    """
    path = os.fspath(path)
    kind = sniff(path)
    if kind == "onnx":
        if architecture is not None:
            raise ModelLoadError(f"{path}: `architecture` is only for Keras weights files; this is not HDF5/zip")
        from . import onnx as onnx_loader
        return onnx_loader.load_onnx(path)
    from . import keras as keras_loader
    return keras_loader.load_keras(path, kind, architecture=architecture)
