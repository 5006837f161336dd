"""End-to-end decode time of every sparse FFN line: ms per output token, speed-up over dense, byte bound.

    PYTHONPATH=src python benchmarks/bench_decode.py --out decode.csv            # GPU, Mistral-7B shape
    PYTHONPATH=src python benchmarks/bench_decode.py --device cpu --model results/models/<SmolLM2 folder> \
        --prompt 128 --new 32 --batches 1,4 --out decode_cpu.csv          # CPU, the embedded model

Model (GPU): ``paper_shaped_model.MISTRAL_7B_V01`` (all 32 layers, random weights, bf16) built on the device by
:mod:`decode_model`; a static KV cache; each decode step captured as one CUDA graph, for dense and every
line alike.  Workload: a random prompt of ``--prompt`` tokens per row, then ``--new`` tokens greedily, at
each ``--batches`` size.  Lines (the FFN of every layer swapped), at FFN compute shares ``--shares``
(the share of the dense FFN's multiply-adds a line does):

========== =====================================================================================
dense      cuBLAS products (stacked gate/up, down)
teal       input-sparse gate/up on ``|x| > t_in``, down on ``|h| > t_h``; both kept shares = c
wina       the same on ``|x| * ||W_col||`` (WINA's scaled score), kept shares = c
cats       gate dense, up and down on ``|silu(gate)| >= t``; kept share (3c - 1) / 2
per_token  a neuron mask per token (random, kept share c; the predictor's cost is not included)
cluster    16 cluster masks per layer (random, kept share c), a cluster id per row (random)
static     one neuron mask per layer (the c most active neurons on the prompt): pruned dense weights
========== =====================================================================================

Thresholds are calibrated per layer on the model's own FFN inputs over the first row's prompt.  The
bound of a line is the bytes one step must read (weights of attention, LM head, the FFN rows of the
union of the batch's kept channels as measured in the reference run, and the KV cache at the mean
context) over the measured copy bandwidth; ``bound_speedup`` is dense bytes over the line's bytes.
Tokens are checked against a torch reference of the same masked model (its FFN in plain torch,
teacher-forced on the line's tokens) for the first ``--check`` steps.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_model import Decoder, context_mean, load_llama  # noqa: E402
from paper_shaped_model import MISTRAL_7B_V01  # noqa: E402

from apc.deploy import sparse_gemv as sg  # noqa: E402

LINES = ("dense", "teal", "wina", "cats", "per_token", "cluster", "static")
COLUMNS = ("device", "batch", "line", "compute_share", "kept_share", "union_share", "ms_per_token", "ms_min",
           "ms_max", "dense_ms", "speedup", "bound_ms", "bound_speedup", "time_over_bound", "tokens_match",
           "tokens_checked", "ffn_rel_err", "logit_rel_err", "timing")


def _floats(s):
    return [float(v) for v in s.split(",") if v]


def _ints(s):
    return [int(v) for v in s.split(",") if v]


def cats_share(c: float) -> float:
    """CATS's kept share of up/down at FFN compute share ``c`` (the gate runs dense): ``(3c - 1) / 2``."""
    return max(0.0, (3 * c - 1) / 2)


def _quantile(v: torch.Tensor, q: float) -> float:
    v = v.float().flatten()
    if v.numel() > (1 << 24):
        v = v[torch.randint(0, v.numel(), (1 << 24,), device=v.device)]
    return float(torch.quantile(v, min(max(q, 0.0), 1.0)))


# ----------------------------------------------------------------------------- calibration


