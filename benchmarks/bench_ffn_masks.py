"""Masked FFN kernels against the dense FFN and against the roofline bound, measured in one run.

For each token count T the dense gated FFN is timed, then the per-token kernel (one random mask of
kept share rho per token), the CATS kernel (threshold on |act(gate)| set for kept share rho) and the
cluster-grouped kernel (K random group masks of kept share rho; token ids drawn uniformly, and
skewed: from measured id counts, or a Zipf(1.1) stand-in labelled as such).  Each row gives the
median time, its ratio to dense, the roofline bound (apc.deploy.roofline.bound, from the peak
product rate and copy bandwidth measured at the start) as a share of dense time, and time/bound.
Then the three goals, met or not, with a stage profile where not met.

Usage:
    PYTHONPATH=src python benchmarks/bench_ffn_masks.py --device cuda --out t.csv --md t.md
    PYTHONPATH=src python benchmarks/bench_ffn_masks.py --device cpu --tokens 1,16,512,4096 --out t.csv --md t.md
Defaults: CUDA: d_model 4096, d_ff 14336, bfloat16 (Mistral-7B); CPU: 576, 1536, float32.
CUDA times are medians of triton.testing.do_bench; with T <= --graph-max-tokens every kernel, dense
included, is timed as a CUDA graph replay (as decode engines run).  CPU times are the fastest of the
wall-clock calls (other load on a shared CPU only adds time).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from apc.common.progress import get_logger, progress
from apc.deploy import ffn
from apc.deploy.ffn import (cats_ffn, column_major, dense_ffn, group_index, group_schedule, grouped_ffn,
                            per_token_ffn)
from apc.deploy.roofline import bound, write_table
from apc.perplexity.calibrate import share_threshold

log = get_logger("apc.bench_ffn_masks")
DEFAULTS = {"cuda": (4096, 14336, "bfloat16"), "cpu": (576, 1536, "float32")}


def _ints(s):
    return [int(v) for v in s.split(",") if v]


def _floats(s):
    return [float(v) for v in s.split(",") if v]


# ----------------------------------------------------------------------------- timing


class Timer:
    """Median time in ms of a callable on the device."""

    def __init__(self, device: torch.device, repeats: int, graph_max_tokens: int, min_time: float = 0.0):
        self.device = device
        self.repeats = repeats
        self.graph_max_tokens = graph_max_tokens
        self.min_time = min_time

    def __call__(self, fn, tokens: int) -> tuple[float, str]:
        if self.device.type != "cuda":
            # at least `repeats` calls and `min_time` seconds; the fastest call, since other load on a
            # shared CPU only ever adds time
            fn()
            ts = []
            start = time.perf_counter()
            while len(ts) < self.repeats or time.perf_counter() - start < self.min_time:
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            return min(ts) * 1e3, "wall"
        from triton.testing import do_bench

        fn()
        torch.cuda.synchronize()
        if tokens <= self.graph_max_tokens:
            try:
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    fn()
                    fn()
                torch.cuda.current_stream().wait_stream(s)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    fn()
                ms = do_bench(g.replay, warmup=5, rep=25, return_mode="median")
                del g
                return ms, "graph"
            except Exception as exc:  # some paths cannot be captured: time them eagerly
                log.info(f"CUDA graph capture failed ({type(exc).__name__}: {str(exc)[:120]}); timing eagerly")
                torch.cuda.synchronize()
        return do_bench(fn, warmup=5, rep=25, return_mode="median"), "eager"


def paired_cpu(timer: "Timer", fn, dense_fn) -> tuple[float, float]:
    """CPU: ``fn`` and the dense FFN called alternately (so that other load hits both alike); the
    fastest call of each, in ms."""
    fn()
    dense_fn()
    ts, td = [], []
    start = time.perf_counter()
    while len(ts) < timer.repeats or time.perf_counter() - start < 2 * timer.min_time:
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        dense_fn()
        td.append(time.perf_counter() - t1)
        ts.append(t1 - t0)
    return min(ts) * 1e3, min(td) * 1e3


def measure_peaks(device: torch.device, dtype: torch.dtype, timer: Timer) -> tuple[float, float]:
    """(peak product rate in FLOP/s, copy bandwidth in bytes/s, counting bytes read and written)."""
    n = 8192 if device.type == "cuda" else 1024
    mdt = torch.bfloat16 if device.type == "cuda" else dtype
    a = torch.randn(n, n, device=device, dtype=mdt)
    b = torch.randn(n, n, device=device, dtype=mdt)
    ms, _ = timer(lambda: a @ b, 10 ** 9)
    peak = 2.0 * n ** 3 / (ms * 1e-3)
    numel = (1 << 29) if device.type == "cuda" else (1 << 25)  # 1 GiB / 128 MiB of fp16 / fp32
    src = torch.empty(numel, device=device, dtype=torch.float16 if device.type == "cuda" else torch.float32)
    dst = torch.empty_like(src)
    ms, _ = timer(lambda: dst.copy_(src), 10 ** 9)
    bw = 2.0 * src.numel() * src.element_size() / (ms * 1e-3)
    del a, b, src, dst
    return peak, bw


# ----------------------------------------------------------------------------- inputs


def id_distribution(path: str | None, proj: str | None) -> tuple[np.ndarray | None, str, str]:
    """Mean over layers of the sorted normalised id counts (descending), its label and a note."""
    if not path or not Path(path).exists():
        return None, "zipf1.1", f"id-count file {path!r} absent: skewed ids use a Zipf(1.1) stand-in (labelled zipf1.1)"
    data = json.loads(Path(path).read_text())
    counts = data.get("id_counts", data)
    if not isinstance(counts, dict) or not counts:
        raise SystemExit(f"{path}: expected an 'id_counts' object mapping projection -> per-layer lists of counts")
    proj = proj or ("down_in" if "down_in" in counts else sorted(counts)[0])
    if proj not in counts:
        raise SystemExit(f"{path}: no id counts for projection {proj!r} (has {sorted(counts)})")
    per_layer = np.asarray(counts[proj], dtype=float)
    if per_layer.ndim == 1:
        per_layer = per_layer[None]
    per_layer = -np.sort(-per_layer, axis=1)
    per_layer = per_layer / per_layer.sum(axis=1, keepdims=True)
    return per_layer.mean(axis=0), "skewed", f"skewed ids from {path} ({proj}, {per_layer.shape[0]} layers, K={per_layer.shape[1]})"


def resample(p: np.ndarray | None, k: int) -> np.ndarray:
    """A descending distribution over ``k`` ids with the shape of ``p`` (Zipf(1.1) where ``p`` is None)."""
    if p is None:
        q = np.arange(1, k + 1, dtype=float) ** -1.1
        return q / q.sum()
    cdf = np.concatenate([[0.0], np.cumsum(p)])
    grid = np.linspace(0, 1, len(p) + 1)
    q = np.diff(np.interp(np.linspace(0, 1, k + 1), grid, cdf))
    q = np.clip(q, 0, None)
    return q / q.sum()


def random_masks(n: int, d_ff: int, rho: float, device, gen) -> torch.Tensor:
    """``(n, d_ff) bool`` with exactly ``round(rho * d_ff)`` ones per row."""
    k = int(round(rho * d_ff))
    noise = torch.rand(n, d_ff, generator=gen, device="cpu").to(device)
    out = torch.zeros(n, d_ff, dtype=torch.bool, device=device)
    if k:
        out.scatter_(1, noise.topk(k, dim=1).indices, True)
    return out


def draw_ids(t: int, k: int, p: np.ndarray | None, rng: np.random.Generator, device) -> torch.Tensor:
    if p is None:
        ids = rng.integers(0, k, t)
    else:
        ids = rng.permutation(k)[rng.choice(k, size=t, p=p)]  # heavy ranks land on random ids
    return torch.as_tensor(ids, dtype=torch.int64, device=device)


def cats_threshold(x, w_gate, rho: float) -> float:
    """The |act(gate)| threshold keeping a share ``rho`` (the library's calibration, apc.perplexity.calibrate)."""
    return share_threshold(F.silu(F.linear(x, w_gate)), rho) if rho < 1 else 0.0


# ----------------------------------------------------------------------------- profile


def profile(case: dict, w, timer: Timer) -> dict[str, float]:
    """Stage times (ms) of one case, each stage timed alone on precomputed inputs."""
    x, wg, wu, wd, wd_cm = w["x"], w["wg"], w["wu"], w["wd"], w["wd_cm"]
    t = x.shape[0]
    kern = case["kernel"]
    out: dict[str, float] = {}
    if x.device.type != "cuda":  # torch fallback: gather of the kept weights vs the products
        if kern == "grouped":
            gi, ids = case["gi"], case["ids"]
            used = torch.unique(ids).tolist()
            idx = [gi.idx[g, :int(gi.counts[g])].long() for g in used]
            out["sort"] = timer(lambda: (torch.argsort(ids, stable=True), torch.bincount(ids)), t)[0]
            out["gather weights"] = timer(lambda: [(wg.index_select(0, i), wu.index_select(0, i),
                                                    ffn.down_rows(wd_cm, i)) for i in idx], t)[0]
            m = max(1, t // max(1, len(used)))
            xs = x[:m]
            ws = [(wg.index_select(0, i), wu.index_select(0, i), ffn.down_rows(wd_cm, i)) for i in idx]
            out["products (pre-gathered)"] = timer(
                lambda: [(F.silu(F.linear(xs, a)) * F.linear(xs, b)) @ c for a, b, c in ws], t)[0]
        else:
            mask = case["mask"]
            idx = mask.any(0).nonzero().squeeze(1)
            out["gather weights"] = timer(lambda: (wg.index_select(0, idx), wu.index_select(0, idx),
                                                   ffn.down_rows(wd_cm, idx)), t)[0]
            a, b, c = wg.index_select(0, idx), wu.index_select(0, idx), ffn.down_rows(wd_cm, idx)
            out["products (pre-gathered)"] = timer(lambda: (F.silu(F.linear(x, a)) * F.linear(x, b)) @ c, t)[0]
        return out
    act = 0
    if kern == "grouped":
        gi, ids = case["gi"], case["ids"]
        idx, counts = gi.idx, gi.counts
        if t == 1 and ffn._FAST["gemv"]:
            run = lambda st: ffn.launch_gemv(x, wg, wu, wd_cm, ids, idx, counts, act, stages=st)
        else:
            cfg = ffn.kernel_config(t / min(gi.n_groups, t), x.dtype)
            out["sort+schedule"] = timer(lambda: group_schedule(ids, gi.n_groups, cfg["BM"]), t)[0]
            order, blocks = group_schedule(ids, gi.n_groups, cfg["BM"])
            run = lambda st: ffn.launch_grouped(x, wg, wu, wd_cm, order, blocks, idx, counts, act, cfg, stages=st, tune=True)
    else:
        if kern == "gate":
            thr = case["thr"]
            out["gate product+act"] = timer(lambda: F.silu(F.linear(x, wg)), t)[0]
            a = F.silu(F.linear(x, wg))
            out["union index"] = timer(lambda: ffn.union_index(ffn.cats_keep(a, thr)), t)[0]
            idx, counts = ffn.union_index(ffn.cats_keep(a, thr))
            kw = dict(a=a, thr=thr)
        else:
            mask = case["mask"]
            out["union index"] = timer(lambda: ffn.union_index(mask), t)[0]
            idx, counts = ffn.union_index(mask)
            kw = dict(token_mask=mask.view(torch.uint8))
        if t == 1 and ffn._FAST["gemv"]:
            kw1 = dict(kw, token_mask=kw["token_mask"][0]) if "token_mask" in kw else kw
            run = lambda st: ffn.launch_gemv(x, wg, wu, wd_cm, ffn.zero_selection(x.device), idx, counts, act,
                                              stages=st, **kw1)
        else:
            cfg = ffn.kernel_config(t, x.dtype)
            order, blocks = ffn.single_schedule(t, cfg["BM"], x.device)
            run = lambda st: ffn.launch_grouped(x, wg, wu, wd_cm, order, blocks, idx, counts, act, cfg, stages=st,
                                         tune=True, **kw)
    out["gate/up kernel"] = timer(lambda: run(("gate_up",)), t)[0]
    out["down kernel (+alloc)"] = timer(lambda: run(("down",)), t)[0]
    out["both kernels, plan given"] = timer(lambda: run(("gate_up", "down")), t)[0]
    if kern == "grouped":
        used = torch.unique(case["ids"])
        out["weight share read (sum over groups present)"] = round(
            float(counts[used].float().sum()) / idx.shape[1], 3)
    else:
        out["weight share read (union)"] = round(float(counts[0]) / idx.shape[1], 3)
    return out


# ----------------------------------------------------------------------------- main


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--d-model", type=int)
    ap.add_argument("--d-ff", type=int)
    ap.add_argument("--dtype", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--tokens", type=_ints, default=_ints("1,4,16,64,512,4096,16384"))
    ap.add_argument("--groups", type=_ints, default=_ints("8,32,128,1024"))
    ap.add_argument("--rho", type=_floats, default=_floats("0.4,0.6,0.8"))
    ap.add_argument("--kernels", default="per_token,gate,grouped")
    ap.add_argument("--assign", default="uniform,skewed", help="uniform and/or skewed token ids")
    ap.add_argument("--id-counts", help="JSON whose id_counts maps projection -> per-layer lists of K counts")
    ap.add_argument("--id-proj", help="projection of --id-counts to use (default down_in, else the first)")
    ap.add_argument("--repeats", type=int, default=5, help="CPU: at least this many timed calls per case (fastest)")
    ap.add_argument("--min-time", type=float, default=0.3, help="CPU: and calls for at least this many seconds")
    ap.add_argument("--graph-max-tokens", type=int, default=64, help="CUDA: graph replay up to this many tokens")
    ap.add_argument("--threads", type=int, help="CPU threads for torch")
    ap.add_argument("--profiles", type=int, default=6, help="stage profiles printed per unmet goal")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="machine-readable table (.csv or .json)")
    ap.add_argument("--md", help="markdown report")
    args = ap.parse_args(argv)
    command = "PYTHONPATH=src python " + " ".join(shlex.quote(a) for a in [sys.argv[0]] + (argv or sys.argv[1:]))

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but CUDA is not available")
    dm, df, dt = DEFAULTS["cuda" if device.type == "cuda" else "cpu"]
    d_model, d_ff = args.d_model or dm, args.d_ff or df
    dtype = getattr(torch, args.dtype or dt)
    if args.threads:
        torch.set_num_threads(args.threads)
    kernels = [k for k in args.kernels.split(",") if k]
    bad = [k for k in kernels if k not in ("per_token", "gate", "grouped")]
    if bad:
        raise SystemExit(f"unknown kernel(s) {bad}; expected per_token, gate (the gate-decided mask, CATS), grouped")
    timer = Timer(device, args.repeats, args.graph_max_tokens, args.min_time)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    log.info(f"device {dev_name}, FFN {d_model} -> {d_ff} {dtype}, measuring peaks")
    peak, bw = measure_peaks(device, dtype, timer)
    log.info(f"peak product rate {peak / 1e12:.3g} TFLOP/s, copy bandwidth {bw / 1e9:.0f} GB/s")

    p_skew, skew_label, skew_note = id_distribution(args.id_counts, args.id_proj)
    log.info(skew_note)
    assigns = []
    for a in args.assign.split(","):
        if a == "uniform":
            assigns.append(("uniform", None))
        elif a == "skewed":
            assigns.append((skew_label, "skew"))
        elif a:
            raise SystemExit(f"unknown --assign {a!r}; expected uniform and/or skewed")

    gen = torch.Generator().manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    g0 = torch.Generator().manual_seed(args.seed + 1)
    wg = (torch.randn(d_ff, d_model, generator=g0) / math.sqrt(d_model)).to(device=device, dtype=dtype)
    wu = (torch.randn(d_ff, d_model, generator=g0) / math.sqrt(d_model)).to(device=device, dtype=dtype)
    wd = (torch.randn(d_model, d_ff, generator=g0) / math.sqrt(d_ff)).to(device=device, dtype=dtype)
    wd_cm = column_major(wd)
    elem = torch.finfo(dtype).bits // 8
    bkw = dict(d_model=d_model, d_ff=d_ff, peak_flops=peak, bandwidth=bw, bytes_per_weight=elem)
    mask_sets = {}  # (K, rho) -> GroupIndex, built once per set, as a model's centroids are

    rows, cases = [], []
    base = dict(device=dev_name, dtype=str(dtype).replace("torch.", ""), d_model=d_model, d_ff=d_ff)
    plan = []
    for t in args.tokens:
        plan.append((t, "dense", None, 1, 1.0))
        for rho in args.rho:
            for k in ("per_token", "gate"):
                if k in kernels:
                    plan.append((t, k, None, t, rho))
            if "grouped" in kernels:
                for label, skew in assigns:
                    for kk in args.groups:
                        plan.append((t, "grouped", (label, skew), kk, rho))
    dense_ms = {}
    cur_t, w = None, None
    for t, kern, assign, groups, rho in progress(plan, desc="cases", unit="case"):
        if t != cur_t:
            if args.out and rows:  # keep what is measured so far, should the run be cut short
                write_table(rows, args.out, comment=f"made by: {command} (partial: up to {cur_t} tokens)")
            cur_t = t
            x = torch.randn(t, d_model, generator=gen).to(device=device, dtype=dtype)
            w = dict(x=x, wg=wg, wu=wu, wd=wd, wd_cm=wd_cm)
        try:
            row, case = measure_case(t, kern, assign, groups, rho, x, w, timer, dense_ms, mask_sets, p_skew, rng, gen,
                                     bkw, base, d_ff, device)
        except Exception as exc:  # keep going: one failing case must not cost the sweep
            log.error(f"case {kern} T={t} K={groups} rho={rho} {assign}: {type(exc).__name__}: {str(exc)[:300]}")
            if device.type == "cuda":
                torch.cuda.synchronize()
            continue
        rows.append(row)
        cases.append((case, w))
        if device.type == "cuda":
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ goals
    goals_and_report(rows, cases, args, command, dev_name, d_model, d_ff, base, peak, bw, skew_note, timer)


def measure_case(t, kern, assign, groups, rho, x, w, timer, dense_ms, mask_sets, p_skew, rng, gen, bkw, base, d_ff,
                 device):
    """Time one case; returns its table row and what a profile of it needs."""
    wg, wu, wd, wd_cm = w["wg"], w["wu"], w["wd"], w["wd_cm"]
    case = dict(kernel=kern, tokens=t, groups=groups, kept_share=rho, assign="-")
    wdk = wd_cm
    dense_now = dense_ms.get(t)

    def run(fn):
        nonlocal dense_now
        if device.type == "cuda":
            return timer(fn, t)
        ms, dense_now = paired_cpu(timer, fn, lambda: dense_ffn(x, wg, wu, wd))
        return ms, "wall"
    if kern == "dense":
        ms, how = timer(lambda: dense_ffn(x, wg, wu, wd), t)
        dense_ms[t] = ms
        bnd = bound(t, 1, 1.0, **bkw)
        distinct = 1
    elif kern == "per_token":
        mask = random_masks(t, d_ff, rho, device, gen)
        case["mask"] = mask
        ms, how = run(lambda: per_token_ffn(x, wg, wu, wdk, mask))
        distinct = t
        bnd = bound(t, t, rho, **bkw)
    elif kern == "gate":
        thr = cats_threshold(x, wg, rho)
        case["thr"] = thr
        ms, how = run(lambda: cats_ffn(x, wg, wu, wdk, thr))
        distinct = t
        bnd = bound(t, t, rho, dense_share=1 / 3, **bkw)
    else:
        label, skew = assign
        case["assign"] = label
        if (groups, rho) not in mask_sets:
            mask_sets[(groups, rho)] = group_index(random_masks(groups, d_ff, rho, device, gen))
        gi = mask_sets[(groups, rho)]
        ids = draw_ids(t, groups, resample(p_skew, groups) if skew else None, rng, device)
        case["gi"], case["ids"] = gi, ids
        distinct = int(torch.unique(ids).numel())
        ms, how = run(lambda: grouped_ffn(x, wg, wu, wdk, ids, gi, check_ids=False))
        bnd = bound(t, distinct, rho, **bkw)
    dms = dense_ms[t] if kern == "dense" else dense_now
    row = dict(base, kernel=kern, assign=case["assign"], tokens=t, groups=groups, kept_share=rho,
               time_ms=round(ms, 5), dense_ms=round(dms, 5), ratio=round(ms / dms, 4),
               bound_share=round(bnd * 1e3 / dms, 4), time_over_bound=round(ms / (bnd * 1e3), 3),
               timing=how, distinct_groups=distinct)
    return row, case


def goals_and_report(rows, cases, args, command, dev_name, d_model, d_ff, base, peak, bw, skew_note, timer):
    """Print the goals, the profiles of unmet ones and the rows; write the table and the markdown."""
    device = torch.device(args.device)
    lines = []
    pr = lines.append
    pr(f"Command: `{command}`")
    pr("")
    pr(f"Device: {dev_name}; FFN d_model {d_model}, d_ff {d_ff}, {base['dtype']}; measured peak product rate "
       f"{peak / 1e12:.3g} TFLOP/s, copy bandwidth {bw / 1e9:.0f} GB/s (read + write); {skew_note}.")
    if device.type == "cuda":
        pr(f"Times: medians of triton.testing.do_bench; T <= {args.graph_max_tokens} as CUDA graph replays "
           "(every kernel, dense included). w_down of the masked kernels in the column-major layout.")
    else:
        pr(f"Times: wall-clock, the fastest of at least {args.repeats} calls and {args.min_time} s after one "
           "warm-up; each masked kernel called alternately with the dense FFN, whose fastest call in that "
           f"same loop is the row's dense time; torch fallback; {torch.get_num_threads()} thread(s). The bound's "
           "bandwidth is a large copy's, so weights that stay in cache can beat it (bound/dense > 1 at few tokens).")
    pr("")
    goals = [
        ("every kernel within 1.25x its bound where the bound < 0.9 of dense",
         [i for i, r in enumerate(rows) if r["kernel"] != "dense" and r["bound_share"] < 0.9],
         lambda r: r["time_over_bound"] <= 1.25, lambda r: -r["time_over_bound"]),
        ("grouped below dense at T >= 4096 for K <= 32, rho <= 0.6",
         [i for i, r in enumerate(rows) if r["kernel"] == "grouped" and r["tokens"] >= 4096 and r["groups"] <= 32
          and r["kept_share"] <= 0.6 + 1e-9],
         lambda r: r["ratio"] < 1.0, lambda r: -r["ratio"]),
        ("per-token at batch 1 within 1.25 * rho of dense",
         [i for i, r in enumerate(rows) if r["kernel"] == "per_token" and r["tokens"] == 1],
         lambda r: r["ratio"] <= 1.25 * r["kept_share"], lambda r: -(r["ratio"] / r["kept_share"])),
    ]
    pr("## Goals")
    pr("")
    profiles = []
    for name, idx, ok, worst in goals:
        if not idx:
            pr(f"- {name}: not measured in this sweep")
            continue
        fails = [i for i in idx if not ok(rows[i])]
        state = "met" if not fails else "NOT met"
        pr(f"- {name}: **{state}** ({len(idx) - len(fails)}/{len(idx)} rows)")
        for i in sorted(fails, key=lambda i: worst(rows[i]))[:args.profiles]:
            profiles.append((name, i))
    pr("")
    if profiles:
        pr("## Where the time goes (worst rows of each unmet goal; stages timed alone)")
        pr("")
        done = set()
        for name, i in progress(profiles, desc="profiles", unit="row"):
            if i in done:
                continue
            done.add(i)
            r = rows[i]
            case, w = cases[i]
            try:
                stages = profile(case, w, timer)
            except Exception as exc:
                stages = {f"profile failed ({type(exc).__name__}: {str(exc)[:200]})": float("nan")}
            desc = ", ".join(f"{k} {v:.4g}" + ("" if "share" in k else " ms") for k, v in stages.items())
            pr(f"- {r['kernel']} {r['assign']} T={r['tokens']} K={r['groups']} rho={r['kept_share']}: "
               f"{r['time_ms']:.4g} ms = {r['ratio']:.3g} x dense, bound {r['bound_share']:.3g} x dense; {desc}")
        pr("")
    pr("## Rows")
    pr("")
    pr("| kernel | ids | T | K | distinct | rho | ms | dense ms | ratio | bound/dense | time/bound | timing |")
    pr("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        pr(f"| {r['kernel']} | {r['assign']} | {r['tokens']} | {r['groups']} | {r['distinct_groups']} | "
           f"{r['kept_share']:g} | {r['time_ms']:.4g} | {r['dense_ms']:.4g} | {r['ratio']:.3f} | "
           f"{r['bound_share']:.3f} | {r['time_over_bound']:.2f} | {r['timing']} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        write_table(rows, args.out, comment=f"made by: {command}")
        log.info(f"table written to {args.out}")
    if args.md:
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md).write_text("# Masked FFN kernels vs dense and vs the roofline\n\n" + text + "\n")
        log.info(f"markdown written to {args.md}")


if __name__ == "__main__":
    main()
