"""Tiny random-initialised causal LMs of every FFN family, built from their transformers config classes
(no download), and a tiny byte-level tokenizer to save beside them as a local model folder."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

VOCAB = 264  # 256 byte symbols, 3 special tokens, a few merges
D_MODEL = 16
D_FF = 24
N_LAYERS = 2

#: name -> (config class, keyword arguments): 2 layers, d_model 16, FFN width 24 (4 experts, top 2 for MoE).
CONFIGS = {
    "phi3": ("Phi3Config", dict(hidden_size=D_MODEL, intermediate_size=D_FF, num_hidden_layers=N_LAYERS,
                                num_attention_heads=2, num_key_value_heads=1, pad_token_id=0, bos_token_id=1,
                                eos_token_id=2)),
    "opt": ("OPTConfig", dict(hidden_size=D_MODEL, ffn_dim=D_FF, num_hidden_layers=N_LAYERS, num_attention_heads=2,
                              word_embed_proj_dim=D_MODEL, max_position_embeddings=128, pad_token_id=0,
                              bos_token_id=1, eos_token_id=2, enable_bias=True)),
    "gpt2": ("GPT2Config", dict(n_embd=D_MODEL, n_inner=D_FF, n_layer=N_LAYERS, n_head=2, n_positions=128,
                                bos_token_id=1, eos_token_id=2)),
    "gpt_neox": ("GPTNeoXConfig", dict(hidden_size=D_MODEL, intermediate_size=D_FF, num_hidden_layers=N_LAYERS,
                                       num_attention_heads=2, max_position_embeddings=128, pad_token_id=0,
                                       bos_token_id=1, eos_token_id=2)),
    "falcon": ("FalconConfig", dict(hidden_size=D_MODEL, ffn_hidden_size=D_FF, num_hidden_layers=N_LAYERS,
                                    num_attention_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)),
    "mixtral": ("MixtralConfig", dict(hidden_size=D_MODEL, intermediate_size=D_FF, num_hidden_layers=N_LAYERS,
                                      num_attention_heads=2, num_key_value_heads=1, num_local_experts=4,
                                      num_experts_per_tok=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)),
    "olmoe": ("OlmoeConfig", dict(hidden_size=D_MODEL, intermediate_size=D_FF, num_hidden_layers=N_LAYERS,
                                  num_attention_heads=2, num_key_value_heads=1, num_experts=4,
                                  num_experts_per_tok=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)),
}


def tiny_model(name: str, seed: int = 0):
    """A random tiny causal LM of family ``name`` in eval mode, float32, on CPU."""
    cls_name, kw = CONFIGS[name]
    cfg = getattr(transformers, cls_name)(vocab_size=VOCAB, **kw)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():  # some families initialise biases or routers to zero: give them values
        g = torch.Generator().manual_seed(seed + 1)
        for n, p in model.named_parameters():
            if n.endswith("bias") or "router" in n or n.endswith("mlp.gate.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def tiny_tokenizer():
    """A byte-level BPE tokenizer of ``VOCAB`` ids with ``<s>`` as BOS, trained on a few lines."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the model and the data"], trainer=trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                pad_token="<pad>", unk_token=None)
    assert len(fast) <= VOCAB and fast.bos_token_id == 1
    return fast


def save_tiny(name: str, folder: str | Path) -> Path:
    """Save the tiny model of family ``name`` and the tiny tokenizer into ``folder`` (a local model folder)."""
    folder = Path(folder)
    tiny_model(name).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder
