"""Seconds per frontier point of the generation agreement (:mod:`apc.perplexity.generation`) on a CPU.

Windows: the default preset's test windows (the embedded Wikipedia text, ``data.seq_len`` 512, the first
``frontier.test_tokens`` tokens), tokenized here, unless ``--tokens`` names a windows ``.npy``.  Model: a
model folder (the converted embedded SmolLM2-135M: ``results/models/smollm2-135m-instruct-*``).

Timed, each the median of ``--repeats`` runs after a warm-up, at ``--threads`` torch threads, as wall seconds
and as this process's CPU seconds divided by the threads (``cpu_s``: what the wall time is on idle cores; the
wall time grows when other processes share them, and the load average is recorded beside it):

  dense       the dense continuations (once per job, with the dense prefill kept for the points)
  cached      a masked point: KV cache, one-position masked steps (``random_only`` at ``--share`` on down_in)
  threshold   the same with a magnitude threshold of every layer's down_in (a position-wise line)
  recompute   with ``--recompute``: a masked point without a cache (every step the whole sequence: the route
              of masks built from the prompt inside a forward; about 30 times the FFN work)

    PYTHONPATH=src python benchmarks/bench_generation.py --model results/models/smollm2-135m-instruct-<key> \
        --out docs/results/generation-cpu/bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from apc.common.atomic import read_npy, write_json  # noqa: E402
from apc.common.config import resolve  # noqa: E402
from apc.perplexity.generation import columns, dense_prefill, generation_point, greedy, select_prompts  # noqa: E402
from apc.perplexity.masking import install_interventions  # noqa: E402
from apc.perplexity.protocol import select_windows  # noqa: E402


def default_windows(tokenizer) -> torch.Tensor:
    """The default preset's frontier windows: ``(frontier.test_tokens // seq_len, seq_len)`` int64."""
    import yaml

    from apc.extraction.corpus import load_split, make_windows

    cfg = resolve(yaml.safe_load((ROOT / "config.yaml").read_text()), root=ROOT)
    data = cfg["data"]
    windows, _ = make_windows(load_split(data, "test"), tokenizer, data["seq_len"], data["test_tokens"], split="test")
    return select_windows(torch.from_numpy(windows), cfg["frontier"]["test_tokens"], key="frontier.test_tokens")


def timed(fn, repeats: int, threads: int) -> tuple[dict, object]:
    """``({"seconds", "cpu_s", "load"}, last result)``: medians over ``repeats`` runs after a warm-up."""
    fn()  # warm-up
    wall, cpu, out = [], [], None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall.append(time.perf_counter() - t0)
        cpu.append((time.process_time() - c0) / threads)
    return {"seconds": float(np.median(wall)), "cpu_s": float(np.median(cpu)), "load": os.getloadavg()[0]}, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a model folder (safetensors + tokenizer)")
    ap.add_argument("--tokens", help="windows .npy (n, seq_len); default: the default preset's frontier windows")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--share", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--recompute", action="store_true", help="also time the recompute route")
    ap.add_argument("--out", help="JSON of the timings (atomic)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from apc.extraction.model import load_model

    model, tok = load_model({"load_path": str(Path(args.model).resolve())}, dtype="float32", device="cpu")
    bos = tok.bos_token_id is not None
    windows = torch.from_numpy(read_npy(args.tokens)) if args.tokens else default_windows(tok)
    prompts = select_prompts(windows, args.prompts, args.prompt_len, bos=bos)
    n_layers = model.config.num_hidden_layers
    proj = ["down_in"]
    zero = {"down_in": [0.0] * n_layers}

    def random_masks():
        return install_interventions(model, "random_only", projections=proj, thresholds=zero,
                                     random_density={"down_in": args.share}, skip_first_position=False)

    # a per-layer magnitude threshold at kept share ~ args.share, from the dense down_in of the prompts
    thr = _down_in_quantiles(model, prompts.ids, 1 - args.share)

    def threshold_masks():
        return install_interventions(model, "threshold", projections=proj, thresholds=zero,
                                     keep_thresholds={"down_in": thr}, skip_first_position=False)

    def run_dense():
        caches = dense_prefill(model, prompts, batch_size=args.batch)
        return greedy(model, prompts, args.new, batch_size=args.batch, prefilled=caches), caches

    t_dense, (dense, caches) = timed(run_dense, args.repeats, args.threads)
    rows = {"dense": t_dense}
    print(f"{'dense':10s} {t_dense['seconds']:7.2f} s wall, {t_dense['cpu_s']:7.2f} s cpu (once per job)", flush=True)
    points = [("cached", random_masks, "cached"), ("threshold", threshold_masks, "cached")]
    if args.recompute:
        points.append(("recompute", random_masks, "recompute"))
    for name, masking, route in points:
        kept = caches if route == "cached" else None
        t, res = timed(lambda: generation_point(model, prompts, dense, masking, route=route, batch_size=args.batch,
                                                prefilled=kept), args.repeats, args.threads)
        rows[name] = {**t, **columns(res)}
        print(f"{name:10s} {t['seconds']:7.2f} s wall, {t['cpu_s']:7.2f} s cpu per point (load {t['load']:.1f}); "
              f"agree {res['gen_agree']:.3f}, prefix {res['gen_prefix']:.2f}", flush=True)
    out = {"command": "PYTHONPATH=src python " + " ".join(shlex.quote(a) for a in sys.argv),
           "commit": _commit(), "machine": platform.node(), "processor": platform.processor() or platform.machine(),
           "torch": torch.__version__, "threads": args.threads, "prompts": prompts.n, "prompt_len": prompts.prompt_len,
           "new_tokens": args.new, "batch": args.batch, "share": args.share, "windows": list(windows.shape),
           "repeats": args.repeats, "rows": rows}
    if args.out:
        write_json(args.out, out)
    print(json.dumps(rows, indent=1))


def _down_in_quantiles(model, ids: torch.Tensor, q: float) -> list[float]:
    """Per layer, the threshold keeping the share ``1 - q`` of ``|down_in|`` over the prompts' positions (dense;
    the library's calibration, apc.perplexity.calibrate.share_threshold)."""
    from apc.common.sites import ffn_sites
    from apc.perplexity.calibrate import share_threshold

    vals: dict[int, list] = {}
    handles = [site.observe("down_in", lambda x, l=l: vals.setdefault(l, []).append(x.abs().flatten()), False)
               for l, site in enumerate(ffn_sites(model))]
    try:
        with torch.inference_mode():
            model(ids)
    finally:
        for h in handles:
            h.remove()
    return [share_threshold(torch.cat(vals[l]), 1.0 - q) if q > 0 else 0.0 for l in sorted(vals)]


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


if __name__ == "__main__":
    main()
