"""A hub model is downloaded once at the pinned revision; the manifest names the local copy, and loading
reads local files only."""

import huggingface_hub
import torch
from transformers import AutoModelForCausalLM

from apc.common.atomic import read_json
from apc.extraction.model import load_model, prepare_model


def test_hub_model_downloads_once_at_revision_and_loads_offline(tiny_llama, tmp_path, monkeypatch):
    snapshot = tmp_path / "snapshot"
    tiny_llama.save_pretrained(snapshot)
    calls = []

    def fake_snapshot_download(repo_id, revision=None, cache_dir=None, allow_patterns=None):
        calls.append({"repo_id": repo_id, "revision": revision, "cache_dir": cache_dir})
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    cfg = {"name_or_path": "org/tiny-llama", "gguf_file": None, "dtype": "bfloat16",
           "cache_dir": str(tmp_path / "models"), "revision": "abc123", "device_map": None}
    manifest = prepare_model(cfg, tmp_path / "manifest.json")
    assert calls == [{"repo_id": "org/tiny-llama", "revision": "abc123", "cache_dir": str(tmp_path / "models" / "hub")}]
    assert manifest["load_path"] == str(snapshot.resolve())
    assert manifest["revision"] == "abc123"
    assert manifest["n_params"] == sum(p.numel() for p in tiny_llama.parameters())
    assert read_json(tmp_path / "manifest.json") == manifest

    # every later job loads the local folder, with the hub switched off
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    shell, _ = load_model(manifest, device="meta")
    assert shell.config.num_hidden_layers == tiny_llama.config.num_hidden_layers
    loaded = AutoModelForCausalLM.from_pretrained(manifest["load_path"], local_files_only=True, dtype=torch.bfloat16)
    for (name, a), (_, b) in zip(loaded.state_dict().items(), tiny_llama.state_dict().items()):
        assert torch.equal(a, b.to(torch.bfloat16)), name
