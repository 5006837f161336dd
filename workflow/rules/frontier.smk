# The compute-quality frontier (apc.common.frontier): one perplexity job per line (one model load,
# one file per kept share), the frontier table; the frontier plot is drawn by the plots rule.


CATS_SHARES = line_shares(C, "cats")


rule frontier_line:
    input:
        unpack(frontier_line_inputs),
    output:
        [L.frontier_point("{pset}", "{line}", share) for share in C["frontier"]["kept_shares"]],
    params:
        test_tokens=C["frontier"]["test_tokens"],
        scoring=scoring_settings(),
        projections=lambda wc: frontier_psets(C)[wc.pset],
        shares=lambda wc: line_shares(C, wc.line),
        cells=frontier_line_cells,
        seed=C["predict"]["seed"],
        batch_sizes=C["frontier"]["batch_sizes"],
        griffin_prompt=C["frontier"]["griffin_prompt"],
        device=C["device"],
        dataset=dataset_name(C["data"]),
    wildcard_constraints:
        line=r"(?!cats\b)(?!experts-)[A-Za-z0-9_.\-]+",
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


# CATS is placed at the frontier's compute shares: its own kept shares (apc.common.frontier.cats_share).
rule frontier_line_cats:
    input:
        unpack(frontier_line_inputs),
    output:
        [L.frontier_point("{pset}", "{line}", share) for share in CATS_SHARES],
    params:
        test_tokens=C["frontier"]["test_tokens"],
        scoring=scoring_settings(),
        projections=lambda wc: frontier_psets(C)[wc.pset],
        shares=lambda wc: line_shares(C, wc.line),
        cells=frontier_line_cells,
        seed=C["predict"]["seed"],
        batch_sizes=C["frontier"]["batch_sizes"],
        griffin_prompt=C["frontier"]["griffin_prompt"],
        device=C["device"],
        dataset=dataset_name(C["data"]),
    wildcard_constraints:
        line="cats",
    threads: 1
    priority: 20
    log:
        L.log("frontier_line_cats", pset="{pset}", line="{line}"),
    resources:
        **model_job(C["frontier"]["test_tokens"] or ppl_tokens(), passes=len(CATS_SHARES)),
    benchmark:
        L.benchmark("frontier_line_cats", pset="{pset}", line="{line}")
    script:
        "../scripts/frontier_line.py"


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
    log:
        L.log("frontier_table"),
    resources:
        **cpu_job(),
    benchmark:
        L.benchmark("frontier_table")
    script:
        "../scripts/frontier_table.py"
