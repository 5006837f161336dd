"""A Llama-style decoder with a static KV cache for decode timing: eager (CPU) or one compiled step (CUDA).

Built from a configuration dict (``transformers``' names: ``hidden_size``, ``intermediate_size``,
``num_attention_heads``, ``num_key_value_heads``, ``num_hidden_layers``, ``rms_norm_eps``,
``rope_theta``, ``vocab_size``) with random weights (normal, ``init_std``; norms one), or from a
safetensors folder (:func:`load_llama`).  RMSNorm, grouped-query attention with rotary positions (the
half-split form of ``transformers``' Llama), a gated SiLU FFN.

One decode step (:meth:`Decoder.step`) reads the token buffer ``tok (B,)``, runs every layer at position
``pos`` (a device tensor), writes the argmax token into ``tok`` and ``log[pos]`` and advances ``pos``:
nothing leaves the device, so the whole step is captured as one CUDA graph (:meth:`Decoder.graph`).
With ``compile=True`` each layer runs one ``torch.compile``'d function (``fullgraph``, the same for all
layers: weights and cache are its arguments), the residual add, the next layer's RMSNorm, RoPE, the
cache write and the activations fused by Inductor around the products; the sparse products are the
operators of :mod:`apc.deploy.ops`.  :meth:`Decoder.prefill` runs a prompt eagerly (causal attention)
and fills the cache.

The sparsity of every layer is a :class:`Sparsity`: a ``kind`` (one compiled function per kind) and
per-layer tensors (thresholds as device scalars, so one compiled graph serves every share):

============== ===============================================================================================
``dense``      dense products (``F.linear``; compiled at batch 1 under coordinate-descent tuning, Inductor's own
               reduction kernels, fused with the norm before and the activation or residual add after)
``input``      gate/up on ``|x * s_in| > t_in``, down on ``|h * s_h| > t_h`` (TEAL's; ``s_*`` optional: WINA's scales)
``input_attn`` ``input`` plus the q/k/v input on ``|n| > t_qkv`` (one test over the stacked qkv weight) and the
               o-projection input on ``|a| > t_o`` (TEAL as published: all seven projections)
``gate``       gate dense, up and down on ``|silu(gate)| >= t`` (CATS's)
``mask``       a neuron mask ``mask (B, F)`` (per-token or cluster masks)
``static``     dense products on pruned weights ``wgu (2F', D)``, ``wd (D, F')``
============== ===============================================================================================
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from apc.deploy import ops

KINDS = ("dense", "input", "input_attn", "gate", "mask", "static")
#: per-layer tensors each kind needs (``s_in``/``s_h`` optional for ``input``/``input_attn``)
NEEDS = {"dense": (), "input": ("t_in", "t_h"), "input_attn": ("t_in", "t_h", "t_qkv", "t_o"), "gate": ("t",),
         "mask": ("mask",), "static": ("wgu", "wd")}


@dataclass
class Sparsity:
    """``kind`` (one of :data:`KINDS`) and ``layers[i]``, the tensors of layer ``i`` (see :data:`NEEDS`)."""

    kind: str = "dense"
    layers: list = field(default_factory=list)

    def check(self, n_layers: int) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown sparsity kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if self.kind == "dense":
            return
        if len(self.layers) != n_layers:
            raise ValueError(f"sparsity {self.kind!r} has {len(self.layers)} layers, the model {n_layers}")
        for i, lp in enumerate(self.layers):
            missing = [k for k in NEEDS[self.kind] if k not in lp]
            if missing:
                raise ValueError(f"sparsity {self.kind!r}, layer {i}: missing {missing}")


@dataclass(frozen=True)
class _Spec:
    nh: int
    nkv: int
    hd: int
    eps: float
    kind: str
    skip_attn: bool = False
    skip_ffn: bool = False
    reference: bool = False


def _rms(x, w, eps):
    return F.rms_norm(x, (x.shape[-1],), w, eps)


def _union(keep) -> float:
    """The share of channels some row of ``keep (T, C)`` keeps (eager reference only: a host sync)."""
    return float(keep.any(dim=0).float().mean())


def _attn_proj(x, name: str, lw, lp, spec, rec):
    """An attention projection ``name`` (``qkv``: the stacked q/k/v, or ``o``) of ``x: (T, K)``: dense, or under
    ``input_attn`` its input thresholded at ``lp["t_" + name]`` (the input-sparse GEMV; masked dense products in the
    reference, which records the union share)."""
    if spec.kind != "input_attn":
        return ops.linear(x, lw["w" + name])
    if spec.reference:
        keep = x.float().abs() > lp["t_" + name]
        rec.append((name, _union(keep)))
        return F.linear(x.masked_fill(~keep, 0), lw["w" + name])
    return ops.sparse_linear(x, lw["w" + name + "_t"], lp["t_" + name]).to(x.dtype)


def _score(v, scale):
    return v.float() if scale is None else v.float() * scale


def _ffn(x, lw, lp, spec, zero, rec=None):
    """The FFN of one layer: ``x (B, D)`` -> ``(B, D)`` in ``x``'s dtype.  With ``spec.reference`` the
    same masks through dense products (the torch reference), each product's union share appended to ``rec``."""
    dt = x.dtype
    kind = spec.kind
    ref = spec.reference
    f = lw["wd"].shape[1]
    if kind == "dense":
        g, u = ops.linear(x, lw["wgu"]).chunk(2, dim=-1)
        return ops.linear(F.silu(g) * u, lw["wd"])
    if kind == "static":
        if ref:
            rec.append(("ffn", lp["wd"].shape[1] / f))
        g, u = F.linear(x, lp["wgu"]).chunk(2, dim=-1)
        return F.linear(F.silu(g) * u, lp["wd"])
    if kind in ("input", "input_attn"):
        if ref:
            k_in = _score(x, lp.get("s_in")).abs() > lp["t_in"]
            g, u = F.linear(x.masked_fill(~k_in, 0), lw["wgu"]).chunk(2, dim=-1)
            h = F.silu(g) * u
            k_h = _score(h, lp.get("s_h")).abs() > lp["t_h"]
            rec.append(("ffn", (2 * _union(k_in) + _union(k_h)) / 3))
            return F.linear(h.masked_fill(~k_h, 0), lw["wd"])
        g, u = ops.sparse_linear(x, lw["wgu_t"], lp["t_in"], lp.get("s_in")).to(dt).chunk(2, dim=-1)
        h = F.silu(g) * u
        return ops.sparse_linear(h, lw["wd_t"], lp["t_h"], lp.get("s_h")).to(dt)
    if kind == "gate":
        a = F.silu(F.linear(x, lw["wgu"][:f]))
        keep = a.abs().float() >= lp["t"]
        if ref:
            rec.append(("ffn", (1 + 2 * _union(keep)) / 3))
            u = F.linear(x, lw["wgu"][f:])
        else:
            u = ops.masked_linear(x, lw["wgu"][f:], keep).to(dt)
        h = (a * u).masked_fill(~keep, 0)
        return F.linear(h, lw["wd"]) if ref else ops.sparse_linear(h, lw["wd_t"], zero).to(dt)
    # mask
    m = lp["mask"]
    if ref:
        rec.append(("ffn", _union(m)))
        g, u = F.linear(x, lw["wgu"]).chunk(2, dim=-1)
        return F.linear((F.silu(g) * u).masked_fill(~m, 0), lw["wd"])
    g, u = ops.masked_linear(x, lw["wgu"], m).to(dt).chunk(2, dim=-1)
    h = (F.silu(g) * u).masked_fill(~m, 0)
    return ops.sparse_linear(h, lw["wd_t"], zero).to(dt)


