"""The one-pass masking kernels (apc.perplexity.fused) against the torch route of the masking hooks.

With CUDA the kernels run compiled on the GPU.  Without, they run in Triton's CPU interpreter when
Triton is installed and TRITON_INTERPRET=1 is set for the pytest run (README, "Tests"); else these
tests skip.  Every mode must give
the torch route's logits bit for bit, and the same statistics and batch view.
"""

import pytest
import torch
import transformers
from torch import nn

from apc.clustering import top_n_mask
from apc.perplexity import fused
from apc.perplexity.masking import install_interventions

pytest.importorskip("triton")
DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
N_LAYERS, WIDTH, D_MODEL = 2, 40, 32


@pytest.fixture(autouse=True)
def interpreter():
    """Kernels on CPU tensors through Triton's interpreter where there is no GPU."""
    with fused.cpu_interpreter():
        if not fused.enabled(DEV):
            pytest.skip("Triton cannot run kernels here")
        yield


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=D_MODEL, intermediate_size=WIDTH,
                                   num_hidden_layers=N_LAYERS, num_attention_heads=4, num_key_value_heads=2)
    return transformers.LlamaForCausalLM(cfg).eval().to(DEV)


@pytest.fixture(scope="module")
def windows():
    w = torch.randint(2, 96, (2, 10), generator=torch.Generator().manual_seed(1))
    w[:, 0] = 1
    return w.to(DEV)


def _widths():
    return {"gate": WIDTH, "up": WIDTH, "down": D_MODEL, "down_in": WIDTH}


def _run(model, windows, mode, fused_route, batch_sizes=(), **kw):
    with install_interventions(model, mode, skip_first_position=True, fused=fused_route,
                               batch_sizes=batch_sizes, **kw) as h, torch.inference_mode():
        logits = model(windows).logits
        assert (h.fused_calls == sum(h.calls.values()) > 0) if fused_route else h.fused_calls == 0
        return logits, h.stats(), h.layer_stats(), h.batch_view(), h.id_counts()


def _cents(k=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {p: torch.rand(N_LAYERS, k, w, generator=g) < 0.5 for p, w in _widths().items()}


class _Linear(nn.Module):
    def __init__(self, n_out, seed):
        super().__init__()
        self.d_model = D_MODEL
        self.lin = nn.Linear(D_MODEL, n_out)
        with torch.no_grad():
            g = torch.Generator().manual_seed(seed)
            self.lin.weight.copy_(torch.randn(n_out, D_MODEL, generator=g))

    def forward(self, h):
        return self.lin(h)


def _cases():
    thr = {p: [0.02 * (l + 1) for l in range(N_LAYERS)] for p in _widths()}
    keep_thr = {p: [0.05 + 0.01 * l for l in range(N_LAYERS)] for p in _widths()}
    paper, down_in = ["gate", "up", "down"], ["down_in"]
    base = {"thresholds": thr}
    out = []
    for projs in (paper, down_in):
        out += [("sparse", projs, base), ("threshold", projs, {**base, "keep_thresholds": keep_thr})]
        out += [(m, projs, {**base, "centroids": _cents()}) for m in ("centroid", "centroid_only")]
        out += [(m, projs, {**base, "random_density": {p: 0.6 for p in projs}, "seed": 3})
                for m in ("random", "random_only")]
        out.append(("predicted", projs, {**base, "centroids": _cents(),
                                         "predictors": {p: [_Linear(6, l) for l in range(N_LAYERS)] for p in projs}}))
        out.append(("neuron_predicted", projs, {**base, "neuron_density": {p: 0.5 for p in projs},
                                                "predictors": {p: [_Linear(_widths()[p], 7 + l)
                                                                   for l in range(N_LAYERS)] for p in projs}}))
    out.append(("predicted", down_in, {**base, "centroids": _cents(), "top_m": 2,
                                       "predictors": {"down_in": [_Linear(6, l) for l in range(N_LAYERS)]}}))
    out.append(("centroid", down_in, {**base, "centroids": {"down_in": _cents(k=8)["down_in"]}, "groups": {"down_in": 2}}))
    out.append(("centroid_only", down_in, {**base, "centroids": _cents(), "assign_weights": {"down_in": None}}))
    out.append(("cats", down_in, {**base, "gate_thresholds": {"down_in": [0.03, 0.04]}}))
    out.append(("teal", down_in, {**base, "keep_thresholds": keep_thr, "input_thresholds": [0.5, 0.6]}))
    return out


@pytest.mark.parametrize("mode,projs,kw", _cases(), ids=lambda v: v if isinstance(v, str) else
                         ("+".join(v) if isinstance(v, list) else ""))
@pytest.mark.parametrize("batch_sizes", [(), (1, 4)], ids=["", "batch-view"])
def test_fused_route_equals_the_torch_route(model, windows, mode, projs, kw, batch_sizes):
    ref = _run(model, windows, mode, False, batch_sizes, projections=projs, **kw)
    got = _run(model, windows, mode, True, batch_sizes, projections=projs, **kw)
    assert torch.equal(got[0], ref[0]), "masked logits differ"
    assert got[1:] == ref[1:]
    dense = _run(model, windows, "dense", False)[0]
    assert not torch.equal(got[0], dense)  # the masks did something


def test_top_n_float_keeps_the_stable_sort_set():
    g = torch.Generator().manual_seed(5)
    rows = [torch.rand(50, generator=g),
            torch.randint(-3, 4, (50,), generator=g).float(),  # many ties
            torch.tensor([0.0, -0.0] * 25),  # signed zeros are equal
            torch.tensor([float("nan"), 1.0, float("-inf"), float("inf"), -2.0] * 10),
            torch.full((50,), 7.0)]
    score = torch.stack(rows).to(DEV)
    for n, config in zip((1, 13, 25, 49, 50), ((1, 4), (4, 4), (2, 8), (3, 4), None)):  # rows per program
        got = fused.top_n_float(score, n, config)
        order = torch.argsort(score.cpu(), dim=1, descending=True, stable=True)[:, :n]
        want = torch.zeros(score.shape, dtype=torch.bool).scatter_(1, order, True)
        assert torch.equal(got.cpu(), want), n
        finite = score[:2]
        assert torch.equal(fused.top_n_float(finite, n).cpu(), top_n_mask(finite.cpu(), n))
    assert fused.top_n_float(score.double(), 3) is None  # not float32: the caller's torch route


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mask_rows_kinds_against_torch(dtype):
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(3 * 7, 600, generator=g) * 0.1).to(dtype)
    x[0, :5] = torch.tensor([float("nan"), -0.0, 0.05, -0.05, float("inf")]).to(dtype)
    keep = torch.rand(x.shape, generator=g) < 0.4
    cents = torch.rand(5, 600, generator=g) < 0.5
    ids = torch.randint(0, 5, (x.shape[0], 2), generator=g)
    t, t2 = 0.05, 0.08
    a = x.float().abs()
    p = a >= t
    wants = {"pattern": p, "at_least": a >= t2, "keep": keep & p, "centroids": cents[ids].any(dim=1)}
    for kind, want in wants.items():
        for seq in (0, 7):
            acc = torch.zeros(2, dtype=torch.float64, device=DEV)
            out, kept = fused.mask_rows(x.to(DEV), t, acc, seq=seq, kind=kind, keep_threshold=t2,
                                        keep=keep.to(DEV), centroids=cents.to(DEV), ids=ids.to(DEV),
                                        and_pattern=kind == "keep", keep_out=True)
            w = want.clone()
            counted = torch.ones(x.shape[0], dtype=torch.bool)
            if seq:
                w[::seq] = True
                counted[::seq] = False
            assert torch.equal(kept.cpu(), w), (kind, seq)
            bits = torch.int32 if dtype == torch.float32 else torch.int16  # bit for bit, NaN included
            assert torch.equal(out.cpu().view(bits), x.masked_fill(~w, 0).view(bits)), (kind, seq)
            assert acc.tolist() == [float(w[counted].sum()), float(p[counted].sum())], (kind, seq)


