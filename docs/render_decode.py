"""Markdown of docs/decode.md's GPU sections, rendered from a `benchmarks/decode_gpu_run.sh` folder of docs/results/.

Every function takes the run name (a folder of docs/results/ holding decode.csv, gemv.csv, gptfast.csv, smollm2.csv,
profile.json, gpu.txt, kernel_tests.log and COMMAND) and returns Markdown.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

import render as R

GEMV_RHOS = (0.4, 0.6, 0.8)


def _csv(run: str, rel: str) -> pd.DataFrame:
    return R.table(run, rel)


def _cell(d: pd.DataFrame, batch: int, line: str, share: float):
    g = d[(d.batch == batch) & (d.line == line) & np.isclose(d.compute_share, share)]
    return g.iloc[0] if len(g) else None


def _profiles(run: str) -> dict:
    """``profile.json`` by cell (``line:batch:compute``)."""
    return {c["cell"]: c for c in R.js(run, "profile.json")}


def _met(ok: bool) -> str:
    return "met" if ok else "not met"


def device(run: str) -> str:
    """The card's name and the copy bandwidth the bounds use."""
    for line in R.path(run, "gemv.log").read_text().splitlines():
        if line.startswith("# device"):
            return line.lstrip("# ").replace("device ", "", 1)
    return "–"


def peer_table(run: str) -> str:
    """Our compiled dense step beside gpt-fast's, batch by batch, with our byte bound."""
    d, g = _csv(run, "decode.csv"), _csv(run, "gptfast.csv")
    rows = []
    for r in g.sort_values("batch").itertuples():
        ours = _cell(d, r.batch, "dense", 1.0)
        if ours is None:
            continue
        rows.append([r.batch, f"{ours.ms_per_token:.3f}", f"{r.ms_per_token:.3f} ({r.ms_min:.3f}–{r.ms_max:.3f})",
                     f"{r.ms_per_token / ours.ms_per_token:.3f}", f"{ours.bound_ms:.3f}", f"{ours.time_over_bound:.3f}"])
    return R.md(["batch", "ours, ms/token", "gpt-fast, ms/token (min–max)", "gpt-fast / ours", "byte bound ms",
                 "ours / bound"], rows)


def goals(run: str) -> str:
    """Every goal of the decode page, met or not, with its figure."""
    d, k, g = _csv(run, "decode.csv"), _csv(run, "gemv.csv"), _csv(run, "gptfast.csv")
    rows = []
    dense = _cell(d, 1, "dense", 1.0)
    peer = g[g.batch == 1]
    peer_ms = float(peer.ms_per_token.iloc[0]) if len(peer) else float("nan")
    rows.append(["compiled dense, batch 1, ≤ 1.15× its byte bound",
                 f"{dense.ms_per_token:.3f} ms against {dense.bound_ms:.3f} ms: {dense.time_over_bound:.3f}×",
                 _met(dense.time_over_bound <= 1.15)])
    rows.append(["compiled dense, batch 1, no slower than gpt-fast on the same card",
                 f"ours {dense.ms_per_token:.3f} ms, gpt-fast {peer_ms:.3f} ms", _met(dense.ms_per_token <= peer_ms)])
    t = _cell(d, 1, "teal", 0.6)
    if t is not None:
        rows.append(["TEAL at FFN compute 0.6, batch 1, ≥ 1.35× dense",
                     f"{t.speedup:.3f}× ({dense.ms_per_token:.3f} → {t.ms_per_token:.3f} ms; bound {t.bound_speedup:.3f}×)",
                     _met(t.speedup >= 1.35)])
    m = _cell(d, 1, "teal_model", 0.5)
    if m is not None:
        rows.append(["TEAL as published (attention and FFN), whole-model sparsity 0.5, batch 1, ≥ 1.7× dense",
                     f"{m.speedup:.3f}× ({dense.ms_per_token:.3f} → {m.ms_per_token:.3f} ms; bound {m.bound_speedup:.3f}×)",
                     _met(m.speedup >= 1.7)])
    ours = k[(k.kernel == "ours") & (k.dtype == "bf16")]
    for shape in ours["shape"].unique():
        cells = [ours[(ours["shape"] == shape) & np.isclose(ours.rho, rho)] for rho in GEMV_RHOS]
        cells = [c.iloc[0] for c in cells if len(c)]
        rows.append([f"input-sparse GEMV, T = 1, {shape} ({cells[0].K} → {cells[0].N}), ≤ 1.25× its bound at ρ "
                     + " / ".join(f"{c.rho:g}" for c in cells),
                     " / ".join(f"{c.over_bound:.2f}×" for c in cells),
                     ", ".join(f"{_met(c.over_bound <= 1.25)} at {c.rho:g}" for c in cells)])
    return R.md(["goal", "measured", "met"], rows)