def calibrate(dec: Decoder, prompt: torch.Tensor, shares, params, scales) -> dict:
    """Per-layer thresholds and static masks at each share, from the FFN inputs over ``prompt (1, P)``."""
    cal: dict = {c: {"teal": [], "wina": [], "cats": [], "static": []} for c in shares}
    f = dec.cfg["intermediate_size"]

    def hook(i, x):
        cal.setdefault("x", {})[i] = x[-16:].clone()  # FFN inputs for the kernel check at real shapes
        lw = dec.layers[i]
        g, u = F.linear(x, lw["wgu"]).chunk(2, dim=-1)
        a = F.silu(g)
        h = (a * u).float().abs()
        s_in, s_h = scales[i]
        xs, hs = x.float().abs() * s_in, h * s_h
        act_mean = h.mean(0)
        for c in shares:
            cal[c]["teal"].append((_quantile(x.abs(), 1 - c), _quantile(h, 1 - c)))
            cal[c]["wina"].append((_quantile(xs, 1 - c), _quantile(hs, 1 - c)))
            rc = cats_share(c)
            cal[c]["cats"].append(_quantile(a.abs(), 1 - rc) if rc > 0 else float("inf"))
            keep = torch.zeros(f, dtype=torch.bool, device=x.device)
            keep[act_mean.topk(max(1, int(round(c * f)))).indices] = True
            cal[c]["static"].append(keep)

    dec.prefill(prompt, hook=hook)
    return cal


# ----------------------------------------------------------------------------- lines


class Line:
    """A line's fast FFN (``fast(i, x)``), its torch reference (``ref(i, x)``, recording union shares),
    and the FFN bytes it reads at a union share ``u``."""

    def __init__(self, name, c, dec, params, cal, scales, gen):
        self.name, self.c = name, c
        self.unions: list[float] = []
        d, f = dec.cfg["hidden_size"], dec.cfg["intermediate_size"]
        el = 2
        self.dense_ffn_bytes = 3 * d * f * el * dec.n_layers
        L, b = dec.n_layers, dec.batch
        lay = dec.layers
        self.kept = c
        self.fast = self.ref = None
        if name == "dense":
            self.bytes_of = lambda u: self.dense_ffn_bytes
            return
        if name in ("teal", "wina"):
            thr = cal[c][name]
            sc = scales if name == "wina" else [(None, None)] * L

            def fast(i, x):
                return sg.teal_ffn(x, params[i], thr[i][0], thr[i][1], sc[i][0], sc[i][1])

            def ref(i, x):
                s_in = 1 if sc[i][0] is None else sc[i][0]
                s_h = 1 if sc[i][1] is None else sc[i][1]
                in_keep = (x.float() * s_in).abs() > thr[i][0]
                xm = x.masked_fill(~in_keep, 0)
                g, u = F.linear(xm, lay[i]["wgu"]).chunk(2, dim=-1)
                h = F.silu(g) * u
                h_keep = (h.float() * s_h).abs() > thr[i][1]
                self.unions.append((2 * float(in_keep.any(0).float().mean()) + float(h_keep.any(0).float().mean())) / 3)
                return F.linear(h.masked_fill(~h_keep, 0), lay[i]["wd"])

            self.bytes_of = lambda u: self.dense_ffn_bytes * u
        elif name == "cats":
            thr = cal[c]["cats"]
            self.kept = cats_share(c)

            def fast(i, x):
                return sg.cats_ffn_sparse(x, params[i], thr[i])

            def ref(i, x):
                g, u = F.linear(x, lay[i]["wgu"]).chunk(2, dim=-1)
                a = F.silu(g)
                keep = a.abs().float() >= thr[i]
                self.unions.append(float(keep.any(0).float().mean()))
                return F.linear((a * u).masked_fill(~keep, 0), lay[i]["wd"])

            self.bytes_of = lambda u: self.dense_ffn_bytes * (1 + 2 * u) / 3
        elif name in ("per_token", "cluster"):
            k = max(1, int(round(c * f)))

            def rand_masks(n):
                noise = torch.rand(n, f, generator=gen, device=dec.device)
                m = torch.zeros(n, f, dtype=torch.bool, device=dec.device)
                return m.scatter_(1, noise.topk(k, dim=1).indices, True)

            if name == "per_token":
                masks = [rand_masks(b) for _ in range(L)]
                get = lambda i: masks[i]  # noqa: E731
            else:
                cms = [rand_masks(16) for _ in range(L)]
                ids = torch.randint(0, 16, (b,), generator=gen, device=dec.device)
                get = lambda i: cms[i].index_select(0, ids)  # noqa: E731

            def fast(i, x):
                return sg.mask_ffn(x, params[i], get(i))

            def ref(i, x):
                m = get(i)
                self.unions.append(float(m.any(0).float().mean()))
                g, u = F.linear(x, lay[i]["wgu"]).chunk(2, dim=-1)
                return F.linear((F.silu(g) * u).masked_fill(~m, 0), lay[i]["wd"])

            self.bytes_of = lambda u: self.dense_ffn_bytes * u
        elif name == "static":
            keeps = cal[c]["static"]
            sliced = []
            for i in range(L):
                idx = keeps[i].nonzero().squeeze(1)
                sliced.append((torch.cat([lay[i]["wgu"][idx], lay[i]["wgu"][f + idx]]).contiguous(),
                               lay[i]["wd"][:, idx].contiguous()))
            self.sliced = sliced

            def fast(i, x):
                g, u = F.linear(x, sliced[i][0]).chunk(2, dim=-1)
                return F.linear(F.silu(g) * u, sliced[i][1])

            def ref(i, x):
                self.unions.append(float(keeps[i].float().mean()))
                g, u = F.linear(x, lay[i]["wgu"]).chunk(2, dim=-1)
                return F.linear((F.silu(g) * u).masked_fill(~keeps[i], 0), lay[i]["wd"])

            self.bytes_of = lambda u: self.dense_ffn_bytes * u
        else:
            raise ValueError(f"unknown line {name!r}; expected one of {', '.join(LINES)}")
        self.fast, self.ref = fast, ref


