"""The interactive frontier: every line of a frontier table in one self-contained HTML file (Plotly, plotly.js
inlined so that it opens offline).

One figure per projection set: ratio to dense perplexity (log y, 95 % interval bars) against the compute share.
Hovering a point shows the line, its kept and compute share, ratio, KL and top-1 agreement with their
intervals, generation agreement with dense (``gen_agree`` [``gen_agree_lo``, ``gen_agree_hi``] and the mean
agreeing prefix ``gen_prefix``; "n/a" in a table without them) and the tokens scored.  The lines a static plot
draws (:func:`apc.results.frontier_lines.pick_lines`) are solid, the rest faint; a button shows only those.
Clicking a legend entry hides a line, a family's title hides the family.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import numpy as np
import pandas as pd

from apc.common.atomic import atomic_path
from apc.common.progress import get_logger
from apc.results.plot_stamp import KEY, PSETS_KEY, html_meta

log = get_logger("apc.results.frontier_html")

#: matplotlib marker -> Plotly symbol
SYMBOLS = {"v": "triangle-down", "D": "diamond", "s": "square", "p": "pentagon", "h": "hexagon", "X": "x",
           "o": "circle", "^": "triangle-up", "P": "cross", "*": "star", "x": "circle-x"}


def _num(row: pd.Series, col: str) -> float:
    v = row.get(col, np.nan)
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _with_interval(row: pd.Series, col: str, fmt: str = ".4g") -> str:
    """``"v [lo, hi]"`` of ``col`` and its bounds; "n/a" for a missing value, "[n/a]" for a missing interval."""
    v, lo, hi = _num(row, col), _num(row, f"{col}_lo"), _num(row, f"{col}_hi")
    if not np.isfinite(v):
        return "n/a"
    iv = f"[{lo:{fmt}}, {hi:{fmt}}]" if np.isfinite(lo) and np.isfinite(hi) else "[n/a]"
    return f"{v:{fmt}} {iv}"


def hover_rows(g: pd.DataFrame) -> list[list[str]]:
    """Per point of one line: ``[line, kept share, compute share, ratio, KL, top-1, generation agreement,
    tokens]`` as the hover text prints them."""
    out = []
    for _, row in g.iterrows():
        prefix = _num(row, "gen_prefix")
        gen = _with_interval(row, "gen_agree", ".3f")
        if gen != "n/a" and np.isfinite(prefix):
            gen += f"; mean agreeing prefix {prefix:.3g} tokens"
        tokens = _num(row, "tokens")
        out.append([str(row["line"]), f"{_num(row, 'share'):g}", f"{_num(row, 'compute_share'):.3f}",
                    _with_interval(row, "ratio"), _with_interval(row, "kl"), _with_interval(row, "top1", ".3f"),
                    gen, f"{tokens:.0f}" if np.isfinite(tokens) else "n/a"])
    return out


HOVER = ("<b>%{customdata[0]}</b><br>kept share %{customdata[1]}, compute share %{customdata[2]}<br>"
         "ratio to dense %{customdata[3]}<br>KL from dense %{customdata[4]} nats<br>top-1 agreement %{customdata[5]}"
         "<br>generation agreement %{customdata[6]}<br>tokens %{customdata[7]}<extra></extra>")


def frontier_figure(rows: pd.DataFrame, pset: str, sparse_ratio: float | None = None):
    """The Plotly figure of one projection set's rows (every line)."""
    import plotly.graph_objects as go

    from apc.results.frontier_lines import Y_CAP, family_order, line_family, line_label, line_style, pick_lines
    from apc.results.paired import deployable

    picked = set(pick_lines(rows))
    order = family_order()
    lines = sorted(dict.fromkeys(rows["line"]), key=lambda ln: (
        order.index(line_family(ln)) if line_family(ln) in order else len(order), not deployable(ln), ln))
    xs = rows["compute_share"].to_numpy(float)
    xmin, xmax = float(np.nanmin(np.r_[xs, 1.0])), float(np.nanmax(np.r_[xs, 1.0]))
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[xmin, xmax], y=[1, 1], mode="lines", name="dense (ratio 1)", legendgroup="reference",
                             legendgrouptitle_text="reference", line={"color": "black", "width": 1.5},
                             hoverinfo="skip"))
    if sparse_ratio is not None and np.isfinite(sparse_ratio):
        fig.add_trace(go.Scatter(x=[xmin, xmax], y=[sparse_ratio] * 2, mode="lines", legendgroup="reference",
                                 name=f"true sparse, needs the full FFN ({sparse_ratio:.4g}x)",
                                 line={"color": "grey", "width": 1, "dash": "dot"}, hoverinfo="skip"))
    seen = set()
    for ln in lines:
        g = rows[(rows["line"] == ln) & np.isfinite(rows["ratio"].to_numpy(float))].sort_values("compute_share")
        if g.empty:
            continue
        fam, st = line_family(ln), line_style(ln)
        y = g["ratio"].to_numpy(float)
        up = np.nan_to_num(g["ratio_hi"].to_numpy(float) - y) if "ratio_hi" in g else np.zeros(len(y))
        down = np.nan_to_num(y - g["ratio_lo"].to_numpy(float)) if "ratio_lo" in g else np.zeros(len(y))
        symbol = SYMBOLS.get(st["marker"], "circle") + ("-open" if st["mfc"] == "white" else "")
        strong = ln in picked
        fig.add_trace(go.Scatter(
            x=g["compute_share"], y=y, mode="lines+markers", name=f"{line_label(ln)} · {ln}", legendgroup=fam,
            legendgrouptitle_text=None if fam in seen else fam, customdata=hover_rows(g), hovertemplate=HOVER,
            error_y={"type": "data", "array": np.clip(up, 0, None), "arrayminus": np.clip(down, 0, None),
                     "thickness": 1, "width": 3},
            marker={"symbol": symbol, "color": st["color"], "size": 9 if strong else 6},
            line={"color": st["color"], "dash": "dash" if st["ls"] == "--" else "solid", "width": 2.2 if strong else 1},
            opacity=1.0 if strong else 0.4, meta="picked" if strong else "other"))
        seen.add(fam)
    n_ref = 2 if sparse_ratio is not None and np.isfinite(sparse_ratio) else 1
    only = [True] * n_ref + [t.meta == "picked" or "legendonly" for t in fig.data[n_ref:]]
    only = [v if v is True else "legendonly" for v in only]
    fig.update_layout(
        title={"text": f"compute-quality frontier: {pset}, every line ({len(lines)}); hover a point for its "
                       f"figures, drag to zoom, double-click to see every point", "y": 0.98},
        xaxis_title="compute share: FFN multiply-adds run + predictor FLOPs, over dense's",
        yaxis={"title": "perplexity / dense's on the same tokens (log; 95 % CI)", "type": "log",
               "range": [np.log10(min(0.97, float(np.nanmin(rows["ratio"])) * 0.97)), np.log10(Y_CAP)]},
        hovermode="closest", height=820, template="plotly_white", margin={"t": 110},
        legend={"groupclick": "toggleitem", "font": {"size": 10}, "tracegroupgap": 6},
        updatemenus=[{"type": "buttons", "direction": "left", "x": 0, "y": 1.02, "xanchor": "left", "yanchor": "bottom",
                      "buttons": [{"label": "every line", "method": "restyle", "args": [{"visible": True}]},
                                  {"label": "static plot's lines", "method": "restyle", "args": [{"visible": only}]}]}])
    return fig


