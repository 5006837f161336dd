# The compute-quality frontier (apc.lines.plan): one perplexity job per line (one model load, one file per kept
# share), the frontier table; the frontier plot is drawn by the plots rule.  One rule body serves every line: a
# rule per group of lines with the same kept shares (CATS and CHESS place themselves at the frontier's compute
# shares), each line's files and arrays asked of its class (apc.lines.Line.workflow_inputs, Line.arrays).


for _i, (_shares, _lines) in enumerate(job_groups(C)):

    rule:
        name:
            "frontier_line" if _i == 0 else f"frontier_line_{_i}"
        input:
            unpack(frontier_line_inputs),
        output:
            [L.frontier_point("{pset}", "{line}", share) for share in _shares],
        params:
            test_tokens=C["frontier"]["test_tokens"],
            scoring=scoring_settings(),
            projections=lambda wc: frontier_psets(C)[wc.pset],
            shares=list(_shares),
            settings=lambda wc: settings_of(C, wc.line),
            cells=frontier_line_cells,
            seed=C["predict"]["seed"],
            batch_sizes=C["frontier"]["batch_sizes"],
            device=C["device"],
            dataset=dataset_name(C["data"]),
        wildcard_constraints:
            line=one_of(_lines),
        threads: 1
        priority: 20
        log:
            L.log("frontier_line", pset="{pset}", line="{line}"),
        resources:
            **model_job(C["frontier"]["test_tokens"] or ppl_tokens(), passes=len(_shares)),
        benchmark:
            L.benchmark("frontier_line", pset="{pset}", line="{line}")
        script:
            "../scripts/frontier_line.py"


rule generation_dense:
    # Dense's greedy continuations of the frontier's prompts: what every point's generation agreement compares with.
    input:
        model=L.manifest(),
        tokens=L.tokens("test"),
    output:
        dense=L.generation_dense(),
        prefill=L.generation_prefill(),
    params:
        test_tokens=C["frontier"]["test_tokens"],
        generation=C["frontier"]["generation"],
        device=C["device"],
    threads: 1
    priority: 48
    log:
        L.log("generation_dense"),
    resources:
        **model_job(C["frontier"]["test_tokens"] or ppl_tokens()),
    benchmark:
        L.benchmark("generation_dense")
    script:
        "../scripts/generation_dense.py"


rule frontier_table:
    input:
        points=FILES.frontier,
        refs=FILES.frontier_refs,
        reports=FILES.predictor_reports,
        **({"time_table": str(Path(workflow.basedir) / C["frontier"]["time_table"]), "model": L.manifest()}
           if C["frontier"]["time_table"] else {}),
    output:
        table=report(L.frontier_table(), caption="../report/frontier.rst", category="Frontier"),
        decision=report(L.frontier_decision(), caption="../report/frontier_decision.rst", category="Frontier"),
        pairs=L.frontier_paired(),
        **({"samples": L.generation_samples()} if C["frontier"]["generation"] else {}),
    log:
        L.log("frontier_table"),
    resources:
        **cpu_job(),
    benchmark:
        L.benchmark("frontier_table")
    script:
        "../scripts/frontier_table.py"
