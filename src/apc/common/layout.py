"""Every artifact path of a results folder, named from its cell.

Rules, rule scripts, summary, plots, tracking and tests all take paths from
here, so a layout change is made once.  Fields may be Snakemake wildcard
strings (``"{proj}"``) as well as values, so rules build their patterns with
the same functions.

A clustering *cell* is ``(proj, scope, method, k, density, seed)``; a perplexity
cell is a projection set ``pset`` masked with the centroids of one
``(scope, method, k, density, seed)`` for each of its projections.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Cell", "Layout", "WILDCARDS", "density_label"]

_KEY_RE = re.compile(r"(?P<proj>[^/]+)/(?P<scope>[^/]+)/(?P<method>.+)-k(?P<k>\d+)-d(?P<density>[0-9.]+)-s(?P<seed>\d+)")


def density_label(density: float | str) -> str:
    """``0.6`` -> ``"0.6"`` (shortest form; wildcard strings pass through)."""
    return density if isinstance(density, str) else f"{float(density):g}"


@dataclass(frozen=True, order=True)
class Cell:
    """One clustering cell of the sweep."""

    proj: str
    scope: str
    method: str
    k: int | str
    density: float | str
    seed: int | str

    @property
    def name(self) -> str:
        """``apc-k32-d0.6-s0``: method, K, centroid density and seed."""
        return f"{self.method}-k{self.k}-d{density_label(self.density)}-s{self.seed}"

    @property
    def key(self) -> str:
        """``gate/per_layer/apc-k32-d0.6-s0``: the cell's identity in file names and MLflow."""
        return f"{self.proj}/{self.scope}/{self.name}"

    @property
    def group(self) -> tuple:
        """``(scope, method, k, density, seed)``: what a perplexity cell shares with its projections' cells."""
        return (self.scope, self.method, self.k, self.density, self.seed)

    @classmethod
    def parse(cls, key: str) -> "Cell":
        """Inverse of :attr:`key`; ``ValueError`` for anything else."""
        m = _KEY_RE.fullmatch(key)
        if not m:
            raise ValueError(f"not a cell key (proj/scope/method-kK-dDENSITY-sSEED): {key!r}")
        return cls(m["proj"], m["scope"], m["method"], int(m["k"]), float(m["density"]), int(m["seed"]))

    @classmethod
    def of(cls, d: dict) -> "Cell":
        """From a mapping with ``proj`` (or ``projection``), ``scope``, ``method``, ``k``, ``density``, ``seed``."""
        return cls(d.get("proj", d.get("projection")), d["scope"], d["method"], int(d["k"]), float(d["density"]),
                   int(d["seed"]))

    def as_dict(self) -> dict:
        return {"proj": self.proj, "scope": self.scope, "method": self.method, "k": self.k,
                "density": self.density, "seed": self.seed}


#: A cell whose fields are the Snakemake wildcards of the rules.
WILDCARDS = Cell("{proj}", "{scope}", "{method}", "{k}", "{density}", "{seed}")


