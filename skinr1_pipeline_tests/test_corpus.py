"""Textbook corpus: chunking, BM25 retrieval, per-diagnosis passages and chunk-id citations."""

from __future__ import annotations

import importlib.util

import pandas as pd

from skinr1_pipeline.knowledge.corpus import BM25, Corpus, chunk_text, tokenize
from skinr1_pipeline.synthesis import TemplateGenerator, synthesize

BOOK = """# Melanoma

Melanoma is an asymmetric pigmented tumour with an atypical network and a blue-white veil.
Early excision decides the prognosis.

# Seborrheic keratosis

Seborrheic keratosis is a stuck-on warty plaque with milia-like cysts and comedo-like openings.

# Basal cell carcinoma

Basal cell carcinoma is a pearly papule with arborizing vessels. Rodent ulcers destroy tissue.
"""


def test_chunking_keeps_headings_and_stable_ids():
    chunks = chunk_text(BOOK, "book.md", max_chars=200, min_chars=20)
    assert [c.chunk_id for c in chunks] == [f"book.md#{i}" for i in range(len(chunks))]
    assert [c.heading for c in chunks] == ["Melanoma", "Seborrheic keratosis", "Basal cell carcinoma"]
    assert chunks == chunk_text(BOOK, "book.md", max_chars=200, min_chars=20)


def test_long_paragraph_is_cut_at_sentence_ends():
    text = " ".join(f"Sentence number {i} talks about nevi." for i in range(60))
    chunks = chunk_text(text, "long.txt", max_chars=300)
    assert len(chunks) > 5 and all(len(c.text) <= 300 for c in chunks)
    assert all(c.text.endswith(".") for c in chunks[:-1])


def test_bm25_ranks_the_relevant_document_first():
    docs = [tokenize("melanoma melanoma network"), tokenize("psoriasis scale plaque"), tokenize("nevus network")]
    scores = BM25(docs).scores(tokenize("melanoma"))
    assert scores[0] > 0 and scores[1] == 0 and scores[2] == 0


def test_from_dir_reads_text_and_markdown_and_reports_skips(tmp_path):
    (tmp_path / "ch1.md").write_text(BOOK)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.txt").write_text("Dermatofibroma dimples when pinched and has a central white patch.")
    (tmp_path / "fig.png").write_bytes(b"\x89PNG")
    (tmp_path / "book.pdf").write_bytes(b"%PDF-1.4")
    corpus = Corpus.from_dir(tmp_path, max_chars=200)
    sources = {c.source for c in corpus.chunks}
    assert sources == {"ch1.md", "sub/notes.txt"} | ({"book.pdf"} if importlib.util.find_spec("pypdf") else set())
    assert any(s.startswith("fig.png: unsupported") for s in corpus.skipped)
    if importlib.util.find_spec("pypdf") is None:
        assert any(s.startswith("book.pdf: PDF support needs") for s in corpus.skipped)
    top = corpus.search("dimples pinched", k=1)
    assert top[0].chunk_id == "sub/notes.txt#0"


def test_passages_for_diagnosis_use_name_and_synonyms(tax):
    corpus = Corpus.from_texts({"book.md": BOOK}, max_chars=200)
    mel = corpus.passages_for("melanoma", tax)
    assert [p.chunk_id for p in mel] == ["book.md#0"]
    sk = corpus.passages_for("seborrheic_keratosis", tax)
    assert sk[0].chunk_id == "book.md#1" and "milia-like" in sk[0].text
    assert corpus.passages_for("psoriasis", tax) == []


def test_synthesis_cites_chunk_ids_and_puts_passages_in_the_teacher_prompt(tax, ddx, kb):
    corpus = Corpus.from_texts({"book.md": BOOK}, max_chars=200)
    samples = pd.DataFrame(
        [
            {
                "sample_id": "x/1",
                "source_dataset": "x",
                "image_path": "/img/1.jpg",
                "taxonomy_node": "melanoma",
                "bucket": "malignant",
                "split": "train",
            }
        ]
    )
    result = synthesize(samples, tax, ddx, kb, TemplateGenerator(), types=("hierarchy",), corpus=corpus)
    assert len(result.trajectories) == 1
    cites = result.trajectories.iloc[0]["citations"]
    assert "book.md#0" in cites and any(c.startswith("kb:melanoma") for c in cites)
    import random

    from skinr1_pipeline.synthesis.trajectories import BuildExtras, build_hierarchy

    req = build_hierarchy(
        samples.iloc[0].to_dict(),
        tax,
        ddx,
        kb,
        random.Random(0),
        BuildExtras(passages=corpus.passages_for("melanoma", tax)),
    )
    text = req.messages[1]["content"][-1]["text"]
    assert "[book.md#0]" in text and "blue-white veil" in text
    assert req.messages[1]["content"][0] == {"type": "image", "image": "/img/1.jpg"}
