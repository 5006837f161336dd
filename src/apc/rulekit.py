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
    The torch thread count is set without importing torch: through ``torch.set_num_threads`` where the
    script has imported it, else through ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``, which torch reads when a
    later import loads it.  Jobs that never compute with torch (summary, plots, tracking) so skip its
    import time, a few seconds per job.
    """
    log = get_logger(f"apc.rules.{name}")
    if snakemake.log:
        handler = logging.FileHandler(str(snakemake.log[0]), mode="w")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        logging.getLogger("apc").addHandler(handler)
        log_uncaught(str(snakemake.log[0]), handler)
    atexit.register(_log_peaks, log)
    threads = max(1, int(snakemake.threads))
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
    else:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    check_library_source()
    wc = dict(snakemake.wildcards.items()) if hasattr(snakemake.wildcards, "items") else {}
    log.info("rule %s started%s (threads=%d)", name, f" for {wc}" if wc else "", snakemake.threads)
    device = getattr(getattr(snakemake, "params", None), "device", None)
    if device in ("cuda", "auto"):
        gpu = claim_gpu()
        if gpu is not None:
            import torch

            log.info("running on GPU %d of %d (a free slot of this machine)", gpu, torch.cuda.device_count())
    return log


_CLAIMED: list = []  # the held slot locks of this process (released when it exits)


def claim_gpu(lock_dir: str | os.PathLike | None = None) -> int | None:
    """Make the first GPU that no other job of this machine holds this process's current CUDA device.

    With several visible GPUs, jobs started side by side (``snakemake --resources gpu=N``) would all
    take ``cuda:0``; each instead takes a file lock ``gpu{i}.lock`` in ``lock_dir`` (default: a
    per-user folder of the system's temporary directory, shared by every run on the machine) for the
    first free ``i`` and keeps it until it exits.  Returns the GPU index, or None with fewer than two
    GPUs or when every slot is held (the job then shares the current device)."""
    import tempfile

    import torch
    from filelock import FileLock, Timeout

    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        return None
    folder = Path(lock_dir or Path(tempfile.gettempdir()) / f"apc-gpu-slots-{os.getuid()}")
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(torch.cuda.device_count()):
        lock = FileLock(str(folder / f"gpu{i}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            continue
        _CLAIMED.append(lock)
        torch.cuda.set_device(i)
        return i
    return None


_FAILED = []


def _log_peaks(log: logging.Logger) -> None:
    """At a successful exit, log the job's peak host RSS (``peak host RSS: N bytes``, from getrusage: exact,
    where Snakemake's benchmark samples every 30 s) and peak CUDA memory (``peak CUDA memory allocated:
    N bytes``), read by ``benchmarks/rule_report.py`` for every rule alike."""
    if _FAILED:
        return
    import resource

    log.info("peak host RSS: %d bytes", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
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
    from apc.common.device import resolve_device
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