def write_frontier_html(path: str | os.PathLike, table: pd.DataFrame, dense: dict | None = None,
                        sparse: dict | None = None, metadata: dict | None = None) -> Path:
    """Write the interactive frontier of every projection set of ``table`` to ``path`` (one HTML file, plotly.js
    inlined); ``dense``, ``sparse`` (``{pset: result}``): the reference results; ``metadata``: the stamp
    (:func:`apc.results.plot_stamp.png_metadata`) written as ``<meta>`` tags."""
    from plotly.offline import get_plotlyjs

    from apc.results.frontier_lines import PICK_RULE, sparse_ratio

    sparse = sparse or {}
    divs = []
    for pset in sorted(table["pset"].unique()):
        rows = table[table["pset"] == pset]
        fig = frontier_figure(rows, pset, sparse_ratio(rows, dense, sparse.get(pset)))
        divs.append(fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"frontier-{pset}"))
    meta = html_meta(metadata[KEY], metadata[PSETS_KEY].split(",")) if metadata else ""
    note = html.escape(PICK_RULE.replace(" Every line: frontier.html.", ""))
    doc = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n{meta}\n'
           f"<title>compute-quality frontier</title>\n<script>{get_plotlyjs()}</script>\n</head>\n"
           f'<body style="font-family: sans-serif; margin: 1em">\n'
           f"<p>Each line against dense on its own tokens (GRIFFIN: the tokens after its prompt). Solid: the lines "
           f"the static plot draws. {note}</p>\n" + "\n".join(divs) + "\n</body>\n</html>\n")
    path = Path(path)
    with atomic_path(path, ".html") as tmp:
        Path(tmp).write_text(doc)
    log.info("interactive frontier -> %s", path)
    return path