def layer_step(x, n, lw, lp, kc, vc, pos, cos, sin, ln_next, zero, *, spec: _Spec, rec=None):
    """One decoder layer at position ``pos (1,)`` for ``x (B, D)`` (residual) and ``n = rms(x, ln1)``:
    writes K/V into ``kc, vc (B, nkv, L, hd)`` and returns ``(x', rms(x', ln_next))``."""
    b = x.shape[0]
    nh, nkv, hd = spec.nh, spec.nkv, spec.hd
    if not spec.skip_attn:
        t = _attn_proj(n, "qkv", lw, lp, spec, rec).view(b, nh + 2 * nkv, hd)
        c, s = cos.index_select(0, pos), sin.index_select(0, pos)  # (1, hd / 2)
        qk = t[:, :nh + nkv].float()
        t1, t2 = qk[..., :hd // 2], qk[..., hd // 2:]
        r = torch.cat([t1 * c - t2 * s, t2 * c + t1 * s], -1).to(x.dtype)
        # the cache write at pos and the attention over 0 .. pos: one operator (one kernel on CUDA) at batch 1,
        # the cache write and SDPA in this graph above it (ops.cached_attention)
        o = ops.cached_attention(r[:, :nh], r[:, nh:], t[:, nh + nkv:], kc, vc, pos)
        x = x + _attn_proj(o.reshape(b, nh * hd), "o", lw, lp, spec, rec)
    if not spec.skip_ffn:
        x = x + _ffn(_rms(x, lw["ln2"], spec.eps), lw, lp, spec, zero, rec)
    return x, _rms(x, ln_next, spec.eps)


class Decoder:
    """Decoder of a Llama/Mistral configuration dict ``cfg``, ``batch`` rows, a cache of ``max_len``; random
    weights (normal, ``init_std``), or those of ``state`` (a Llama state dict with ``transformers``' names).
    ``compile``: each layer through one ``torch.compile``'d function (fullgraph); else eager."""

    def __init__(self, cfg: dict, batch: int, max_len: int, device="cuda", dtype=torch.bfloat16, seed=0,
                 init_std=0.02, state: dict | None = None, compile: bool = False):
        missing = [k for k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
                               "vocab_size") if k not in cfg]
        if missing:
            raise ValueError(f"the decoder configuration lacks {missing}")
        self.cfg = cfg
        self.max_len, self.device, self.dtype = max_len, torch.device(device), dtype
        d, f = cfg["hidden_size"], cfg["intermediate_size"]
        self.nh = cfg["num_attention_heads"]
        self.nkv = cfg.get("num_key_value_heads") or self.nh
        self.hd = cfg.get("head_dim") or d // self.nh
        self.n_layers, self.eps = cfg["num_hidden_layers"], float(cfg.get("rms_norm_eps", 1e-5))
        g = torch.Generator(device=self.device).manual_seed(seed)

        def rnd(*shape):
            return (torch.randn(*shape, generator=g, device=self.device, dtype=torch.float32) * init_std).to(dtype)

        def get(name, *shape):  # a weight of the given state dict, else a random one
            if state is None:
                return rnd(*shape)
            if name not in state:
                raise ValueError(f"the state dict has no {name}")
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
        theta = float(cfg.get("rope_theta") or 10000.0)
        inv = 1.0 / theta ** (torch.arange(0, self.hd, 2, device=self.device, dtype=torch.float32) / self.hd)
        ang = torch.arange(max_len, device=self.device, dtype=torch.float32)[:, None] * inv[None, :]
        self.cos, self.sin = ang.cos().contiguous(), ang.sin().contiguous()
        self._zero = torch.zeros(1, device=self.device, dtype=torch.float32)
        self.sparsity = Sparsity()
        self.skip_attn = self.skip_ffn = False
        #: eager torch reference of the sparsity (masked dense products); each product's union share
        #: is appended to ``unions`` as ``(product, share)``
        self.reference = False
        self.unions: list = []
        self.compile = compile
        self.compile_backend = "inductor"
        #: Inductor's coordinate-descent tuning in the compiled step (gpt-fast's setting)
        self.coordinate_descent = True
        self._compiled: dict = {}
        self.logits = None
        self.resize(batch)

    # ------------------------------------------------------------------ state

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

    def prepare_sparse(self, attention: bool = False) -> None:
        """The transposed weight copies the input-sparse products read (``wgu_t``, ``wd_t``; with
        ``attention`` also ``wqkv_t``, ``wo_t``), made once."""
        for lw in self.layers:
            for name in ("wgu", "wd") + (("wqkv", "wo") if attention else ()):
                if name + "_t" not in lw:
                    lw[name + "_t"] = lw[name].t().contiguous()

    def set_sparsity(self, sp: Sparsity | None) -> None:
        """Use ``sp`` (None: dense) from the next step on."""
        sp = sp or Sparsity()
        sp.check(self.n_layers)
        if sp.kind in ("input", "input_attn", "gate", "mask"):
            self.prepare_sparse(attention=sp.kind == "input_attn")
        self.sparsity = sp

    def snapshot(self):
        """The state after prefill (cache, pos, tok), to restore before each timed run."""
        return (self.k_cache.clone(), self.v_cache.clone(), self.pos.clone(), self.tok.clone())

    def restore(self, snap) -> None:
        k, v, pos, tok = snap
        self.k_cache.copy_(k)
        self.v_cache.copy_(v)
        self.pos.copy_(pos)
        self.tok.copy_(tok)

    # ------------------------------------------------------------------ bytes

    def weight_bytes(self) -> dict:
        """Bytes read per decode step by part (weights only): attention, FFN, LM head."""
        lw = self.layers[0]
        el = self.embed.element_size()
        return {"attn": self.n_layers * (lw["wqkv"].numel() + lw["wo"].numel()) * el,
                "ffn": self.n_layers * (lw["wgu"].numel() + lw["wd"].numel()) * el,
                "head": self.lm_head.numel() * el}

    def kv_bytes(self, context: float) -> float:
        """Bytes of K and V read per decode step at mean context length ``context``."""
        return 2.0 * self.n_layers * self.batch * self.nkv * context * self.hd * self.embed.element_size()

    # ------------------------------------------------------------------ decode step (graph-safe)

    def _spec(self) -> _Spec:
        return _Spec(self.nh, self.nkv, self.hd, self.eps, self.sparsity.kind, self.skip_attn, self.skip_ffn,
                     self.reference)

    def ffn(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Layer ``i``'s FFN under the current sparsity (eager; the reference if ``reference``): ``x (B, D)``
        -> ``(B, D)``."""
        sp = self.sparsity.layers
        return _ffn(x, self.layers[i], sp[i] if sp else {}, self._spec(), self._zero, self.unions)

    def _layer_fn(self):
        spec = self._spec()
        if not self.compile or self.reference:
            return partial(layer_step, spec=spec, rec=self.unions)
        fn = partial(layer_step, spec=spec)
        if (spec, self.compile_backend, self.coordinate_descent) not in self._compiled:
            import torch._dynamo
            import torch._inductor.config as ic

            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
            torch._dynamo.config.accumulated_cache_size_limit = max(
                torch._dynamo.config.accumulated_cache_size_limit, 4096)
            ic.emulate_precision_casts = True  # round like eager: compiled and eager decode the same tokens
            # gpt-fast's setting: Inductor then writes each one-row dense product as a reduction kernel of its
            # own (fused with the norm before it and the activation or residual add after it) and tunes it
            ic.coordinate_descent_tuning = self.coordinate_descent
            self._compiled[spec, self.compile_backend, self.coordinate_descent] = torch.compile(
                fn, fullgraph=True, dynamic=False, backend=self.compile_backend)
        return self._compiled[spec, self.compile_backend, self.coordinate_descent]

    def step(self) -> None:
        """One token for every row at position ``pos``: reads ``tok``, writes the argmax into ``tok`` and
        ``log[pos]``, then ``pos += 1``."""
        fn = self._layer_fn()
        sp = self.sparsity.layers
        x = self.embed.index_select(0, self.tok)
        n = _rms(x, self.layers[0]["ln1"], self.eps)
        for i, lw in enumerate(self.layers):
            ln_next = self.layers[i + 1]["ln1"] if i + 1 < self.n_layers else self.norm
            x, n = fn(x, n, lw, sp[i] if sp else {}, self.k_cache[i], self.v_cache[i], self.pos, self.cos, self.sin,
                      ln_next, self._zero)
        logits = F.linear(n, self.lm_head)
        self.logits = logits
        nxt = logits.argmax(dim=-1)
        self.tok.copy_(nxt)
        self.log.index_copy_(0, self.pos, nxt.view(1, -1))
        self.pos.add_(1)

    def graph(self, snap):
        """One decode step captured as a CUDA graph (after two warm-up steps on a side stream, which also
        compile); the state ``snap`` restored after."""
        self.restore(snap)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            self.step()
            self.step()
        torch.cuda.current_stream().wait_stream(s)
        torch.cuda.synchronize()
        self.restore(snap)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            self.step()
        self.restore(snap)
        torch.cuda.synchronize()
        return g

    # ------------------------------------------------------------------ prefill (eager, not timed)

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor, hook=None) -> torch.Tensor:
        """``tokens (B, P)`` from position 0, dense: fills the cache, sets ``pos = P`` and ``tok`` to the argmax
        after the prompt, returns it.  ``hook(layer, ffn_input (B*P, D), attn_input (B*P, D), o_input
        (B*P, nh*hd))`` sees each layer's product inputs."""
        b, p = tokens.shape
        if b != self.batch or p >= self.max_len:
            raise ValueError(f"prompt {tuple(tokens.shape)} does not fit batch {self.batch}, cache {self.max_len}")
        x = self.embed[tokens]
        cos, sin = self.cos[:p][None, :, None, :], self.sin[:p][None, :, None, :]

        def rope(t):
            t1, t2 = t[..., :self.hd // 2].float(), t[..., self.hd // 2:].float()
            return torch.cat([t1 * cos - t2 * sin, t2 * cos + t1 * sin], -1).to(self.dtype)

        for i, lw in enumerate(self.layers):
            n = _rms(x, lw["ln1"], self.eps)
            qkv = F.linear(n, lw["wqkv"]).view(b, p, self.nh + 2 * self.nkv, self.hd)
            q, k, v = qkv[:, :, :self.nh], qkv[:, :, self.nh:self.nh + self.nkv], qkv[:, :, self.nh + self.nkv:]
            q, k = rope(q), rope(k)
            self.k_cache[i, :, :, :p] = k.transpose(1, 2)
            self.v_cache[i, :, :, :p] = v.transpose(1, 2)
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               is_causal=True, enable_gqa=True)
            o = o.transpose(1, 2).reshape(b, p, -1)
            x = x + F.linear(o, lw["wo"])
            n2 = _rms(x, lw["ln2"], self.eps)
            if hook is not None:
                hook(i, n2.reshape(-1, n2.shape[-1]), n.reshape(-1, n.shape[-1]), o.reshape(-1, o.shape[-1]))
            g, u = F.linear(n2, lw["wgu"]).chunk(2, dim=-1)
            x = x + F.linear(F.silu(g) * u, lw["wd"])
        logits = F.linear(_rms(x[:, -1], self.norm, self.eps), self.lm_head)
        self.tok.copy_(logits.argmax(-1))
        self.pos.fill_(p)
        return self.tok.clone()


def context_mean(prompt: int, new: int) -> float:
    """Mean context length read by the attention over ``new`` steps after a ``prompt``."""
    return prompt + (new + 1) / 2.0


def llama_config(folder) -> dict:
    """The ``config.json`` of a Llama/Mistral safetensors folder, with ``rope_theta`` resolved."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no config.json (a Llama-style safetensors folder is needed)")
    cfg = json.loads((folder / "config.json").read_text())
    if cfg.get("model_type") not in ("llama", "mistral"):
        raise ValueError(f"{folder}: model_type {cfg.get('model_type')!r}; a Llama/Mistral folder is needed")
    theta = cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    return {**cfg, "rope_theta": theta}


def load_llama(folder, batch: int, max_len: int, device="cpu", dtype=torch.float32, compile: bool = False) -> Decoder:
    """A :class:`Decoder` with the weights of a Llama-style safetensors folder (``config.json`` + weights)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = llama_config(folder)
    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(f)))
    if not state:
        raise FileNotFoundError(f"{folder}: no *.safetensors files")
    return Decoder(cfg, batch, max_len, device, dtype, state=state, compile=compile)
