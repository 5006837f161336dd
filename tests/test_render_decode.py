"""The decode page's renderers (docs/render_decode.py) on a fixture GPU run folder: the cells faster than dense,
ours against TEAL's kernel, compiled against eager, the longest kernels."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))

R = pytest.importorskip("render")
RD = pytest.importorskip("render_decode")


@pytest.fixture
def run(tmp_path, monkeypatch):
    d = tmp_path / "gpu"
    d.mkdir()
    pd.DataFrame([{"batch": b, "line": line, "compute_share": c, "speedup": v}
                  for b, line, c, v in [(1, "dense", 1.0, 1.0), (1, "teal", 0.6, 1.2), (4, "dense", 1.0, 1.0),
                                        (4, "teal", 0.6, 0.9), (4, "static", 0.4, 1.3), (16, "dense", 1.0, 1.0),
                                        (16, "teal", 0.6, 0.7)]]).to_csv(d / "decode.csv", index=False)
    pd.DataFrame([{"shape": "qkv", "K": 4096, "N": 6144, "dtype": dt, "kernel": k, "rho": 0.4, "over_bound": ob}
                  for k, dt, ob in [("ours", "bf16", 1.5), ("ours", "fp16", 1.4), ("teal", "fp16", 1.8)]]
                 ).to_csv(d / "gemv.csv", index=False)
    for name, dtype, same, agree in [("smollm2.csv", "bfloat16", False, 0.75), ("smollm2_fp32.csv", "float32", True, 1.0)]:
        pd.DataFrame([{"line": "dense", "dtype": dtype, "compiled_equals_eager": same, "free_agree_eager": agree,
                       "tokens": 1024}]).to_csv(d / name, index=False)
    (d / "profile.json").write_text(json.dumps([{"cell": "dense:1:1", "top_kernels": [
        "2.000 ms x32 fused_norm_mm", "0.500 ms x32 decode_attn_kernel", "0.100 ms x1 head"]}]))
    pd.DataFrame([{"batch": b, "pos": pos, "kernel": k, "tile": t, "us": us, "bound_us": 2.0, "over_bound": us / 2.0}
                  for b, pos, k, t, us in [(1, 576, "ours_sweep", "32/32/8", 6.0), (1, 639, "ours_sweep", "32/32/8", 8.0),
                                           (1, 576, "ours_sweep", "64/8/4", 5.0), (1, 639, "ours_sweep", "64/8/4", 5.0),
                                           (1, 576, "ours", "64/8/4", 5.0), (1, 576, "inductor_sdpa", "", 10.0),
                                           (4, 576, "ours", "64/8/4", 4.0), (4, 576, "inductor_sdpa", "", 3.0)]]
                 ).to_csv(d / "attn.csv", index=False)
    monkeypatch.setattr(R, "RESULTS", tmp_path)
    R.table.cache_clear()
    yield "gpu"
    R.table.cache_clear()


def test_only_cells_above_dense_are_named_faster(run):
    assert RD.faster_than_dense(run) == "batch 4: `static` at 0.4 (1.300×); batch 16: none"


def test_the_faster_gemv_kernel_is_named(run):
    text = RD.gemv_vs_teal(run, rhos=(0.4,))
    assert text == "- qkv (4096 → 6144): ρ 0.4: ours 1.50×, TEAL's 1.80× (ours faster)\n"


def test_compiled_against_eager_per_dtype(run):
    assert RD.smollm2_sentence(run).startswith("In bfloat16, compiled dense does not equal eager dense")
    assert "768 equal" in RD.smollm2_sentence(run)
    assert RD.smollm2_sentence(run, "smollm2_fp32.csv").startswith("In float32, compiled dense equals eager dense")


def test_longest_kernels_keep_their_order_and_launches(run):
    assert RD.top_kernels(run, "dense:1:1", n=2) == "`fused_norm_mm` 2.000 ms ×32, `decode_attn_kernel` 0.500 ms ×32"
    assert RD.top_kernels(run, "teal:1:0.6") == "–"


def test_attention_table_pairs_ours_with_sdpa_and_names_the_kept_tile(run):
    table = RD.attn_table(run).splitlines()
    assert len(table) == 4  # header, rule, batch 1 and batch 4 (sweep rows left out)
    assert table[2].split("|")[1:-1] == [" 1 ", " 576 ", " 5.00 ", " 10.00 ", " 2.00 ", " 2.50× ", " 5.00× ", " 2.00 "]
    assert table[3].split("|")[-2] == " 0.75 "
    assert RD.attn_choice(run) == ("2 tiles `(BL, NSPLIT, warps)` swept at batch 1; kept `64/8/4` (worst time over "
                                   "bound 2.50×; the sweep's range 2.50×–4.00×)")
