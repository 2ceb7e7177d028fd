"""Family "text": Keras pad_sequences, tf_keras Tokenizer and Keras 3 TextVectorization outputs on fixed inputs
-> tests/data/text/text_goldens.json (run with ~/kvenv/bin/python tools/make_goldens.py text)."""
import json
import os

import numpy as np

TEXTS = ["The movie was GREAT, great fun!", "I hated it... truly awful.", "", "Okay<br />film, not bad at all",
         "Unseen words: zyzzyva qwerty", "fun fun fun"]
SEQS = [[1, 2, 3], [4, 5], [], [6, 7, 8, 9, 10, 11], [12]]


def build(out, name_filter=""):
    import keras
    import tf_keras
    res = {"pad_sequences": [], "tokenizer": [], "text_vectorization": []}
    for kw in [{}, {"maxlen": 4}, {"maxlen": 4, "padding": "post"}, {"maxlen": 4, "truncating": "post"},
               {"maxlen": 3, "padding": "post", "truncating": "post", "value": -1}, {"maxlen": 8, "dtype": "float32"}]:
        y = keras.utils.pad_sequences(SEQS, **kw)
        res["pad_sequences"].append({"kwargs": kw, "output": y.tolist(), "dtype": str(y.dtype)})
    for kw in [{}, {"num_words": 6}, {"num_words": 6, "oov_token": "<OOV>"}, {"oov_token": "<OOV>", "lower": False},
               {"char_level": True}]:
        tok = tf_keras.preprocessing.text.Tokenizer(**kw)
        tok.fit_on_texts(TEXTS[:4])
        res["tokenizer"].append({"kwargs": kw, "json": tok.to_json(), "texts": TEXTS,
                                 "sequences": tok.texts_to_sequences(TEXTS)})
    for kw in [{}, {"output_sequence_length": 5}, {"standardize": "lower"}]:
        tv = keras.layers.TextVectorization(**kw)
        tv.adapt(TEXTS[:4])
        y = np.asarray(tv(TEXTS[:2] + TEXTS[3:]))
        res["text_vectorization"].append({"kwargs": kw, "vocabulary": tv.get_vocabulary(),
                                          "texts": TEXTS[:2] + TEXTS[3:], "output": y.tolist()})
    res["framework"] = {"keras": keras.__version__, "tf_keras": tf_keras.__version__}
    os.makedirs(os.path.join(out, "text"), exist_ok=True)
    with open(os.path.join(out, "text", "text_goldens.json"), "w") as f:
        json.dump(res, f, indent=1)
