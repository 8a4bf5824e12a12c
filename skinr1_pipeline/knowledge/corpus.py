"""User-supplied textbook corpus: chunk, index with BM25, retrieve passages per diagnosis, cite by chunk id.

Why: Skin-R1 grounds its rationales in a dermatology textbook we cannot redistribute. A user who owns such text
can drop .txt/.md files (and .pdf files when the `pypdf` package is installed; without it PDFs are skipped and
listed in `Corpus.skipped`) into a folder; synthesis then puts the best passages for a sample's diagnosis into the
teacher prompt and records their chunk ids as citations. BM25 is written here (about 40 lines) rather than pulled in
as a dependency, and is deterministic: ties break by chunk id.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from skinr1_pipeline.knowledge.taxonomy import Taxonomy

TEXT_SUFFIXES = (".txt", ".md", ".markdown")
_TOKEN_RE = re.compile(r"[a-z0-9]+")
_STOPWORDS = frozenset(
    "a an and are as at be by for from has have in is it its of on or that the this to was were with which "
    "may can often usually more most than into not no".split()
)
_HEADING_RE = re.compile(r"^\s{0,3}(#{1,6})\s+(.*\S)\s*$")


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens without stopwords; a plural 's' on words over 4 letters is folded (cysts → cyst)."""
    out = []
    for tok in _TOKEN_RE.findall(text.lower()):
        if tok in _STOPWORDS:
            continue
        if len(tok) > 4 and tok.endswith("s") and not tok.endswith("ss"):
            tok = tok[:-1]
        out.append(tok)
    return out


@dataclass(frozen=True)
class Chunk:
    """One retrievable passage; `chunk_id` ("<relative path>#<n>") is stable for an unchanged file: the citation."""

    chunk_id: str
    source: str
    heading: str
    text: str


@dataclass(frozen=True)
class Passage:
    chunk_id: str
    source: str
    heading: str
    text: str
    score: float


def _pdf_text(path: Path) -> str | None:
    try:
        from pypdf import PdfReader  # optional dependency
    except ImportError:
        return None
    return "\n\n".join(page.extract_text() or "" for page in PdfReader(str(path)).pages)


def chunk_text(text: str, source: str, *, max_chars: int = 1200, min_chars: int = 80) -> list[Chunk]:
    """Split on blank lines, keep the latest markdown heading as context, pack paragraphs up to `max_chars`.

    A paragraph longer than `max_chars` is cut at sentence ends. Fragments shorter than `min_chars` join their
    neighbour so headings alone never become chunks.
    """
    pieces: list[tuple[str, str]] = []  # (heading, paragraph)
    heading = ""
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        lines = []
        for line in block.strip().splitlines():
            m = _HEADING_RE.match(line)
            if m:
                heading = m.group(2).strip()
            else:
                lines.append(line.strip())
        para = " ".join(x for x in lines if x)
        if not para:
            continue
        while len(para) > max_chars:
            cut = para.rfind(". ", 0, max_chars)
            cut = cut + 1 if cut > max_chars // 3 else max_chars
            pieces.append((heading, para[:cut].strip()))
            para = para[cut:].strip()
        if para:
            pieces.append((heading, para))
    chunks: list[Chunk] = []
    buf: list[str] = []
    buf_heading = ""
    for head, para in pieces:
        size = sum(len(p) + 1 for p in buf)
        if buf and (head != buf_heading and size >= min_chars or size + len(para) > max_chars):
            chunks.append(Chunk(f"{source}#{len(chunks)}", source, buf_heading, " ".join(buf)))
            buf = []
        if not buf:
            buf_heading = head
        buf.append(para)
    if buf:
        chunks.append(Chunk(f"{source}#{len(chunks)}", source, buf_heading, " ".join(buf)))
    return chunks


