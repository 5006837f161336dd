"""The interface of a frontier line: one class per method, one module per class (:mod:`apc.lines`).

A *line* is a method of choosing the FFN's keep mask at a kept share.  Its class declares, once:

* ``family`` and ``pattern``: the registry key and the regex of its line strings (named groups become
  the spec's parameters, e.g. ``teal-block`` gives ``allocation="block"``);
* ``decided_by``: what the mask needs before it is decided (``before`` the FFN, the ``gate``, ``down_in``
  itself or the ``input``): the FLOPs accounting of :mod:`apc.perplexity.accounting` reads it;
* ``scope``: ``token`` (one mask per token), ``sequence`` (one per sequence) or ``static`` (one for all),
  which the batch view follows;
* ``deployable``: False for upper bounds (oracle masks, oracle routers), which verdicts never call best;
* ``config`` / ``config_schema``: its fragment under ``frontier.lines.<family>`` and its JSON schema;
* ``calibrate(mlps, samples, shares, settings)``: arrays from train FFN inputs (one job, one file);
* ``masks(spec, share, ...)`` and the rule methods (:class:`MaskRule`): the keep mask for a share, for
  the torch route and the fused route;
* ``overhead_share``: FLOPs it spends beyond the masked products (a rotation, a low-rank part, a bias);
* ``compute_scope``: the layers its compute share is measured over, ``ffn`` (the FFN's products) or ``model``
  (every linear layer of the blocks, the attention projections too, whose inputs ``attention_masks`` masks);
* ``style`` and ``label()``: how plots and tables show it; ``decode``: optionally its decode FFN binding.

The code that uses a line never branches on its name: it asks the registry (:func:`apc.lines.get_line`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

if TYPE_CHECKING:
    import torch

__all__ = ["DECIDED_BY", "SCOPES", "Line", "LineSpec", "MaskRule", "WorkflowInputs", "registered"]

#: what a line's mask needs before it is decided (:mod:`apc.perplexity.accounting`)
DECIDED_BY = ("before", "gate", "down_in", "input")
#: how many masks a line has: per token, per sequence, or one for every token
SCOPES = ("token", "sequence", "static")

_INTS = ("k", "seed", "top_m", "factor", "n", "rank")

#: ``{family: line}``, filled by :func:`apc.lines.register_line`; ``_LOADERS`` import the lines on first use
_LINES: dict = {}
_LOADERS: list = []


def registered() -> dict:
    """``{family: line}`` of every registered line, in plot order (``Line.order``, then the family)."""
    while _LOADERS:
        _LOADERS.pop()()
    return dict(sorted(_LINES.items(), key=lambda kv: (kv[1].order, kv[0])))


@dataclass(frozen=True)
class LineSpec:
    """One line string parsed by its line's pattern: ``line``, ``family`` and ``params`` (the pattern's
    named groups; integers where the name says so).  Parameters read as attributes (``spec.allocation``);
    a parameter the line does not have reads as None."""

    line: str
    family: str
    params: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, line: str) -> "LineSpec":
        """The spec of a line string; ``ValueError`` naming the known families for an unknown one."""
        for impl in registered().values():
            spec = impl.parse(line)
            if spec is not None:
                return spec
        raise ValueError(f"not a frontier line: {line!r} (families: {', '.join(registered())})")

    def __getattr__(self, name: str):
        if name.startswith("_") or name in ("line", "family", "params"):
            raise AttributeError(name)
        return self.params.get(name)

    @property
    def impl(self) -> "Line":
        """The line object of this spec's family."""
        lines = registered()
        if self.family not in lines:
            raise KeyError(f"no line family {self.family!r}; registered: {', '.join(lines)}")
        return lines[self.family]

    @property
    def mode(self) -> str:
        return self.impl.mode

    @property
    def decided_by(self) -> str:
        return self.impl.decided_by

    @property
    def is_cluster(self) -> bool:
        """Whether the line reads a clustering cell (its parameters name a scope)."""
        return self.params.get("scope") is not None

    def fields(self) -> dict:
        """``{"family", "mode", **params}``."""
        return {"family": self.family, "mode": self.mode, **dict(self.params)}


@dataclass
class WorkflowInputs:
    """What the workflow gives a line to find its input files: the layout ``L`` (:class:`apc.common.layout.Layout`),
    the resolved ``config``, and the clustering cell of a cluster line's spec per projection and share."""

    layout: Any
    config: dict


