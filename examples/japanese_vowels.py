"""UEA JapaneseVowels (9 speakers, 12 LPC channels, 7-29 steps) with masking: post-padded sequences,
Masking(0.0) -> LSTM(64) -> Dense(9, softmax). Target: test accuracy >= 0.95.

    .venv/bin/python examples/japanese_vowels.py [--epochs 40]
"""
import argparse
import time

import _common  # noqa: F401  (import paths)
import numpy as np

import fastlstm
from datasets import japanese_vowels
from fastlstm.text import pad_sequences


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--units", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    _common.add_threads_arg(p)
    a = p.parse_args()
    _common.set_threads(a.threads)

    Xtr, ytr, Xte, yte = japanese_vowels()
    classes = sorted(set(ytr))
    cid = {c: i for i, c in enumerate(classes)}
    y_tr, y_te = np.array([cid[c] for c in ytr]), np.array([cid[c] for c in yte])
    mu, sd = np.concatenate(Xtr).mean(0), np.concatenate(Xtr).std(0)
    # standardized values are never exactly 0.0 in every channel, so 0.0 rows are padding only
    pad = lambda X: pad_sequences([(x - mu) / sd for x in X], dtype="float32", padding="post", value=0.0)  # noqa
    x_tr, x_te = pad(Xtr), pad(Xte)
    T = max(x_tr.shape[1], x_te.shape[1])
    x_tr = np.pad(x_tr, ((0, 0), (0, T - x_tr.shape[1]), (0, 0)))
    x_te = np.pad(x_te, ((0, 0), (0, T - x_te.shape[1]), (0, 0)))
    print(f"{len(x_tr)} train / {len(x_te)} test sequences, {len(classes)} classes, padded to {T} steps")

    fastlstm.set_random_seed(0)
    model = fastlstm.Sequential([fastlstm.Input((None, 12)), fastlstm.layers.Masking(0.0),
                                 fastlstm.layers.LSTM(a.units),
                                 fastlstm.layers.Dense(len(classes), activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    t = time.perf_counter()
    h = model.fit(x_tr, y_tr, epochs=a.epochs, batch_size=a.batch_size, validation_data=(x_te, y_te),
                  verbose=0, seed=0)
    secs = time.perf_counter() - t
    loss, acc = model.evaluate(x_te, y_te, verbose=0)
    # masking check: a test sequence alone, unpadded, gives the same probabilities as padded in the batch
    p_batch = model.predict(x_te[:1])
    p_alone = model.predict(((Xte[0] - mu) / sd)[None].astype(np.float32))
    print(f"fastlstm: test accuracy {acc:.4f} ({secs:.1f} s for {a.epochs} epochs); "
          f"padded vs unpadded max |diff| {np.abs(p_batch - p_alone).max():.1e}")
    res = dict(config=vars(a), test_accuracy=float(acc), test_loss=float(loss), train_seconds=round(secs, 1),
               seconds_per_epoch=round(secs / a.epochs, 2), padded_vs_unpadded_maxdiff=float(np.abs(p_batch -
                                                                                                      p_alone).max()),
               target="test_accuracy >= 0.95", target_met=bool(acc >= 0.95))

    if _common.have_torch():
        import torch

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lstm = torch.nn.LSTM(12, a.units, batch_first=True)
                self.fc = torch.nn.Linear(a.units, len(classes))

            def forward(self, x):  # packed sequences = masking of post-padded rows
                lengths = (x.abs().sum(-1) != 0).sum(1).cpu()
                packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True,
                                                                 enforce_sorted=False)
                _, (h, _) = self.lstm(packed)
                return self.fc(h[-1])

        torch.manual_seed(0)
        net = Net()
        tsecs = _common.torch_fit(net, torch.nn.CrossEntropyLoss(), x_tr, y_tr.astype(np.int64), a.epochs,
                                  a.batch_size)
        t_acc = float(np.mean(_common.torch_predict(net, x_te).argmax(1) == y_te))
        res["torch"] = dict(version=torch.__version__, test_accuracy=t_acc, train_seconds=round(sum(tsecs), 1))
        print(f"torch {torch.__version__}: test accuracy {t_acc:.4f} ({sum(tsecs):.1f} s for {a.epochs} epochs)")
    _common.write_results("japanese_vowels", res, h.history)


if __name__ == "__main__":
    main()
