"""One-pass masking of a hooked tensor (Triton), used by :mod:`apc.perplexity.masking` on CUDA.

The torch route of a masking hook reads and writes the ``(n, width)`` tensor several times
(``|x|`` in float32, the pattern, the mask, the skipped first position, two counts, the masked
copy).  Here one kernel per tensor computes the pattern ``|x| >= T``, the mask of the mode, the
masked output and the (kept, active) counts of the counted rows, from one read of ``x``:

* :func:`mask_rows` -- the mask is the pattern (``sparse``), a second threshold (``threshold``),
  the union of assigned centroids' rows (``centroid``, ``centroid_only``, ``predicted``) or a given
  one-byte mask (every other mode), optionally intersected with the pattern;
* :func:`pattern_operand` -- the pattern as a padded one-byte matrix operand (``0x38`` = e4m3 1.0,
  or int8 1) for the exact oracle assignment product (:class:`apc.clustering.lowp.ExactProduct`);
* :func:`top_n_float` -- the ``n`` highest float32 scores of each row, ties at the n-th value taken
  from the lowest positions: the set :func:`apc.clustering.common.top_n_mask` keeps, without a sort.

Outputs equal the torch route's bit for bit: the comparisons run in float32 with the same
float32 threshold, masked entries become +0.0 (``masked_fill``), kept entries are copied.
:func:`enabled` says where the kernels run: CUDA tensors with Triton importable, and CPU tensors
inside :func:`cpu_interpreter` when Triton interprets (``TRITON_INTERPRET=1``; slow, for tests on
machines without a GPU).
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch

#: Tile of :func:`mask_rows` and :func:`pattern_operand`: (rows, columns) per program.
TILE = (8, 512)
#: Widest row :func:`top_n_float` holds in one program.
TOP_N_MAX_WIDTH = 16384
#: Keys one program of :func:`top_n_float` holds at most (rows per program x padded width).
TOP_N_KEYS = 1 << 15
#: (rows per program, warps) that :func:`top_n_float` chooses among on CUDA.
TOP_N_CONFIGS = ((1, 4), (1, 8), (1, 16), (2, 4), (2, 8), (4, 4), (8, 4))
KINDS = {"pattern": 0, "at_least": 1, "keep": 2, "centroids": 3}


_CPU = {"on": False}


@functools.lru_cache(maxsize=None)
def _kernels():
    """``(triton, kernel module)``, or None where Triton does not import."""
    try:
        import triton

        from apc.perplexity import triton_masks
    except Exception:  # pragma: no cover - depends on the machine
        return None
    return triton, triton_masks


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1`` before it was imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@contextlib.contextmanager
def cpu_interpreter():
    """Within the block, the kernels also run on CPU tensors where Triton interprets them
    (``TRITON_INTERPRET=1``); elsewhere CPU tensors always take the torch route."""
    before = _CPU["on"]
    _CPU["on"] = True
    try:
        yield
    finally:
        _CPU["on"] = before


def enabled(device: torch.device) -> bool:
    """Whether the fused kernels run for tensors on ``device``."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and not interpreting() and _kernels() is not None
    return device.type == "cpu" and _CPU["on"] and interpreting() and _kernels() is not None


@functools.lru_cache(maxsize=None)
def top_n_tuned():
    """The top-n kernel behind Triton's autotuner: the fastest of :data:`TOP_N_CONFIGS` per width."""
    triton, tk = _kernels()

    def prune(configs, named_args, **kwargs):
        block = kwargs.get("BLOCK", named_args.get("BLOCK"))
        kept = [c for c in configs if c.kwargs["ROWS"] * block <= TOP_N_KEYS]
        return kept or configs[:1]

    configs = [triton.Config({"ROWS": r}, num_warps=w) for r, w in TOP_N_CONFIGS]
    return triton.autotune(configs, key=["width"], prune_configs_by={"early_config_prune": prune})(
        tk.top_n_float_kernel)


