import numpy as np
import pytest

from apc.extraction.corpus import Article, load_split_articles, make_windows, split_articles


class CharTokenizer:
    """One token per character; BOS = 1 (or none)."""

    def __init__(self, bos=1):
        self.bos_token_id = bos

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [2 + (ord(c) % 50) for c in text]}


def test_embedded_wikipedia_splits_share_no_article():
    arts = load_split_articles({"source": "embedded-wikipedia", "test_fraction": 0.2, "split_seed": 0})
    train, test = {a.id for a in arts["train"]}, {a.id for a in arts["test"]}
    assert len(train) > 1000 and len(test) > 200
    assert not train & test
    assert not any("<doc" in a.text or "</doc>" in a.text for a in arts["train"][:200] + arts["test"][:200])
    again = load_split_articles({"source": "embedded-wikipedia", "test_fraction": 0.2, "split_seed": 0})
    assert [a.id for a in again["test"]] == [a.id for a in arts["test"]]  # deterministic


def test_text_source_reads_blank_line_articles(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("first article\nline two\n\nsecond\n\n\nthird one\n")
    arts = load_split_articles({"source": "text", "text_files": [str(f)], "test_fraction": 0.5, "split_seed": 3})
    texts = sorted(a.text for a in arts["train"] + arts["test"])
    assert texts == ["first article\nline two", "second", "third one"]


def test_windows_bos_budget_and_shape():
    arts = [Article(str(i), "x" * 100) for i in range(10)]
    w, meta = make_windows(arts, CharTokenizer(bos=1), seq_len=32, budget=96)
    assert w.shape == (3, 32) and (w[:, 0] == 1).all() and meta["text_tokens_per_window"] == 31
    assert meta["n_text_tokens"] == 93
    w2, meta2 = make_windows(arts, CharTokenizer(bos=None), seq_len=32, budget=None)
    assert w2.shape[1] == 32 and meta2["bos_token_id"] is None
    assert w2.shape[0] == (10 * 102) // 32  # every full window, tail dropped
    with pytest.raises(ValueError, match="fewer than the budget"):
        make_windows(arts[:1], CharTokenizer(), seq_len=32, budget=32 * 10)


def test_split_is_by_article_and_seeded():
    arts = [Article(f"a{i}", "t") for i in range(500)]
    s0, s1 = split_articles(arts, 0.3, 0), split_articles(arts, 0.3, 1)
    assert 100 < len(s0["test"]) < 200
    assert {a.id for a in s0["test"]} != {a.id for a in s1["test"]}
    assert len(s0["train"]) + len(s0["test"]) == 500
