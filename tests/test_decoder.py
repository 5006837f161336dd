"""The library decoder (apc.deploy.decoder): every sparsity kind's fast path equals its torch reference, the
compiled step (fullgraph, the sparse operators inside) decodes the same tokens as the eager one, bad input."""

import pytest
import torch

from apc.deploy.decoder import Decoder, Sparsity, context_mean, load_llama

CFG = dict(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
           vocab_size=101, rms_norm_eps=1e-5, rope_theta=10000.0)


def _dec(batch=2, seed=0, **kw):
    return Decoder(CFG, batch, 24, "cpu", torch.float32, seed=seed, init_std=0.3, **kw)


def _sparsity(dec, kind, gen):
    f, d = CFG["intermediate_size"], CFG["hidden_size"]
    thr = lambda v: torch.tensor([v])  # noqa: E731
    layers = []
    for lw in dec.layers:
        if kind == "input":
            layers.append(dict(t_in=thr(0.5), t_h=thr(0.05)))
        elif kind == "wina":
            layers.append(dict(t_in=thr(0.5), t_h=thr(0.05), s_in=lw["wgu"].float().norm(dim=0),
                               s_h=lw["wd"].float().norm(dim=0)))
        elif kind == "input_attn":
            layers.append(dict(t_in=thr(0.5), t_h=thr(0.05), t_qkv=thr(0.6), t_o=thr(0.05)))
        elif kind == "gate":
            layers.append(dict(t=thr(0.05)))
        elif kind == "mask":
            layers.append(dict(mask=torch.rand(dec.batch, f, generator=gen) < 0.5))
        elif kind == "static":
            idx = torch.randperm(f, generator=gen)[: f // 2]
            layers.append(dict(wgu=torch.cat([lw["wgu"][idx], lw["wgu"][f + idx]]), wd=lw["wd"][:, idx].contiguous()))
    return Sparsity("input" if kind == "wina" else kind, layers)


def _decode(dec, prompt, steps):
    dec.prefill(prompt)
    with torch.no_grad():
        for _ in range(steps):
            dec.step()
    return dec.log[prompt.shape[1]:prompt.shape[1] + steps].clone(), dec.logits.clone()


@pytest.mark.parametrize("kind", ["dense", "input", "wina", "input_attn", "gate", "mask", "static"])
def test_sparse_path_equals_reference(kind):
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, CFG["vocab_size"], (2, 6), generator=gen)
    dec = _dec()
    dec.set_sparsity(_sparsity(dec, kind, gen))
    toks, logits = _decode(dec, prompt, 5)
    dec.reference = True
    ref_toks, ref_logits = _decode(dec, prompt, 5)
    assert torch.equal(toks, ref_toks)
    assert float((logits - ref_logits).norm() / ref_logits.norm()) < 1e-5
    if kind != "dense":
        assert dec.unions and all(0 < u <= 1 for _, u in dec.unions)
    if kind in ("input_attn",):
        assert {p for p, _ in dec.unions} == {"qkv", "o", "ffn"}


def test_sparsity_changes_the_output():
    gen = torch.Generator().manual_seed(2)
    prompt = torch.randint(0, CFG["vocab_size"], (2, 6), generator=gen)
    dense = _decode(_dec(), prompt, 3)[1]
    dec = _dec()
    dec.set_sparsity(_sparsity(dec, "input_attn", gen))
    assert float((_decode(dec, prompt, 3)[1] - dense).norm()) > 1e-3


@pytest.mark.parametrize("batch", [1, 2])
def test_compiled_step_equals_eager(batch):
    """One fullgraph compile (aot_eager: the operators' fake implementations trace) of the TEAL step; batch 1
    through the decode attention operator, batch 2 through the cache write and SDPA in the graph."""
    gen = torch.Generator().manual_seed(3)
    prompt = torch.randint(0, CFG["vocab_size"], (batch, 6), generator=gen)
    out = {}
    for comp in (False, True):
        dec = _dec(batch=batch, compile=comp)
        dec.compile_backend = "aot_eager"
        dec.set_sparsity(_sparsity(dec, "input_attn", torch.Generator().manual_seed(4)))
        out[comp] = _decode(dec, prompt, 4)
    assert torch.equal(out[False][0], out[True][0])
    assert torch.allclose(out[False][1], out[True][1], atol=1e-5, rtol=1e-5)


def test_bad_input():
    dec = _dec()
    with pytest.raises(ValueError, match="unknown sparsity kind"):
        dec.set_sparsity(Sparsity("nope", []))
    with pytest.raises(ValueError, match="missing"):
        dec.set_sparsity(Sparsity("input", [{}, {}]))
    with pytest.raises(ValueError, match="layers"):
        dec.set_sparsity(Sparsity("gate", [{"t": torch.zeros(1)}]))
    with pytest.raises(ValueError, match="does not fit"):
        dec.prefill(torch.zeros(3, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="lacks"):
        Decoder({"hidden_size": 8}, 1, 8, "cpu")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_llama("/nonexistent-folder", 1, 8)


def test_bytes_and_context():
    dec = _dec()
    wb = dec.weight_bytes()
    d, f, v = CFG["hidden_size"], CFG["intermediate_size"], CFG["vocab_size"]
    assert wb["ffn"] == 2 * 3 * d * f * 4 and wb["head"] == v * d * 4
    assert context_mean(10, 3) == 12.0
    assert dec.kv_bytes(12.0) == 2 * 2 * 2 * 2 * 12.0 * 16 * 4
