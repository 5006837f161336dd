"""The decode attention operator (``torch.ops.apc.decode_attention``) against its byte bound and Inductor's SDPA.

    PYTHONPATH=src python benchmarks/bench_decode_attn.py --out attn.csv --save tiles.json

Shape (Mistral-7B): 32 query heads, 8 KV heads, head size 128, bf16, a cache of ``--prompt + --new`` positions
(the decode table's), one query position at ``pos`` = the middle and the end of the decoded range.  At batch 1
the split-KV kernel's ``(BL, NSPLIT, num_warps)`` of :data:`GRID` are swept and the one with the lowest worst
time over bound kept (``--save`` merges ``{"attn": [BL, NSPLIT, num_warps]}`` into the JSON, creating it if
missing, for ``bench_decode.py --config``).  Then at batch 1, 4 and 16: the kernel at the chosen tiles against
the compiled cache write and SDPA (what the decode step runs above ``ATTN_KERNEL_MAX_BATCH``).  Each call is
timed inside one CUDA graph of ``--calls`` calls over one cache per layer (``--layers`` of them, which together
exceed the L2 cache as a decode step's do; median of ``--repeats`` replays); the bound is the live cache rows
(positions ``0 .. pos``), ``q``, the new key and value and the output over the measured copy bandwidth.  The
first line of the CSV is the command and commit.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

from apc.common.atomic import atomic_path
from apc.deploy import ops

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gemv_bound import bandwidth, graph_us  # noqa: E402
from rawfile import write_csv  # noqa: E402

#: (BL, NSPLIT, num_warps) swept at batch 1
GRID = list(itertools.product((16, 32, 64), (2, 4, 8, 16, 32, 64), (1, 2, 4, 8)))
COLUMNS = ("batch", "pos", "length", "kernel", "tile", "us", "bound_us", "over_bound", "rel_err")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--tiles", type=int, default=len(GRID), help="sweep only the first N tiles")
    ap.add_argument("--calls", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", required=True)
    ap.add_argument("--save", default="", help="JSON to merge the chosen attention tiles into (ops.CONFIG keys)")
    args = ap.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    dev, dt = torch.device("cuda"), torch.bfloat16
    bw = bandwidth(dev)
    name = torch.cuda.get_device_name(dev)
    print(f"# device {name}; copy bandwidth {bw / 1e12:.3f} TB/s", flush=True)
    nh, nkv, hd, length = args.heads, args.kv_heads, args.head_dim, args.prompt + args.new
    positions = (args.prompt + args.new // 2, length - 1)
    gen = torch.Generator(device=dev).manual_seed(0)

    def inputs(b):
        def r(*s):
            return torch.randn(*s, device=dev, generator=gen).to(dt)
        caches = [(r(b, nkv, length, hd), r(b, nkv, length, hd)) for _ in range(args.layers)]
        return r(b, nh, hd), r(b, nkv, hd), r(b, nkv, hd), caches

    def bound(b, pos):
        return (b * (2 * (pos + 1) * nkv * hd + 2 * nh * hd + 2 * nkv * hd) * 2) / bw * 1e6

    def err(out, q, kc, vc, p):
        ref = ops.attention_reference(q.double(), kc.double(), vc.double(), p)
        return float((out.double() - ref).norm() / ref.norm())

    rows, ranked = [], []
    q, k, v, caches = inputs(1)
    for tile in GRID[:args.tiles]:
        ops.CONFIG["attn"] = tile
        worst = 0.0
        for pos in positions:
            p = torch.tensor([pos], device=dev)
            try:
                us = graph_us(lambda i: torch.ops.apc.decode_attention(q, k, v, *caches[i], p), args.layers,
                              args.calls, args.repeats)
            except Exception as exc:  # noqa: BLE001 - a tile that fails to build is reported and skipped
                print(f"  tile {tile}: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
                worst = float("inf")
                break
            worst = max(worst, us / bound(1, pos))
            rows.append(dict(batch=1, pos=pos, length=length, kernel="ours_sweep", tile="/".join(map(str, tile)),
                             us=round(us, 2), bound_us=round(bound(1, pos), 2), over_bound=round(us / bound(1, pos), 3),
                             rel_err=""))
        print(f"sweep {tile}: worst time/bound {worst:.3f}", flush=True)
        ranked.append((worst, tile))
    ranked.sort()
    best = ranked[0][1]
    ops.CONFIG["attn"] = best
    print(f"chosen attn: {best} (worst {ranked[0][0]:.3f}); next {ranked[1:4]}", flush=True)
    sdpa = torch.compile(ops._write_and_attend, dynamic=False)
    for b in [int(s) for s in args.batches.split(",") if s]:
        q, k, v, caches = inputs(b)
        for pos in positions:
            p = torch.tensor([pos], device=dev)
            for kernel, fn in (("ours", torch.ops.apc.decode_attention), ("inductor_sdpa", sdpa)):
                kc, vc = caches[0][0].clone(), caches[0][1].clone()
                out = fn(q, k, v, kc, vc, p)
                e = err(out, q, kc, vc, p)
                us = graph_us(lambda i: fn(q, k, v, *caches[i], p), args.layers, args.calls, args.repeats)
                rows.append(dict(batch=b, pos=pos, length=length, kernel=kernel,
                                 tile="/".join(map(str, best)) if kernel == "ours" else "",
                                 us=round(us, 2), bound_us=round(bound(b, pos), 2),
                                 over_bound=round(us / bound(b, pos), 3), rel_err=f"{e:.1e}"))
                print(f"batch {b:2d} pos {pos} {kernel:14s} {us:7.2f} us  bound {bound(b, pos):6.2f}  "
                      f"x{us / bound(b, pos):.2f}  err {e:.1e}", flush=True)
        caches = None  # free this batch's caches before the next
    write_csv(args.out, rows, COLUMNS, argv, note=f"device {name}; copy bandwidth {bw / 1e12:.3f} TB/s")
    if args.save:
        path = Path(args.save)
        conf = json.loads(path.read_text()) if path.is_file() else {}
        conf["attn"] = list(best)
        with atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps(conf, indent=1) + "\n")
        print(f"saved attn {best} into {path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
