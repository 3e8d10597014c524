"""Sentence splitting of a token stream, and Markdown removal for speech."""

from __future__ import annotations

import pytest
from tutor_engine.text import SentenceSplitter, speakable, split_sentences

pytestmark = pytest.mark.unit


def stream(text: str, size: int) -> list[str]:
    """Feed ``text`` in pieces of ``size`` characters and collect every sentence."""
    splitter = SentenceSplitter()
    out = [s for i in range(0, len(text), size) for s in splitter.feed(text[i : i + size])]
    rest = splitter.flush()
    return [*out, rest] if rest else out


TEXT = (
    "Python is a programming language. Dr. Smith wrote e.g. this in 3.14 seconds! "
    "Why does it work? Because J. Doe said so…\nA list follows:\n- one item\n- two items"
)
EXPECTED = [
    "Python is a programming language.",
    "Dr. Smith wrote e.g. this in 3.14 seconds!",
    "Why does it work?",
    "Because J. Doe said so…",
    "A list follows:",
    "- one item",
    "- two items",
]


@pytest.mark.parametrize("size", [1, 2, 5, 17, 1000])
def test_sentences_are_the_same_whatever_the_token_size(size: int) -> None:
    assert stream(TEXT, size) == EXPECTED


def test_a_sentence_is_released_as_soon_as_the_next_token_starts() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("The answer is four.") == []  # could still be "four.5"
    assert splitter.feed(" Next") == ["The answer is four."]
    assert splitter.flush() == "Next"


def test_short_sentences_wait_for_the_next_one() -> None:
    assert split_sentences("Yes. It is. The answer is four.") == ["Yes. It is. The answer is four."]


def test_cjk_sentences_end_without_a_space() -> None:
    assert split_sentences("你好，我是你的老师。今天我们学习什么呢？好的", min_chars=1) == [
        "你好，我是你的老师。",
        "今天我们学习什么呢？",
        "好的",
    ]


def test_a_long_run_without_punctuation_is_cut_at_a_comma_or_space() -> None:
    text = "word, " * 100
    parts = split_sentences(text, max_chars=50)
    assert all(len(p) <= 50 for p in parts)
    assert " ".join(parts).split() == text.split()


def test_speakable_drops_markdown() -> None:
    md = "# Title\n**Bold** and `code` with a [link](http://x).\n```py\nprint(1)\n```\n- item"
    assert speakable(md) == "Title Bold and code with a link. item"


def first_clauses(text: str, size: int, chars: int = 12) -> list[str]:
    """Like ``stream``, with the first piece allowed to end at a clause of ``chars``."""
    splitter = SentenceSplitter(first_clause_chars=chars)
    out = [s for i in range(0, len(text), size) for s in splitter.feed(text[i : i + size])]
    rest = splitter.flush()
    return [*out, rest] if rest else out


@pytest.mark.parametrize("size", [1, 3, 1000])
def test_the_first_piece_ends_at_a_clause_long_enough_to_say(size: int) -> None:
    text = "Well, a prime number, like 7, has two divisors. Then, later, sentences stay whole."
    assert first_clauses(text, size) == [
        "Well, a prime number,",
        "like 7, has two divisors.",
        "Then, later, sentences stay whole.",
    ]


@pytest.mark.parametrize(
    ("text", "first"),
    [
        ("Tutor 1 heard: what is 3,000 times 2?", "Tutor 1 heard:"),
        ("We met at 10:30 today; it was fun.", "We met at 10:30 today;"),
        ("Fruits, e.g., apples are sweet.", "Fruits, e.g., apples are sweet."),
        ("A well-known idea - simple and old.", "A well-known idea -"),
        ("A simple idea — old and true.", "A simple idea —"),
    ],
)
def test_clause_marks_inside_numbers_words_and_abbreviations_do_not_cut(
    text: str, first: str
) -> None:
    assert first_clauses(text, 1)[0] == first


def test_without_first_clause_chars_the_first_piece_is_a_sentence() -> None:
    text = "Well, a prime number, like 7, has two divisors."
    assert stream(text, 1) == [text]
    assert split_sentences(text, first_clause_chars=12)[0] == "Well, a prime number,"