def test_pattern_operand_pads_with_zeros():
    x = torch.randn(5, 20, generator=torch.Generator().manual_seed(3))
    got = fused.pattern_operand(x.to(DEV), 0.5, 0x38, 32, 32).cpu()
    want = torch.zeros(32, 32, dtype=torch.uint8)
    want[:5, :20] = (x.abs() >= 0.5).to(torch.uint8) * 0x38
    assert torch.equal(got, want)


@pytest.mark.parametrize("name", ["phi3", "opt", "gpt2", "olmoe", "mixtral"])
def test_fused_route_on_every_ffn_family(name):
    """Fused halves (Phi-3, strided views), non-gated MLPs (OPT, GPT-2's Conv1D) and expert rows (OLMoE,
    Mixtral: flat routed rows, some experts with few or no tokens) give the torch route's logits."""
    from apc.common.sites import ffn_sites, model_family, prepare_for_sites
    from tiny_families import VOCAB, tiny_model

    model = prepare_for_sites(tiny_model(name)).to(DEV)
    windows = torch.randint(3, VOCAB, (2, 10), generator=torch.Generator().manual_seed(1))
    windows[:, 0] = 1
    windows = windows.to(DEV)
    sites = ffn_sites(model)
    widths = {p: sites[0].width(p) for p in model_family(model).projections}
    n = len(sites)
    g = torch.Generator().manual_seed(4)
    kw = {"projections": list(widths), "thresholds": {p: [0.02] * n for p in widths}}
    cases = {"sparse": {}, "centroid": {"centroids": {p: torch.rand(1, 5, w, generator=g) < 0.5 for p, w in widths.items()}},
             "random_only": {"random_density": {p: 0.5 for p in widths}, "seed": 2}}
    for mode, extra in cases.items():
        ref = _run(model, windows, mode, False, (), **kw, **extra)
        got = _run(model, windows, mode, True, (), **kw, **extra)
        assert torch.equal(got[0], ref[0]), mode
        assert got[1:] == ref[1:], mode