def batch_table(run: str) -> str:
    """Every line's speed-up over dense with its bound at each batch, and the first batch where it is slower."""
    d = _csv(run, "decode.csv")
    batches = sorted(d.batch.unique())
    rows = []
    for line in [x for x in d.line.unique() if x != "dense"]:
        for c in sorted(d[d.line == line].compute_share.unique()):
            cells = [_cell(d, b, line, c) for b in batches]
            stop = next((str(b) for b, r in zip(batches, cells) if r is not None and r.speedup < 1), f"beyond {batches[-1]}")
            rows.append([line, cells[0].scope, f"{c:g}"]
                        + [f"{r.speedup:.3f}× (bound {r.bound_speedup:.3f}×)" if r is not None else "–" for r in cells]
                        + [stop])
    return R.md(["line", "scope", "compute"] + [f"batch {b}" for b in batches] + ["slower than dense from batch"], rows)


def decode_table(run: str) -> str:
    """The whole decode table: ms per output token (median, min–max), speed-up, bound, time over bound, tokens."""
    rows = []
    for r in _csv(run, "decode.csv").sort_values(["batch"], kind="stable").itertuples():
        rows.append([r.batch, r.line, r.scope, f"{r.compute_share:g}", f"{r.kept_share:.2f}", f"{r.union_share:.3f}",
                     f"{r.ms_per_token:.3f} ({r.ms_min:.3f}–{r.ms_max:.3f})", f"{r.speedup:.3f}×",
                     f"{r.bound_speedup:.3f}×", f"{r.time_over_bound:.2f}", f"{r.tokens_match}/{r.tokens_checked}",
                     f"{float(r.ffn_rel_err):.1e}"])
    return R.md(["batch", "line", "scope", "compute", "kept", "union", "ms/token (min–max)", "speed-up", "bound",
                 "time/bound", "tokens", "FFN err"], rows)


def gemv_table(run: str) -> str:
    """The input-sparse GEMV at T = 1 per shape and kept share: ours (bf16, fp16) and TEAL's kernel (fp16), µs and
    time over the byte bound; the dense product per shape (cuBLAS, and ours with no threshold where timed)."""
    k = _csv(run, "gemv.csv")
    rows = []
    for shape in k["shape"].unique():
        s = k[k["shape"] == shape]
        dense, ours_dense = s[s.kernel == "cublas"], s[s.kernel == "ours_dense"]
        for rho in sorted(s[s.kernel.isin(["ours", "teal"])].rho.unique()):
            r = s[np.isclose(s.rho, rho)]

            def cell(kernel, dtype):
                c = r[(r.kernel == kernel) & (r.dtype == dtype)]
                return f"{c.us.iloc[0]:.1f} ({c.over_bound.iloc[0]:.2f}×)" if len(c) else "–"

            b = r[r.kernel == "ours"].iloc[0]
            rows.append([f"{shape} ({b.K} → {b.N})", f"{rho:g}", f"{b.kept:.3f}", f"{b.bound_us:.1f}", cell("ours", "bf16"),
                         cell("ours", "fp16"), cell("teal", "fp16"), b.tile])
        if len(dense):
            c = dense.iloc[0]
            mine = (f"ours, no threshold {ours_dense.us.iloc[0]:.1f} ({ours_dense.over_bound.iloc[0]:.2f}×)"
                    if len(ours_dense) else "")
            rows.append([f"{shape} ({c.K} → {c.N})", "dense", "1", f"{c.bound_us:.1f}", f"cuBLAS {c.us:.1f} ({c.over_bound:.2f}×)",
                         mine, "", ours_dense.tile.iloc[0] if len(ours_dense) else ""])
    return R.md(["shape", "ρ", "kept", "bound µs", "ours bf16, µs (/ bound)", "ours fp16", "TEAL's kernel fp16",
                 "tile (BM/BN/warps[/ITERS])"], rows)


