"""End-to-end decode time of every sparse FFN line: ms per output token, speed-up over dense, byte bound.

    PYTHONPATH=src python benchmarks/bench_decode.py --out decode.csv            # GPU, Mistral-7B shape
    PYTHONPATH=src python benchmarks/bench_decode.py --device cpu --model results/models/<SmolLM2 folder> \
        --prompt 128 --new 32 --batches 1,4 --out decode_cpu.csv          # CPU, the embedded model

Model (GPU): ``paper_shaped_model.MISTRAL_7B_V01`` (all 32 layers, random weights, bf16) built on the device by
:class:`apc.deploy.decoder.Decoder`; a static KV cache; each layer one ``torch.compile``'d function (fullgraph,
``--no-compile`` for eager) and each decode step captured as one CUDA graph, for dense and every line alike
(on CPU: eager steps, the operators' torch fallbacks).  Workload: a random prompt of ``--prompt`` tokens per row, then ``--new`` tokens greedily, at
each ``--batches`` size.  Lines (the FFN of every layer swapped), at FFN compute shares ``--shares``
(the share of the dense FFN's multiply-adds a line does):

========== =====================================================================================
dense      cuBLAS products (stacked gate/up, down)
teal       input-sparse gate/up on ``|x| > t_in``, down on ``|h| > t_h``; both kept shares = c
teal_model TEAL as published: also the q/k/v input (one threshold over the stacked qkv weight) and the o
           input, every projection at the same kept share c (``--model-shares``; whole-model sparsity 1 - c)
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
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_shaped_model import MISTRAL_7B_V01  # noqa: E402
from rawfile import write_csv  # noqa: E402

from apc.deploy import ops  # noqa: E402
from apc.deploy.calibrate import decode_thresholds  # noqa: E402
from apc.deploy.decoder import Decoder, Sparsity, context_mean, load_llama  # noqa: E402
from apc.lines import all_lines, parse  # noqa: E402

#: dense, every decode binding of the line registry (apc.lines: Line.decode), the static mask, and TEAL as published
LINES = tuple(dict.fromkeys(("dense", *(impl.decode for impl in all_lines().values() if impl.decode), "static",
                             "teal_model")))
#: the calibration each decode line reads (apc.deploy.calibrate.decode_thresholds)
THRESHOLDS = {"teal": "input", "wina": "input_scaled"}
COLUMNS = ("device", "batch", "line", "scope", "compute_share", "kept_share", "union_share", "ms_per_token", "ms_min",
           "ms_max", "dense_ms", "speedup", "bound_ms", "bound_speedup", "time_over_bound", "tokens_match",
           "tokens_checked", "ffn_rel_err", "logit_rel_err", "timing")


def _floats(s):
    return [float(v) for v in s.split(",") if v]


def _ints(s):
    return [int(v) for v in s.split(",") if v]


def gate_share(c: float) -> float:
    """The kept share of up/down of the gate-decided line (CATS) at FFN compute share ``c``: the registry's
    placement of its kept shares ((3c - 1) / 2; 0 below a third)."""
    spec = parse("cats")
    return (spec.impl.shares(spec, [c]) or [0.0])[0]


# ----------------------------------------------------------------------------- lines


class Line:
    """A line's :class:`Sparsity` at batch ``dec.batch``, its kept share, and the bytes one step reads given the
    union shares its torch reference recorded (``dec.unions``)."""

    def __init__(self, name, c, dec, cal, scales, gen):
        self.name, self.c, self.kept = name, c, c
        self.scope = "model" if name == "teal_model" else "ffn"
        d, f = dec.cfg["hidden_size"], dec.cfg["intermediate_size"]
        L, b, dev = dec.n_layers, dec.batch, dec.device
        lay = dec.layers
        wb = dec.weight_bytes()
        self.dense_ffn_bytes = wb["ffn"]
        t = lambda v: torch.tensor([float(v)], device=dev)  # noqa: E731
        self.ffn_bytes = lambda u: self.dense_ffn_bytes * u.get("ffn", 1.0)  # noqa: E731
        self.attn_bytes = lambda u: wb["attn"]  # noqa: E731
        if name == "dense":
            self.sp = Sparsity()
        elif name in ("teal", "wina"):
            thr = cal[c][THRESHOLDS[name]]
            layers = []
            for i in range(L):
                lp = dict(t_in=t(thr[i][0]), t_h=t(thr[i][1]))
                if name == "wina":
                    lp.update(s_in=scales[i][0], s_h=scales[i][1])
                layers.append(lp)
            self.sp = Sparsity("input", layers)
        elif name == "teal_model":
            self.sp = Sparsity("input_attn", [{k: t(v) for k, v in lp.items()} for lp in cal["model"][c]])
            lw = lay[0]
            el = dec.embed.element_size()
            q_b, o_b = L * lw["wqkv"].numel() * el, L * lw["wo"].numel() * el
            self.attn_bytes = lambda u: q_b * u["qkv"] + o_b * u["o"]  # noqa: E731
        elif name == "cats":
            self.kept = gate_share(c)
            self.sp = Sparsity("gate", [dict(t=t(v)) for v in cal[c]["gate"]])
        elif name in ("per_token", "cluster"):
            k = max(1, int(round(c * f)))

            def rand_masks(n):
                noise = torch.rand(n, f, generator=gen, device=dev)
                m = torch.zeros(n, f, dtype=torch.bool, device=dev)
                return m.scatter_(1, noise.topk(k, dim=1).indices, True)

            if name == "per_token":
                masks = [rand_masks(b) for _ in range(L)]
            else:
                ids = torch.randint(0, 16, (b,), generator=gen, device=dev)
                masks = [rand_masks(16).index_select(0, ids) for _ in range(L)]
            self.sp = Sparsity("mask", [dict(mask=m) for m in masks])
        elif name == "static":
            layers = []
            for i in range(L):
                idx = cal[c]["static"][i].nonzero().squeeze(1)
                layers.append(dict(wgu=torch.cat([lay[i]["wgu"][idx], lay[i]["wgu"][f + idx]]).contiguous(),
                                   wd=lay[i]["wd"][:, idx].contiguous()))
            self.sp = Sparsity("static", layers)
        else:
            raise ValueError(f"unknown line {name!r}; expected one of {', '.join(LINES)}")


def mean_unions(unions) -> dict:
    """Mean union share per product (``qkv``, ``o``, ``ffn``) of the reference's records."""
    by: dict = {}
    for name, u in unions:
        by.setdefault(name, []).append(u)
    return {k: statistics.mean(v) for k, v in by.items()}


