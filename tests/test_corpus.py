import numpy as np
import pytest

from apc.extraction.corpus import (
    Article,
    check_budget,
    load_split,
    load_split_articles,
    make_windows,
    split_articles,
    split_settings,
)


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
    w, meta = make_windows(arts, CharTokenizer(bos=1), seq_len=32, budget=96, split="train")
    assert w.shape == (3, 32) and (w[:, 0] == 1).all() and meta["text_tokens_per_window"] == 31
    assert meta["n_text_tokens"] == 93
    w2, meta2 = make_windows(arts, CharTokenizer(bos=None), seq_len=32, budget=None, split="test")
    assert w2.shape[1] == 32 and meta2["bos_token_id"] is None
    assert w2.shape[0] == (10 * 102) // 32  # every full window, tail dropped
    with pytest.raises(ValueError, match=r"^config key 'data\.test_tokens': the test split has only 3 windows "):
        make_windows(arts[:1], CharTokenizer(), seq_len=32, budget=32 * 10, split="test")
    with pytest.raises(ValueError, match=r"^config key 'data\.train_tokens': the train split has only 3 windows "):
        make_windows(arts[:1], CharTokenizer(), seq_len=32, budget=32 * 10, split="train")
    with pytest.raises(ValueError, match=r"^config key 'data\.seq_len': the train split has 102 text tokens"):
        make_windows(arts[:1], CharTokenizer(), seq_len=200, budget=None, split="train")


def test_budget_message_names_key_split_and_sizes():
    check_budget(4, 4, 16, key="perplexity.test_tokens", split="test")  # exactly enough: no error
    with pytest.raises(ValueError) as err:
        check_budget(5, 4, 16, key="perplexity.test_tokens", split="test")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("config key 'perplexity.test_tokens': the test split has only 4 windows of 16 tokens (64 tokens)")
    assert "fewer than the 5 windows (80 tokens) asked for" in msg


TEXT = "".join(f"article {i} " + "word " * (i % 7 + 1) + "\n\n" for i in range(200))


def _text_data(path, **over):
    return {"source": "text", "text_files": [str(path)], "test_fraction": 0.3, "split_seed": 1,
            "seq_len": 16, "train_tokens": 64, "test_tokens": 32, **over}


def test_each_split_loads_alone_and_matches_the_joint_split(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text(TEXT)
    data = _text_data(f)
    both = load_split_articles(data)
    for split in ("train", "test"):
        alone = load_split(data, split)
        assert [(a.id, a.text) for a in alone] == [(a.id, a.text) for a in both[split]]
    assert len(both["test"]) > 20 and len(both["train"]) > 100
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load_split(data, "dev")


@pytest.mark.parametrize("source, extra", [
    ("text", {"text_files": ["a.txt"], "test_fraction": 0.2, "split_seed": 0}),
    ("embedded-wikipedia", {"test_fraction": 0.2, "split_seed": 0}),
    ("huggingface", {"hf_path": "wikitext", "hf_name": "wikitext-2-raw-v1",
                     "train_split": "train", "test_split": "test"}),
])
def test_split_settings_hold_only_what_the_split_depends_on(source, extra):
    data = {"source": source, "seq_len": 64, "train_tokens": 1000, "test_tokens": 500, **extra}
    train, test = split_settings(data, "train"), split_settings(data, "test")
    assert train["train_tokens"] == 1000 and "test_tokens" not in train
    assert test["test_tokens"] == 500 and "train_tokens" not in test
    # changing one budget changes only that split's settings (Snakemake reruns on a params change)
    more_train = {**data, "train_tokens": 4000}
    assert split_settings(more_train, "test") == test and split_settings(more_train, "train") != train
    more_test = {**data, "test_tokens": 4000}
    assert split_settings(more_test, "train") == train and split_settings(more_test, "test") != test
    # what defines the article split is given to both
    for key in extra:
        if key.endswith("_split"):
            assert (key in train) == key.startswith("train") and (key in test) == key.startswith("test")
        else:
            assert train[key] == test[key] == extra[key]


@pytest.mark.parametrize("content, problem", [
    (b"", "is empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "is a binary file, not text (NUL byte at offset 8)"),
    (b"caf\xe9 au lait\n\nsecond article\n", "is not UTF-8 text (undecodable byte at offset 3)"),
    (b"ok text\n\nends in half a char \xc3", "is not UTF-8 text (truncated character at its end)"),
    (b"\n \n\t\n", "holds only whitespace"),
])
def test_bad_text_file_names_file_and_key(tmp_path, content, problem):
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text(TEXT)
    bad.write_bytes(content)
    with pytest.raises(ValueError) as err:
        load_split(_text_data(good, text_files=[str(good), str(bad)]), "train")
    msg = str(err.value)
    assert msg.startswith(f"config key 'data.text_files': {bad} {problem}")
    assert "\n" not in msg


def test_undecodable_byte_offset_is_exact_across_read_chunks(tmp_path):
    bad = tmp_path / "big.txt"
    head = b"a" * ((1 << 20) - 1) + "\u00e9".encode()  # a 2-byte character split across the first chunk boundary
    bad.write_bytes(head + b"xx\xff")
    with pytest.raises(ValueError, match=f"undecodable byte at offset {len(head) + 2}\\)"):
        load_split(_text_data(bad), "test")


def test_split_is_by_article_and_seeded():
    arts = [Article(f"a{i}", "t") for i in range(500)]
    s0, s1 = split_articles(arts, 0.3, 0), split_articles(arts, 0.3, 1)
    assert 100 < len(s0["test"]) < 200
    assert {a.id for a in s0["test"]} != {a.id for a in s1["test"]}
    assert len(s0["train"]) + len(s0["test"]) == 500
