import math

import pytest

from apc.common.sites import decoder_layers
from apc.lines import get_line, parse
from apc.perplexity.accounting import model_share, product_weights
from apc.perplexity.attention_masks import attention_inputs, attention_weights
from apc.perplexity.calibrate import layer_mlps
from apc.perplexity.frontier import score_point
from apc.results.paired_table import paired_table

from .contract import ids, mlp_inputs


def _point(model, share, line="teal-model", **kw):
    spec = parse(line)
    impl = spec.impl
    extra = {"attention": attention_inputs(model, ids(seed=7))} if impl.calibration_needs(spec) else {}
    cal = impl.calibrate(layer_mlps(model), mlp_inputs(model, ids(seed=7)), [share], {"allocation_step": 0.05},
                         lines=[spec], **extra)
    arrays = impl.arrays(spec, share, projections=["down_in"], calibration=cal, model=model, windows=ids(),
                         settings={}, inputs={})
    arrays.update(kw)
    n = len(decoder_layers(model))
    return score_point(model, ids(), spec, share, bos=True, projections=["down_in"],
                       thresholds={"down_in": [0.0] * n}, **arrays)


def test_the_model_scope_is_a_setting_of_the_teal_line():
    impl = get_line("teal")
    assert impl.line_names({"allocation": ["uniform", "block"], "compute_scope": ["ffn", "model"]}, {}) == \
        ["teal", "teal-block", "teal-model"]
    assert impl.line_names({"compute_scope": ["model"]}, {}) == ["teal-model"]
    spec = parse("teal-model")
    assert spec.family == "teal" and spec.allocation == "uniform" and not spec.is_cluster
    assert impl.compute_scope(spec) == "model" and impl.compute_scope(parse("teal")) == "ffn"
    assert impl.shares(spec, [0.4, 0.6, 0.8]) == [0.75, 0.6, 0.5]  # TEAL's whole-model sparsities 0.25, 0.4, 0.5
    assert impl.decode_line(spec) == "teal_model" and impl.decode_line(parse("teal")) == "teal"
    assert impl.calibration_needs(spec) == ("attention",) and impl.calibration_needs(parse("teal")) == ()


def test_share_one_is_dense_over_every_linear_layer(tiny_llama):
    from apc.perplexity.protocol import score

    full = _point(tiny_llama, 1.0)
    dense = score(tiny_llama, ids(), "dense", bos=True)["ppl"]
    assert abs(full["ppl"] - dense) < 1e-6 * dense
    assert full["compute_scope"] == "model" and full["compute_share"] == pytest.approx(1.0)
    assert full["attn_shares"] == {"qkv": 1.0, "o": 1.0}


def test_the_attention_inputs_are_masked_and_counted(tiny_llama):
    half = _point(tiny_llama, 0.6)
    assert abs(half["attn_shares"]["qkv"] - 0.6) < 0.12 and abs(half["attn_shares"]["o"] - 0.6) < 0.12
    assert abs(half["kept_share"] - 0.6) < 0.12
    want = model_share(half["ffn_compute_share"], half["attn_kept"], product_weights(tiny_llama),
                       attention_weights(tiny_llama))
    assert half["compute_share"] == pytest.approx(want)
    f = sum(product_weights(tiny_llama).values())
    a = attention_weights(tiny_llama)
    by_hand = (f * half["ffn_compute_share"] + a["qkv"] * half["attn_shares"]["qkv"] + a["o"] * half["attn_shares"]["o"]) \
        / (f + a["qkv"] + a["o"])
    assert half["compute_share"] == pytest.approx(by_hand)
    ffn_only = _point(tiny_llama, 0.6, line="teal")  # the same FFN thresholds, the attention inputs dense
    assert "compute_scope" not in ffn_only and half["ppl"] != ffn_only["ppl"]
    n = len(decoder_layers(tiny_llama))
    off = _point(tiny_llama, 0.6, attention_thresholds={"qkv": [0.0] * n, "o": [0.0] * n})
    assert off["ppl"] == pytest.approx(ffn_only["ppl"], rel=1e-12)  # zero thresholds keep every attention input
    assert off["ffn_compute_share"] == pytest.approx(ffn_only["compute_share"], rel=1e-12)
    assert off["attn_shares"] == {"qkv": 1.0, "o": 1.0}


def test_bad_attention_thresholds_fail_clearly(tiny_llama):
    with pytest.raises(ValueError, match="attention_thresholds"):
        _point(tiny_llama, 0.6, attention_thresholds={"qkv": [0.1]})
    spec = parse("teal-model")
    with pytest.raises(ValueError, match="attention inputs of every layer"):
        spec.impl.calibrate(layer_mlps(tiny_llama), mlp_inputs(tiny_llama, ids(seed=7)), [0.6], {}, lines=[spec])


def test_lines_of_other_compute_scopes_are_not_paired(tiny_llama):
    pts = []
    for line in ("teal", "teal-model", "cats"):
        spec = parse(line)
        p = _point(tiny_llama, 0.6, line=line) if line != "cats" else None
        if p is None:
            cal = spec.impl.calibrate(layer_mlps(tiny_llama), mlp_inputs(tiny_llama, ids(seed=7)), [0.6],
                                      {"allocation_step": 0.05}, lines=[spec])
            arrays = spec.impl.arrays(spec, 0.6, projections=["down_in"], calibration=cal, model=tiny_llama,
                                      windows=ids(), settings={}, inputs={})
            n = len(decoder_layers(tiny_llama))
            p = score_point(tiny_llama, ids(), spec, 0.6, bos=True, projections=["down_in"],
                            thresholds={"down_in": [0.0] * n}, **arrays)
        pts.append({"pset": "down_in", **p, "compute_share": 0.6})  # all at one compute share
    pairs = paired_table(pts, shares=(0.6,), n_boot=50)
    got = {frozenset((r.line, r.against)) for r in pairs.itertuples()}
    assert got == {frozenset(("teal", "cats"))}
    assert all(math.isfinite(v) for v in pairs["d_log_ratio"])
