# The compute-quality frontier (apc.common.frontier): one perplexity job per line (one model load,
# one file per kept share), the frontier table; the frontier plot is drawn by the plots rule.


rule frontier_line:
    input:
        unpack(frontier_line_inputs),
    output:
        [L.frontier_point("{pset}", "{line}", share) for share in C["frontier"]["kept_shares"]],
    params:
        test_tokens=C["frontier"]["test_tokens"],
        projections=lambda wc: frontier_psets(C)[wc.pset],
        shares=C["frontier"]["kept_shares"],
        cells=frontier_line_cells,
        seed=C["predict"]["seed"],
        device=C["device"],
        dataset=dataset_name(C["data"]),
    threads: 1
    priority: 20
    log:
        L.log("frontier_line", pset="{pset}", line="{line}"),
    resources:
        **model_job(C["frontier"]["test_tokens"] or ppl_tokens(), passes=len(C["frontier"]["kept_shares"])),
    benchmark:
        L.benchmark("frontier_line", pset="{pset}", line="{line}")
    script:
        "../scripts/frontier_line.py"


rule frontier_table:
    input:
        points=FILES.frontier,
        refs=FILES.frontier_refs,
        reports=FILES.predictor_reports,
    output:
        report(L.frontier_table(), caption="../report/frontier.rst", category="Frontier"),
    log:
        L.log("frontier_table"),
    resources:
        **cpu_job(),
    benchmark:
        L.benchmark("frontier_table")
    script:
        "../scripts/frontier_table.py"
