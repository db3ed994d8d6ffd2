"""The concept vocabulary of a SpLiCE dictionary: the ``K`` concepts, and their ground-truth factor where known.

On the ``tiny`` profile the vocabulary is the generated world's own caption grammar (:func:`world_vocabulary`: every
synonym, its caption phrase, the filler nouns), each concept labelled with the factor and value it names; on the
``paper`` profile it is a user-supplied word list (:func:`read_vocabulary`, e.g. SpLiCE's LAION vocabulary). A
vocabulary is checked against the tokenizer's context length before it is embedded (:func:`check_vocabulary`).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mmlib.core.errors import ArgumentTypeError, InputError, InputNotFoundError, MissingKeyError
from mmlib.core.validation import as_path, is_int
from mmlib.data.protocol import utf8_error_line
from mmlib.data.world import CAPTION_PREFIXES, OBJECT_NOUNS, Factor, default_factors, phrase
from mmlib.models.embed import context_length

__all__ = ["VocabularyError", "ConceptVocabulary", "world_vocabulary", "read_vocabulary", "tag_vocabulary",
           "check_vocabulary"]

_STOPWORDS = frozenset({"a", "an", "the", "of", "on", "in", "by", "to", "that", "is"})

class VocabularyError(InputError):
    """A concept vocabulary is unusable: empty, with duplicates, blank entries or over-long concepts."""


@dataclasses.dataclass(frozen=True)
class ConceptVocabulary:
    """The ``K`` concepts of a SpLiCE dictionary, with their ground-truth factor where known.

    Attributes
    ----------
    concepts : tuple of str
        The concept texts (embedded as they are, or through a template, see :func:`build_splice`).
    factors : tuple of (str or None)
        Per concept, the world factor it names (``None`` for unknown / filler words); defaults to all
        ``None`` (a vocabulary read from a file).
    values : tuple of (int or None)
        Per concept, the index of the factor value it names (``None`` where unknown).
    source : str
        Where the vocabulary came from (``"world"``, a file path, ...).

    Raises
    ------
    VocabularyError
        if empty, if a concept is blank, or if concepts repeat (the repeated ones are named).
    """

    concepts: tuple[str, ...]
    factors: tuple[str | None, ...] = ()
    values: tuple[int | None, ...] = ()
    source: str = "custom"

    def __post_init__(self) -> None:
        concepts = tuple(str(c) for c in self.concepts)
        object.__setattr__(self, "concepts", concepts)
        if not concepts:
            raise VocabularyError(f"the concept vocabulary ({self.source}) is empty: SpLiCE needs at least one "
                                  "concept")
        blank = [i for i, c in enumerate(concepts) if not c.strip()]
        if blank:
            raise VocabularyError(f"the concept vocabulary ({self.source}) has blank concepts at positions "
                                  f"{blank[:10]}{' ...' if len(blank) > 10 else ''}")
        repeated = [c for c, k in Counter(concepts).items() if k > 1]
        if repeated:
            raise VocabularyError(f"the concept vocabulary ({self.source}) has {len(repeated)} duplicate "
                                  f"concept(s): {', '.join(map(repr, repeated[:20]))}"
                                  f"{' ...' if len(repeated) > 20 else ''}; each concept must appear once")
        for name in ("factors", "values"):
            given = tuple(getattr(self, name))
            if not given:
                given = (None,) * len(concepts)
            if len(given) != len(concepts):
                raise VocabularyError(f"{len(concepts)} concepts but {len(given)} {name}")
            object.__setattr__(self, name, given)

    def __len__(self) -> int:
        return len(self.concepts)

    def index(self, concept: str) -> int:
        """Position of ``concept`` (``KeyError`` with close matches otherwise)."""
        try:
            return self.concepts.index(concept)
        except ValueError:
            close = difflib.get_close_matches(concept, self.concepts, n=5, cutoff=0.6)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise MissingKeyError(f"concept {concept!r} is not in the vocabulary.{hint}") from None

    def indices(self, concepts: Sequence[str] = (), factors: Sequence[str] = ()) -> np.ndarray:
        """Sorted positions of the named ``concepts`` and of every concept of the named ``factors``."""
        known = {f for f in self.factors if f is not None}
        unknown = [f for f in factors if f not in known]
        if unknown:
            raise MissingKeyError(f"no concept of factor(s) {unknown}; factors in this vocabulary: {sorted(known)}")
        picked = {self.index(c) for c in concepts}
        picked |= {i for i, f in enumerate(self.factors) if f is not None and f in set(factors)}
        return np.array(sorted(picked), dtype=np.int64)

    def table(self) -> pd.DataFrame:
        """One row per concept: ``concept``, ``factor``, ``value``."""
        return pd.DataFrame({"concept": self.concepts, "factor": self.factors, "value": self.values})


def world_vocabulary(factors: Sequence[Factor] | None = None, phrases: bool = True,
                     grammar_words: bool = True) -> ConceptVocabulary:
    """The ``tiny`` profile's vocabulary: the words and phrases of the generated world's caption grammar.

    Parameters
    ----------
    factors : sequence of Factor, optional
        The world's factors (default :func:`mmlib.data.world.default_factors`). Every synonym of every value becomes
        a concept labelled with its factor and value.
    phrases : bool
        Also add the caption clause of each clause-type synonym (``"on a black background"``,
        ``"owned by alice"``, ...), labelled like the word.
    grammar_words : bool
        Also add the grammar's filler words (object nouns such as ``"thing"``, prefix nouns such as
        ``"photo"``), with factor ``None``.

    Raises
    ------
    VocabularyError
        if two factors share a synonym (the duplicates are named).
    """
    factors = tuple(default_factors() if factors is None else factors)
    concepts: list[str] = []
    labels: list[str | None] = []
    values: list[int | None] = []
    for f in factors:
        for v, synonyms in enumerate(f.synonyms):
            for word in synonyms:
                concepts.append(word)
                labels.append(f.name)
                values.append(v)
    if phrases:
        for f in factors:
            for v, synonyms in enumerate(f.synonyms):
                for word in synonyms:
                    clause = phrase(f.name, word)
                    if clause != word:
                        concepts.append(clause)
                        labels.append(f.name)
                        values.append(v)
    if grammar_words:
        fillers = list(OBJECT_NOUNS) + [w for p in CAPTION_PREFIXES for w in p.split() if w not in _STOPWORDS]
        for word in fillers:
            if word not in concepts:
                concepts.append(word)
                labels.append(None)
                values.append(None)
    return ConceptVocabulary(tuple(concepts), tuple(labels), tuple(values), source="world")


def tag_vocabulary(vocabulary: ConceptVocabulary, factors: Sequence[Factor]) -> ConceptVocabulary:
    """``vocabulary`` with each concept that names a value of one of ``factors`` labelled with that factor and value.

    A user's word list (:func:`read_vocabulary`) carries no labels, so analyses that ask for "every concept of the
    factor colour" (the spurious-correlation audit, the intervention) would find none. A concept is tagged when,
    lower-cased and stripped, it equals a synonym of a value or that synonym's caption clause (``"red"``,
    ``"on a black background"``); labels already present are kept, and a concept that names values of two factors
    is left untagged (ambiguous). The other concepts keep factor ``None``.

    Raises
    ------
    InputError
        if ``vocabulary`` is not a :class:`ConceptVocabulary`.
    """
    if not isinstance(vocabulary, ConceptVocabulary):
        raise InputError(f"vocabulary must be a ConceptVocabulary, got {type(vocabulary).__name__}")
    names: dict[str, set[tuple[str, int]]] = {}
    for f in factors:
        for v, synonyms in enumerate(f.synonyms):
            for word in synonyms:
                for text in {word, phrase(f.name, word)}:
                    names.setdefault(text.strip().lower(), set()).add((f.name, v))
    labels, values = list(vocabulary.factors), list(vocabulary.values)
    for i, concept in enumerate(vocabulary.concepts):
        found = names.get(concept.strip().lower(), set())
        if labels[i] is None and len({name for name, _ in found}) == 1 and len(found) == 1:
            (labels[i], values[i]), = found
    return dataclasses.replace(vocabulary, factors=tuple(labels), values=tuple(values))


def read_vocabulary(path: str | Path, size: int | None = None, separator: str | None = ", ") -> ConceptVocabulary:
    """The ``paper`` profile's vocabulary: a user-supplied word list, one concept per line.

    Parameters
    ----------
    path : path
        A UTF-8 text file. Blank lines and lines starting with ``#`` are skipped.
    size : int, optional
        Keep only the last ``size`` concepts (SpLiCE's LAION vocabulary files are sorted by increasing
        frequency and SpLiCE keeps the last 10 000).
    separator : str or None
        If given, only the text before its first occurrence is kept (SpLiCE's files hold ``"word, count"``
        lines); ``None`` keeps whole lines.

    Raises
    ------
    InputNotFoundError
        if the file does not exist (also a ``FileNotFoundError``).
    VocabularyError
        if it is a folder, not UTF-8, or yields no concept; if ``size`` is not a positive integer.
    """
    if size is not None and (not is_int(size) or size < 1):
        raise VocabularyError(f"size (the number of concepts kept) must be a positive integer or None, got {size!r}")
    if separator is not None and (not isinstance(separator, str) or not separator):
        raise VocabularyError(f"separator must be a non-empty string or None, got {separator!r}")
    path = as_path(path, "the vocabulary file", error=VocabularyError)
    hint = "pass a UTF-8 text file with one concept per line"
    if not path.exists():
        raise InputNotFoundError(f"vocabulary file {path} does not exist; {hint}.")
    if not path.is_file():
        raise VocabularyError(f"vocabulary file {path} is {'a directory' if path.is_dir() else 'not a regular file'}, "
                              f"not a file; {hint}.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        line, column, byte = utf8_error_line(path) or (0, 0, 0)
        raise VocabularyError(f"vocabulary file {path}, line {line}, column {column}: byte 0x{byte:02x} is not valid "
                              "UTF-8; re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`).") from None
    except OSError as err:
        raise VocabularyError(f"cannot read vocabulary file {path} ({err.strerror or err}); {hint}.") from err
    concepts = []
    for line in text.splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if separator:
            text = text.split(separator)[0].strip()
        concepts.append(text)
    if size is not None:
        concepts = concepts[-size:]
    return ConceptVocabulary(tuple(concepts), source=str(path))


def _token_lengths(tokenizer, texts: Sequence[str]) -> list[int]:
    """Number of tokens of each text including start/end tokens (before any truncation)."""
    encode = getattr(tokenizer, "encode", None)
    if callable(encode):  # open_clip's SimpleTokenizer: BPE ids without the start/end tokens
        return [len(encode(t)) + 2 for t in texts]
    inner = getattr(tokenizer, "tokenizer", None)  # open_clip's HFTokenizer wraps a Hugging Face tokenizer
    if inner is not None and callable(inner):
        return [len(inner(t)["input_ids"]) for t in texts]
    raise ArgumentTypeError(f"cannot count tokens with a {type(tokenizer).__name__}: it has neither .encode nor "
                    ".tokenizer")


def check_vocabulary(vocabulary: ConceptVocabulary, tokenizer, template: str = "{}") -> None:
    """Raise :class:`VocabularyError` naming every concept that does not fit the tokenizer's context length.

    open_clip tokenizers silently truncate long texts, so a concept cut short would be embedded as another
    concept; this check makes that an error instead.
    """
    context = context_length(tokenizer)
    texts = [template.format(c) for c in vocabulary.concepts]
    too_long = [(c, n) for c, n in zip(vocabulary.concepts, _token_lengths(tokenizer, texts)) if n > context]
    if too_long:
        listed = ", ".join(f"{c!r} ({n} tokens)" for c, n in too_long[:20])
        raise VocabularyError(f"{len(too_long)} concept(s) exceed the model's context length of {context} "
                              f"tokens (start and end tokens included): {listed}"
                              f"{' ...' if len(too_long) > 20 else ''}")
