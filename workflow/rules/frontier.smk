# The compute-quality frontier (apc.common.frontier): one perplexity job per point, the
# frontier table; the frontier plot is drawn by the plots rule.


def frontier_point_inputs(wc):
    d = parse_line(wc.line)
    share = float(wc.share)
    ins = {"model": L.manifest(), "tokens": L.tokens("test"), "thresholds": L.thresholds()}
    if d["family"] == "threshold":
        ins["kept"] = L.thresholds_kept()
    for q in frontier_psets(C)[wc.pset]:
        cell = line_cell(wc.line, q, share)
        if cell is not None:
            ins[f"centroids_{q}"] = L.centroids(cell)
        if d["family"] == "predicted":
            ins[f"predictor_{q}"] = L.cluster_predictor(cell, d["kind"])
            ins[f"report_{q}"] = L.cluster_predictor_report(cell, d["kind"])
        elif d["family"] == "neuron":
            match = wc.line[len("neuron-"):]
            ins[f"predictor_{q}"] = L.neuron_predictor(q, match, C["predict"]["seed"])
            ins[f"report_{q}"] = L.neuron_predictor_report(q, match, C["predict"]["seed"])
    return ins


def frontier_point_cells(wc):
    cells = {q: line_cell(wc.line, q, float(wc.share)) for q in frontier_psets(C)[wc.pset]}
    return {q: c.key for q, c in cells.items() if c is not None}


rule frontier_point:
    input:
        unpack(frontier_point_inputs),
    output:
        L.frontier_point("{pset}", "{line}", "{share}"),
    params:
        test_tokens=C["frontier"]["test_tokens"],
        projections=lambda wc: frontier_psets(C)[wc.pset],
        cells=frontier_point_cells,
        seed=C["predict"]["seed"],
        device=C["device"],
        dataset=dataset_name(C["data"]),
    threads: 1
    log:
        L.log("frontier_point", pset="{pset}", line="{line}", share="{share}"),
    script:
        "../scripts/frontier_point.py"


rule frontier_table:
    input:
        points=FILES.frontier,
        refs=FILES.frontier_refs,
        reports=FILES.predictor_reports,
    output:
        report(L.frontier_table(), caption="../report/frontier.rst", category="Frontier"),
    log:
        L.log("frontier_table"),
    script:
        "../scripts/frontier_table.py"
