"""Text shaping for speech: splitting a token stream into sentences, and making text speakable."""

from __future__ import annotations

import re

# Words whose trailing period does not end a sentence.
_ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "st", "vs", "etc", "e.g", "i.e", "eg", "ie", "no", "fig"}
)
_CJK_END = "。！？"
_END = ".!?…" + _CJK_END
_CLAUSE = ",;:—–-"


def _is_boundary(buffer: str, i: int) -> bool:
    """Whether the punctuation at ``buffer[i]`` ends a sentence (the next char is known)."""
    char, following = buffer[i], buffer[i + 1]
    if char in _CJK_END:
        return True
    if not following.isspace():
        return False  # "3.14", "e.g.,", "?!" (the last mark decides)
    if char == ".":
        word = re.split(r"\s", buffer[: i + 1])[-1].rstrip(".").lower()
        if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
            return False  # "Dr. Smith", "J. Doe"
    return True


def _is_clause_end(buffer: str, i: int) -> bool:
    """Whether ``buffer[i]`` ends a clause: a mark then a space, not after an abbreviation."""
    char, following = buffer[i], buffer[i + 1]
    if char not in _CLAUSE or not following.isspace():
        return False  # "3,000", "10:30", "well-known"
    if char == "-" and not buffer[i - 1 : i].isspace():
        return False  # only a spaced hyphen " - " is a dash
    word = re.split(r"\s", buffer[:i])[-1].rstrip(".").lower()
    return word not in _ABBREVIATIONS  # "e.g., this"


class SentenceSplitter:
    """Cuts streamed text into sentences as soon as each one is complete.

    ``feed`` returns the sentences a new piece completes; ``flush`` returns what is left.
    Sentences shorter than ``min_chars`` are held and joined to the next one; a run longer
    than ``max_chars`` without a sentence end is cut at the last comma or space. With
    ``first_clause_chars``, the first piece ends at the first clause mark (``, ; : —``)
    once it has that many characters, so speech can start before the first sentence ends.
    """

    def __init__(self, min_chars: int = 12, max_chars: int = 240, first_clause_chars: int = 0):
        self.min_chars = min_chars
        self.max_chars = max_chars
        self.first_clause_chars = first_clause_chars
        self._buffer = ""
        self._scanned = 0  # buffer[:_scanned] holds no boundary
        self._cut = False  # a piece was returned already

    def feed(self, piece: str) -> list[str]:
        self._buffer += piece
        sentences: list[str] = []
        start = 0
        i = max(self._scanned, 0)
        while i < len(self._buffer) - 1:
            char = self._buffer[i]
            if (char in _END and _is_boundary(self._buffer, i)) or char == "\n":
                candidate = self._buffer[start : i + 1].strip()
                if len(candidate) >= self.min_chars or (char == "\n" and candidate):
                    sentences.append(candidate)
                    start = i + 1
            elif self._first_clause(sentences) and _is_clause_end(self._buffer, i):
                candidate = self._buffer[start : i + 1].strip()
                if len(candidate) >= self.first_clause_chars:
                    sentences.append(candidate)
                    start = i + 1
            i += 1
        rest = self._buffer[start:]
        while len(rest) > self.max_chars:
            cut = max(rest.rfind(",", 0, self.max_chars), rest.rfind(" ", 0, self.max_chars))
            cut = cut if cut > 0 else self.max_chars - 1
            sentences.append(rest[: cut + 1].strip())
            rest = rest[cut + 1 :]
        self._buffer = rest
        self._scanned = max(len(rest) - 1, 0)
        sentences = [s for s in sentences if s]
        self._cut = self._cut or bool(sentences)
        return sentences

    def _first_clause(self, found: list[str]) -> bool:
        """Whether the first piece is still being looked for, and may end at a clause."""
        return self.first_clause_chars > 0 and not self._cut and not found

    def flush(self) -> str:
        rest, self._buffer, self._scanned = self._buffer.strip(), "", 0
        return rest


def split_sentences(
    text: str, min_chars: int = 12, max_chars: int = 240, first_clause_chars: int = 0
) -> list[str]:
    """All sentences of a complete text (the first one possibly a clause, as the splitter's)."""
    splitter = SentenceSplitter(min_chars, max_chars, first_clause_chars)
    sentences = splitter.feed(text)
    rest = splitter.flush()
    return [*sentences, rest] if rest else sentences


_MARKDOWN = [
    (re.compile(r"```.*?```", re.S), " "),  # code blocks are not read aloud
    (re.compile(r"!?\[([^\]]*)\]\([^)]*\)"), r"\1"),  # links and images: their text
    (re.compile(r"^\s{0,3}(?:#{1,6}\s+|[-*+]\s+|>\s?)", re.M), ""),  # headings, bullets, quotes
    (re.compile(r"[*_`~]+"), ""),  # emphasis and inline code marks
    (re.compile(r"\s+"), " "),
]


def speakable(text: str) -> str:
    """The text with Markdown markup removed, as a TTS should read it."""
    for pattern, replacement in _MARKDOWN:
        text = pattern.sub(replacement, text)
    return text.strip()
