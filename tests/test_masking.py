import pytest
import torch
import torch.nn.functional as F
import transformers

from apc.common.families import family_named
from apc.common.projections import mlp_projections
from apc.perplexity.masking import install_interventions, nearest_centroid

PROJECTIONS = tuple(family_named("gated").projections)  # the Llama-style names
N_LAYERS = 3
WIDTH = {"gate": 44, "up": 44, "down": 32, "down_in": 44}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=44,
                                   num_hidden_layers=N_LAYERS, num_attention_heads=4, num_key_value_heads=2)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def windows():
    w = torch.randint(2, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    w[:, 0] = 1
    return w


def _logits(model, windows):
    with torch.inference_mode():
        return model(windows).logits


class Capture:
    """Record (input, output) of every projection: out[proj][layer] -> list of (B,S,W) tensors per call."""

    def __init__(self, model):
        self.x = {p: [[] for _ in range(N_LAYERS)] for p in PROJECTIONS}
        self.inp = {p: [[] for _ in range(N_LAYERS)] for p in PROJECTIONS}
        self.handles = []
        for l, mods in enumerate(mlp_projections(model)):
            for p in ("gate", "up", "down"):
                self.handles.append(mods[p].register_forward_hook(self._out(p, l)))
            self.handles.append(mods["down"].register_forward_pre_hook(self._pre(l)))

    def _out(self, p, l):
        def hook(m, args, out):
            self.inp[p][l].append(args[0].detach().clone())
            self.x[p][l].append(out.detach().clone())
        return hook

    def _pre(self, l):
        def hook(m, args):
            self.x["down_in"][l].append(args[0].detach().clone())
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def _median_thresholds(model, windows):
    cap = Capture(model)
    _logits(model, windows)
    cap.remove()
    return {p: [cap.x[p][l][0][:, 1:].abs().flatten().median().item() for l in range(N_LAYERS)] for p in PROJECTIONS}


@pytest.fixture(scope="module")
def thresholds(model, windows):
    return _median_thresholds(model, windows)


def _half_centroids(width, k=4, n_sets=1, seed=0):
    """(n_sets, k, width) bool, each row with exactly width // 2 ones."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(n_sets, k, width, generator=g)
    idx = noise.topk(width // 2, dim=-1).indices
    return torch.zeros(n_sets, k, width, dtype=torch.bool).scatter_(-1, idx, True)


def _hand_stats(model, windows, thresholds, skip):
    """Counted by hand from a dense pass: per projection, (active count, elements) over the
    intervened positions of all layers -- position 0 left out when ``skip``."""
    cap = Capture(model)
    _logits(model, windows)
    cap.remove()
    out = {}
    for p in PROJECTIONS:
        xs = [cap.x[p][l][0][:, 1:] if skip else cap.x[p][l][0] for l in range(N_LAYERS)]
        active = sum(int((x.abs() >= thresholds[p][l]).sum()) for l, x in enumerate(xs))
        out[p] = (active, sum(x.numel() for x in xs))
    return out


def test_dense_installs_nothing(model, windows):
    dense = _logits(model, windows)
    with install_interventions(model, "dense", projections=list(PROJECTIONS), skip_first_position=True) as h:
        out = _logits(model, windows)
    assert torch.equal(out, dense)
    assert h.calls == {p: 0 for p in PROJECTIONS}
    assert all(s["elements"] == 0 for s in h.stats().values())  # nothing intervened, nothing counted
    assert h.kept_fraction() == {p: 1.0 for p in PROJECTIONS}  # the documented convention for dense


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("n_sets", [1, N_LAYERS])
def test_all_ones_centroid_only_is_dense(model, windows, thresholds, n_sets, skip):
    dense = _logits(model, windows)
    hand = _hand_stats(model, windows, thresholds, skip)
    cents = {p: torch.ones(n_sets, 3, WIDTH[p], dtype=torch.bool) for p in PROJECTIONS}
    with install_interventions(model, "centroid_only", projections=list(PROJECTIONS), thresholds=thresholds,
                               centroids=cents, skip_first_position=skip) as h:
        out = _logits(model, windows)
    assert torch.equal(out, dense)
    assert h.calls == {p: N_LAYERS for p in PROJECTIONS}
    positions = 2 * (11 if skip else 12)
    for p, s in h.stats().items():
        active, elements = hand[p]
        assert elements == N_LAYERS * positions * WIDTH[p]
        assert s["elements"] == elements  # counted over the intervened positions, BOS left out when skipped
        assert s["kept_fraction"] == 1.0  # every neuron of every counted position kept
        assert s["active_fraction"] == pytest.approx(active / elements, abs=1e-12)
        assert 0.3 < s["active_fraction"] < 0.7  # median thresholds: a real share, not 0 or 1


@pytest.mark.parametrize("skip", [False, True])
def test_zero_thresholds_sparse_is_dense(model, windows, skip):
    dense = _logits(model, windows)
    zero = {p: [0.0] * N_LAYERS for p in PROJECTIONS}
    with install_interventions(model, "sparse", projections=list(PROJECTIONS), thresholds=zero,
                               skip_first_position=skip) as h:
        out = _logits(model, windows)
    assert torch.equal(out, dense)
    hand = _hand_stats(model, windows, zero, skip)
    for p, s in h.stats().items():
        assert (s["kept_fraction"], s["active_fraction"]) == (1.0, 1.0)
        assert s["elements"] == hand[p][1] == N_LAYERS * 2 * (11 if skip else 12) * WIDTH[p]


def test_sparse_changes_logits_and_remove_restores(model, windows, thresholds):
    dense = _logits(model, windows)
    h = install_interventions(model, "sparse", projections=["gate", "up", "down"], thresholds=thresholds,
                              skip_first_position=True)
    masked = _logits(model, windows)
    h.remove()
    assert not torch.allclose(masked, dense)
    assert torch.equal(_logits(model, windows), dense)
    # median thresholds over the intervened positions: kept == active, about half
    for p, s in h.stats().items():
        assert s["kept_fraction"] == s["active_fraction"]
        assert 0.45 < s["kept_fraction"] < 0.6
        assert s["elements"] == N_LAYERS * 2 * 11 * WIDTH[p]


@pytest.mark.parametrize("configured", ["up", "down_in"])
def test_hooks_only_on_configured_modules(model, windows, thresholds, configured):
    dense_cap = Capture(model)
    _logits(model, windows)
    dense_cap.remove()

    h = install_interventions(model, "sparse", projections=[configured], thresholds=thresholds,
                              skip_first_position=False)
    cap = Capture(model)  # registered after: sees the intervened tensors
    _logits(model, windows)
    _logits(model, windows)
    cap.remove()
    h.remove()
    assert h.calls == {configured: 2 * N_LAYERS}

    mods = mlp_projections(model)
    for l in range(N_LAYERS):
        for p in ("gate", "up", "down"):
            x, inp = cap.x[p][l][0], cap.inp[p][l][0]
            with torch.inference_mode():
                recomputed = F.linear(inp, mods[l][p].weight)
            if p == configured:
                assert torch.equal(x, recomputed.masked_fill(recomputed.abs() < thresholds[p][l], 0))
                assert not torch.equal(x, recomputed)
            else:
                assert torch.equal(x, recomputed)  # untouched by any hook
        if configured == "down_in":
            xi = cap.x["down_in"][l][0]
            assert (xi == 0).float().mean() > 0.4  # masked before down_proj saw it
            assert torch.equal(cap.inp["down"][l][0], xi)
    # layer 0's gate sees the same input as in the dense run: identical output
    assert torch.equal(cap.x["gate"][0][0], dense_cap.x["gate"][0][0])


@pytest.mark.parametrize("skip", [False, True])
def test_kept_fraction_exact_for_half_density_centroids(model, windows, thresholds, skip):
    cents = {p: _half_centroids(WIDTH[p], n_sets=N_LAYERS, seed=i) for i, p in enumerate(PROJECTIONS)}
    with install_interventions(model, "centroid_only", projections=list(PROJECTIONS), thresholds=thresholds,
                               centroids=cents, skip_first_position=skip) as h:
        _logits(model, windows)
    assert h.kept_fraction() == {p: 0.5 for p in PROJECTIONS}
    positions = 2 * (11 if skip else 12)
    assert all(s["elements"] == N_LAYERS * positions * WIDTH[p] for p, s in h.stats().items())


def test_random_mode_exact_count_and_reproducible(model, windows, thresholds):
    zero = {p: [0.0] * N_LAYERS for p in PROJECTIONS}
    dens = {"gate": 0.5, "up": 0.25, "down": 0.5, "down_in": 0.75}
    with install_interventions(model, "random", projections=list(PROJECTIONS), thresholds=zero,
                               random_density=dens, seed=3, skip_first_position=True) as h:
        cap = Capture(model)
        a = _logits(model, windows)
        cap.remove()
    kept = h.kept_fraction()
    for p in PROJECTIONS:
        assert kept[p] == round(dens[p] * WIDTH[p]) / WIDTH[p]
    # exactly k non-zeros per token (outputs at masked positions are nonzero a.s.)
    nz = (cap.x["up"][1][0][:, 1:] != 0).sum(-1)
    assert torch.equal(nz, torch.full_like(nz, 11))

    with install_interventions(model, "random", projections=list(PROJECTIONS), thresholds=zero,
                               random_density=dens, seed=3, skip_first_position=True):
        b = _logits(model, windows)
    with install_interventions(model, "random", projections=list(PROJECTIONS), thresholds=zero,
                               random_density=dens, seed=4, skip_first_position=True):
        c = _logits(model, windows)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)

    # with real thresholds the random mask only removes neurons: kept <= active, ~ d * active
    with install_interventions(model, "random", projections=["gate"], thresholds=thresholds,
                               random_density={"gate": 0.5}, skip_first_position=True) as h2:
        _logits(model, windows)
    s = h2.stats()["gate"]
    assert s["kept_fraction"] < s["active_fraction"]
    assert abs(s["kept_fraction"] - 0.5 * s["active_fraction"]) < 0.05


@pytest.mark.parametrize("mode", ["sparse", "centroid", "centroid_only", "random"])
def test_skip_first_position_keeps_position0_dense(model, windows, thresholds, mode):
    dense_cap = Capture(model)
    dense = _logits(model, windows)
    dense_cap.remove()
    cents = {p: _half_centroids(WIDTH[p]) for p in PROJECTIONS}
    h = install_interventions(model, mode, projections=list(PROJECTIONS), thresholds=thresholds, centroids=cents,
                              random_density={p: 0.5 for p in PROJECTIONS}, skip_first_position=True)
    cap = Capture(model)
    out = _logits(model, windows)
    cap.remove()
    h.remove()
    assert torch.equal(out[:, 0], dense[:, 0])
    assert not torch.allclose(out[:, 1:], dense[:, 1:])
    for p in PROJECTIONS:
        for l in range(N_LAYERS):
            assert torch.equal(cap.x[p][l][0][:, 0], dense_cap.x[p][l][0][:, 0])


def test_nearest_centroid_matches_brute_force(model, windows, thresholds):
    cap = Capture(model)
    _logits(model, windows)
    cap.remove()
    x = cap.x["gate"][1][0].reshape(-1, 44)
    p = x.abs() >= thresholds["gate"][1]
    g = torch.Generator().manual_seed(5)
    c = torch.rand(16, 44, generator=g) < 0.6
    c[7] = c[2]  # an exact tie: the lower index must win
    c[9] = c[11]
    brute = (p[:, None, :] & ~c[None]).sum(-1).argmin(dim=1)  # argmin returns the first minimum
    got = nearest_centroid(p.float(), c.float())
    assert torch.equal(got, brute)
    assert not torch.isin(got, torch.tensor([7, 11])).any()
    assert got.unique().numel() > 1


@pytest.mark.parametrize("n_sets", [1, N_LAYERS])
def test_centroid_hook_applies_oracle_nearest(model, windows, thresholds, n_sets):
    g = torch.Generator().manual_seed(6)
    cents = {p: torch.rand(n_sets, 8, WIDTH[p], generator=g) < 0.6 for p in PROJECTIONS}
    raw = Capture(model)  # before install: sees raw tensors
    h = install_interventions(model, "centroid", projections=["gate", "down_in"], thresholds=thresholds,
                              centroids=cents, skip_first_position=False)
    post = Capture(model)  # after install: sees masked tensors
    _logits(model, windows)
    raw.remove(), post.remove(), h.remove()
    kept = {"gate": 0, "down_in": 0}
    total = 0
    for p in ("gate", "down_in"):
        for l in range(N_LAYERS):
            x = raw.x[p][l][0]
            pat = x.abs() >= thresholds[p][l]
            c = cents[p][l if n_sets == N_LAYERS else 0]
            a = (pat.reshape(-1, 44)[:, None, :] & ~c[None]).sum(-1).argmin(dim=1)
            keep = (pat.reshape(-1, 44) & c[a]).view_as(x)
            assert torch.equal(post.x[p][l][0], x.masked_fill(~keep, 0))
            kept[p] += int(keep.sum())
        total = N_LAYERS * x.numel()
    for p in ("gate", "down_in"):
        assert h.kept_fraction()[p] == pytest.approx(kept[p] / total, abs=1e-12)


def test_validation_errors(model, thresholds):
    good = {"gate": torch.ones(1, 2, 44, dtype=torch.bool)}
    with pytest.raises(ValueError, match=r"'gate'.*expected 44, got 40.*another model or width"):
        install_interventions(model, "centroid", projections=["gate"], thresholds=thresholds,
                              centroids={"gate": torch.ones(1, 2, 40, dtype=torch.bool)}, skip_first_position=True)
    with pytest.raises(ValueError, match="L=2"):
        install_interventions(model, "centroid", projections=["gate"], thresholds=thresholds,
                              centroids={"gate": torch.ones(2, 2, 44, dtype=torch.bool)}, skip_first_position=True)
    with pytest.raises(ValueError, match="needs thresholds for projection 'gate'"):
        install_interventions(model, "centroid", projections=["gate"], centroids=good, skip_first_position=True)
    with pytest.raises(ValueError, match="needs thresholds"):
        install_interventions(model, "sparse", projections=["up"], thresholds={"gate": [0.0] * 3},
                              skip_first_position=True)
    with pytest.raises(ValueError, match="one per layer"):
        install_interventions(model, "sparse", projections=["gate"], thresholds={"gate": [0.0] * 2},
                              skip_first_position=True)
    with pytest.raises(ValueError, match="need centroids for projection .up."):
        install_interventions(model, "centroid_only", projections=["up"], thresholds=thresholds, centroids=good,
                              skip_first_position=True)
    with pytest.raises(ValueError, match="random_density"):
        install_interventions(model, "random", projections=["up"], thresholds=thresholds, skip_first_position=True)
    with pytest.raises(ValueError, match="unknown projection"):
        install_interventions(model, "sparse", projections=["gate_proj"], thresholds=thresholds,
                              skip_first_position=True)
    with pytest.raises(ValueError, match="unknown mode"):
        install_interventions(model, "no_such_mode", projections=["gate"], skip_first_position=True)
    with pytest.raises(ValueError, match="binary"):
        install_interventions(model, "centroid", projections=["gate"], thresholds=thresholds,
                              centroids={"gate": torch.full((1, 2, 44), 0.5)}, skip_first_position=True)
    # nothing stays installed after a failed install
    mods = mlp_projections(model)
    assert all(not m[p]._forward_hooks and not m[p]._forward_pre_hooks for m in mods for p in m)
