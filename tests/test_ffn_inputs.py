import numpy as np
import pytest
import torch

from apc.extraction.extract import calibrate_thresholds, extract_patterns
from apc.extraction.extract import decoder_body
from apc.extraction.ffn_inputs import (FfnInputCapture, FfnInputReader, FfnInputWriter, extract_ffn_inputs,
                                      ffn_input_path)
from apc.extraction.patterns import PatternReader, pattern_path
from apc.prediction import layer_data


def _windows(n=3, s=12, seed=1):
    w = torch.randint(2, 128, (n, s), generator=torch.Generator().manual_seed(seed))
    w[:, 0] = 1
    return w


def _mlp_inputs(model, windows):
    seen = {}
    hooks = [layer.mlp.register_forward_pre_hook(lambda m, a, i=i: seen.setdefault(i, []).append(a[0].clone()))
             for i, layer in enumerate(model.model.layers)]
    with torch.inference_mode():
        for w in windows:
            model(w[None])
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("skip_first", [True, False])
def test_store_is_the_mlp_input_bit_for_bit_in_float16(tiny_llama, tmp_path, skip_first):
    windows = _windows()
    summary = extract_ffn_inputs(tiny_llama, windows, tmp_path, "test", {"model": "tiny"}, skip_first=skip_first)
    per_window = 11 if skip_first else 12
    assert summary["n_tokens"] == 3 * per_window and summary["n_layers"] == 3 and summary["width"] == 32
    seen = _mlp_inputs(tiny_llama, windows)
    for layer in range(3):
        reader = FfnInputReader(ffn_input_path(tmp_path, "test", layer))
        assert reader.meta["layer"] == layer and reader.meta["split"] == "test" and reader.meta["model"] == "tiny"
        want = torch.cat([x[0, 1:] if skip_first else x[0] for x in seen[layer]]).half().numpy()
        got = reader.rows()
        assert got.dtype == np.float16 and got.shape == (3 * per_window, 32)
        assert np.array_equal(got.view(np.uint16), want.view(np.uint16))
        assert np.array_equal(np.concatenate(list(reader.chunks(5))).view(np.uint16), want.view(np.uint16))
        assert reader.meta["max_abs"] == pytest.approx(float(np.abs(want.astype(np.float32)).max()), rel=1e-3)


def test_rows_align_with_the_pattern_store(tiny_llama, tmp_path):
    windows = _windows(n=2)
    thr = calibrate_thresholds(tiny_llama, windows, ["gate"], 0.5, skip_first=True)
    extract_patterns(tiny_llama, windows, thr, ["gate"], tmp_path / "patterns", "train", {}, skip_first=True)
    extract_ffn_inputs(tiny_llama, windows, tmp_path / "ffn", "train", {}, skip_first=True)
    gate = tiny_llama.model.layers[1].mlp.gate_proj
    x, pats = layer_data(tmp_path / "ffn", tmp_path / "patterns", "train", "gate", 1)
    t = thr["projections"]["gate"][1]["threshold"]
    with torch.no_grad():
        recomputed = gate(torch.from_numpy(x).float()).abs() >= t
    stored = torch.from_numpy(pats.bits())
    # the float16 rounding of the input flips only values right at the threshold
    assert (recomputed == stored).float().mean() > 0.97
    # a shifted pairing would agree only by chance (about half)
    assert (recomputed[1:] == stored[:-1]).float().mean() < 0.8


def test_store_mismatch_and_partial_writes_are_errors(tiny_llama, tmp_path):
    windows = _windows(n=2)
    thr = calibrate_thresholds(tiny_llama, windows, ["gate"], 0.5, skip_first=True)
    extract_patterns(tiny_llama, windows, thr, ["gate"], tmp_path / "patterns", "train", {}, skip_first=True)
    extract_ffn_inputs(tiny_llama, windows[:1], tmp_path / "ffn", "train", {}, skip_first=True)
    with pytest.raises(ValueError, match="11 tokens but .*L00.npy has 22"):
        layer_data(tmp_path / "ffn", tmp_path / "patterns", "train", "gate", 0)
    w = FfnInputWriter(tmp_path / "x" / "L00.npy", 4, 8, {})
    w.append(torch.zeros(3, 8))
    with pytest.raises(ValueError, match="width 5, expected 8"):
        w.append(torch.zeros(1, 5))
    with pytest.raises(ValueError, match="wrote 3 of 4"):
        w.close()
    assert not list((tmp_path / "x").iterdir())
    w = FfnInputWriter(tmp_path / "y" / "L00.npy", 1, 2, {})
    with pytest.raises(ValueError, match="does not fit float16"):
        w.append(torch.tensor([[1e6, 0.0]]))
    w.abort()
    with pytest.raises(FileNotFoundError, match="missing file"):
        FfnInputReader(tmp_path / "y" / "L00.npy")


def test_capture_in_the_pattern_pass_writes_the_same_store(tiny_llama, tmp_path):
    # the workflow captures the FFN inputs in extract_patterns' own pass: the same files, byte for byte
    windows = _windows()
    thr = calibrate_thresholds(tiny_llama, windows, ["gate"], 0.5, skip_first=True)
    extract_ffn_inputs(tiny_llama, windows, tmp_path / "alone", "train", {"model": "tiny"}, skip_first=True,
                       max_tokens=20, sample_seed=3)
    capture = FfnInputCapture(tiny_llama, tmp_path / "shared", "train", {"model": "tiny"}, windows.shape,
                              skip_first=True, max_tokens=20, sample_seed=3)
    with capture:
        extract_patterns(tiny_llama, windows, thr, ["gate"], tmp_path / "patterns", "train", {}, skip_first=True)
    summary = capture.summary(1.0)
    assert summary["n_tokens"] == 20 and summary["n_split_tokens"] == 33 and len(summary["max_abs"]) == 3
    for layer in range(3):
        a, b = (ffn_input_path(tmp_path / d, "train", layer) for d in ("alone", "shared"))
        assert a.read_bytes() == b.read_bytes()
        assert FfnInputReader(a).meta == FfnInputReader(b).meta


def test_a_failed_shared_pass_leaves_no_ffn_input_file(tiny_llama, tmp_path):
    windows = _windows()
    capture = FfnInputCapture(tiny_llama, tmp_path, "train", {}, (2, 12), skip_first=True)  # 3 windows deliver 33 rows
    with pytest.raises(ValueError):
        with capture:
            with torch.inference_mode():
                for w in windows:
                    tiny_llama(w[None])
    assert not list((tmp_path / "train").glob("*.npy"))
    assert not capture._handles


def test_capture_passes_skip_the_lm_head(tiny_llama, tmp_path):
    # the capture passes run the decoder body only; every layer sees the same input as in a full pass
    assert decoder_body(tiny_llama) is tiny_llama.model
    body = torch.nn.Linear(2, 2)
    assert decoder_body(body) is body
    calls = []
    hook = tiny_llama.lm_head.register_forward_hook(lambda *a: calls.append(1))
    try:
        extract_ffn_inputs(tiny_llama, _windows(), tmp_path, "test", {}, skip_first=False)
    finally:
        hook.remove()
    assert calls == []
    seen = _mlp_inputs(tiny_llama, _windows())  # a full pass, head included
    got = FfnInputReader(ffn_input_path(tmp_path, "test", 2)).rows()
    assert np.array_equal(got.view(np.uint16), torch.cat([x[0] for x in seen[2]]).half().numpy().view(np.uint16))
