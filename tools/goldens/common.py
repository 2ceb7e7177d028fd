"""Shared helpers for the fixture families: case folders and the suite manifest (same schema as
../shared/conformance/manifest.json, see tests/data/README.md)."""
import fcntl
import json
import os

import numpy as np


def case_dir(out, suite, name):
    d = os.path.join(out, suite, name)
    os.makedirs(d, exist_ok=True)
    return d


def save_npz(path, **arrays):
    np.savez(path, **{k: np.asarray(v) for k, v in arrays.items()})


def add_cases(out, suite, cases):
    """Merge `cases` (list of manifest dicts, keyed by 'name') into <out>/<suite>/manifest.json, sorted by name."""
    path = os.path.join(out, suite, "manifest.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = {"suite": f"fastlstm {suite} fixtures (real exports, tools/make_goldens.py)", "cases": []}
        if os.path.exists(path):
            with open(path) as f:
                manifest = json.load(f)
        by_name = {c["name"]: c for c in manifest["cases"]}
        for c in cases:
            by_name[c["name"]] = c
        manifest["cases"] = [by_name[k] for k in sorted(by_name)]
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(manifest, f, indent=1, default=_jsonable)
        os.replace(tmp, path)
    os.remove(path + ".lock") if os.path.exists(path + ".lock") else None


def _jsonable(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))
