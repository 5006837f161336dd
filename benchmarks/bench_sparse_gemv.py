"""Sparse-GEMV FFN kernels at decode against the dense FFN and their byte bound (one Mistral-7B FFN layer).

    PYTHONPATH=src python benchmarks/bench_sparse_gemv.py --out k.csv --save tiles.json

First the tile shapes of the input- and output-sparse kernels are swept (kept share 0.5) and the
fastest per weight shape and token count kept (``--save`` writes them for ``bench_decode.py --config``).
Then, at each token count T, the dense FFN (cuBLAS) and the lines at kept share rho: TEAL (input
thresholds on x and h), WINA (the same on scaled scores), the per-token mask (random, rho per token)
and CATS (gate dense; up/down at rho).  Each is timed as a CUDA graph replay (median of do_bench);
the bound is the bytes of the union of the tokens' kept weight rows over the measured copy bandwidth.
Goals printed last: TEAL at T = 1 within 1.25x of its bound at rho 0.4 and 0.6; the per-token kernel at
T = 1 within 1.25 rho of dense.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ffn_masks import Timer, measure_peaks  # noqa: E402

from apc.deploy import sparse_gemv as sg  # noqa: E402
from apc.perplexity.calibrate import share_threshold  # noqa: E402

#: (BK, BN, warps, ITERS): rows per step, columns, warps, steps per program
IN_TILES = [(32, 512, 4, 1), (32, 512, 4, 2), (32, 512, 4, 4), (32, 512, 8, 4), (16, 1024, 4, 2), (32, 1024, 8, 2),
            (64, 512, 8, 2), (16, 512, 4, 4), (32, 256, 4, 4), (64, 256, 4, 2), (128, 128, 4, 1), (32, 512, 4, 8)]
IN16_TILES = [(64, 128, 4, 1), (64, 256, 8, 1), (64, 128, 4, 2), (64, 128, 4, 4), (32, 256, 8, 2), (64, 256, 8, 2)]
OUT_TILES = [(16, 512, 4), (32, 256, 4), (16, 256, 4), (64, 128, 4), (32, 128, 4), (16, 128, 4)]


def _ints(s):
    return [int(v) for v in s.split(",") if v]


def _q(v, q):
    """The threshold keeping the share ``1 - q`` of ``v`` (the library's calibration)."""
    return share_threshold(v, 1.0 - q) if q > 0 else 0.0


def sweep(timer, d, f, dev, dtype):
    """Fastest tile per (kernel, T, shape) at kept share 0.5: ``{config key: tile}``."""
    best = {}
    for t in (1, 16):
        for k, n in ((d, 2 * f), (f, d)):
            x = torch.randn(t, k, device=dev, dtype=dtype)
            w_t = torch.randn(k, n, device=dev, dtype=dtype)
            thr = _q(x.abs(), 0.5)
            acc = torch.zeros(t, n, device=dev)
            res = []
            for tile in (IN_TILES if t == 1 else IN16_TILES):
                key = f"in{1 if t == 1 else 16}:{k}x{n}"
                sg.CONFIG[key] = tile
                try:
                    ms, _ = timer(lambda: sg.in_sparse_gemv(x, w_t, thr, acc=acc), t)
                except Exception as exc:  # noqa: BLE001 - a tile that fails to build is skipped
                    print(f"  tile {tile} failed: {type(exc).__name__}", flush=True)
                    continue
                res.append((ms, tile))
            ms, tile = min(res)
            best[key] = list(tile)
            sg.CONFIG[key] = tile
            print(f"sweep {key}: best {tile} {ms * 1e3:.1f} us  (" +
                  ", ".join(f"{tl}:{m * 1e3:.1f}" for m, tl in res) + ")", flush=True)
        x = torch.randn(t, d, device=dev, dtype=dtype)
        w = torch.randn(2 * f, d, device=dev, dtype=dtype)
        mask = torch.rand(t, f, device=dev) < 0.5
        acc = torch.zeros(t, 2 * f, device=dev)
        res = []
        key = f"out{1 if t == 1 else 16}:{2 * f}x{d}"
        for tile in OUT_TILES:
            sg.CONFIG[key] = tile
            try:
                ms, _ = timer(lambda: sg.out_sparse_gemv(x, w, mask, acc=acc), t)
            except Exception as exc:  # noqa: BLE001
                print(f"  tile {tile} failed: {type(exc).__name__}", flush=True)
                continue
            res.append((ms, tile))
        ms, tile = min(res)
        best[key] = tile
        sg.CONFIG[key] = tile
        print(f"sweep {key}: best {tile} {ms * 1e3:.1f} us  (" +
              ", ".join(f"{tl}:{m * 1e3:.1f}" for m, tl in res) + ")", flush=True)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-model", type=int, default=4096)
    ap.add_argument("--d-ff", type=int, default=14336)
    ap.add_argument("--tokens", type=_ints, default=[1, 4, 16])
    ap.add_argument("--rhos", default="0.4,0.6,0.8")
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--save", default="", help="JSON of the tiles chosen by the sweep")
    ap.add_argument("--out", default="", help="CSV of the rows")
    args = ap.parse_args(argv)
    dev, dtype = torch.device("cuda"), torch.bfloat16
    d, f = args.d_model, args.d_ff
    rhos = [float(v) for v in args.rhos.split(",")]
    timer = Timer(dev, repeats=1, graph_max_tokens=64)
    peak, bw = measure_peaks(dev, dtype, timer)
    print(f"# {torch.cuda.get_device_name(dev)}: copy bandwidth {bw / 1e12:.2f} TB/s, bf16 product {peak / 1e12:.0f} "
          f"TFLOP/s", flush=True)
    if not args.no_sweep:
        best = sweep(timer, d, f, dev, dtype)
        if args.save:
            Path(args.save).write_text(json.dumps(best, indent=1))
    g = torch.Generator(device=dev).manual_seed(0)
    wg, wu = (torch.randn(f, d, device=dev, generator=g) / d ** 0.5).to(dtype), \
        (torch.randn(f, d, device=dev, generator=g) / d ** 0.5).to(dtype)
    wd = (torch.randn(d, f, device=dev, generator=g) / f ** 0.5).to(dtype)
    p = sg.prepare_ffn(wg, wu, wd)
    s_in, s_h = sg.wina_scales(p)
    wbytes = 3 * d * f * 2
    rows = []
    for t in args.tokens:
        x = torch.randn(t, d, device=dev, dtype=dtype, generator=g)

        def dense():
            gg, uu = F.linear(x, p.wgu).chunk(2, dim=-1)
            return F.linear(F.silu(gg) * uu, wd)

        dense_ms, kind = timer(dense, t)
        a = F.silu(x @ wg.t())
        h = (a * (x @ wu.t())).float()
        rows.append(dict(kernel="dense", tokens=t, rho=1.0, union=1.0, ms=dense_ms, dense_ms=dense_ms,
                         bound_ms=wbytes / bw * 1e3, timing=kind))
        for rho in rhos:
            tin, th = _q(x.abs(), 1 - rho), _q(h.abs(), 1 - rho)
            win, wh = _q(x.abs() * s_in, 1 - rho), _q(h.abs() * s_h, 1 - rho)
            mask = torch.rand(t, f, device=dev, generator=g) < rho
            ta = _q(a.abs(), 1 - rho)
            u_in = float((x.abs() > tin).any(0).float().mean())
            u_h = float((h.abs() > th).any(0).float().mean())
            u_m = float(mask.any(0).float().mean())
            u_c = float((a.abs().float() >= ta).any(0).float().mean())
            u_w = (2 * float(((x.abs() * s_in) > win).any(0).float().mean())
                   + float(((h.abs() * s_h) > wh).any(0).float().mean())) / 3
            cases = [("teal", lambda: sg.teal_ffn(x, p, tin, th), (2 * u_in + u_h) / 3),
                     ("wina", lambda: sg.teal_ffn(x, p, win, wh, s_in, s_h), u_w),
                     ("per_token", lambda: sg.mask_ffn(x, p, mask), u_m),
                     ("cats", lambda: sg.cats_ffn_sparse(x, p, ta), (1 + 2 * u_c) / 3)]
            for name, fn, share in cases:
                ms, kind = timer(fn, t)
                rows.append(dict(kernel=name, tokens=t, rho=rho, union=round(share, 4), ms=ms, dense_ms=dense_ms,
                                 bound_ms=share * wbytes / bw * 1e3, timing=kind))
    print(f"\n{'kernel':10s} {'T':>3s} {'rho':>5s} {'union':>6s} {'us':>8s} {'/dense':>7s} {'bound us':>9s} "
          f"{'/bound':>7s}")
    for r in rows:
        r["ratio"] = r["ms"] / r["dense_ms"]
        r["time_over_bound"] = r["ms"] / r["bound_ms"]
        print(f"{r['kernel']:10s} {r['tokens']:3d} {r['rho']:5.2f} {r['union']:6.3f} {r['ms'] * 1e3:8.1f} "
              f"{r['ratio']:7.3f} {r['bound_ms'] * 1e3:9.1f} {r['time_over_bound']:7.3f}")
    print("\n# goals (T = 1)")
    for r in rows:
        if r["tokens"] == 1 and r["kernel"] == "teal" and r["rho"] in (0.4, 0.6):
            print(f"TEAL rho={r['rho']}: {r['time_over_bound']:.3f}x its bound (goal <= 1.25): "
                  f"{'MET' if r['time_over_bound'] <= 1.25 else 'NOT MET'}")
        if r["tokens"] == 1 and r["kernel"] == "per_token":
            print(f"per-token rho={r['rho']}: {r['ratio']:.3f} of dense (goal <= 1.25 rho = {1.25 * r['rho']:.3f}): "
                  f"{'MET' if r['ratio'] <= 1.25 * r['rho'] else 'NOT MET'}")
    if args.out:
        cols = ["kernel", "tokens", "rho", "union", "ms", "dense_ms", "ratio", "bound_ms", "time_over_bound", "timing"]
        with open(args.out, "w", newline="") as fh:
            fh.write(f"# python benchmarks/bench_sparse_gemv.py {shlex.join(sys.argv[1:] if argv is None else argv)}; "
                     f"{torch.cuda.get_device_name(dev)}, copy bandwidth {bw / 1e12:.2f} TB/s\n")
            w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
