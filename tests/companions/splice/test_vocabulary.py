"""SpLiCE's concept vocabularies (mmlib.companions.splice.vocabulary): the world's, a word list, the checks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from mmlib.companions.splice import build_splice
from mmlib.companions.splice.vocabulary import (
    ConceptVocabulary,
    VocabularyError,
    check_vocabulary,
    read_vocabulary,
    world_vocabulary,
)
from mmlib.core.errors import InputError
from mmlib.data.world import Factor, default_factors


def test_vocabulary_errors_name_the_culprits(tiny_clip):
    with pytest.raises(VocabularyError, match="empty"):
        ConceptVocabulary(())
    with pytest.raises(VocabularyError, match=r"2 duplicate concept\(s\): 'red', 'box'"):
        ConceptVocabulary(("red", "box", "red", "circle", "box"))
    with pytest.raises(VocabularyError, match="blank"):
        ConceptVocabulary(("red", "  "))
    long = "a striped circle on a purple background " * 3
    vocab = ConceptVocabulary(("red", long, "box"))
    with pytest.raises(VocabularyError, match=r"1 concept\(s\) exceed the model's context length of 16") as err:
        check_vocabulary(vocab, tiny_clip.tokenizer)
    assert repr(long) in str(err.value) and "'red'" not in str(err.value)
    with pytest.raises(VocabularyError, match="context length"):
        build_splice(tiny_clip, vocab, image_reference=torch.randn(4, 16))


def test_world_vocabulary_labels_and_duplicate_synonyms():
    vocab = world_vocabulary()
    assert len(set(vocab.concepts)) == len(vocab)
    assert vocab.factors[vocab.index("crimson")] == "colour"
    assert vocab.factors[vocab.index("on a black background")] == "background"
    assert vocab.factors[vocab.index("photo")] is None
    assert set(vocab.indices(factors=["shape"])) == {i for i, f in enumerate(vocab.factors) if f == "shape"}
    words_only = world_vocabulary(phrases=False, grammar_words=False)
    assert len(words_only) == sum(len(s) for f in default_factors() for s in f.synonyms)
    clash = Factor("hue", ("warm", "cold"), (1.0, 1.0), (1.0, 1.0), "object", "cross", (("red",), ("blue",)))
    with pytest.raises(VocabularyError, match="'red', 'blue'"):
        world_vocabulary((*default_factors(), clash))
    with pytest.raises(KeyError, match="Did you mean"):
        vocab.index("crimsen")


def test_read_vocabulary(tmp_path: Path):
    path = tmp_path / "vocab.txt"
    path.write_text("# a comment\ncat, 10\n\ndog, 20\nred car, 30\n", encoding="utf-8")
    vocab = read_vocabulary(path)
    assert vocab.concepts == ("cat", "dog", "red car") and vocab.factors == (None, None, None)
    assert read_vocabulary(path, size=2).concepts == ("dog", "red car")
    path.write_text("cat\ncat\n", encoding="utf-8")
    with pytest.raises(VocabularyError, match="'cat'"):
        read_vocabulary(path)
    with pytest.raises(FileNotFoundError):
        read_vocabulary(tmp_path / "missing.txt")


@pytest.mark.parametrize("content, message", [
    (b"cat\n\xe9l\xe9phant\n", r"line 2, column 1: byte 0xe9 is not valid UTF-8"),
    (b"\n# only a comment\n\n", "is empty"),
])
def test_read_vocabulary_bad_files_name_the_file(tmp_path: Path, content, message):
    path = tmp_path / "vocab.txt"
    path.write_bytes(content)
    with pytest.raises(VocabularyError, match=message) as err:
        read_vocabulary(path)
    assert str(path) in str(err.value)


def test_read_vocabulary_folder_and_bad_arguments(tmp_path: Path):
    with pytest.raises(VocabularyError, match="is a directory, not a file"):
        read_vocabulary(tmp_path)
    path = tmp_path / "v.txt"
    path.write_text("cat\ndog\n")
    for size in (0, 2.5, "3", True):
        with pytest.raises(VocabularyError, match="size"):
            read_vocabulary(path, size=size)
    with pytest.raises(VocabularyError, match="separator"):
        read_vocabulary(path, separator="")
    with pytest.raises(VocabularyError, match="must be a path"):
        read_vocabulary(None)


def test_tag_vocabulary_labels_the_words_of_the_world(tmp_path: Path):
    from mmlib.companions.splice.vocabulary import tag_vocabulary
    from mmlib.data.world import default_factors

    factors = default_factors()
    colour = next(f for f in factors if f.name == "colour")
    path = tmp_path / "words.txt"
    path.write_text(f"bicycle\n{colour.synonyms[0][0].upper()}\n{colour.synonyms[1][0]}\nvolcano\n")
    vocab = read_vocabulary(path)
    assert set(vocab.factors) == {None}
    tagged = tag_vocabulary(vocab, factors)
    assert tagged.concepts == vocab.concepts
    assert tagged.factors == (None, "colour", "colour", None) and tagged.values == (None, 0, 1, None)
    assert list(tagged.indices(factors=["colour"])) == [1, 2]
    same_word = tuple(("x",) for _ in colour.values)
    two = [dataclasses.replace(colour, name="a", synonyms=same_word), dataclasses.replace(colour, name="b")]
    assert tag_vocabulary(ConceptVocabulary(("x",)), two).factors == (None,)  # one word, several values: ambiguous
    with pytest.raises(InputError):
        tag_vocabulary(["red"], factors)
