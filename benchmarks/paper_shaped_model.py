"""Write the paper-shaped model: Mistral-7B-v0.1's own configuration, cut to a few layers, random weights.

    python benchmarks/paper_shaped_model.py --out results/models/paper-shaped \
        --tokenizer results/models/<the converted SmolLM2 folder>

The configuration is the published one of Mistral-7B-v0.1 (hidden 4096, FFN 14336, 32 query and 8
key/value heads, SiLU, RMSNorm eps 1e-5, rope theta 10000, sliding window 4096, untied
embeddings) with two changes: ``num_hidden_layers`` (4 by default) and ``vocab_size``, set to
the tokenizer's (the embedded SmolLM2 tokenizer: 49,152 ids instead of Mistral's 32,000), so
every token id of the embedded text is a row of the embedding.  Weights are drawn once with
the model's own initialiser from ``--seed`` and saved as a bf16 safetensors folder with the
tokenizer, loadable through ``model.name_or_path`` (preset ``paper-shaped``).  A folder that
already holds the same configuration is left as it is.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

#: Mistral-7B-v0.1's configuration, as published with the model.
MISTRAL_7B_V01 = dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, hidden_act="silu",
                      max_position_embeddings=32768, rms_norm_eps=1e-5, rope_theta=10000.0, sliding_window=4096,
                      tie_word_embeddings=False)


def paper_shaped_config(tokenizer, layers: int) -> dict:
    """Mistral-7B-v0.1's configuration with ``layers`` layers and the tokenizer's vocabulary and special ids."""
    if tokenizer.bos_token_id is None:
        raise ValueError("the tokenizer has no BOS token; the window protocol needs one")
    return {**MISTRAL_7B_V01, "num_hidden_layers": int(layers), "vocab_size": len(tokenizer),
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/models/paper-shaped", help="the model folder to write")
    ap.add_argument("--tokenizer", required=True, help="a folder holding the embedded SmolLM2 tokenizer")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if _cuda() else "cpu", help="where the weights are drawn")
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    tok = AutoTokenizer.from_pretrained(args.tokenizer, local_files_only=True)
    want = paper_shaped_config(tok, args.layers)
    out = Path(args.out)
    stamp = out / "paper_shaped.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("config") == {**want, "seed": args.seed}:
        print(f"{out}: already written with this configuration")
        return 0
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    cfg = MistralConfig(**want)
    with torch.device(args.device):
        model = MistralForCausalLM(cfg)
    model = model.to(torch.bfloat16).eval()
    n_params = sum(p.numel() for p in model.parameters())
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    stamp.write_text(json.dumps({"config": {**want, "seed": args.seed}, "n_params": n_params,
                                 "base": "Mistral-7B-v0.1 configuration", "changed": ["num_hidden_layers", "vocab_size"],
                                 "tokenizer": str(args.tokenizer), "dtype": "bfloat16"}, indent=1))
    print(f"{out}: {args.layers} layers, {n_params / 1e9:.3f}B parameters, vocab {len(tok)}, written in "
          f"{time.perf_counter() - t0:.1f} s")
    return 0


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    sys.exit(main())
