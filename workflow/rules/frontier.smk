# The compute-quality frontier (apc.common.frontier): one perplexity job per point, the
# frontier table; the frontier plot is drawn by the plots rule.


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
    resources:
        **model_job(C["frontier"]["test_tokens"] or ppl_tokens()),
    benchmark:
        L.benchmark("frontier_point", pset="{pset}", line="{line}", share="{share}")
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
    resources:
        **cpu_job(),
    benchmark:
        L.benchmark("frontier_table")
    script:
        "../scripts/frontier_table.py"