# ----------------------------------------------------------------------------- timing


def capture(dec: Decoder, snap):
    """A CUDA graph of one decode step (after a warm-up on a side stream); state restored after."""
    dec.restore(snap)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        dec.step()
        dec.step()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    dec.restore(snap)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        dec.step()
    dec.restore(snap)
    torch.cuda.synchronize()
    return g


def time_decode(dec: Decoder, snap, new: int, repeats: int) -> tuple[list[float], str, torch.Tensor]:
    """ms per output token of each repeat, the timing kind, and the first repeat's token log."""
    cuda = dec.device.type == "cuda"
    g = None
    kind = "wall"
    if cuda:
        try:
            g = capture(dec, snap)
            kind = "graph"
        except Exception as exc:  # noqa: BLE001 - report and time eagerly
            print(f"  graph capture failed ({type(exc).__name__}: {str(exc)[:160]}); timing eagerly", flush=True)
            torch.cuda.synchronize()
            kind = "eager"
    run = g.replay if g is not None else dec.step
    times, log = [], None
    for r in range(repeats):
        dec.restore(snap)
        if cuda:
            torch.cuda.synchronize()
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            for _ in range(new):
                run()
            e1.record()
            torch.cuda.synchronize()
            times.append(e0.elapsed_time(e1) / new)
        else:
            t0 = time.perf_counter()
            with torch.no_grad():
                for _ in range(new):
                    run()
            times.append((time.perf_counter() - t0) * 1e3 / new)
        if r == 0:
            log = dec.log.clone()
    del g
    return times, kind, log


