"""Text in, token ids out, without TensorFlow: Keras `pad_sequences`, Keras `Tokenizer.to_json()` files,
`TextVectorization` vocabularies, and a small word vocabulary for the examples (Keras IMDB conventions)."""
import json
import re
import string
from collections import Counter

import numpy as np

__all__ = ["pad_sequences", "Tokenizer", "TextVectorization", "Vocabulary", "text_to_word_sequence"]

KERAS_FILTERS = '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n'


def pad_sequences(sequences, maxlen=None, dtype="int32", padding="pre", truncating="pre", value=0.0):
    """Pad / truncate a list of sequences to one length (Keras semantics).

    Parameters
    ----------
    sequences : list of sequences (lists or arrays; elements may be scalars or arrays of one shape)
    maxlen : int, optional. Default: the longest sequence.
    dtype : output dtype. padding, truncating : "pre" or "post". value : the padding value.

    Returns
    -------
    array of shape (len(sequences), maxlen) + element shape
    """
    if not hasattr(sequences, "__len__"):
        raise ValueError("`sequences` must be iterable")
    for name, v in (("padding", padding), ("truncating", truncating)):
        if v not in ("pre", "post"):
            raise ValueError(f'{name.capitalize()} type "{v}" not understood; expected "pre" or "post"')
    lengths, sample_shape = [], ()
    for s in sequences:
        try:
            lengths.append(len(s))
        except TypeError as e:
            raise ValueError(f"`sequences` must be a list of iterables; found non-iterable {s!r}") from e
        if len(s) and not sample_shape:
            sample_shape = np.asarray(s).shape[1:]
    if maxlen is None:
        maxlen = max(lengths, default=0)
    maxlen = int(maxlen)
    is_str = np.issubdtype(np.dtype(dtype), np.str_) or np.issubdtype(np.dtype(dtype), np.object_)
    if isinstance(value, str) and not is_str:
        raise ValueError(f"`dtype` {dtype} is not compatible with `value`'s type {type(value)}; "
                         f"use dtype=object for variable-length strings")
    out = np.full((len(sequences), maxlen) + sample_shape, value, dtype=dtype)
    for i, s in enumerate(sequences):
        if not len(s) or maxlen == 0:
            continue
        trunc = s[-maxlen:] if truncating == "pre" else s[:maxlen]
        trunc = np.asarray(trunc, dtype=dtype)
        if trunc.shape[1:] != sample_shape:
            raise ValueError(f"shape of sample {trunc.shape[1:]} of sequence at position {i} differs from the "
                             f"expected shape {sample_shape}")
        if padding == "post":
            out[i, :len(trunc)] = trunc
        else:
            out[i, -len(trunc):] = trunc
    return out


def text_to_word_sequence(text, filters=KERAS_FILTERS, lower=True, split=" "):
    """Keras's word splitter: lower-case, turn every filter character into `split`, split, drop empties."""
    if lower:
        text = text.lower()
    text = text.translate(str.maketrans({c: split for c in filters}))
    return [w for w in text.split(split) if w]


class Tokenizer:
    """A Keras `Tokenizer` restored from its `to_json()` (texts_to_sequences with Keras's exact rules)."""

    def __init__(self, num_words=None, filters=KERAS_FILTERS, lower=True, split=" ", char_level=False,
                 oov_token=None, word_index=None, **_):
        self.num_words, self.filters, self.lower, self.split = num_words, filters, lower, split
        self.char_level, self.oov_token = char_level, oov_token
        self.word_index = dict(word_index or {})

    @classmethod
    def from_json(cls, json_string_or_path):
        """Read `tokenizer.to_json()` output (the JSON text, or a path to a file holding it)."""
        text = json_string_or_path
        if not str(text).lstrip().startswith("{"):
            with open(text, encoding="utf-8") as f:
                text = f.read()
        data = json.loads(text)
        if data.get("class_name") != "Tokenizer":
            raise ValueError(f"not a Keras Tokenizer JSON (class_name={data.get('class_name')!r})")
        cfg = dict(data["config"])
        wi = cfg.get("word_index")
        cfg["word_index"] = json.loads(wi) if isinstance(wi, str) else (wi or {})
        return cls(**cfg)

    def texts_to_sequences(self, texts):
        oov = self.word_index.get(self.oov_token) if self.oov_token is not None else None
        out = []
        for text in texts:
            if self.char_level:
                words = text.lower() if self.lower else text
            else:
                words = text_to_word_sequence(text, self.filters, self.lower, self.split)
            seq = []
            for w in words:
                i = self.word_index.get(w)
                if i is not None and not (self.num_words and i >= self.num_words):
                    seq.append(i)
                elif oov is not None:
                    seq.append(oov)
            out.append(seq)
        return out