class MaskRule:
    """The keep mask of one line in one (layer, projection), built by :meth:`Line.rule`.

    ``keep(flat, p, absx)``: ``flat: (N, W)`` the hooked tensor's rows, ``p: (N, W)`` bool its pattern
    ``|x| >= T``, ``absx: (N, W)`` float32 ``|x|`` -> ``(N, W)`` bool (the torch route).  ``spec(flat, threshold)``
    gives :func:`apc.perplexity.fused.mask_rows`'s arguments for the same mask (the fused route): ``{"kind":
    "keep", "keep": mask}`` by default, ``{"kind": "at_least", "keep_threshold": t}`` for ``|x| >= t``, or
    ``{"kind": "top_n", "score": (N, W) float32, "k": k}`` for the k highest scores per row.  ``ids`` (``(N, m)`` int64 assigned centroid ids) and ``density`` (``(K,)``) feed the batch view
    of cluster lines; ``taps[layer]`` holds what the line reads before deciding (``Line.tap``)."""

    ids = None
    density = None
    k_neuron = None

    def keep(self, flat: torch.Tensor, p: torch.Tensor, absx: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def spec(self, flat: torch.Tensor, threshold: float) -> dict:
        absx = flat.abs().float()
        return {"kind": "keep", "keep": self.keep(flat, absx >= threshold, absx)}


class Line:
    """Base class of a frontier line (module docstring).  Subclass it in ``src/apc/lines/<name>.py`` and
    decorate it with :func:`apc.lines.register_line`; an installed package registers through the
    ``apc.lines`` entry-point group instead."""

    family: ClassVar[str] = ""
    pattern: ClassVar[str] = ""
    #: plot and table order among the lines (lower first)
    order: ClassVar[float] = 100.0
    #: the ``mode`` recorded with the line's points (the perplexity mode it runs)
    mode: ClassVar[str] = ""
    decided_by: ClassVar[str] = "before"
    scope: ClassVar[str] = "token"
    deployable: ClassVar[bool] = True
    #: masks ``down_in`` of a Llama-style gated FFN only (the config check refuses other FFNs)
    gated: ClassVar[bool] = False
    #: a training-free line, put on the frontier by ``frontier.lines`` (cluster, predictor and expert lines
    #: come from the cells of the config instead)
    training_free: ClassVar[bool] = True
    #: defaults of ``frontier.lines.<family>`` and the JSON schema of each key
    config: ClassVar[Mapping[str, Any]] = {}
    config_schema: ClassVar[Mapping[str, Any]] = {}
    #: keys of that fragment that only choose which line strings the family puts on the frontier (a spec carries
    #: its own choice): left out of each line's settings, so that adding a line of the family reruns no other
    naming_keys: ClassVar[tuple[str, ...]] = ()
    #: whether :meth:`calibrate` runs (one calibration job per line)
    calibrates: ClassVar[bool] = False
    #: scored by a frontier job of its own rather than the shared ``frontier_line`` rule
    own_job: ClassVar[bool] = False
    #: (line style, marker, colour) on every plot: one colour and one marker per family (upper bounds are drawn
    #: dashed and hollow in the colour of the family they bound, ``bounds``)
    style: ClassVar[tuple] = ("-", "o", "#333333")
    bounds: ClassVar[str | None] = None
    #: the masked-FFN kernel of :mod:`apc.deploy` that serves it (per-token tables) and its decode-table line
    kernel: ClassVar[str | None] = None
    decode: ClassVar[str | None] = None
    #: what the rule reads before deciding, per layer: None, ``"gate"`` (the gate's activation) or
    #: ``"ffn_input"`` (the MLP input)
    tap: ClassVar[str | None] = None

    # --- names -------------------------------------------------------------------------------------------
    def regex(self) -> re.Pattern:
        return re.compile(self.pattern)

    def parse(self, line: str) -> LineSpec | None:
        m = self.regex().fullmatch(line)
        if m is None:
            return None
        params = {k: (int(v) if k in _INTS and v is not None else v) for k, v in m.groupdict().items()}
        return LineSpec(line=line, family=self.family, params=self.normalise(params))

    def normalise(self, params: dict) -> dict:
        """The parameters of a parsed line string (defaults filled in)."""
        return params

    def is_deployable(self, spec: LineSpec) -> bool:
        """Whether the line's masks can be had at inference (False: an upper bound)."""
        return bool(self.deployable)

    def decode_line(self, spec: LineSpec) -> str | None:
        """The line of a decode table (:mod:`apc.deploy.decode_table`) that times this spec (None: none)."""
        return self.decode

    def label(self, spec: LineSpec) -> str:
        """A short human label for legends and tables."""
        return spec.line

    # --- configuration -----------------------------------------------------------------------------------
    def line_names(self, settings: Mapping[str, Any], config: dict, *, projections: Sequence[str] = ()) -> list[str]:
        """The line strings this family puts on a projection set ``projections`` of the frontier of ``config`` with
        ``settings`` (its ``frontier.lines`` fragment; a line of the cells reads the config's cells instead)."""
        return [self.family]

    def check(self, settings: Mapping[str, Any], config: dict) -> None:
        """Raise :class:`apc.common.errors.ConfigError` for settings this line cannot run with."""

    def shares(self, spec: LineSpec, kept_shares: Sequence[float]) -> list[float]:
        """The kept shares of the line's points (the frontier's; a line may place itself at other ones)."""
        return [float(s) for s in kept_shares]

    # --- calibration -------------------------------------------------------------------------------------
    def calibrate(self, mlps: Sequence, samples: Sequence[torch.Tensor], shares: Sequence[float],
                  settings: Mapping[str, Any], *, lines: Sequence[LineSpec] = ()) -> dict:
        """Arrays of the line from ``samples[l]: (n, d_model)`` train FFN inputs of each layer and the gated MLPs
        ``mlps`` (:class:`apc.perplexity.calibrate.LayerMLP`): a JSON-able dict, keyed by share label where it
        depends on the share.  ``lines``: the specs of this family on the frontier.  A line whose
        :meth:`calibration_needs` names ``"attention"`` is also given ``attention``: per layer ``(qkv input
        (n, d_model), o input (n, d_q))`` of train tokens (:func:`apc.perplexity.attention_masks.attention_inputs`)."""
        return {}

    def calibration_needs(self, spec: LineSpec) -> tuple[str, ...]:
        """What :meth:`calibrate` needs beyond the train FFN inputs: ``()`` or ``("attention",)``."""
        return ()

    # --- the masks ---------------------------------------------------------------------------------------
    def workflow_inputs(self, spec: LineSpec, ctx: WorkflowInputs, *, projections: Sequence[str] = (),
                        shares: Sequence[float] = ()) -> dict:
        """Extra input files of the line's frontier job on ``projections`` at ``shares``: ``{name: path}`` (besides
        the model, tokens, thresholds, the dense reference and the line's calibration); :meth:`arrays` reads them."""
        return {}

    def share_arrays(self, spec: LineSpec, share: float, *, projections: Sequence[str]) -> dict:
        """The :class:`apc.perplexity.maskargs.Masks` fields that follow from the share alone (no file), e.g. a
        random mask's density; merged over :meth:`arrays`."""
        return {}

    def arrays(self, spec: LineSpec, share: float, *, projections: Sequence[str], calibration: dict | None, model,
               windows, settings, inputs, j: int = 0) -> dict:
        """The :class:`apc.perplexity.maskargs.Masks` fields of the line at ``share``, the ``j``-th of its shares
        (besides the mode, the projections, the thresholds and the seed), from ``calibration`` (what
        :meth:`calibrate` wrote), ``settings`` (its ``frontier.lines`` fragment), ``windows: (n, seq_len)`` and
        ``inputs`` (the job's files by name, :meth:`workflow_inputs`): the line's own arrays (read by its rules,
        :attr:`Masks.arrays`) and any of the built-in fields."""
        return {}

    def prepare(self, masks, layers, width: Mapping[str, int], model) -> Any:
        """Validate ``masks.arrays`` against the model once (one clear error naming the argument) and move them
        to each layer's device; returns the state :meth:`rule` reads."""
        return None

    def rule(self, state, layer: int, proj: str, taps: dict, *, fused: bool) -> MaskRule:
        """The :class:`MaskRule` of ``proj`` in layer ``layer``."""
        raise NotImplementedError(f"line {self.family!r} has no mask rule")

    def input_mask(self, state, layer: int):
        """``h -> (h masked, keep)`` on the MLP input of layer ``layer`` (lines decided by the input), or None."""
        return None

    def attention_masks(self, state, layer: int):
        """``(qkv keep_in, o keep_in)`` on the attention inputs of layer ``layer`` (each ``h -> (h masked, keep)``
        or None; :mod:`apc.perplexity.attention_masks`), or None: lines of ``model`` compute scope."""
        return None

    def extra_hooks(self, state, layers, handle) -> list:
        """Hooks beyond the mask (e.g. a low-rank part of a product): a list of removable handles."""
        return []

    def sequence_keep(self, state, x: torch.Tensor, start: int, layer: int = 0) -> torch.Tensor:
        """Lines of ``sequence`` scope: the keep mask of ``x: (..., seq, W)`` in layer ``layer`` (its prompt
        positions all True).  A call of the prompt alone (a prefill) and later one-position calls (decoding with
        a KV cache) may come instead of one whole sequence."""
        raise NotImplementedError

    def dense_positions(self, state) -> int:
        """Positions of each sequence that run dense and are not scored (a sequence line's prompt); 0 otherwise."""
        return 0

    # --- the FLOPs -----------------------------------------------------------------------------------------
    def overhead_share(self, spec: LineSpec, model, masks=None) -> float:
        """FLOPs per token spent beyond the masked products, as a share of the gated FFN's (0 by default)."""
        return 0.0

    def compute_scope(self, spec: LineSpec) -> str:
        """``"ffn"``: the compute share is the FFN's; ``"model"``: over every linear layer of the blocks (the
        attention projections, masked by :meth:`attention_masks`, and the FFN; :func:`apc.perplexity.accounting.
        model_share`)."""
        return "ffn"