@torch.no_grad()
def ffn_error(dec: Decoder, line: Line, cal: dict) -> float:
    """Largest relative L2 error of the line's FFN against its torch reference on real FFN inputs
    (the last prompt positions of the first, middle and last layer)."""
    if line.fast is None:
        return 0.0
    errs = []
    n_u = len(line.unions)
    for i in sorted({0, dec.n_layers // 2, dec.n_layers - 1}):
        x = cal["x"][i][-dec.batch:]
        if x.shape[0] < dec.batch:
            x = x.repeat(-(-dec.batch // x.shape[0]), 1)[:dec.batch]
        a, b = line.fast(i, x).double(), line.ref(i, x).double()
        errs.append(float((a - b).norm() / b.norm().clamp_min(1e-30)))
    del line.unions[n_u:]
    return max(errs)


@torch.no_grad()
def check_tokens(dec: Decoder, snap, line: Line, log: torch.Tensor, prompt: int, steps: int) -> tuple[int, int]:
    """Teacher-forced torch reference of the same masked model: (matching tokens, tokens checked, relative
    L2 error of the first step's logits against the fast path's, eager)."""
    dec.restore(snap)
    dec.ffn = line.fast
    dec.step()
    fast_logits = dec.logits.double()
    dec.restore(snap)
    dec.ffn = line.ref
    match = total = 0
    err = float("nan")
    for j in range(steps):
        if j:
            dec.tok.copy_(log[prompt + j - 1])
        dec.step()
        if j == 0:
            err = float((dec.logits.double() - fast_logits).norm() / fast_logits.norm())
        want = log[prompt + j]
        match += int((dec.log[prompt + j] == want).sum())
        total += want.numel()
    dec.ffn = line.fast
    return match, total, err


def measure_bandwidth(device) -> float:
    """Copy bandwidth in bytes/s (bytes read plus written), 1 GiB."""
    if device.type != "cuda":
        src = torch.empty(1 << 25, dtype=torch.float32)
        dst = torch.empty_like(src)
        t0 = time.perf_counter()
        for _ in range(5):
            dst.copy_(src)
        return 2 * src.numel() * 4 * 5 / (time.perf_counter() - t0)
    from triton.testing import do_bench

    src = torch.empty(1 << 29, device=device, dtype=torch.float16)
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=10, rep=50, return_mode="median")
    bw = 2.0 * src.numel() * 2 / (ms * 1e-3)
    del src, dst
    return bw


# ----------------------------------------------------------------------------- profile


def profile_step(dec: Decoder, snap, label: str) -> dict:
    """Where one step's time goes: leave-out timings (no FFN, no attention, neither) of graph replays,
    and the kernels' summed device time in one replay (the rest of the wall time: launch gaps)."""
    out = {"cell": label}

    def graph_ms(reps=20):
        g = capture(dec, snap)
        for _ in range(3):
            g.replay()
        torch.cuda.synchronize()
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for _ in range(reps):
            g.replay()
        e1.record()
        torch.cuda.synchronize()
        return g, e0.elapsed_time(e1) / reps

    g, full = graph_ms()
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA], acc_events=True) as prof:
        g.replay()
        torch.cuda.synchronize()
    cats = {"ffn_sparse": 0.0, "gemm": 0.0, "attention": 0.0, "other": 0.0}
    top = sorted(((e.self_device_time_total / 1e3, e.count, e.key[:90]) for e in prof.key_averages()), reverse=True)
    out["top_kernels"] = [f"{t:.3f} ms x{n} {k}" for t, n, k in top[:12]]
    for e in prof.key_averages():
        t = e.self_device_time_total / 1e3
        name = e.key.lower()
        if any(k in name for k in ("in_sparse", "out_sparse", "act_mul", "take_kernel")):
            cats["ffn_sparse"] += t
        elif any(k in name for k in ("gemm", "gemv", "nvjet", "cutlass", "sm90")):
            cats["gemm"] += t
        elif any(k in name for k in ("fmha", "attention", "flash", "efficient", "attn")):
            cats["attention"] += t
        else:
            cats["other"] += t
    del g
    kernel_ms = sum(cats.values())
    out.update(full_ms=full, kernel_ms=kernel_ms, gaps_ms=full - kernel_ms, **{f"k_{k}_ms": v for k, v in cats.items()})
    dec.skip_ffn = True
    _, no_ffn = graph_ms()
    dec.skip_attn = True
    _, neither = graph_ms()
    dec.skip_ffn = False
    _, no_attn = graph_ms()
    dec.skip_attn = False
    out.update(ffn_ms=full - no_ffn, attn_ms=full - no_attn, rest_ms=neither)
    dec.restore(snap)
    return out


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--layers", type=int, default=MISTRAL_7B_V01["num_hidden_layers"])
    ap.add_argument("--hidden", type=int, default=MISTRAL_7B_V01["hidden_size"])
    ap.add_argument("--ffn", type=int, default=MISTRAL_7B_V01["intermediate_size"])
    ap.add_argument("--heads", type=int, default=MISTRAL_7B_V01["num_attention_heads"])
    ap.add_argument("--kv-heads", type=int, default=MISTRAL_7B_V01["num_key_value_heads"])
    ap.add_argument("--vocab", type=int, default=MISTRAL_7B_V01["vocab_size"])
    ap.add_argument("--model", default="", help="a Llama-style safetensors folder to load instead of random weights "
                    "(the shape options are then ignored)")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--batches", type=_ints, default=[1, 4, 16])
    ap.add_argument("--shares", type=_floats, default=[0.4, 0.6, 0.8])
    ap.add_argument("--lines", default=",".join(LINES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--check", type=int, default=16, help="decode steps checked against the torch reference")
    ap.add_argument("--profile", default="dense:1:1.0,teal:1:0.6,teal:16:0.6",
                    help="cells line:batch:share to profile ('' for none)")
    ap.add_argument("--config", default="", help="JSON of sparse GEMV tile shapes (bench_sparse_gemv.py --save)")
    ap.add_argument("--out", default="", help="CSV of the cells")
    ap.add_argument("--profile-out", default="", help="JSON of the profiles")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    lines = [s for s in args.lines.split(",") if s]
    bad = [s for s in lines if s not in LINES]
    if bad:
        raise SystemExit(f"unknown line(s) {bad}; expected some of {', '.join(LINES)}")
    if args.config:
        sg.CONFIG.update(json.loads(Path(args.config).read_text()))
    cfg = {**MISTRAL_7B_V01, "num_hidden_layers": args.layers, "hidden_size": args.hidden,
           "intermediate_size": args.ffn, "num_attention_heads": args.heads, "num_key_value_heads": args.kv_heads,
           "vocab_size": args.vocab}
    max_len = args.prompt + args.new
    t0 = time.perf_counter()
    if args.model:
        dec = load_llama(args.model, 1, max_len, device, dtype)
        cfg = dec.cfg
    else:
        dec = Decoder(cfg, 1, max_len, device, dtype, seed=args.seed)
    params = [sg.SparseFFNWeights(lw["wgu"], lw["wgu"].t().contiguous(), lw["wd"].t().contiguous())
              for lw in dec.layers]
    scales = [sg.wina_scales(p) for p in params]
    bw = measure_bandwidth(device)
    gen = torch.Generator(device=device).manual_seed(args.seed + 1)
    prompts = torch.randint(0, cfg["vocab_size"], (max(args.batches), args.prompt), generator=gen, device=device)
    cal = calibrate(dec, prompts[:1], args.shares, params, scales)
    wb = dec.weight_bytes()
    print(f"# device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; model built and "
          f"calibrated in {time.perf_counter() - t0:.1f} s; copy bandwidth {bw / 1e12:.2f} TB/s; weight bytes per "
          f"step: attention {wb['attn'] / 1e9:.2f} GB, FFN {wb['ffn'] / 1e9:.2f} GB, head {wb['head'] / 1e9:.2f} GB",
          flush=True)
    profiles = set(s for s in args.profile.split(",") if s)
    rows, prof_rows = [], []
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    for b in args.batches:
        dec.resize(b)
        torch.cuda.empty_cache() if device.type == "cuda" else None
        dec.ffn = None
        dec.prefill(prompts[:b])
        snap = dec.snapshot()
        other = wb["attn"] + wb["head"] + dec.kv_bytes(context_mean(args.prompt, args.new))
        dense_ms = None
        cells = [("dense", 1.0)] + [(n, c) for n in lines if n != "dense" for c in args.shares]
        for name, c in cells:
            line = Line(name, c, dec, params, cal, scales, gen)
            dec.ffn = line.fast
            times, kind, log = time_decode(dec, snap, args.new, args.repeats)
            match, checked, lerr = check_tokens(dec, snap, line, log, args.prompt, args.check) if args.check \
                else (0, 0, float("nan"))
            ferr = ffn_error(dec, line, cal)
            union = statistics.mean(line.unions) if line.unions else (1.0 if name == "dense" else float("nan"))
            ms = statistics.median(times)
            if name == "dense":
                dense_ms = ms
            line_bytes = other + line.bytes_of(union)
            dense_bytes = other + line.dense_ffn_bytes
            bound_ms = line_bytes / bw * 1e3
            row = dict(device=dev_name, batch=b, line=name, compute_share=c, kept_share=round(line.kept, 4),
                       union_share=round(union, 4), ms_per_token=round(ms, 4), ms_min=round(min(times), 4),
                       ms_max=round(max(times), 4), dense_ms=round(dense_ms, 4), speedup=round(dense_ms / ms, 3),
                       bound_ms=round(bound_ms, 4), bound_speedup=round(dense_bytes / line_bytes, 3),
                       time_over_bound=round(ms / bound_ms, 3), tokens_match=match, tokens_checked=checked,
                       ffn_rel_err=f"{ferr:.2e}", logit_rel_err=f"{lerr:.2e}", timing=kind)
            rows.append(row)
            print(f"B={b:2d} {name:9s} c={c:.1f} kept={row['kept_share']:.3f} union={row['union_share']:.3f} "
                  f"{ms:7.3f} ms/token [{min(times):.3f}-{max(times):.3f}]  speed-up {row['speedup']:.3f}x "
                  f"(bound {row['bound_speedup']:.3f}x, {bound_ms:.3f} ms; time/bound {row['time_over_bound']:.2f})  "
                  f"tokens {match}/{checked} (ffn err {ferr:.1e}, logits err {lerr:.1e})  {kind}", flush=True)
            key = f"{name}:{b}:{c:g}"
            if device.type == "cuda" and key in profiles:
                dec.ffn = line.fast
                p = profile_step(dec, snap, key)
                prof_rows.append(p)
                print("  profile " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                               for k, v in p.items() if k != "top_kernels"), flush=True)
                print("\n".join("    " + k for k in p["top_kernels"]), flush=True)
            dec.ffn = None
            del line
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if args.out:
                _write(args.out, rows, argv)
        del snap
    if args.profile_out:
        Path(args.profile_out).write_text(json.dumps(prof_rows, indent=1))
    _summary(rows)
    return 0


def _write(path, rows, argv):
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as fh:
        fh.write(f"# python benchmarks/bench_decode.py {shlex.join(argv if argv is not None else sys.argv[1:])}\n")
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def _summary(rows) -> None:
    print("\n# goals")
    for r in rows:
        if r["line"] == "teal" and r["batch"] == 1 and abs(r["compute_share"] - 0.6) < 1e-9:
            print(f"TEAL c=0.6 batch 1: {r['speedup']:.3f}x dense tokens/s (goal >= 1.35x; bound "
                  f"{r['bound_speedup']:.3f}x): {'MET' if r['speedup'] >= 1.35 else 'NOT MET'}")
    bmax = max((r["batch"] for r in rows), default=0)
    for r in rows:
        if r["batch"] == bmax and r["line"] != "dense":
            print(f"batch {bmax} {r['line']:9s} c={r['compute_share']:.1f}: {r['speedup']:.3f}x (bound "
                  f"{r['bound_speedup']:.3f}x)")
    by = {}
    for r in rows:
        if r["line"] != "dense":
            by.setdefault((r["line"], r["compute_share"]), []).append((r["batch"], r["speedup"]))
    for (name, c), pts in sorted(by.items()):
        stop = next((b for b, s in sorted(pts) if s < 1.0), None)
        print(f"{name:9s} c={c:.1f}: speed-up by batch {pts}; stops beating dense at "
              f"{'batch ' + str(stop) if stop else 'no measured batch'}")


if __name__ == "__main__":
    sys.exit(main())
