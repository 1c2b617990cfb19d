"""LexiconScorer: whole-word, case-insensitive phrase matching on continuations."""

from __future__ import annotations

import numpy as np
import pytest

from mechclaims.errors import MechclaimsError
from mechclaims.scoring import LexiconScorer, Scorer, ScorerError, read_lexicon


@pytest.fixture
def lexicon(tmp_path):
    p = tmp_path / "lexicon.txt"
    p.write_text("# a comment\nidiot\nshut up\n\ngo to hell\npea brain\n", encoding="utf-8")
    return p


def test_protocol_and_name(lexicon):
    s = LexiconScorer(lexicon)
    assert s.name == "lexicon"
    assert isinstance(s, Scorer)
    assert s.phrases == ["idiot", "shut up", "go to hell", "pea brain"]


def test_word_boundaries(lexicon):
    s = LexiconScorer(lexicon)
    out = s.score(["you idiot", "idiotic plan", "an idiot.", "idiots", "(idiot)", "semi-idiot",
                   "hello", "shell", "go to hello"])
    assert out.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]


def test_case_insensitive(lexicon):
    s = LexiconScorer(lexicon)
    assert s.score(["IDIOT", "Shut Up!", "GO TO HELL"]).tolist() == [1.0, 1.0, 1.0]


def test_multiword_phrases(lexicon):
    s = LexiconScorer(lexicon)
    out = s.score(["please shut up now", "shut the door, up there", "shut\nup", "shutup",
                   "you pea  brain", "pea brains"])
    assert out.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert s.matches("Shut up, you idiot") == ["Shut up", "idiot"]


def test_empty_and_output_type(lexicon):
    s = LexiconScorer(lexicon)
    out = s.score(["", "   ", "a calm reply"])
    assert out.dtype == np.float64 and out.shape == (3,)
    assert out.tolist() == [0.0, 0.0, 0.0]
    assert s.score([]).shape == (0,)
    with pytest.raises(TypeError):
        s.score("idiot")


def test_missing_lexicon_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(ScorerError) as e:
        LexiconScorer(missing)
    assert isinstance(e.value, MechclaimsError)
    msg = str(e.value)
    assert "nope.txt" in msg and "does not exist" in msg and "one toxic word or phrase per line" in msg


def test_empty_lexicon_is_a_clear_error(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_text("# only a comment\n\n", encoding="utf-8")
    with pytest.raises(ScorerError, match="holds no phrases"):
        read_lexicon(p)


def test_regex_special_characters_are_literal(tmp_path):
    p = tmp_path / "lex.txt"
    p.write_text("a.b\n", encoding="utf-8")
    s = LexiconScorer(p)
    assert s.score(["a.b", "axb"]).tolist() == [1.0, 0.0]
