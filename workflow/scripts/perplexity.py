import time

import torch

from apc.common.atomic import read_json, read_npy, write_json
from apc.clustering import load_centroids
from apc.perplexity.masking import install_interventions
from apc.clustering.device import resolve_device
from apc.extraction.model import load_model
from apc.perplexity.scoring import score_windows
from apc.common.rulekit import dataset_name, start

log = start(snakemake, "perplexity")
p = snakemake.params
device = resolve_device(p.device)
manifest = read_json(snakemake.input.model)
model, tok = load_model(manifest, device=device)
bos = tok.bos_token_id is not None
windows = torch.from_numpy(read_npy(snakemake.input.tokens))
seq_len = windows.shape[1]
if p.ppl["test_tokens"] is not None:
    n = p.ppl["test_tokens"] // seq_len
    if n > len(windows):
        raise ValueError(
            f"config key 'perplexity.test_tokens': {n} windows asked for, the test split has only {len(windows)}"
        )
    windows = windows[:n]
common = {"model": manifest["name"], "dataset": dataset_name(p.data), "seq_len": int(seq_len)}
projections = list(p.projections)
thresholds = None
if projections:
    table = read_json(snakemake.input.thresholds)["projections"]
    thresholds = {q: [r["threshold"] for r in table[q]] for q in projections}


def run(mode, **kw):
    t0 = time.perf_counter()
    with install_interventions(model, mode, projections=projections if mode != "dense" else (),
                               thresholds=thresholds if mode != "dense" else None,
                               skip_first_position=bos, **kw) as handle:
        res = score_windows(model, windows, bos=bos)
    out = {k: res[k] for k in ("ppl", "nll", "tokens", "windows")}
    out["kept"] = handle.kept_fraction() if mode != "dense" else {}
    out["wall_time_s"] = time.perf_counter() - t0
    log.info("%s: ppl %.3f over %d tokens in %d windows; kept %s", mode, out["ppl"], out["tokens"],
             out["windows"], {k: round(v, 4) for k, v in out["kept"].items()})
    return out


if p.mode in ("dense", "sparse"):
    result = {"mode": p.mode, **run(p.mode), **common}
    if p.mode == "sparse":
        result.update(pset=snakemake.wildcards.pset, projections=projections)
else:
    wc = snakemake.wildcards
    centroids, density = {}, {}
    for q in projections:
        bits, meta = load_centroids(snakemake.input[q])
        if meta.get("model") not in (None, manifest["name"]):
            raise ValueError(f"{snakemake.input[q]}: centroids of model {meta.get('model')!r}, not {manifest['name']!r}")
        centroids[q] = torch.from_numpy(bits)
        density[q] = float(bits.mean())
    # The random control matches the density of the masks the cell actually applies: the assigned
    # centroids' density measured in centroid_only mode (run first), which differs from the mean over
    # all K centroids when a method does not cap density (k-means).  Without centroid_only, fall back
    # to the mean density of the centroid sets.
    order = sorted(p.ppl["modes"], key=lambda m: {"centroid_only": 0, "centroid": 1, "random": 2}[m])
    modes, random_density, source = {}, dict(density), "mean over centroids"
    for mode in order:
        modes[mode] = run(mode, centroids=centroids if mode != "random" else None,
                          random_density=random_density if mode == "random" else None, seed=int(wc.seed))
        if mode == "centroid_only":
            random_density, source = dict(modes[mode]["kept"]), "assigned centroids (centroid_only kept share)"
    if "random" in modes:
        modes["random"]["density"], modes["random"]["density_source"] = random_density, source
    result = {"pset": wc.pset, "projections": projections, "method": wc.method, "k": int(wc.k),
              "scope": wc.scope, "seed": int(wc.seed), "centroid_density": density, **common,
              "modes": {m: modes[m] for m in p.ppl["modes"]}}
write_json(snakemake.output[0], result)
