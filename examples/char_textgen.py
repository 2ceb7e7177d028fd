"""Character-level Shakespeare with fastlstm: Embedding -> LSTM(128, sequences) -> Dense(softmax), next-char
prediction. Reports validation perplexity against a unigram (character-frequency) baseline and samples text
with model.stream(batch_size=1).

    .venv/bin/python examples/char_textgen.py [--epochs 8] [--train-chars 1000000]
"""
import argparse
import math
import time

import _common  # noqa: F401  (import paths)
import numpy as np

import fastlstm
from datasets import shakespeare


def windows(ids, seqlen):
    n = (len(ids) - 1) // seqlen
    x = ids[:n * seqlen].reshape(n, seqlen)
    y = ids[1:n * seqlen + 1].reshape(n, seqlen)
    return x.astype(np.int32), y.astype(np.int32)


def sample(model, chars, prime, n, temperature, seed):
    """Prime the stream with `prime`, then draw n characters one step at a time."""
    cid = {c: i for i, c in enumerate(chars)}
    rng = np.random.default_rng(seed)
    s = model.stream(batch_size=1)
    probs = s.step(np.array([[cid[c] for c in prime]], np.int32))[0, -1]
    out = []
    for _ in range(n):
        logp = np.log(np.maximum(probs.astype(np.float64), 1e-12)) / temperature
        p = np.exp(logp - logp.max())
        k = rng.choice(len(p), p=p / p.sum())
        out.append(chars[k])
        probs = s.step(np.array([[k]], np.int32))[0, -1]
    return prime + "".join(out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--train-chars", type=int, default=1_000_000)
    p.add_argument("--val-chars", type=int, default=100_000)
    p.add_argument("--seqlen", type=int, default=100)
    p.add_argument("--units", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    _common.add_threads_arg(p)
    a = p.parse_args()
    _common.set_threads(a.threads)

    text = shakespeare()
    chars = sorted(set(text))
    lut = {c: i for i, c in enumerate(chars)}
    enc = np.fromiter((lut[c] for c in text), np.int32, len(text))
    train, val = enc[:a.train_chars], enc[-a.val_chars:]   # val: the end of the corpus, never trained on
    x_tr, y_tr = windows(train, a.seqlen)
    x_va, y_va = windows(val, a.seqlen)
    V = len(chars)
    print(f"{len(text):,} chars, {V} symbols; train {len(x_tr)} x {a.seqlen}, val {len(x_va)} x {a.seqlen}")

    counts = np.bincount(train, minlength=V) + 1.0
    unigram_ppl = math.exp(-np.mean(np.log(counts / counts.sum())[val[1:]]))

    fastlstm.set_random_seed(0)
    model = fastlstm.Sequential([fastlstm.Input((None,), dtype="int32"),
                                 fastlstm.layers.Embedding(V, 32),
                                 fastlstm.layers.LSTM(a.units, return_sequences=True),
                                 fastlstm.layers.Dense(V, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    hist, secs = _common.fit_timed(model, x_tr, y_tr, a.epochs, a.batch_size, validation_data=(x_va, y_va))
    val_loss = model.evaluate(x_va, y_va, batch_size=256, verbose=0)
    val_loss = val_loss[0] if isinstance(val_loss, (list, tuple)) else val_loss
    ppl = math.exp(val_loss)
    print(f"fastlstm: val perplexity {ppl:.2f} per char (unigram baseline {unigram_ppl:.2f}); "
          f"{np.median(secs):.1f} s/epoch")
    text_out = sample(model, chars, "ROMEO.\n", 300, 0.8, seed=0)
    print("--- sample (temperature 0.8) ---\n" + text_out + "\n---")
    res = dict(config=vars(a), val_perplexity=ppl, unigram_perplexity=unigram_ppl,
               seconds_per_epoch=[round(s, 1) for s in secs], sample=text_out,
               target="val perplexity well below the unigram baseline", target_met=bool(ppl < unigram_ppl / 2))

    if _common.have_torch():
        import torch

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.emb = torch.nn.Embedding(V, 32)
                self.lstm = torch.nn.LSTM(32, a.units, batch_first=True)
                self.fc = torch.nn.Linear(a.units, V)

            def forward(self, x):
                return self.fc(self.lstm(self.emb(x))[0])      # logits (B, T, V)

        ce = torch.nn.CrossEntropyLoss()
        loss_fn = lambda logits, y: ce(logits.reshape(-1, V), y.reshape(-1))  # noqa: E731
        torch.manual_seed(0)
        net = Net()
        tsecs = _common.torch_fit(net, loss_fn, x_tr.astype(np.int64), y_tr.astype(np.int64), a.epochs,
                                  a.batch_size)
        logits = _common.torch_predict(net, x_va.astype(np.int64), 256)
        lp = logits - logits.max(-1, keepdims=True)
        lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
        t_ppl = math.exp(-np.take_along_axis(lp, y_va[..., None].astype(np.int64), -1).mean())
        res["torch"] = dict(version=torch.__version__, val_perplexity=t_ppl,
                            seconds_per_epoch=[round(s, 1) for s in tsecs])
        print(f"torch {torch.__version__}: val perplexity {t_ppl:.2f}, {np.median(tsecs):.1f} s/epoch")
    _common.write_results("char_textgen", res, hist, ylabel="cross-entropy (nats/char)")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.0f} s")
