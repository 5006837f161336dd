"""Input/output-sparse GEMV and the sparse FFN lines against dense torch references (CPU; CUDA too when present)."""

import pytest
import torch

from apc.deploy import sparse_gemv as sg

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
D, FF = 64, 96  # not multiples of the tile shapes: the edge masks are exercised


def _rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _close(out, ref, dtype):
    if ref.numel() == 0:
        return
    if ref.abs().max() == 0:
        assert out.abs().max() == 0
        return
    assert _rel(out, ref) < (2e-2 if dtype == torch.bfloat16 else 1e-5)


def _dtype(device):
    return torch.bfloat16 if device == "cuda" else torch.float32


def _weights(device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(FF, D, generator=g) / D ** 0.5, torch.randn(FF, D, generator=g) / D ** 0.5,
          torch.randn(D, FF, generator=g) / FF ** 0.5]
    return [w.to(device, dtype) for w in ws]


def _x(t, device, dtype, seed=1):
    return torch.randn(t, D, generator=torch.Generator().manual_seed(seed)).to(device, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("t", [1, 3, 16])
@pytest.mark.parametrize("case", ["random", "all_on", "all_off", "one", "scaled"])
def test_in_sparse_gemv(device, t, case):
    dtype = _dtype(device)
    x = _x(t, device, dtype)
    w_t = torch.randn(D, FF, generator=torch.Generator().manual_seed(2)).to(device, dtype)
    scale = None
    thr = {"random": 0.7, "all_on": None, "all_off": 1e9, "one": None, "scaled": 0.5}[case]
    if case == "one":  # exactly one channel over the threshold, in every token
        x = x.clamp(-0.1, 0.1)
        x[:, 5] = 3.0
        thr = 1.0
    if case == "scaled":
        scale = torch.rand(D, generator=torch.Generator().manual_seed(3)).to(device, torch.float32) * 2
    score = x.double() * (1 if scale is None else scale.double())
    keep = score.abs() > (-1 if thr is None else thr)
    ref = x.double().masked_fill(~keep, 0) @ w_t.double()
    out = sg.in_sparse_gemv(x, w_t, thr, scale)
    assert out.dtype == torch.float32 and out.shape == (t, FF)
    _close(out, ref, dtype)
    # it adds into the accumulator it is given
    acc = torch.ones(t, FF, device=device)
    _close(sg.in_sparse_gemv(x, w_t, thr, scale, acc=acc) - 1, ref, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("t", [1, 4, 16])
@pytest.mark.parametrize("case", ["random", "all_on", "all_off", "one"])
def test_out_sparse_gemv(device, t, case):
    dtype = _dtype(device)
    x = _x(t, device, dtype)
    w = torch.randn(2 * FF, D, generator=torch.Generator().manual_seed(4)).to(device, dtype)
    gen = torch.Generator().manual_seed(5)
    mask = {"random": torch.rand(t, FF, generator=gen) < 0.3, "all_on": torch.ones(t, FF, dtype=torch.bool),
            "all_off": torch.zeros(t, FF, dtype=torch.bool),
            "one": torch.zeros(t, FF, dtype=torch.bool).index_fill_(1, torch.tensor([FF - 1]), True)}[case].to(device)
    union = mask.any(0).repeat(2)
    full = x.double() @ w.double().t()
    out = sg.out_sparse_gemv(x, w, mask)
    _close(out[:, union], full[:, union], dtype)
    assert (out[:, ~union] == 0).all()


def _lines(device):
    dtype = _dtype(device)
    wg, wu, wd = _weights(device, dtype)
    p = sg.prepare_ffn(wg, wu, wd)
    return dtype, (wg, wu, wd), p


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("t", [1, 5, 16])
@pytest.mark.parametrize("thr", [(0.6, 0.05), (-1.0, -1.0), (1e9, 1e9), (0.0, 1e9)])
def test_teal_and_wina_ffn(device, t, thr):
    dtype, (wg, wu, wd), p = _lines(device)
    x = _x(t, device, dtype)
    for scales in (None, sg.wina_scales(p)):
        s_in, s_h = scales if scales else (None, None)
        out = sg.teal_ffn(x, p, thr[0], thr[1], s_in, s_h)
        in_keep = (x.float() * (1 if s_in is None else s_in)).abs() > thr[0]
        xm = x.masked_fill(~in_keep, 0)
        h = torch.nn.functional.silu(xm @ wg.t()) * (xm @ wu.t())
        h_keep = (h.float() * (1 if s_h is None else s_h)).abs() > thr[1]
        ref = sg.reference_ffn(x, wg, wu, wd, in_keep=in_keep, h_keep=h_keep)
        assert out.dtype == dtype and out.shape == (t, D)
        _close(out, ref, dtype)
    # the accumulators are left at zero: a second call gives the same result
    again = sg.teal_ffn(x, p, thr[0], thr[1])
    _close(again, sg.teal_ffn(x, p, thr[0], thr[1]), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("t", [1, 4, 16])
@pytest.mark.parametrize("case", ["random", "all_on", "all_off", "one"])
def test_mask_and_cats_ffn(device, t, case):
    dtype, (wg, wu, wd), p = _lines(device)
    x = _x(t, device, dtype)
    gen = torch.Generator().manual_seed(6)
    mask = {"random": torch.rand(t, FF, generator=gen) < 0.4, "all_on": torch.ones(t, FF, dtype=torch.bool),
            "all_off": torch.zeros(t, FF, dtype=torch.bool),
            "one": torch.zeros(t, FF, dtype=torch.bool).index_fill_(1, torch.tensor([3]), True)}[case].to(device)
    _close(sg.mask_ffn(x, p, mask), sg.reference_ffn(x, wg, wu, wd, h_keep=mask), dtype)
    a = torch.nn.functional.silu(x @ wg.t())
    thr = {"random": float(a.abs().float().median()), "all_on": 0.0, "all_off": 1e9,
           "one": float(a.abs().float().max())}[case]
    keep = a.abs().float() >= thr
    _close(sg.cats_ffn_sparse(x, p, thr), sg.reference_ffn(x, wg, wu, wd, h_keep=keep), dtype)


def test_bad_input_is_named():
    x = torch.randn(2, D)
    with pytest.raises(ValueError, match="must agree"):
        sg.in_sparse_gemv(x, torch.randn(D + 1, 8))
    with pytest.raises(ValueError, match="mask must be a bool"):
        sg.out_sparse_gemv(x, torch.randn(8, D), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="must be \\(F, D\\)"):
        sg.prepare_ffn(torch.randn(FF, D), torch.randn(FF, D), torch.randn(FF, D))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("t", [1, 7])
def test_in_sparse_gemv_several_steps_per_program(device, t, monkeypatch):
    # tiles smaller than the weight, several row steps per program, ragged edges
    monkeypatch.setitem(sg.CONFIG, "in1", (16, 32, 4, 3))
    monkeypatch.setitem(sg.CONFIG, "in16", (16, 32, 4, 3))
    dtype = _dtype(device)
    x = _x(t, device, dtype)
    w_t = torch.randn(D, FF, generator=torch.Generator().manual_seed(7)).to(device, dtype)
    keep = x.double().abs() > 0.5
    _close(sg.in_sparse_gemv(x, w_t, 0.5), x.double().masked_fill(~keep, 0) @ w_t.double(), dtype)
