"""Whole-model decode time shares from a bench_decode.py table, and their place on the frontier."""

import json

import numpy as np
import pytest

from apc.deploy.decode_table import decode_time_share, is_decode_table, load_decode_table
from apc.results.frontier import time_columns

HEADER = "device,batch,line,compute_share,kept_share,union_share,ms_per_token,dense_ms,timing\n"


def _table(tmp_path):
    rows = ["cpu,1,dense,1.0,1,1,10,10,wall"]
    for b, dense in ((1, 10.0), (16, 12.0)):
        for line, base in (("teal", 6.0), ("cats", 8.0), ("per_token", 7.0), ("static", 6.5), ("cluster", 9.0)):
            for c in (0.4, 0.8):
                rows.append(f"cpu,{b},{line},{c},{c},{c},{base + 5 * c + (b > 1) * 10},{dense},wall")
    p = tmp_path / "decode.csv"
    p.write_text("# python benchmarks/bench_decode.py --device cpu\n" + HEADER + "\n".join(rows) + "\n")
    return p


def test_decode_time_share_interpolates_in_compute_share(tmp_path):
    p = _table(tmp_path)
    assert is_decode_table(p)
    rows = load_decode_table(p)
    assert decode_time_share(rows, "teal", 0.6, 1) == pytest.approx((6 + 5 * 0.6) / 10)
    assert decode_time_share(rows, "teal", 0.2, 1) == pytest.approx((6 + 5 * 0.4) / 10)  # clamped
    assert decode_time_share(rows, "cats", 0.8, 16) == pytest.approx((8 + 4 + 10) / 12)
    assert decode_time_share(rows, "dense", 0.3, 16) == 1.0
    with pytest.raises(ValueError, match="no 'wina' rows at batch 1"):
        decode_time_share(rows, "wina", 0.5, 1)


def test_frontier_reads_a_decode_table(tmp_path):
    p = _table(tmp_path)
    points = []
    for i, (family, line) in enumerate([("teal", "teal"), ("oracle", "oracle.per_layer.static-k1-s0"),
                                        ("threshold", "threshold-self")]):
        f = tmp_path / f"p{i}.json"
        f.write_text(json.dumps({"family": family, "line": line, "kept_share": 0.6, "compute_share": 0.6}))
        points.append(f)
    cols = time_columns(points, p, d_model=8, d_ff=16)
    assert cols[0]["time_share_decode"] == pytest.approx(0.9)
    assert cols[0]["time_share_decode_b16"] == pytest.approx((6 + 3 + 10) / 12)
    assert cols[0]["time_table"] == "decode:decode.csv"
    assert np.isnan(cols[2]["time_share_decode"])
