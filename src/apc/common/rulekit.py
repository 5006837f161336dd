"""Glue for the thin Snakemake rule scripts: logging to the rule's log file, thread setup, the job's model."""

from __future__ import annotations

import atexit
import logging
import os
import sys
import traceback
from pathlib import Path

from apc.common.progress import get_logger


def start(snakemake, name: str) -> logging.Logger:
    """Send ``apc`` log lines to the rule's log file as well as stderr; set torch threads.

    An exception that stops the job is appended to the log file too, traceback and all, so the
    log ends with the same one-line error that reaches the console (:func:`log_uncaught`).
    """
    import torch

    log = get_logger(f"apc.rules.{name}")
    if snakemake.log:
        handler = logging.FileHandler(str(snakemake.log[0]), mode="w")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        logging.getLogger("apc").addHandler(handler)
        log_uncaught(str(snakemake.log[0]), handler)
    atexit.register(_log_cuda_peak, log)
    torch.set_num_threads(max(1, int(snakemake.threads)))
    check_library_source()
    wc = dict(snakemake.wildcards.items()) if hasattr(snakemake.wildcards, "items") else {}
    log.info("rule %s started%s (threads=%d)", name, f" for {wc}" if wc else "", snakemake.threads)
    return log


_FAILED = []


def _log_cuda_peak(log: logging.Logger) -> None:
    """At a successful exit, log the job's peak CUDA memory (``peak CUDA memory allocated: N bytes``),
    read by ``benchmarks/rule_report.py`` for every rule alike."""
    torch = sys.modules.get("torch")
    if _FAILED or torch is None or not torch.cuda.is_initialized():
        return
    n = sum(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count()))
    log.info("peak CUDA memory allocated: %d bytes", n)


def log_uncaught(path: str, handler: logging.Handler | None = None) -> None:
    """Make an uncaught exception also append its traceback to the log file ``path`` (after
    flushing ``handler``), then report it as before: the file's last line is the console's."""
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        _FAILED.append(exc_type)
        try:
            if handler is not None:
                handler.flush()
            with open(path, "a") as f:
                f.write("".join(traceback.format_exception(exc_type, exc, tb)))
        except OSError:
            pass
        previous(exc_type, exc, tb)

    sys.excepthook = hook


def job_model(snakemake):
    """``(manifest, model, tokenizer, device)`` of a model-pass job: ``input.model`` loaded on ``params.device``."""
    from apc.clustering.device import resolve_device
    from apc.common.atomic import read_json
    from apc.extraction.model import load_model

    device = resolve_device(snakemake.params.device)
    manifest = read_json(snakemake.input.model)
    model, tok = load_model(manifest, device=device)
    return manifest, model, tok, device


def dataset_name(data: dict) -> str:
    """A short dataset label for a ``data`` config block."""
    if data["source"] == "huggingface":
        return "/".join(filter(None, [data.get("hf_path"), data.get("hf_name")]))
    if data["source"] == "text":
        return "text:" + ",".join(data["text_files"])
    return data["source"]


def check_library_source() -> Path:
    """The folder ``apc`` was imported from; ``RuntimeError`` unless it is the checkout running the
    workflow (``APC_SRC``, set by the Snakefile), so a job never runs another checkout's code."""
    import apc

    here = Path(apc.__file__).resolve().parent.parent
    want = os.environ.get("APC_SRC")
    if want and here != Path(want).resolve():
        raise RuntimeError(f"this job imported apc from {here}, not from the workflow's checkout {want}; "
                           "check PYTHONPATH")
    return here
