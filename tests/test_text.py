"""fastlstm.text against outputs recorded from real Keras (tests/data/text/text_goldens.json, tools/goldens/text.py)."""
import json
import os

import numpy as np
import pytest

from fastlstm.text import TextVectorization, Tokenizer, Vocabulary, pad_sequences

GOLD = json.load(open(os.path.join(os.path.dirname(__file__), "data", "text", "text_goldens.json")))
SEQS = [[1, 2, 3], [4, 5], [], [6, 7, 8, 9, 10, 11], [12]]


@pytest.mark.parametrize("case", GOLD["pad_sequences"], ids=lambda c: str(c["kwargs"]))
def test_pad_sequences_matches_keras(case):
    y = pad_sequences(SEQS, **case["kwargs"])
    assert str(y.dtype) == case["dtype"]
    np.testing.assert_array_equal(y, np.array(case["output"]))


def test_pad_sequences_errors_and_vectors():
    with pytest.raises(ValueError, match='Padding type "middle"'):
        pad_sequences(SEQS, padding="middle")
    with pytest.raises(ValueError, match="non-iterable"):
        pad_sequences([1, 2])
    y = pad_sequences([np.ones((2, 3)), np.ones((4, 3))], maxlen=3, dtype="float32")
    assert y.shape == (2, 3, 3) and y[0, 0].sum() == 0


@pytest.mark.parametrize("case", GOLD["tokenizer"], ids=lambda c: str(c["kwargs"]))
def test_tokenizer_from_json_matches_keras(case):
    tok = Tokenizer.from_json(case["json"])
    assert tok.texts_to_sequences(case["texts"]) == case["sequences"]


@pytest.mark.parametrize("case", GOLD["text_vectorization"], ids=lambda c: str(c["kwargs"]))
def test_text_vectorization_matches_keras(case):
    kw = {k: v for k, v in case["kwargs"].items()}
    tv = TextVectorization(case["vocabulary"], **kw)
    np.testing.assert_array_equal(tv(case["texts"]), np.array(case["output"]))


def test_vocabulary_keras_imdb_conventions(tmp_path):
    v = Vocabulary.fit(["a b b c<br />c c", "c d"], num_words=5)
    assert v.words == ["c", "b"] and v.size == 5
    assert v.encode("C b zzz") == [1, 3, 4, 2]
    x = v.encode_batch(["b", "c " * 10], maxlen=4)
    np.testing.assert_array_equal(x, [[0, 0, 1, 4], [3, 3, 3, 3]])
    p = tmp_path / "v.json"
    p.write_text(v.to_json())
    assert Vocabulary.from_json(str(p)).index == v.index
