"""gpt-fast (pytorch-labs/gpt-fast) as the dense peer: its own ``model.py`` and decode loop at the Mistral-7B shape.

    python benchmarks/gptfast_peer.py --src ext/gpt-fast --batches 1,4,16 --out gptfast.csv

``--src`` is a fetched copy of the repository (not part of this project).  Its ``Transformer`` is built from
its ``"Mistral-7B"`` configuration with the random-weight recipe of :class:`apc.deploy.decoder.Decoder`
(normal weights of std 0.02 in bf16, norms one), on the GPU.  Its ``generate.py`` is imported as it is, with
its Inductor settings (coordinate-descent tuning, FX graph cache); its ``decode_one_token`` is compiled as
its ``main`` does (``mode="reduce-overhead"``, ``fullgraph=True``) and its ``decode_n_tokens`` (math SDPA,
its sampling: top-k 200, temperature 0.8 by default in its ``main``) decodes ``--new`` tokens after a
``--prompt``-token random prompt prefilled by its ``prefill``.  The time is ms per output token of the
decode loop alone (median of ``--repeats``; CUDA synchronised around it), as for our decoder.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rawfile import write_csv  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True, help="a fetched gpt-fast checkout")
    ap.add_argument("--name", default="Mistral-7B")
    ap.add_argument("--layers", type=int, default=0, help="fewer layers (a smoke test); 0: the configuration's")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    src = Path(args.src).resolve()
    if not (src / "model.py").is_file() or not (src / "generate.py").is_file():
        raise SystemExit(f"{src}: no gpt-fast model.py/generate.py")
    sys.path.insert(0, str(src))
    import generate as G  # noqa: E402  (gpt-fast's own module, with its Inductor settings)
    from model import ModelArgs, Transformer  # noqa: E402

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    dev = "cuda"
    conf = ModelArgs.from_name(args.name)
    if args.layers:
        conf.n_layer = args.layers
    with torch.device("meta"):
        model = Transformer(conf)
    model = model.to_empty(device=dev).to(torch.bfloat16)
    gen = torch.Generator(device=dev).manual_seed(0)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.copy_((torch.randn(p.shape, generator=gen, device=dev) * 0.02).to(p.dtype))
    model.eval()
    decode_one = torch.compile(G.decode_one_token, mode="reduce-overhead", fullgraph=True)
    G.decode_one_token = decode_one  # decode_n_tokens calls it through the module
    rows = []
    name = torch.cuda.get_device_name()
    for b in [int(v) for v in args.batches.split(",") if v]:
        t0 = time.perf_counter()
        with torch.device(dev):  # as gpt-fast's main: the caches on the GPU
            model.setup_caches(max_batch_size=b, max_seq_length=args.prompt + args.new + 1)
        prompt = torch.randint(0, conf.vocab_size, (b, args.prompt), generator=gen, device=dev)
        times = []
        for r in range(args.repeats + 1):  # the first run compiles
            with torch.no_grad():
                input_pos = torch.arange(0, args.prompt, device=dev)
                nxt = G.prefill(model, prompt, input_pos, temperature=0.8, top_k=200)
                input_pos = torch.tensor([args.prompt], device=dev, dtype=torch.int)
                torch.cuda.synchronize()
                t1 = time.perf_counter()
                G.decode_n_tokens(model, nxt.view(b, -1), input_pos, args.new, temperature=0.8, top_k=200)
                torch.cuda.synchronize()
                ms = (time.perf_counter() - t1) * 1e3 / args.new
            if r:
                times.append(ms)
            else:
                print(f"gpt-fast B={b}: first run (compiles) {time.perf_counter() - t0:.0f} s", flush=True)
        ms = statistics.median(times)
        rows.append(dict(device=name, engine="gpt-fast", batch=b, ms_per_token=round(ms, 4), ms_min=round(min(times), 4),
                         ms_max=round(max(times), 4)))
        print(f"gpt-fast B={b}: {ms:.3f} ms/token [{min(times):.3f}-{max(times):.3f}]", flush=True)
        write_csv(args.out, rows, rows[0], argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
