"""``rsparse``: R-Sparse (VITA-Group/R-Sparse, ICLR 2025, arXiv 2504.19449) on the FFN.  Each product's input
channel i is scored by ``|x_i| * ||W[:, i]||_2``; the kept channels go through W, the dropped remainder through a
rank-r factorisation ``A B`` of W made once from the weights (truncated SVD):
``y = W[:, K] x_K + A (B x_{not K})``.  The MLP input is shared by gate and up (scored with their stacked
column norms), ``down_in`` feeds down.  FLOPs per product: the kept channels plus ``r (d_in + d_out)``.

The paper searches each layer's sparsity and rank with an evolutionary search.  This line uses a cheaper,
stated search at the same budget: per layer, each rank of a small grid (0 and 1/16, 1/8, 1/4 of d_model) sets
the kept share that spends the budget, and the rank whose MLP output error on the first 256 train inputs is
least wins; its thresholds are then calibrated on every train input.
"""

from __future__ import annotations

from apc.lines._rules import AtLeast, calibrated, input_threshold, share_label
from apc.lines.base import Line
from apc.lines.registry import register_line

#: ranks tried per layer, as fractions of d_model
RANK_GRID = (0.0, 1 / 16, 1 / 8, 1 / 4)
#: train inputs per layer the rank search compares its ranks on (the chosen rank's thresholds use every sample)
SEARCH_TOKENS = 256


def factors(weight, rank: int):
    """``(A: (d_out, r), B: (r, d_in))`` float32 with ``A B`` the best rank-``r`` approximation of ``weight``."""
    import torch

    u, s, vh = torch.linalg.svd(weight.detach().float().cpu(), full_matrices=False)
    return (u[:, :rank] * s[:rank]).contiguous(), vh[:rank].contiguous()


def _trial(mlp, h, y, f_max: dict, sin, smid, r: int, rho: float) -> tuple:
    """``(MLP output error, T_in, T_mid, input kept, down_in kept)`` of rank ``r`` at kept share ``rho`` on the
    train inputs ``h: (n, d_model)`` whose dense MLP output is ``y: (n, d_model)`` float32: thresholds for ``rho``
    of the weighted scores, the dropped remainder through the first ``r`` columns of the factors ``f_max``."""
    from apc.lines._calibrate import share_threshold

    f = {p: (a[:, :r], b[:r]) for p, (a, b) in f_max.items()}
    t_in = share_threshold(h.abs().float() * sin, rho)
    keep = h.abs().float() * sin >= t_in
    hk, hd = h.masked_fill(~keep, 0), h.masked_fill(keep, 0)
    mid = mlp.act(mlp.gate(hk) + _low_rank(hd, *f["gate"])) * (mlp.up(hk) + _low_rank(hd, *f["up"]))
    t_mid = share_threshold(mid.abs().float() * smid, rho)
    km = mid.abs().float() * smid >= t_mid
    yy = mlp.down(mid.masked_fill(~km, 0)) + _low_rank(mid.masked_fill(km, 0), *f["down"])
    return float(((yy.float() - y) ** 2).sum()), t_in, t_mid, float(keep.float().mean()), float(km.float().mean())


def kept_for_rank(budget: float, rank: int, d_model: int, d_ff: int) -> float:
    """The kept share of every product that, with its rank-``rank`` part, spends compute share ``budget``."""
    return budget - rank * (d_model + d_ff) / (d_model * d_ff)