_PUNCT = re.compile("[" + re.escape(string.punctuation) + "]")


class TextVectorization:
    """Keras `TextVectorization` in int mode from its vocabulary (`layer.get_vocabulary()` list, or the
    vocabulary file Keras writes, one token per line). Index 0 = padding "", 1 = "[UNK]" (OOV).

    standardize: "lower_and_strip_punctuation" (Keras default), "lower", "strip_punctuation" or None.
    """

    def __init__(self, vocabulary, standardize="lower_and_strip_punctuation", split="whitespace",
                 output_sequence_length=None, max_tokens=None):
        if isinstance(vocabulary, str):
            with open(vocabulary, encoding="utf-8") as f:
                vocabulary = [line.rstrip("\n") for line in f]
        vocab = list(vocabulary)
        if not vocab or vocab[0] != "":
            vocab = ["", "[UNK]"] + [v for v in vocab if v not in ("", "[UNK]")]
        if max_tokens:
            vocab = vocab[:max_tokens]
        self.vocabulary = vocab
        self.index = {w: i for i, w in enumerate(vocab)}
        self.standardize, self.split = standardize, split
        self.output_sequence_length = output_sequence_length

    def _standardize(self, text):
        if self.standardize in ("lower", "lower_and_strip_punctuation"):
            text = text.lower()
        if self.standardize in ("strip_punctuation", "lower_and_strip_punctuation"):
            text = _PUNCT.sub("", text)
        return text

    def __call__(self, texts):
        """list of str -> int64 array (batch, output_sequence_length or longest), post-padded with 0."""
        single = isinstance(texts, str)
        seqs = []
        for t in [texts] if single else texts:
            t = self._standardize(t)
            words = t.split() if self.split == "whitespace" else list(t) if self.split == "character" else t.split(self.split)
            seqs.append([self.index.get(w, 1) for w in words])
        out = pad_sequences(seqs, maxlen=self.output_sequence_length, dtype="int64", padding="post",
                            truncating="post")
        return out[0] if single else out


_WORD = re.compile(r"[a-z0-9']+")


class Vocabulary:
    """A word vocabulary with Keras IMDB conventions: 0 = padding, 1 = start, 2 = out-of-vocabulary,
    words from 3 on by decreasing frequency. Text is lower-cased and `<br />` removed before splitting.
    """

    PAD, START, OOV, OFFSET = 0, 1, 2, 3

    def __init__(self, words=()):
        self.words = list(words)                      # words[k] has id k + OFFSET
        self.index = {w: k + self.OFFSET for k, w in enumerate(self.words)}

    @staticmethod
    def split(text):
        return _WORD.findall(text.lower().replace("<br />", " "))

    @classmethod
    def fit(cls, texts, num_words=20000):
        """The `num_words - 3` most frequent words of `texts` (ties by first appearance)."""
        counts = Counter()
        for t in texts:
            counts.update(cls.split(t))
        return cls([w for w, _ in counts.most_common(max(0, num_words - cls.OFFSET))])

    @property
    def size(self):
        return len(self.words) + self.OFFSET

    def encode(self, text, start=True):
        ids = [self.index.get(w, self.OOV) for w in self.split(text)]
        return [self.START] + ids if start else ids

    def encode_batch(self, texts, maxlen=200, padding="pre", truncating="pre"):
        """Texts -> int32 array (batch, maxlen), pre-padded and pre-truncated like the Keras IMDB pipeline."""
        return pad_sequences([self.encode(t) for t in texts], maxlen=maxlen, padding=padding,
                             truncating=truncating)

    def to_json(self):
        return json.dumps({"format": "fastlstm.Vocabulary", "offset": self.OFFSET, "words": self.words})

    @classmethod
    def from_json(cls, text_or_path):
        text = text_or_path
        if not str(text).lstrip().startswith("{"):
            with open(text, encoding="utf-8") as f:
                text = f.read()
        data = json.loads(text)
        if data.get("format") != "fastlstm.Vocabulary":
            raise ValueError("not a fastlstm vocabulary JSON")
        return cls(data["words"])
