"""The mask spec of a frontier line: its string parsed once into a small typed value.

A line string (:mod:`apc.common.frontier`) names a family and its parameters.  :meth:`LineSpec.parse`
is the one place that decides the family; everything downstream (the rule script, the point's
scoring, the interventions, the FLOPs accounting) reads the fields of the spec.

================  ==================  ===============  ===========================================
family            perplexity mode     mask decided by   calibration (``frontier_calibration.json``)
================  ==================  ===============  ===========================================
``threshold``     ``threshold``       ``down_in``       kept-share thresholds of ``down_in``
``cats``          ``cats``            ``gate``          ``cats``: thresholds on ``|act(gate)|``
``teal``          ``teal``            ``input``         ``teal[allocation]``: input and mid thresholds
``wina``          ``wina``            ``input``         ``wina``: thresholds on ``|x| * column norm``
``larosa``        ``larosa``          ``input``         ``larosa``: one rotation per layer
``griffin``       ``griffin``         ``before``        none (the prompt's own activations)
``random``        ``random_only``     ``before``        none
``oracle``        ``centroid_only``   ``before``        the cell's centroids
``predicted``     ``predicted``       ``before``        centroids and a cluster predictor
``neuron``        ``neuron_predicted`` ``before``       a neuron predictor
``experts``       ``predicted``       ``before``        neuron experts and their router
================  ==================  ===============  ===========================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

__all__ = ["ALLOCATIONS", "LineSpec", "MODE", "DECIDED_BY", "RENAMED_ALLOCATIONS"]

_CELL_RE = r"(?P<scope>per_layer|pooled)\.(?P<method>[A-Za-z0-9_]+)-k(?P<k>\d+)-s(?P<seed>\d+)"
#: TEAL's allocations of its kept shares: one share everywhere, per-layer shares by local error
#: (``layer-greedy``, not TEAL's), or TEAL's own split inside every block at equal block compute
ALLOCATIONS = ("uniform", "layer-greedy", "block")
#: old allocation names and their new ones (a config with the old name fails with the new one)
RENAMED_ALLOCATIONS = {"greedy": "layer-greedy"}
_LINE_RES = {
    "threshold": re.compile(r"threshold-self"),
    "cats": re.compile(r"cats"),
    "teal": re.compile(r"teal(?:-(?P<allocation>layer-greedy|block))?"),
    "wina": re.compile(r"wina"),
    "larosa": re.compile(r"larosa"),
    "griffin": re.compile(r"griffin"),
    "random": re.compile(r"random"),
    "oracle": re.compile(r"oracle\." + _CELL_RE),
    "predicted": re.compile(r"predicted-(?P<kind>[a-z]+)-m(?P<top_m>\d+)\." + _CELL_RE),
    "neuron": re.compile(r"neuron-(?P<kind>[a-z]+)-k(?P<k>\d+)-x(?P<factor>\d+)"),
    "experts": re.compile(r"experts-(?P<router>[a-z]+)\.s(?P<shared>[0-9.]+)-e(?P<n>\d+)"),
}
#: perplexity mode of each line family
MODE = {"threshold": "threshold", "cats": "cats", "teal": "teal", "wina": "wina", "larosa": "larosa",
        "griffin": "griffin", "random": "random_only", "oracle": "centroid_only", "predicted": "predicted",
        "neuron": "neuron_predicted", "experts": "predicted"}
#: what each family's ``down_in`` mask needs before it is decided (:mod:`apc.perplexity.accounting`)
DECIDED_BY = {"threshold": "down_in", "cats": "gate", "teal": "input", "wina": "input", "larosa": "input"}
_CALIBRATION = {"cats": "cats", "teal": "teal", "wina": "wina", "larosa": "larosa"}
_INTS = ("k", "seed", "top_m", "factor", "n")


@dataclass(frozen=True)
class LineSpec:
    """One frontier line, parsed.  ``family`` and ``mode`` always; the other fields where the
    family has them (``None`` otherwise): ``allocation`` (teal), ``kind``/``top_m`` (predicted),
    ``kind``/``k``/``factor`` (neuron), ``scope``/``method``/``k``/``seed`` (cluster lines),
    ``router``/``shared``/``n`` (neuron experts: :mod:`apc.common.neuron_experts`)."""

    line: str
    family: str
    mode: str
    allocation: str | None = None
    kind: str | None = None
    top_m: int | None = None
    scope: str | None = None
    method: str | None = None
    k: int | None = None
    seed: int | None = None
    factor: int | None = None
    router: str | None = None
    shared: str | None = None
    n: int | None = None

    @classmethod
    def parse(cls, line: str) -> "LineSpec":
        """The spec of a line string; ``ValueError`` for an unknown one."""
        for family, rx in _LINE_RES.items():
            m = rx.fullmatch(line)
            if m:
                d = {k: (int(v) if k in _INTS else v) for k, v in m.groupdict().items()}
                if family == "teal":
                    d["allocation"] = d["allocation"] or "uniform"
                return cls(line=line, family=family, mode=MODE[family], **d)
        raise ValueError(f"not a frontier line: {line!r}")

    @property
    def decided_by(self) -> str:
        """``before`` (the FFN), ``gate``, ``down_in`` or ``input`` (:mod:`apc.perplexity.accounting`)."""
        return DECIDED_BY.get(self.family, "before")

    @property
    def calibration(self) -> str | None:
        """The section of the frontier calibration file this line reads (None: none)."""
        return _CALIBRATION.get(self.family)

    @property
    def is_cluster(self) -> bool:
        """Whether the line reads a clustering cell (``oracle``, ``predicted``)."""
        return self.scope is not None

    def fields(self) -> dict:
        """``{"family", "mode", ...}``: the family, mode and the parameters the line string carries."""
        groups = set(_LINE_RES[self.family].groupindex)
        return {"family": self.family, "mode": self.mode,
                **{f.name: getattr(self, f.name) for f in fields(self) if f.name in groups}}
