"""Perplexity batch files: several cells scored with one model load, split into one file per cell.

Plain JSON handling, no torch: the split step starts in a fraction of a second.
"""

from __future__ import annotations

__all__ = ["batch_entry"]


def batch_entry(batch: dict, *, scope: str, method: str, k: int, density: float, seed: int) -> dict:
    """One cell's result out of a batch file's dict (as :func:`score_cells` wrote it), with the
    batch's job-level fields (e.g. ``cuda_max_memory_allocated_bytes``) and ``batch_cells``."""
    want = (scope, method, int(k), float(density), int(seed))
    for cell in batch.get("cells", []):
        if (cell["scope"], cell["method"], int(cell["k"]), float(cell["density"]), int(cell["seed"])) == want:
            job = {key: v for key, v in batch.items() if key.startswith("cuda_")}
            return {**cell, **job, "batch_cells": len(batch["cells"])}
    raise KeyError(f"no cell {want} in this perplexity batch")
