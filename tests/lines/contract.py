"""The contract every registered line meets on the tiny model (:func:`check_line`), shared by the contract test
over the registry and by each line's own test file."""

from __future__ import annotations

import torch

from apc.common.sites import decoder_layers
from apc.lines import get_line, parse
from apc.lines.base import WorkflowInputs
from apc.perplexity.calibrate import layer_mlps
from apc.perplexity.frontier import score_point


def ids(n=2, seq=33, vocab=128, seed=0):
    out = torch.randint(1, vocab, (n, seq), generator=torch.Generator().manual_seed(seed))
    out[:, 0] = 1  # a BOS column
    return out


def logits(model, x):
    with torch.no_grad():
        return model(x).logits


def mlp_inputs(model, x):
    """Per layer, the dense pass's MLP input with the BOS column dropped: ``(n, d_model)``."""
    got = {}
    hooks = [layer.mlp.gate_proj.register_forward_pre_hook(
        lambda m, a, l=l: got.__setitem__(l, a[0][:, 1:].reshape(-1, a[0].shape[-1])))
        for l, layer in enumerate(decoder_layers(model))]
    logits(model, x)
    for h in hooks:
        h.remove()
    return [got[l] for l in range(len(got))]


class _NoFiles:
    """A layout whose every path call is recorded: a line that asks for one needs workflow files."""

    def __init__(self):
        self.asked = []

    def __getattr__(self, name):
        def path(*args, **kwargs):
            self.asked.append(name)
            return f"/nonexistent/{name}"
        return path


def needs_files(family: str) -> bool:
    """Whether the line's points read workflow files (clustering cells, predictors, histograms)."""
    impl = get_line(family)
    spec = parse(impl.line_names(impl.config, {})[0]) if impl.training_free else None
    if spec is None:
        return True
    layout = _NoFiles()
    impl.workflow_inputs(spec, WorkflowInputs(layout, {"predict": {"seed": 0}}))
    return bool(layout.asked)


def point(model, family: str, share: float, batch_sizes=()):
    """``(score_point's dict, spec)`` of the family's first line at ``share``, calibrated on other tokens."""
    impl = get_line(family)
    spec = parse(impl.line_names(impl.config, {})[0])
    shares = impl.shares(spec, [share])
    settings = {"allocation_step": 0.05, **impl.config}
    calibration = impl.calibrate(layer_mlps(model), mlp_inputs(model, ids(seed=7)), shares, settings,
                                 lines=[spec]) if impl.calibrates else None
    windows = ids()
    arrays = impl.arrays(spec, shares[0], projections=["down_in"], calibration=calibration, model=model,
                         windows=windows, settings=settings, inputs={})
    n = len(decoder_layers(model))
    res = score_point(model, windows, spec, shares[0], bos=True, projections=["down_in"],
                      thresholds={"down_in": [0.0] * n}, batch_sizes=batch_sizes, **arrays)
    return res, spec


def check_line(model, family: str) -> None:
    """Share 1 is dense; the kept share lands near its target; the FLOP share follows what decides the mask; the
    batch view follows the line's scope."""
    impl = get_line(family)
    dense = logits(model, ids())
    full, spec = point(model, family, 1.0)
    ref = (full.get("dense") or {}).get("ppl") or _ppl(model)  # a sequence line: dense on its own tokens
    assert abs(full["ppl"] - ref) < 1e-6 * ref, f"{family} at share 1 is not dense"
    assert full["kept_share"] == 1.0 and full["ffn_flops_share"] == 1.0
    half, _ = point(model, family, 0.6, batch_sizes=(1, 4))
    target = impl.shares(spec, [0.6])[0]
    assert abs(half["kept_share"] - target) < 0.12, f"{family}: kept {half['kept_share']:.3f}, target {target}"
    sh = {p: sum(v) / len(v) for p, v in half["product_shares"].items()}
    kept = half["kept_share"]
    if impl.decided_by == "before":
        assert abs(sh["gate"] - kept) < 1e-6 and abs(sh["up"] - kept) < 1e-6
    elif impl.decided_by == "gate":
        assert sh["gate"] == 1.0 and abs(sh["up"] - kept) < 1e-6
    elif impl.decided_by == "down_in":
        assert sh["gate"] == sh["up"] == 1.0
    else:
        assert sh["gate"] < 1.0 and abs(sh["gate"] - sh["up"]) < 1e-9
    assert abs(sh["down"] - kept) < 1e-6
    assert half["compute_share"] >= half["ffn_flops_share"]
    view = half["batch"]["down_in"]
    u1, u4 = view["1"]["union"]["mean"], view["4"]["union"]["mean"]
    if impl.scope == "token":
        assert abs(u1 - kept) < 0.02 and u4 >= u1 - 1e-9
    elif impl.scope == "sequence":
        assert view["1"]["groups"] == ids().shape[0]  # one mask per sequence
    assert torch.isfinite(dense).all()


def _ppl(model):
    from apc.perplexity.protocol import score

    return score(model, ids(), "dense", bos=True)["ppl"]