@register_line
class RSparse(Line):
    family = "rsparse"
    pattern = r"rsparse"
    mode = "rsparse"
    decided_by = "input"
    gated = True
    calibrates = True
    tap = "ffn_input"
    order = 33
    style = ("-", ">", "#ff9896")

    def label(self, spec):
        return "R-Sparse (weighted input channels + a low-rank remainder)"

    def calibrate(self, mlps, samples, shares, settings, *, lines=()):
        """Per layer the factors of gate, up and down at the largest rank of the grid, and per share label
        ``{"rank", "input", "mid", "input_kept", "mid_kept", "error"}`` (one value per layer)."""
        import torch

        from apc.lines.wina import wina_scales

        scales_in, scales_mid = wina_scales(mlps)
        out = {"factors": [], "input_scale": [s.cpu() for s in scales_in], "mid_scale": [s.cpu() for s in scales_mid]}
        dense = []  # per layer the dense MLP outputs of the probe and of every sample, made once for every trial
        with torch.no_grad():
            for l, (mlp, h) in enumerate(zip(mlps, samples)):
                d_model, d_ff = h.shape[1], mlp.gate.out_features
                r_max = int(round(max(RANK_GRID) * d_model))
                out["factors"].append({p: factors(getattr(mlp, p).weight, r_max) for p in ("gate", "up", "down")})
                dense.append(tuple(mlp.down(mlp.intermediate(x)).float() for x in (h[:SEARCH_TOKENS], h)))
            for s in map(float, shares):
                t = {"rank": [], "input": [], "mid": [], "input_kept": [], "mid_kept": [], "error": []}
                for l, (mlp, h) in enumerate(zip(mlps, samples)):
                    d_model, d_ff = h.shape[1], mlp.gate.out_features
                    f_max = {p: (a.to(h.device), b.to(h.device)) for p, (a, b) in out["factors"][l].items()}
                    sin, smid = scales_in[l].to(h.device), scales_mid[l].to(h.device)
                    probe = h[:SEARCH_TOKENS]
                    y_probe, y_all = dense[l]
                    tried = [(_trial(mlp, probe, y_probe, f_max, sin, smid, r, rho)[0], r, rho) for r, rho in (
                        (int(round(frac * d_model)), kept_for_rank(s, int(round(frac * d_model)), d_model, d_ff))
                        for frac in RANK_GRID) if rho > 0]
                    if not tried:
                        raise ValueError(f"compute share {s} is below what the rank grid leaves for kept channels")
                    _, r, rho = min(tried)  # the least error on the probe; its thresholds from every sample
                    err, t_in, t_mid, in_kept, mid_kept = _trial(mlp, h, y_all, f_max, sin, smid, r, rho)
                    for key, v in zip(("error", "rank", "input", "mid", "input_kept", "mid_kept"),
                                      (err, r, t_in, t_mid, in_kept, mid_kept)):
                        t[key].append(v)
                out[share_label(s)] = t
        return out

    def arrays(self, spec, share, *, projections, calibration, model, windows, settings, inputs, j=0):
        t = calibrated(calibration, share, spec)
        lr = [{p: (a[:, :r], b[:r]) for p, (a, b) in f.items()} for f, r in zip(calibration["factors"], t["rank"])]
        return {"keep_thresholds": {"down_in": t["mid"]}, "input_thresholds": t["input"],
                "input_scale": calibration["input_scale"], "mid_scale": calibration["mid_scale"],
                "low_rank": lr, "ranks": list(t["rank"])}

    def prepare(self, masks, layers, width, model):
        from apc.lines.wina import Wina

        state = Wina.prepare(self, masks, layers, width, model)
        lr = (masks.arrays or {}).get("low_rank")
        if lr is None or len(lr) != len(layers):
            raise ValueError(f"mode 'rsparse' needs low_rank: one {{gate, up, down: (A, B)}} per layer ({len(layers)})")
        state["low_rank"] = [{p: (a.to(site.ffn_input_device), b.to(site.ffn_input_device)) for p, (a, b) in f.items()}
                             for f, site in zip(lr, layers)]
        return state

    def rule(self, state, layer, proj, taps, *, fused):
        state["taps"] = taps
        return AtLeast(state["keep"][proj][layer], state["mid_scale"][layer])

    def input_mask(self, state, layer):
        return input_threshold(state["input"][layer], state["input_scale"][layer])

    def extra_hooks(self, state, layers, handle):
        """The low-rank parts: gate and up add ``A B (h - h kept)``, down adds ``A B (x - x kept)``."""
        hooks = []
        for l, mods in enumerate(layers):
            f, full = state["low_rank"][l], {}
            for p in ("gate", "up"):
                if f[p][0].shape[1]:
                    hooks.append(mods[p].register_forward_hook(
                        lambda m, args, out, l=l, ab=f[p]: out + _low_rank(state["taps"][l] - args[0], *ab)))
            if f["down"][0].shape[1]:
                hooks.append(mods["down"].register_forward_pre_hook(
                    lambda m, args, full=full: full.__setitem__("x", args[0])))
                hooks.append(mods["down"].register_forward_hook(
                    lambda m, args, out, full=full, ab=f["down"]: out + _low_rank(full.pop("x") - args[0], *ab)))
        return hooks

    def overhead_share(self, spec, model, masks=None):
        from apc.common.projections import mlp_projections

        ranks = (masks.arrays or {}).get("ranks") if masks is not None else None
        if not ranks:
            return 0.0
        w = mlp_projections(model)[0]["gate"].weight
        d_ff, d_model = w.shape
        return float(sum(ranks) / len(ranks)) * (d_model + d_ff) / (d_model * d_ff)


def _low_rank(x, a, b):
    """``x B^T A^T``: ``x: (..., d_in)`` through the rank-r factors ``a: (d_out, r)``, ``b: (r, d_in)``."""
    return ((x.float() @ b.T) @ a.T).to(x.dtype)
