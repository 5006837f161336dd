"""A Mistral-shaped decoder with random weights, a static KV cache and a swappable FFN, for decode timing.

Built on the GPU directly from a configuration dict (``paper_shaped_model.MISTRAL_7B_V01``): RMSNorm,
grouped-query attention with rotary positions (the half-split form of ``transformers``' Mistral), a
gated SiLU FFN.  One decode step (:meth:`Decoder.step`) reads the token buffer, runs every layer at
position ``pos`` (a device tensor), writes the argmax token back and advances ``pos``: nothing leaves
the device, so the step is captured as one CUDA graph.  :meth:`Decoder.prefill` runs a prompt with
plain torch ops (causal attention) and fills the cache.

The FFN of layer ``l`` is ``ffn(l, x (T, D)) -> (T, D)``, set per line; ``None`` is the dense FFN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - CPU machines without Triton
    triton = None

if triton is not None:
    @triton.jit
    def _rope_cache_kernel(qkv_ptr, cos_ptr, sin_ptr, pos_ptr, q_ptr, k_ptr, v_ptr, stride_qkv, stride_kb,
                           stride_kh, stride_kl, NH: tl.constexpr, NKV: tl.constexpr, HD: tl.constexpr):
        b = tl.program_id(0)
        h = tl.program_id(1)
        pos = tl.load(pos_ptr)
        half = tl.arange(0, HD // 2)
        base = qkv_ptr + b * stride_qkv + h * HD
        if h < NH + NKV:
            x1 = tl.load(base + half).to(tl.float32)
            x2 = tl.load(base + HD // 2 + half).to(tl.float32)
            c = tl.load(cos_ptr + pos * (HD // 2) + half)
            s = tl.load(sin_ptr + pos * (HD // 2) + half)
            o1 = x1 * c - x2 * s
            o2 = x2 * c + x1 * s
            if h < NH:
                out = q_ptr + (b * NH + h) * HD
            else:
                out = k_ptr + b * stride_kb + (h - NH) * stride_kh + pos * stride_kl
            tl.store(out + half, o1.to(q_ptr.dtype.element_ty))
            tl.store(out + HD // 2 + half, o2.to(q_ptr.dtype.element_ty))
        else:
            out = v_ptr + b * stride_kb + (h - NH - NKV) * stride_kh + pos * stride_kl
            tl.store(out + half, tl.load(base + half))
            tl.store(out + HD // 2 + half, tl.load(base + HD // 2 + half))


class Decoder:
    """Decoder of a Mistral/Llama configuration dict ``cfg``, ``batch`` rows, a cache of ``max_len``; random
    weights (normal, ``init_std``), or those of ``state`` (a Llama state dict with ``transformers``' names)."""

    def __init__(self, cfg: dict, batch: int, max_len: int, device="cuda", dtype=torch.bfloat16, seed=0,
                 init_std=0.02, state: dict | None = None):
        self.cfg = cfg
        self.batch, self.max_len, self.device, self.dtype = batch, max_len, torch.device(device), dtype
        d, f = cfg["hidden_size"], cfg["intermediate_size"]
        self.nh, self.nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.hd = cfg.get("head_dim") or d // self.nh
        self.n_layers, self.eps = cfg["num_hidden_layers"], cfg["rms_norm_eps"]
        g = torch.Generator(device=self.device).manual_seed(seed)

        def rnd(*shape):
            return (torch.randn(*shape, generator=g, device=self.device, dtype=torch.float32) * init_std).to(dtype)

        def get(name, *shape):  # a weight of the given state dict, else a random one
            if state is None:
                return rnd(*shape)
            w = state[name]
            if tuple(w.shape) != shape:
                raise ValueError(f"{name}: shape {tuple(w.shape)}, the configuration wants {shape}")
            return w.to(self.device, dtype)

        def ones(name, n):
            return torch.ones(n, device=self.device, dtype=dtype) if state is None else state[name].to(self.device, dtype)

        v, qd, kvd = cfg["vocab_size"], self.nh * self.hd, self.nkv * self.hd
        self.embed = get("model.embed_tokens.weight", v, d)
        tied = state is not None and "lm_head.weight" not in state
        self.lm_head = self.embed if tied else get("lm_head.weight", v, d)
        self.norm = ones("model.norm.weight", d)
        self.layers = []
        for i in range(self.n_layers):
            pre = f"model.layers.{i}."
            wqkv = torch.cat([get(pre + "self_attn.q_proj.weight", qd, d), get(pre + "self_attn.k_proj.weight", kvd, d),
                              get(pre + "self_attn.v_proj.weight", kvd, d)]) if state is not None else rnd(qd + 2 * kvd, d)
            wgu = torch.cat([get(pre + "mlp.gate_proj.weight", f, d), get(pre + "mlp.up_proj.weight", f, d)]) \
                if state is not None else rnd(2 * f, d)
            self.layers.append(dict(ln1=ones(pre + "input_layernorm.weight", d),
                                    ln2=ones(pre + "post_attention_layernorm.weight", d),
                                    wqkv=wqkv, wo=get(pre + "self_attn.o_proj.weight", d, qd),
                                    wgu=wgu, wd=get(pre + "mlp.down_proj.weight", d, f)))
        inv = 1.0 / cfg["rope_theta"] ** (torch.arange(0, self.hd, 2, device=self.device, dtype=torch.float32) / self.hd)
        ang = torch.arange(max_len, device=self.device, dtype=torch.float32)[:, None] * inv[None, :]
        self.cos, self.sin = ang.cos().contiguous(), ang.sin().contiguous()
        self.resize(batch)
        self.ffn = None
        self.skip_ffn = self.skip_attn = False
        self._arange = torch.arange(max_len, device=self.device)
        self.logits = None

    def resize(self, batch: int) -> None:
        """A fresh cache, token buffer and log for ``batch`` rows."""
        self.batch = batch
        self.k_cache = self.v_cache = None
        shape = (self.n_layers, batch, self.nkv, self.max_len, self.hd)
        self.k_cache = torch.zeros(shape, device=self.device, dtype=self.dtype)
        self.v_cache = torch.zeros(shape, device=self.device, dtype=self.dtype)
        self.pos = torch.zeros(1, device=self.device, dtype=torch.int64)
        self.tok = torch.zeros(batch, device=self.device, dtype=torch.int64)
        self.log = torch.zeros(self.max_len, batch, device=self.device, dtype=torch.int64)

    # ------------------------------------------------------------------ bytes

    def weight_bytes(self) -> dict:
        """Bytes read per decode step by part (weights only): attention, FFN, LM head."""
        lw = self.layers[0]
        el = torch.tensor([], dtype=self.dtype).element_size()
        return {"attn": self.n_layers * (lw["wqkv"].numel() + lw["wo"].numel()) * el,
                "ffn": self.n_layers * (lw["wgu"].numel() + lw["wd"].numel()) * el,
                "head": self.lm_head.numel() * el}

    def kv_bytes(self, context: float) -> float:
        """Bytes of K and V read per decode step at mean context length ``context``."""
        el = torch.tensor([], dtype=self.dtype).element_size()
        return 2.0 * self.n_layers * self.batch * self.nkv * context * self.hd * el

    # ------------------------------------------------------------------ pieces

    def _rms(self, x, w):
        return F.rms_norm(x, (x.shape[-1],), w, self.eps)

    def _dense_ffn(self, lw, x):
        gu = F.linear(x, lw["wgu"])
        g, u = gu.chunk(2, dim=-1)
        return F.linear(F.silu(g) * u, lw["wd"])

    def _ffn(self, i, x):
        return self._dense_ffn(self.layers[i], x) if self.ffn is None else self.ffn(i, x)

    # ------------------------------------------------------------------ decode step (graph-safe)

    def step(self) -> None:
        """One token for every row at position ``pos``: reads ``tok``, writes the argmax into ``tok`` and
        ``log[pos]``, then ``pos += 1``."""
        b = self.batch
        x = self.embed.index_select(0, self.tok)
        valid = (self._arange <= self.pos).view(1, 1, 1, -1)
        q = torch.empty(b, self.nh, self.hd, device=self.device, dtype=self.dtype)
        for i, lw in enumerate(self.layers):
            if not self.skip_attn:
                n = self._rms(x, lw["ln1"])
                qkv = F.linear(n, lw["wqkv"])
                kc, vc = self.k_cache[i], self.v_cache[i]
                if self.device.type == "cuda":
                    _rope_cache_kernel[(b, self.nh + 2 * self.nkv)](
                        qkv, self.cos, self.sin, self.pos, q, kc, vc, qkv.stride(0), kc.stride(0), kc.stride(1),
                        kc.stride(2), NH=self.nh, NKV=self.nkv, HD=self.hd, num_warps=1)
                else:
                    self._rope_cache_torch(qkv, q, kc, vc)
                qg = q.view(b, self.nkv, self.nh // self.nkv, self.hd)
                o = F.scaled_dot_product_attention(qg, kc, vc, attn_mask=valid)
                x = x + F.linear(o.reshape(b, self.nh * self.hd), lw["wo"])
            if not self.skip_ffn:
                x = x + self._ffn(i, self._rms(x, lw["ln2"]))
        logits = F.linear(self._rms(x, self.norm), self.lm_head)
        self.logits = logits
        nxt = logits.argmax(dim=-1)
        self.tok.copy_(nxt)
        self.log.index_copy_(0, self.pos, nxt.view(1, -1))
        self.pos.add_(1)

    def _rope_cache_torch(self, qkv, q, kc, vc):
        b, hd = qkv.shape[0], self.hd
        t = qkv.view(b, -1, hd)
        c, s = self.cos[self.pos], self.sin[self.pos]  # (1, hd / 2)
        t1, t2 = t[:, :self.nh + self.nkv, :hd // 2].float(), t[:, :self.nh + self.nkv, hd // 2:].float()
        r = torch.cat([t1 * c - t2 * s, t2 * c + t1 * s], -1).to(self.dtype)
        q.copy_(r[:, :self.nh])
        kc.index_copy_(2, self.pos, r[:, self.nh:, None])
        vc.index_copy_(2, self.pos, t[:, self.nh + self.nkv:, None])

    # ------------------------------------------------------------------ prefill (torch, not timed)

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor, hook=None) -> torch.Tensor:
        """``tokens (B, P)`` from position 0: fills the cache, sets ``pos = P`` and ``tok`` to the argmax
        after the prompt, returns it.  ``hook(layer, ffn_input (B*P, D))`` sees each FFN input."""
        b, p = tokens.shape
        if b != self.batch or p >= self.max_len:
            raise ValueError(f"prompt {tuple(tokens.shape)} does not fit batch {self.batch}, cache {self.max_len}")
        x = self.embed[tokens]
        cos, sin = self.cos[:p][None, :, None, :], self.sin[:p][None, :, None, :]

        def rope(t):
            t1, t2 = t[..., :self.hd // 2].float(), t[..., self.hd // 2:].float()
            return torch.cat([t1 * cos - t2 * sin, t2 * cos + t1 * sin], -1).to(self.dtype)

        for i, lw in enumerate(self.layers):
            n = self._rms(x, lw["ln1"])
            qkv = F.linear(n, lw["wqkv"]).view(b, p, self.nh + 2 * self.nkv, self.hd)
            q, k, v = qkv[:, :, :self.nh], qkv[:, :, self.nh:self.nh + self.nkv], qkv[:, :, self.nh + self.nkv:]
            q, k = rope(q), rope(k)
            self.k_cache[i, :, :, :p] = k.transpose(1, 2)
            self.v_cache[i, :, :, :p] = v.transpose(1, 2)
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               is_causal=True, enable_gqa=True)
            x = x + F.linear(o.transpose(1, 2).reshape(b, p, -1), lw["wo"])
            n2 = self._rms(x, lw["ln2"])
            if hook is not None:
                hook(i, n2.reshape(-1, n2.shape[-1]))
            x = x + self._dense_ffn(lw, n2)
        logits = F.linear(self._rms(x[:, -1], self.norm), self.lm_head)
        self.tok.copy_(logits.argmax(-1))
        self.pos.fill_(p)
        return self.tok.clone()

    def snapshot(self):
        """The state after prefill (cache, pos, tok), to restore before each timed run."""
        return (self.k_cache.clone(), self.v_cache.clone(), self.pos.clone(), self.tok.clone())

    def restore(self, snap) -> None:
        k, v, pos, tok = snap
        self.k_cache.copy_(k)
        self.v_cache.copy_(v)
        self.pos.copy_(pos)
        self.tok.copy_(tok)


def context_mean(prompt: int, new: int) -> float:
    """Mean context length read by the attention over ``new`` steps after a ``prompt``."""
    return prompt + (new + 1) / 2.0



def load_llama(folder, batch: int, max_len: int, device="cpu", dtype=torch.float32) -> Decoder:
    """A :class:`Decoder` with the weights of a Llama-style safetensors folder (``config.json`` + weights)."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text())
    if cfg.get("model_type") not in ("llama", "mistral"):
        raise ValueError(f"{folder}: model_type {cfg.get('model_type')!r}; a Llama/Mistral folder is needed")
    theta = cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    cfg = {**cfg, "rope_theta": theta}
    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(f)))
    return Decoder(cfg, batch, max_len, device, dtype, state=state)
