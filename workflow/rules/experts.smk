# Neuron experts (apc.clustering.experts): one job per (shared share, routed experts) cell fits the
# experts and the learned router of every layer and reports each router's coverage on test.


rule fit_experts:
    input:
        model=L.manifest(),
        ffn=[L.ffn_inputs(s) for s in SPLITS],
        patterns=[L.patterns(s) for s in SPLITS],
    output:
        experts=L.experts("{proj}", "{ecell}"),
        router=L.experts_router("{proj}", "{ecell}"),
        report=L.experts_report("{proj}", "{ecell}"),
    params:
        shared=lambda wc: experts_cell_params(wc)["shared"],
        n=lambda wc: experts_cell_params(wc)["n"],
        cell_key=lambda wc: f"experts/{wc.proj}/{wc.ecell}",
        ks=C["experts"]["ks"],
        max_iter=C["experts"]["max_iter"],
        max_tokens=C["experts"]["max_tokens"],
        markers=C["experts"]["markers"],
        seed=C["predict"]["seed"],
        fit=C["predict"]["fit"],
        device=C["device"],
    wildcard_constraints:
        ecell=r"s[0-9.]+-e\d+",
    threads: 1
    priority: 30
    log:
        L.log("fit_experts", proj="{proj}", ecell="{ecell}"),
    resources:
        **predictor_job(),
    benchmark:
        L.benchmark("fit_experts", proj="{proj}", ecell="{ecell}")
    script:
        "../scripts/fit_experts.py"


# Neuron-experts lines of the frontier: one job per line scores every kept share (one model load).
rule frontier_line_experts:
    input:
        unpack(experts_line_inputs),
    output:
        [L.frontier_point("{pset}", "{line}", share) for share in C["frontier"]["kept_shares"]],
    params:
        test_tokens=C["frontier"]["test_tokens"],
        scoring=scoring_settings(),
        projections=lambda wc: frontier_psets(C)[wc.pset],
        shares=C["frontier"]["kept_shares"],
        seed=C["predict"]["seed"],
        batch_sizes=C["frontier"]["batch_sizes"],
        device=C["device"],
        dataset=dataset_name(C["data"]),
    wildcard_constraints:
        line=one_of(own_job_lines(C)),
    threads: 1
    priority: 20
    log:
        L.log("frontier_line_experts", pset="{pset}", line="{line}"),
    resources:
        **model_job(C["frontier"]["test_tokens"] or ppl_tokens(), passes=len(C["frontier"]["kept_shares"])),
    benchmark:
        L.benchmark("frontier_line_experts", pset="{pset}", line="{line}")
    script:
        "../scripts/frontier_line_experts.py"
