"""IMDB sentiment with fastlstm: Embedding -> LSTM -> Dense(sigmoid), trained on the fixed 20k/5k split.

    .venv/bin/python examples/imdb_sentiment.py [--epochs 3] [--units 64] [--torch-epochs 1]

Target: validation accuracy >= 0.85. Reports seconds per epoch, and (torch installed) the same architecture
trained in torch for --torch-epochs epochs on the same data: its seconds per epoch and val accuracy.
"""
import argparse
import time

import _common  # noqa: F401  (import paths)
import numpy as np

import fastlstm
from datasets import imdb_split
from fastlstm.text import Vocabulary


def torch_model(vocab_size, embed, units):
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(vocab_size, embed)
            self.lstm = torch.nn.LSTM(embed, units, batch_first=True)
            self.fc = torch.nn.Linear(units, 1)

        def forward(self, ids):
            _, (h, _) = self.lstm(self.emb(ids))
            return self.fc(h[-1])[:, 0]      # logits

    return Net()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--num-words", type=int, default=20000)
    p.add_argument("--embed", type=int, default=64)
    p.add_argument("--units", type=int, default=64)
    p.add_argument("--maxlen", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--torch-epochs", type=int, default=1)
    _common.add_threads_arg(p)
    a = p.parse_args()
    _common.set_threads(a.threads)

    tr, y_tr, va, y_va = imdb_split()
    vocab = Vocabulary.fit(tr, num_words=a.num_words)
    x_tr, x_va = vocab.encode_batch(tr, maxlen=a.maxlen), vocab.encode_batch(va, maxlen=a.maxlen)
    y_tr, y_va = y_tr.astype(np.float32), y_va.astype(np.float32)
    print(f"{len(x_tr)} train / {len(x_va)} val reviews, vocabulary {vocab.size}, maxlen {a.maxlen}")

    fastlstm.set_random_seed(0)
    model = fastlstm.Sequential([fastlstm.Input((None,), dtype="int32"),
                                 fastlstm.layers.Embedding(vocab.size, a.embed),
                                 fastlstm.layers.LSTM(a.units),
                                 fastlstm.layers.Dense(1, activation="sigmoid")])
    model.compile("adam", "binary_crossentropy", metrics=["accuracy"])
    hist, secs = _common.fit_timed(model, x_tr, y_tr, a.epochs, a.batch_size, validation_data=(x_va, y_va))
    val_loss, val_acc = model.evaluate(x_va, y_va, batch_size=256, verbose=0)
    print(f"fastlstm: val accuracy {val_acc:.4f}, {np.median(secs):.0f} s/epoch")

    res = dict(config=vars(a), params=model.count_params(), val_accuracy=float(val_acc), val_loss=float(val_loss),
               best_val_accuracy=float(max(hist["val_accuracy"])), seconds_per_epoch=[round(s, 1) for s in secs],
               target="val_accuracy >= 0.85", target_met=bool(val_acc >= 0.85))
    if _common.have_torch() and a.torch_epochs > 0:
        import torch
        torch.manual_seed(0)
        net = torch_model(vocab.size, a.embed, a.units)
        tsecs = _common.torch_fit(net, torch.nn.BCEWithLogitsLoss(), x_tr.astype(np.int64), y_tr,
                                  a.torch_epochs, a.batch_size)
        t_acc = float(np.mean((_common.torch_predict(net, x_va.astype(np.int64)) > 0) == (y_va > 0.5)))
        res["torch"] = dict(version=torch.__version__, threads=torch.get_num_threads(), epochs=a.torch_epochs,
                            val_accuracy=t_acc, seconds_per_epoch=[round(s, 1) for s in tsecs],
                            fastlstm_val_accuracy_same_epochs=float(hist["val_accuracy"][a.torch_epochs - 1]))
        print(f"torch {torch.__version__}: val accuracy {t_acc:.4f} after {a.torch_epochs} epoch(s), "
              f"{np.median(tsecs):.0f} s/epoch (fastlstm {np.median(secs[:a.torch_epochs]):.0f} s/epoch, "
              f"val accuracy {hist['val_accuracy'][a.torch_epochs - 1]:.4f} after as many)")
    _common.write_results("imdb_sentiment", res, hist)


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.0f} s")
