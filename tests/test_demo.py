"""The bundled IMDB demo: it runs, and every score it prints is what model.predict / the stream give."""
import re

import numpy as np
import pytest

from fastlstm import demo


@pytest.fixture(scope="module")
def demo_run():
    lines = []
    rc = demo.main(quick=True, out=lines.append)
    return rc, "\n".join(lines)


def test_demo_returns_zero(demo_run):
    rc, text = demo_run
    assert rc == 0
    assert "Latency" in text and "Streaming" in text


def test_printed_scores_equal_predict(demo_run):
    _, text = demo_run
    model, vocab = demo.load_bundled()
    reviews, _ = demo.validation_reviews()
    texts = [t for t, _ in reviews] + demo.TYPED_REVIEWS
    expected = model.predict(vocab.encode_batch(texts, maxlen=demo.MAXLEN))[:, 0]
    printed = [float(s) for s in re.findall(r"^  score (\d\.\d{4})", text, re.M)]
    assert len(printed) == len(texts)
    np.testing.assert_allclose(printed, expected, atol=6e-5)
    labels = re.findall(r"^  score \d\.\d{4}  (positive|negative)", text, re.M)
    assert labels == ["positive" if p >= 0.5 else "negative" for p in expected]


def test_streamed_scores_equal_predict_on_prefixes(demo_run):
    _, text = demo_run
    model, vocab = demo.load_bundled()
    ids = vocab.encode(demo.STREAM_REVIEW)
    running = [float(s) for s in re.findall(r"running score (\d\.\d{4})", text)]
    assert len(running) == len(ids)
    expected = [float(model.predict(np.array([ids[:k + 1]], np.int32))[0, 0]) for k in range(len(ids))]
    np.testing.assert_allclose(running, expected, atol=6e-5)


def test_bundled_model_separates_clear_reviews():
    model, vocab = demo.load_bundled()
    p = model.predict(vocab.encode_batch(demo.TYPED_REVIEWS[:2], maxlen=demo.MAXLEN))[:, 0]
    assert p[0] > 0.5 > p[1]