def _grid(n_rows: int, width: int) -> tuple[int, int]:
    br, bw = TILE
    return (-(-n_rows // br), -(-width // bw))


def mask_rows(x: torch.Tensor, threshold: float, acc: torch.Tensor, *, seq: int = 0, kind: str = "pattern",
              keep_threshold: float = 0.0, keep: torch.Tensor | None = None, centroids: torch.Tensor | None = None,
              ids: torch.Tensor | None = None, and_pattern: bool = False, keep_out: bool = False):
    """Mask the rows of ``x: (n, width)`` (unit column stride) in one pass.

    ``kind``: ``pattern`` (keep = ``|x| >= threshold``), ``at_least`` (``|x| >= keep_threshold``),
    ``keep`` (``keep: (n, width)`` bool) or ``centroids`` (the union of ``centroids: (K, width)`` bool
    rows ``ids: (n, m)`` int64); ``and_pattern`` intersects it with ``|x| >= threshold``.  With
    ``seq > 0`` the rows ``r`` with ``r % seq == 0`` (each sequence's first position) are kept whole and
    not counted.  Adds (kept, active) over the counted rows to ``acc: (2,) float64``.  Returns ``out:
    (n, width)`` (x where kept, else +0.0), and with ``keep_out`` also the mask ``(n, width)`` bool.
    """
    triton, tk = _kernels()
    n, width = x.shape
    if x.stride(1) != 1:
        raise ValueError("mask_rows needs a unit column stride")
    out = torch.empty((n, width), dtype=x.dtype, device=x.device)
    kept = torch.empty((n, width), dtype=torch.bool, device=x.device) if keep_out else out
    dummy = out
    code = KINDS[kind]
    if code == 2 and (keep is None or keep.shape != x.shape):
        raise ValueError(f"kind 'keep' needs a keep mask of shape {tuple(x.shape)}")
    if code == 3 and (centroids is None or ids is None or ids.shape[0] != n or centroids.shape[1] != width):
        raise ValueError("kind 'centroids' needs centroids (K, width) and ids (n, m)")
    keep_arg = keep.contiguous().view(torch.int8) if code == 2 else dummy
    cent_arg = centroids.contiguous().view(torch.int8) if code == 3 else dummy
    ids_arg = ids.contiguous() if code == 3 else dummy
    if n and width:
        tk.mask_kernel[_grid(n, width)](
            x, out, keep_arg, kept.view(torch.int8) if keep_out else dummy, cent_arg, ids_arg, acc,
            n, width, x.stride(0), int(seq), float(threshold), float(keep_threshold),
            N_IDS=int(ids.shape[1]) if code == 3 else 0, KIND=code, AND_P=bool(and_pattern), STORE_KEEP=bool(keep_out), BR=TILE[0], BW=TILE[1], num_warps=4)
    return (out, kept) if keep_out else out


def pattern_operand(x: torch.Tensor, threshold: float, one: int, rows: int, cols: int,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """``(rows, cols)`` uint8: ``one`` where ``|x| >= threshold`` for ``x: (n, width)``, 0 elsewhere
    and in the padding (``rows >= n``, ``cols >= width``).  ``out`` is reused when large enough."""
    triton, tk = _kernels()
    n, width = x.shape
    if out is None or out.shape[0] < rows or out.shape[1] != cols:
        out = torch.empty((rows, cols), dtype=torch.uint8, device=x.device)
    out = out[:rows]
    tk.pattern_kernel[_grid(rows, cols)](x, out, n, width, x.stride(0), rows, cols, float(threshold), int(one),
                                         BR=TILE[0], BW=TILE[1], num_warps=4)
    return out


def top_n_float(score: torch.Tensor, n_keep: int, config: tuple[int, int] | None = None) -> torch.Tensor | None:
    """``(n, width)`` bool keeping the ``n_keep`` highest of float32 ``score: (n, width)`` per row.

    Ties at the n-th value go to the lowest positions, ``-0.0`` equals ``+0.0`` and NaN ranks above
    everything: the set of a stable descending sort (:func:`apc.clustering.common.top_n_mask`).
    None where the kernel does not apply (not float32, rows wider than :data:`TOP_N_MAX_WIDTH`).
    ``config``: (rows per program, warps); by default tuned per width among :data:`TOP_N_CONFIGS`
    on CUDA (Triton's autotuner, on the first call), (1, 4) elsewhere.
    """
    n, width = score.shape
    if score.dtype != torch.float32 or width > TOP_N_MAX_WIDTH or not 0 < n_keep <= width or score.stride(1) != 1:
        return None
    triton, tk = _kernels()
    out = torch.empty((n, width), dtype=torch.bool, device=score.device)
    if n:
        block = triton.next_power_of_2(width)
        args = (score, out.view(torch.int8), n, width, score.stride(0), int(n_keep))
        if config is None and score.is_cuda:  # tuned per width on first use
            top_n_tuned()[lambda meta: (-(-n // meta["ROWS"]),)](*args, BLOCK=block)
        else:
            rows, warps = config or (1, 4)
            rows = 1 << (max(1, min(rows, TOP_N_KEYS // block)).bit_length() - 1)  # a power of two
            tk.top_n_float_kernel[(-(-n // rows),)](*args, ROWS=rows, BLOCK=block, num_warps=warps)
    return out