# ----------------------------------------------------------------------------- timing


def time_decode(dec: Decoder, snap, new: int, repeats: int) -> tuple[list[float], str, torch.Tensor]:
    """ms per output token of each repeat, the timing kind, and the first repeat's token log."""
    cuda = dec.device.type == "cuda"
    g = None
    kind = "compiled graph" if dec.compile else "graph"
    if cuda:
        try:
            g = dec.graph(snap)
        except Exception as exc:  # noqa: BLE001 - report, then a graph of the eager step
            print(f"  compiled graph failed ({type(exc).__name__}: {str(exc)[:600]}); the eager step's graph",
                  flush=True)
            torch.cuda.synchronize()
            dec.compile = False
            try:
                g = dec.graph(snap)
                kind = "graph (eager: compile failed)"
            except Exception as exc2:  # noqa: BLE001
                print(f"  graph capture failed ({type(exc2).__name__}: {str(exc2)[:300]}); timing eagerly", flush=True)
                kind = "eager"
            dec.compile = True
    else:
        kind = "wall"
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
def ffn_error(dec: Decoder, cal: dict) -> float:
    """Largest relative L2 error of the line's FFN (eager, the operators) against its torch reference on real FFN
    inputs (the last prompt positions of the first, middle and last layer)."""
    if dec.sparsity.kind == "dense":
        return 0.0
    errs = []
    n_u = len(dec.unions)
    for i in sorted({0, dec.n_layers // 2, dec.n_layers - 1}):
        x = cal["x"][i][-dec.batch:]
        if x.shape[0] < dec.batch:
            x = x.repeat(-(-dec.batch // x.shape[0]), 1)[:dec.batch]
        a = dec.ffn(i, x).double()
        dec.reference = True
        b = dec.ffn(i, x).double()
        dec.reference = False
        errs.append(float((a - b).norm() / b.norm().clamp_min(1e-30)))
    del dec.unions[n_u:]
    return max(errs)


@torch.no_grad()
def check_tokens(dec: Decoder, snap, log: torch.Tensor, prompt: int, steps: int) -> tuple[int, int, float]:
    """Teacher-forced torch reference of the same sparse model (eager, masked dense products): (matching tokens,
    tokens checked, relative L2 error of the first step's logits against the fast path's, eager).  The reference
    records the union shares in ``dec.unions``."""
    dec.restore(snap)
    dec.step()
    fast_logits = dec.logits.double()
    dec.restore(snap)
    dec.reference = True
    dec.unions.clear()
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
    dec.reference = False
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
        g = dec.graph(snap)
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
        if any(k in name for k in ("in_sparse", "out_sparse", "act_mul", "take_kernel", "gathered")):
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


def _cell(args, dec, snap, cal, scales, gen, wb, kv, dense_bytes, bw, b, name, c, dense_ms, dev_name, profiles, rows,
          prof_rows, argv):
    """Time, check and record one (batch, line, share) cell; returns the dense ms of this batch."""
    device = dec.device
    t1 = time.perf_counter()
    line = Line(name, c, dec, cal, scales, gen)
    dec.set_sparsity(line.sp)
    times, kind, log = time_decode(dec, snap, args.new, args.repeats)
    match, checked, lerr = check_tokens(dec, snap, log, args.prompt, args.check) if args.check \
        else (0, 0, float("nan"))
    u = mean_unions(dec.unions)
    ferr = ffn_error(dec, cal)
    ms = statistics.median(times)
    if name == "dense":
        dense_ms = ms
    line_bytes = line.attn_bytes(u) + wb["head"] + kv + line.ffn_bytes(u)
    union = u.get("ffn", 1.0) if name != "teal_model" else \
        (line.ffn_bytes(u) + line.attn_bytes(u)) / (wb["ffn"] + wb["attn"])
    bound_ms = line_bytes / bw * 1e3
    row = dict(device=dev_name, batch=b, line=name, scope=line.scope, compute_share=c,
               kept_share=round(line.kept, 4), union_share=round(union, 4), ms_per_token=round(ms, 4),
               ms_min=round(min(times), 4), ms_max=round(max(times), 4), dense_ms=round(dense_ms, 4),
               speedup=round(dense_ms / ms, 3), bound_ms=round(bound_ms, 4),
               bound_speedup=round(dense_bytes / line_bytes, 3), time_over_bound=round(ms / bound_ms, 3),
               tokens_match=match, tokens_checked=checked, ffn_rel_err=f"{ferr:.2e}", logit_rel_err=f"{lerr:.2e}",
               timing=kind)
    rows.append(row)
    print(f"B={b:2d} {name:10s} c={c:.2f} kept={row['kept_share']:.3f} union={row['union_share']:.3f} "
          f"{ms:7.3f} ms/token [{min(times):.3f}-{max(times):.3f}]  speed-up {row['speedup']:.3f}x "
          f"(bound {row['bound_speedup']:.3f}x, {bound_ms:.3f} ms; time/bound {row['time_over_bound']:.2f})  "
          f"tokens {match}/{checked} (ffn err {ferr:.1e}, logits err {lerr:.1e})  {kind}  "
          f"[{time.perf_counter() - t1:.0f} s]", flush=True)
    key = f"{name}:{b}:{c:g}"
    if device.type == "cuda" and key in profiles:
        p = profile_step(dec, snap, key)
        prof_rows.append(p)
        print("  profile " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in p.items() if k != "top_kernels"), flush=True)
        print("\n".join("    " + k for k in p["top_kernels"]), flush=True)
        if args.profile_out:
            Path(args.profile_out).write_text(json.dumps(prof_rows, indent=1))
    dec.set_sparsity(None)
    del line
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if args.out:
        _write(args.out, rows, argv)
    return dense_ms


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
    ap.add_argument("--model-shares", type=_floats, default=[0.75, 0.6, 0.5],
                    help="teal_model's kept shares (whole-model sparsity 0.25, 0.4, 0.5)")
    ap.add_argument("--lines", default=",".join(LINES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--check", type=int, default=16, help="decode steps checked against the torch reference")
    ap.add_argument("--no-compile", action="store_true", help="eager steps (CPU always runs eagerly)")
    ap.add_argument("--profile", default="dense:1:1,teal:1:0.6,teal_model:1:0.5",
                    help="cells line:batch:share to profile ('' for none)")
    ap.add_argument("--config", default="", help="JSON of sparse GEMV tile shapes (bench_gemv_bound.py --save)")
    ap.add_argument("--out", default="", help="CSV of the cells")
    ap.add_argument("--profile-out", default="", help="JSON of the profiles")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    compile_ = device.type == "cuda" and not args.no_compile
    lines = [s for s in args.lines.split(",") if s]
    bad = [s for s in lines if s not in LINES]
    if bad:
        raise SystemExit(f"unknown line(s) {bad}; expected some of {', '.join(LINES)}")
    if args.config:
        ops.CONFIG.update({k: tuple(v) for k, v in json.loads(Path(args.config).read_text()).items()})
    cfg = {**MISTRAL_7B_V01, "num_hidden_layers": args.layers, "hidden_size": args.hidden,
           "intermediate_size": args.ffn, "num_attention_heads": args.heads, "num_key_value_heads": args.kv_heads,
           "vocab_size": args.vocab}
    max_len = args.prompt + args.new
    t0 = time.perf_counter()
    if args.model:
        dec = load_llama(args.model, 1, max_len, device, dtype, compile=compile_)
        cfg = dec.cfg
    else:
        dec = Decoder(cfg, 1, max_len, device, dtype, seed=args.seed, compile=compile_)
    dec.prepare_sparse()
    scales = [(lw["wgu_t"].float().norm(dim=1), lw["wd_t"].float().norm(dim=1)) for lw in dec.layers]
    bw = measure_bandwidth(device)
    gen = torch.Generator(device=device).manual_seed(args.seed + 1)
    prompts = torch.randint(0, cfg["vocab_size"], (max(args.batches), args.prompt), generator=gen, device=device)
    cal = decode_thresholds(dec, prompts[:1], args.shares, {c: gate_share(c) for c in args.shares},
                            args.model_shares if "teal_model" in lines else [], scales)
    wb = dec.weight_bytes()
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# device {dev_name}; model built and calibrated in {time.perf_counter() - t0:.1f} s; copy bandwidth "
          f"{bw / 1e12:.2f} TB/s; weight bytes per step: attention {wb['attn'] / 1e9:.2f} GB, FFN {wb['ffn'] / 1e9:.2f} "
          f"GB, head {wb['head'] / 1e9:.2f} GB; {'compiled' if compile_ else 'eager'} steps", flush=True)
    profiles = set(s for s in args.profile.split(",") if s)
    rows, prof_rows = [], []
    for b in args.batches:
        dec.resize(b)
        torch.cuda.empty_cache() if device.type == "cuda" else None
        dec.set_sparsity(None)
        dec.prefill(prompts[:b])
        snap = dec.snapshot()
        kv = dec.kv_bytes(context_mean(args.prompt, args.new))
        dense_bytes = wb["attn"] + wb["head"] + kv + wb["ffn"]
        dense_ms = None
        cells = [("dense", 1.0)] + [(n, c) for n in lines if n != "dense"
                                    for c in (args.model_shares if n == "teal_model" else args.shares)]
        for name, c in cells:
            try:
                dense_ms = _cell(args, dec, snap, cal, scales, gen, wb, kv, dense_bytes, bw, b, name, c, dense_ms,
                                 dev_name, profiles, rows, prof_rows, argv)
            except Exception:  # noqa: BLE001 - one failed cell is reported, the others still run
                import traceback

                print(f"B={b} {name} c={c}: FAILED\n" + traceback.format_exc()[-3000:], flush=True)
                dec.set_sparsity(None)
                dec.reference = False
        del snap
    if args.profile_out:
        Path(args.profile_out).write_text(json.dumps(prof_rows, indent=1))
    _summary(rows)
    return 0


def _write(path, rows, argv):
    write_csv(path, rows, COLUMNS, argv if argv is not None else sys.argv[1:])


def _summary(rows) -> None:
    print("\n# goals")
    for r in rows:
        if r["line"] == "dense" and r["batch"] == 1:
            print(f"dense batch 1: {r['ms_per_token']:.3f} ms/token, {r['time_over_bound']:.3f}x its byte bound "
                  f"{r['bound_ms']:.3f} ms (goal <= 1.15x): {'MET' if r['time_over_bound'] <= 1.15 else 'NOT MET'}")
        if r["line"] == "teal_model" and r["batch"] == 1 and abs(r["compute_share"] - 0.5) < 1e-9:
            print(f"TEAL as published, sparsity 0.5, batch 1: {r['speedup']:.3f}x dense (goal >= 1.7x; bound "
                  f"{r['bound_speedup']:.3f}x): {'MET' if r['speedup'] >= 1.7 else 'NOT MET'}")
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