def profile_sentences(run: str, layers: int = 32) -> str:
    """Each profiled cell's step with its FFN (and, for TEAL as published, its attention products) at the byte bound
    and the rest as profiled, and the speed-up over dense that leaves."""
    prof = _profiles(run)
    d = _csv(run, "decode.csv")
    dense = prof.get("dense:1:1")
    if dense is None:
        return ""
    ffn_dense = float(_cell(d, 1, "dense", 1.0).bound_ms)  # the whole dense step's bound, for scale
    out = []
    for key, c in prof.items():
        line, _, share = key.split(":")
        r = _cell(d, 1, line, float(share))
        if r is None or line == "dense":
            continue
        out.append(f"`{key}`: step {c['full_ms']:.3f} ms against its byte bound {r.bound_ms:.3f} ms "
                   f"({r.time_over_bound:.2f}×); FFN {c['ffn_ms']:.3f} ms, attention block {c['attn_ms']:.3f} ms, "
                   f"rest {c['rest_ms']:.3f} ms, launch gaps {c['gaps_ms']:.3f} ms (dense: FFN {dense['ffn_ms']:.3f}, "
                   f"attention block {dense['attn_ms']:.3f}, rest {dense['rest_ms']:.3f}, gaps {dense['gaps_ms']:.3f}; "
                   f"dense bound {ffn_dense:.3f} ms).")
    return "\n".join(f"- {s}" for s in out) + "\n"


def smollm2_table(run: str) -> str:
    """The embedded model on the GPU: compiled against eager dense, and each TEAL line's greedy token agreement."""
    s = _csv(run, "smollm2.csv")
    rows = []
    for r in s.itertuples():
        rows.append([r.line, r.scope, f"{r.kept_share:g}", f"{r.free_agree:.3f}", f"{r.free_prefix:.1f}",
                     f"{r.forced_agree:.3f}", f"{r.free_agree_eager:.3f}", f"{r.forced_agree_eager:.3f}", r.tokens])
    return R.md(["line", "scope", "kept share", "free-running agreement", "agreeing prefix (tokens)",
                 "teacher-forced top-1", "free-running vs eager", "teacher-forced vs eager", "tokens"], rows)


def smollm2_sentence(run: str, rel: str = "smollm2.csv") -> str:
    """Whether compiled dense equals eager dense token for token (``rel``: ``smollm2.csv``, bf16, or the float32
    step's ``smollm2_fp32.csv``)."""
    s = _csv(run, rel)
    d = s[s.line == "dense"].iloc[0]
    same = str(d.compiled_equals_eager).lower() == "true"
    head = f"In {d['dtype']}, compiled" if "dtype" in s.columns else "Compiled"
    return (f"{head} dense {'equals' if same else 'does not equal'} eager dense on every token "
            f"({d.tokens} tokens; {round(d.free_agree_eager * d.tokens)} equal, free-running agreement of compiled "
            f"with eager {d.free_agree_eager:.3f}).")


