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
