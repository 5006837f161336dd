"""Command line: ``python -m apc {summary,plots,sync} ...`` on a finished output directory, and
``python -m apc plan`` for the storage plan of a config before a run.

Every command reads the resolved config the workflow wrote (``<outdir>/config.json``) and
works on exactly the files of that config's sweep.  ``summary`` prints the results table,
best cells first (ranked by ``lift`` = recall - random_recall, the coverage gained over a
random mask of the same density, then F1), with the perplexity columns beside them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_OUTDIR = "results/default"
_SHOW = ["projection", "scope", "method", "k", "density", "seed", "lift", "recall", "precision", "f1",
         "centroid_density", "data_density", "compute_share", "random_recall"]


def _no_results(outdir: Path) -> int:
    if not outdir.exists():
        print(f"no results: output directory {outdir} does not exist (run the workflow first)", file=sys.stderr)
    else:
        print(f"no results yet under {outdir}: no evaluation tables (run the workflow first)", file=sys.stderr)
    return 1


def _resolved_config(outdir: Path) -> dict | None:
    """The resolved config the workflow wrote into ``outdir``; None (with a message) if absent."""
    from apc.common.layout import Layout

    path = Path(Layout(outdir).config())
    if not path.exists():
        print(f"no resolved config at {path}: run the workflow on this output directory first "
              "(its resolved_config rule writes it)", file=sys.stderr)
        return None
    return json.loads(path.read_text())


def cmd_summary(args: argparse.Namespace) -> int:
    import pandas as pd

    from apc.results.summary import build_summary

    from apc.results.inputs import sweep_files

    outdir = Path(args.outdir)
    config = _resolved_config(outdir) if outdir.exists() else None
    if config is None:
        return _no_results(outdir) if not outdir.exists() else 1
    f = sweep_files(config)
    exists = lambda paths: [p for p in paths if Path(p).exists()]  # noqa: E731 - a partly finished run
    df = build_summary(exists(f.evals), exists(f.centroid_metas), exists(f.refs), exists(f.ppl))
    if df.empty:
        return _no_results(outdir)
    if args.csv:
        from apc.common.atomic import atomic_path

        with atomic_path(args.csv, ".csv") as tmp:
            df.to_csv(tmp, index=False)
    splits = sorted(df["split"].unique())
    if args.split != "all":
        if args.split not in splits:
            print(f"no rows for split {args.split!r} under {outdir} (splits present: {', '.join(splits)})",
                  file=sys.stderr)
            return 1
        df = df[df["split"] == args.split]
    sort_cols = [c for c in ("lift", "f1") if c in df.columns]
    df = df.sort_values(sort_cols, ascending=False, kind="stable", na_position="last")
    if args.top and args.top > 0:
        df = df.head(args.top)
    if args.all_columns:
        cols = list(df.columns)
    else:
        ppl_cols = [c for c in df.columns if c.startswith("ppl_")]
        cols = [c for c in _SHOW if c in df.columns] + ppl_cols
        if args.split == "all":
            cols.insert(6, "split")
    with pd.option_context("display.width", 250, "display.max_columns", None):
        print(df[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    return 0


def cmd_plots(args: argparse.Namespace) -> int:
    from apc.results.inputs import sweep_files
    from apc.results.plots import make_plots

    outdir = Path(args.outdir)
    if not outdir.exists():
        return _no_results(outdir)
    config = _resolved_config(outdir)
    if config is None:
        return 1
    f = sweep_files(config)
    exists = lambda paths: [p for p in paths if Path(p).exists()]  # noqa: E731 - a partly finished run
    for p in make_plots(args.plot_dir or outdir / "plots", exists(f.evals), exists(f.refs), exists(f.ppl)):
        print(p)
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from apc.results.tracking import TrackingError, default_tracking_uri, git_info, sync_results

    outdir = Path(args.outdir)
    if not outdir.exists():
        return _no_results(outdir)
    config = _resolved_config(outdir)
    if config is None:
        return 1
    mlcfg = config.get("mlflow") or {}
    uri = args.tracking_uri or mlcfg.get("tracking_uri") or default_tracking_uri(outdir.resolve().parent)
    experiment = args.experiment or mlcfg.get("experiment") or "apc"
    try:
        res = sync_results(config, tracking_uri=uri, experiment=experiment,
                           git_info=git_info(Path(__file__).resolve().parent))
    except TrackingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(res))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    import yaml

    from apc.common.errors import ConfigError
    from apc.common.storage import free_bytes, storage_plan
    from apc.lines.plan import resolve_config

    root = Path(args.configfile).resolve().parent
    raw = yaml.safe_load(Path(args.configfile).read_text())
    raw["preset"] = args.preset or raw.get("preset", "default")
    for item in args.set or []:
        key, _, value = item.partition("=")
        raw[key] = yaml.safe_load(value)
    try:
        config = resolve_config(raw, root=root)
    except ConfigError as err:
        print(f"Invalid configuration: {err}", file=sys.stderr)
        return 2
    plan = storage_plan(config, root=root)
    free = free_bytes(config["outdir"])
    print(plan.table(free))
    try:
        plan.check_fits(free)
    except OSError as err:
        print(str(err), file=sys.stderr)
        return 3
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m apc", description="activation pattern clustering: results tools")
    sub = ap.add_subparsers(dest="command", required=True)

    s = sub.add_parser("summary", help="print the results table, best cells (lift, then F1) first")
    s.add_argument("--outdir", default=DEFAULT_OUTDIR, help=f"results directory (default {DEFAULT_OUTDIR})")
    s.add_argument("--split", default="test", help="split to show: train, test or all (default test)")
    s.add_argument("--top", type=int, default=0, help="show only the N best rows (default: all)")
    s.add_argument("--all-columns", action="store_true", help="show every column (kept shares, timings, ...)")
    s.add_argument("--csv", help="also write the full table (all splits, all columns) to this CSV")
    s.set_defaults(func=cmd_summary)

    p = sub.add_parser("plots", help="write PNG plots of a results directory")
    p.add_argument("--outdir", default=DEFAULT_OUTDIR)
    p.add_argument("--plot-dir", help="where to write (default OUTDIR/plots)")
    p.set_defaults(func=cmd_plots)

    y = sub.add_parser("sync", help="upsert the sweep of a results directory into MLflow (one run per cell)")
    y.add_argument("--outdir", default=DEFAULT_OUTDIR)
    y.add_argument("--tracking-uri", help="default: the run's mlflow.tracking_uri, else "
                                          "sqlite:///<parent of outdir>/mlflow.db")
    y.add_argument("--experiment", help="default: the run's mlflow.experiment")
    y.set_defaults(func=cmd_sync)

    g = sub.add_parser("plan", help="print a config's storage plan (every store's GB and the key sizing it) "
                                    "beside the free space; exit 3 if it does not fit")
    g.add_argument("--configfile", default="config.yaml")
    g.add_argument("--preset", help="preset to plan (default: the file's)")
    g.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a config override as YAML, e.g. 'store={patterns: {test: 65536}}' (repeatable)")
    g.set_defaults(func=cmd_plan)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