class BM25:
    """Okapi BM25 over token lists (k1, b as usual; idf floored at a small positive value)."""

    def __init__(self, docs: Sequence[Sequence[str]], k1: float = 1.5, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self.tfs = [Counter(d) for d in docs]
        self.lengths = [len(d) for d in docs]
        self.avgdl = (sum(self.lengths) / len(docs)) if docs else 0.0
        df: Counter[str] = Counter()
        for tf in self.tfs:
            df.update(tf.keys())
        n = len(docs)
        self.idf = {t: max(math.log((n - c + 0.5) / (c + 0.5) + 1.0), 1e-6) for t, c in df.items()}

    def scores(self, query: Iterable[str]) -> list[float]:
        terms = [t for t in dict.fromkeys(query) if t in self.idf]
        out = []
        for tf, dl in zip(self.tfs, self.lengths):
            s = 0.0
            norm = self.k1 * (1 - self.b + self.b * dl / self.avgdl) if self.avgdl else self.k1
            for t in terms:
                f = tf.get(t, 0)
                if f:
                    s += self.idf[t] * f * (self.k1 + 1) / (f + norm)
            out.append(s)
        return out


@dataclass
class Corpus:
    chunks: list[Chunk]
    skipped: list[str] = field(default_factory=list)  # files not read, with the reason

    def __post_init__(self) -> None:
        self._bm25 = BM25([tokenize(f"{c.heading} {c.text}") for c in self.chunks])
        self._by_id = {c.chunk_id: c for c in self.chunks}

    @classmethod
    def from_dir(cls, root: str | Path, *, max_chars: int = 1200) -> Corpus:
        """Read every .txt/.md (and .pdf if pypdf is installed) below `root`, in sorted order."""
        root = Path(root)
        chunks: list[Chunk] = []
        skipped: list[str] = []
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = path.relative_to(root).as_posix()
            suffix = path.suffix.lower()
            if suffix in TEXT_SUFFIXES:
                text = path.read_text(encoding="utf-8", errors="replace")
            elif suffix == ".pdf":
                text = _pdf_text(path)
                if text is None:
                    skipped.append(f"{rel}: PDF support needs the optional 'pypdf' package, which is not installed")
                    continue
            else:
                skipped.append(f"{rel}: unsupported file type {suffix or '(none)'}")
                continue
            chunks.extend(chunk_text(text, rel, max_chars=max_chars))
        return cls(chunks, skipped)

    @classmethod
    def from_texts(cls, texts: dict[str, str], *, max_chars: int = 1200) -> Corpus:
        """In-memory corpus: source name -> text (tests, notebooks)."""
        return cls([c for name in sorted(texts) for c in chunk_text(texts[name], name, max_chars=max_chars)])

    def __len__(self) -> int:
        return len(self.chunks)

    def get(self, chunk_id: str) -> Chunk:
        return self._by_id[chunk_id]

    def search(self, query: str, k: int = 3, *, must_contain: str | None = None) -> list[Passage]:
        """Top-k chunks by BM25 (score > 0); with `must_contain`, only chunks whose text holds that phrase."""
        scores = self._bm25.scores(tokenize(query))
        phrase = " ".join(tokenize(must_contain)) if must_contain else None
        ranked = sorted(range(len(self.chunks)), key=lambda i: (-scores[i], self.chunks[i].chunk_id))
        out = []
        for i in ranked:
            if scores[i] <= 0 or len(out) >= k:
                break
            c = self.chunks[i]
            if phrase and phrase not in " ".join(tokenize(f"{c.heading} {c.text}")):
                continue
            out.append(Passage(c.chunk_id, c.source, c.heading, c.text, round(scores[i], 4)))
        return out

    def passages_for(self, node_id: str, taxonomy: Taxonomy, k: int = 2) -> list[Passage]:
        """Passages about a diagnosis: its name and synonyms as the query, and the name or a synonym must occur."""
        node = taxonomy[node_id]
        names = [node.name, *[s for s in node.synonyms if len(s) > 3]]
        seen: dict[str, Passage] = {}
        for name in names:
            for p in self.search(" ".join(names[:4]), k=k * 3, must_contain=name):
                seen.setdefault(p.chunk_id, p)
        return sorted(seen.values(), key=lambda p: (-p.score, p.chunk_id))[:k]