class Layout:
    """Paths under one results folder ``root`` (strings, as Snakemake wants them)."""

    def __init__(self, root: str | Path):
        self.root = str(root).rstrip("/")

    def _p(self, *parts) -> str:
        return "/".join([self.root, *map(str, parts)])

    # -- stage 1: extraction
    def manifest(self) -> str:
        return self._p("model", "manifest.json")

    def down_norms(self) -> str:
        """``(n_layers, d_ff) float32``: the down-projection column norms (``output`` weighting)."""
        return self._p("model", "down_norms.npy")

    def tokens(self, split: str) -> str:
        return self._p("tokens", f"{split}.npy")

    def tokens_meta(self, split: str) -> str:
        return self._p("tokens", f"{split}.json")

    def thresholds(self) -> str:
        return self._p("thresholds.json")

    def threshold_histograms(self) -> str:
        """The calibration pass's |x| histograms (non-empty bins), for other quantiles without a pass."""
        return self._p("thresholds_hist.npz")

    def patterns(self, split: str) -> str:
        """Folder of the split's pattern store (``{proj}/L{layer:02d}.npy`` + ``extract.json``)."""
        return self._p("patterns", split)

    def extract_summary(self, split: str) -> str:
        return self._p("patterns", split, "extract.json")

    def ffn_inputs(self, split: str) -> str:
        """Folder holding the split's FFN-input store (``{split}/L{layer:02d}.npy`` under :meth:`ffn_root`)."""
        return self._p("ffn_inputs", split)

    def ffn_root(self) -> str:
        """Root of the FFN-input store (:func:`apc.extraction.ffn_inputs.ffn_input_path` takes it)."""
        return self._p("ffn_inputs")

    def thresholds_kept(self) -> str:
        """Magnitude thresholds per kept share (``threshold`` perplexity mode)."""
        return self._p("thresholds_kept.json")

    def generation_dense(self) -> str:
        """Dense's greedy continuations of the frontier's prompts (:mod:`apc.perplexity.generation`)."""
        return self._p("ppl", "generation_dense.json")

    def generation_prefill(self) -> str:
        """Dense's prefill of the same prompts: its KV caches, which every frontier job copies
        (:func:`apc.perplexity.generation.save_prefill`)."""
        return self._p("ppl", "generation_prefill.pt")

    def generation_samples(self) -> str:
        """Three prompts and every frontier point's continuation of them, decoded (the samples page)."""
        return self._p("generation_samples.json")

    def cell_allocation(self) -> str:
        """Per-layer densities of the frontier cells allocated greedily across layers (``calibrate_cell_allocation``)."""
        return self._p("cell_allocation.json")

    def line_calibration(self, line: str) -> str:
        """One frontier line's calibration (:meth:`apc.lines.Line.calibrate`, :mod:`apc.lines.store`)."""
        return self._p("calibration", f"{line}.npz")

    # -- stage 2: clustering
    def cell_dir(self, c: Cell) -> str:
        return self._p("clusters", c.proj, c.scope, c.name)

    def centroids(self, c: Cell) -> str:
        return self.cell_dir(c) + "/centroids.npy"

    def centroids_meta(self, c: Cell) -> str:
        return self.cell_dir(c) + "/centroids.json"

    def cluster_predictor(self, c: Cell, kind: str) -> str:
        """Cluster-id predictors of a cell (``.safetensors`` + ``.json`` sidecar, :mod:`apc.prediction.io`)."""
        return self.cell_dir(c) + f"/predictor-{kind}.safetensors"

    def cluster_predictor_report(self, c: Cell, kind: str) -> str:
        return self.cell_dir(c) + f"/predictor-{kind}-report.json"

    def neuron_predictor(self, proj: str, match: str, seed) -> str:
        """Neuron predictor of ``proj`` whose rank is matched by ``match`` (``linear-k128-x1``)."""
        return self._p("predictors", proj, f"neuron-{match}-s{seed}.safetensors")

    def neuron_predictor_report(self, proj: str, match: str, seed) -> str:
        return self._p("predictors", proj, f"neuron-{match}-s{seed}-report.json")

    # -- stage 3: evaluation
    def experts_dir(self, proj: str, name: str) -> str:
        """Folder of a neuron-experts cell (:class:`apc.common.neuron_experts.ExpertCell` ``name``)."""
        return self._p("experts", proj, name)

    def experts(self, proj: str, name: str) -> str:
        """``(L, width)`` permutations of a neuron-experts cell (sidecar ``experts.json``)."""
        return self.experts_dir(proj, name) + "/experts.npy"

    def experts_router(self, proj: str, name: str) -> str:
        """The learned routers of a neuron-experts cell, one per layer."""
        return self.experts_dir(proj, name) + "/router-learned.safetensors"

    def experts_report(self, proj: str, name: str) -> str:
        """Coverage report of a neuron-experts cell (train and held-out test, every router)."""
        return self.experts_dir(proj, name) + "/report.json"

    def eval_table(self, c: Cell) -> str:
        return self._p("eval", c.proj, c.scope, f"{c.name}.csv")

    # -- stage 4: perplexity
    def ppl_dense(self) -> str:
        return self._p("ppl", "dense.json")

    def ppl_reference(self) -> str:
        """The dense model's next-token log-probabilities on the scored test tokens (the KL's reference)."""
        return self._p("ppl", "dense-reference.npz")

    def ppl_sparse(self, pset: str) -> str:
        return self._p("ppl", f"sparse-{pset}.json")

    def ppl_cell(self, pset: str, c: Cell) -> str:
        """Perplexity of ``pset`` masked with the centroids of ``c``'s group (``c.proj`` is not used)."""
        return self._p("ppl", pset, c.scope, f"{c.name}.json")

    def ppl_batch(self, pset: str, batch: str) -> str:
        """The perplexities of one batch of cells of ``pset``, scored with one model load."""
        return self._p("ppl", pset, "batches", f"{batch}.json")

    def frontier_point(self, pset: str, line: str, share) -> str:
        """One point of the compute-quality frontier (:mod:`apc.common.frontier`)."""
        return self._p("frontier", pset, line, f"{density_label(share)}.json")

    # -- stage 5: results
    def config(self) -> str:
        """The resolved config of the run, as JSON (read by ``apc sync``)."""
        return self._p("config.json")

    def summary(self) -> str:
        return self._p("summary.csv")

    def plots(self) -> str:
        return self._p("plots")

    def frontier_table(self) -> str:
        return self._p("frontier.csv")

    def frontier_decision(self) -> str:
        """Per line, the compute share at which it reaches 1.05x / 1.25x dense perplexity and 0.05 / 0.2 nats KL."""
        return self._p("frontier_decision.csv")

    def frontier_paired(self) -> str:
        """Every pair of frontier lines at each compared compute share: paired differences with intervals."""
        return self._p("frontier_paired.csv")

    def frontier_plot(self, pset: str) -> str:
        """Written by the ``plots`` rule (inside :meth:`plots`)."""
        return self._p("plots", f"frontier_{pset}.png")

    def mlflow_runs(self) -> str:
        return self._p("mlflow_runs.json")

    def log(self, rule: str, c: Cell | None = None, **wildcards) -> str:
        """``logs/{rule}[/{cell key}|-{wildcards}].log``."""
        return self._p("logs", self._job_name(rule, c, wildcards) + ".log")

    def benchmark(self, rule: str, c: Cell | None = None, **wildcards) -> str:
        """``benchmarks/{rule}[/{cell key}|-{wildcards}].tsv``: Snakemake's wall time and peak RSS of the job."""
        return self._p("benchmarks", self._job_name(rule, c, wildcards) + ".tsv")

    @staticmethod
    def _job_name(rule: str, c: Cell | None, wildcards: dict) -> str:
        if c is not None:
            return f"{rule}/{c.key.replace('/', '-')}"
        tail = "-".join(str(v) for v in wildcards.values())
        return f"{rule}{'-' + tail if tail else ''}"