def top_kernels(run: str, cell: str, n: int = 4) -> str:
    """The ``n`` longest kernels of one profiled cell (``line:batch:compute``), time per step and launches."""
    prof = _profiles(run)
    if cell not in prof:
        return "–"
    tops = [k.split(" ms x") for k in prof[cell]["top_kernels"][:n]]
    return ", ".join(f"`{name.split(' ', 1)[1]}` {ms} ms ×{name.split(' ', 1)[0]}" for ms, name in tops)


def gemv_vs_teal(run: str, rhos=(0.4, 0.6)) -> str:
    """Per shape, ours (bf16) against TEAL's kernel (fp16) in time over the byte bound at ``rhos``: one bullet a
    shape, the faster named."""
    k = _csv(run, "gemv.csv")
    out = []
    for shape in k["shape"].unique():
        s = k[k["shape"] == shape]
        parts = []
        for rho in rhos:
            ours = s[(s.kernel == "ours") & (s.dtype == "bf16") & np.isclose(s.rho, rho)]
            teal = s[(s.kernel == "teal") & np.isclose(s.rho, rho)]
            if not (len(ours) and len(teal)):
                continue
            a, b = float(ours.over_bound.iloc[0]), float(teal.over_bound.iloc[0])
            who = "ours faster" if a < b else ("TEAL's faster" if b < a else "equal")
            parts.append(f"ρ {rho:g}: ours {a:.2f}×, TEAL's {b:.2f}× ({who})")
        if parts:
            b0 = s.iloc[0]
            out.append(f"{shape} ({b0.K} → {b0.N}): " + "; ".join(parts))
    return "\n".join(f"- {s}" for s in out) + "\n"


def faster_than_dense(run: str, batches=(4, 16)) -> str:
    """The cells faster than dense at each of ``batches`` (line, compute, speed-up), or "none"."""
    d = _csv(run, "decode.csv")
    out = []
    for b in batches:
        g = d[(d.batch == b) & (d.line != "dense") & (d.speedup > 1.0)].sort_values(["line", "compute_share"])
        cells = ", ".join(f"`{r.line}` at {r.compute_share:g} ({r.speedup:.3f}×)" for r in g.itertuples()) or "none"
        out.append(f"batch {b}: {cells}")
    return "; ".join(out)


def attn_table(run: str) -> str:
    """The decode attention kernel at its chosen tile beside Inductor's SDPA, per batch and position, from attn.csv:
    time, byte bound of the live cache rows and time over bound; and the sweep's chosen tile."""
    a = _csv(run, "attn.csv")
    a = a[a.kernel != "ours_sweep"]
    rows = []
    for (b, pos), g in a.groupby(["batch", "pos"], sort=True):
        ours, sdpa = g[g.kernel == "ours"], g[g.kernel == "inductor_sdpa"]
        if not len(ours) or not len(sdpa):
            continue
        o, s = ours.iloc[0], sdpa.iloc[0]
        rows.append([int(b), int(pos), f"{o.us:.2f}", f"{s.us:.2f}", f"{o.bound_us:.2f}", f"{o.over_bound:.2f}×",
                     f"{s.over_bound:.2f}×", f"{s.us / o.us:.2f}"])
    return R.md(["batch", "pos", "ours µs", "Inductor SDPA µs", "bound µs", "ours / bound", "SDPA / bound",
                 "SDPA / ours"], rows)


def attn_choice(run: str) -> str:
    """The tile the batch-1 sweep kept, its worst time over bound over the positions, and the sweep's size."""
    a = _csv(run, "attn.csv")
    s = a[a.kernel == "ours_sweep"]
    worst = s.groupby("tile").over_bound.max().sort_values()
    chosen = a[a.kernel == "ours"].tile.iloc[0]
    return (f"{len(worst)} tiles `(BL, NSPLIT, warps)` swept at batch 1; kept `{chosen}` (worst time over bound "
            f"{worst[chosen]:.2f}×; the sweep's range {worst.iloc[0]:.2f}×–{worst.iloc[-1]:.2f}×)")
