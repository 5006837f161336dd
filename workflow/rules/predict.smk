# Predictors of the compute-quality frontier (apc.prediction): FFN inputs per split, magnitude
# thresholds per kept share, a cluster-id predictor per (frontier cell, kind), neuron predictors.


rule calibrate_kept_shares:
    # T_rho of the threshold line: other quantiles of the calibration pass's histograms (no model pass).
    input:
        histograms=L.threshold_histograms(),
    output:
        L.thresholds_kept(),
    params:
        projections=sorted({q for ps in frontier_psets(C).values() for q in ps}),
        kept_shares=C["frontier"]["kept_shares"],
    log:
        L.log("calibrate_kept_shares"),
    resources:
        **cpu_job(),
    benchmark:
        L.benchmark("calibrate_kept_shares")
    script:
        "../scripts/calibrate_kept_shares.py"


rule calibrate_frontier:
    # CATS, TEAL and WINA thresholds and allocations of kept shares, from train FFN inputs through the MLP weights.
    input:
        model=L.manifest(),
        ffn=L.ffn_inputs("train"),
    output:
        L.frontier_calibration(),
    params:
        kept_shares=C["frontier"]["kept_shares"],
        cats_shares=lambda wc: line_shares(C, "cats") if "cats" in C["frontier"]["baselines"] else [],
        teal_allocation=C["frontier"]["teal_allocation"] if "teal" in C["frontier"]["baselines"] else [],
        wina="wina" in C["frontier"]["baselines"],
        greedy_cells=bool(greedy_cells(C)),
        calibration_tokens=C["frontier"]["calibration_tokens"],
        step=C["frontier"]["allocation_step"],
        seed=C["predict"]["seed"],
        device=C["device"],
    threads: 1  # so that it starts early, beside the clustering jobs, and the CATS and TEAL lines with it
    priority: 45
    log:
        L.log("calibrate_frontier"),
    resources:
        **model_job(C["frontier"]["calibration_tokens"],
                    passes=2 + 2 * round(1 / C["frontier"]["allocation_step"]) * len(C["frontier"]["teal_allocation"])),
    benchmark:
        L.benchmark("calibrate_frontier")
    script:
        "../scripts/calibrate_frontier.py"


rule calibrate_rotations:
    # LaRoSA's rotation per layer: the PCA of train FFN inputs (no model pass).
    input:
        model=L.manifest(),
        ffn=L.ffn_inputs("train"),
    output:
        L.frontier_rotations(),
    params:
        calibration_tokens=C["frontier"]["calibration_tokens"],
        seed=C["predict"]["seed"],
    log:
        L.log("calibrate_rotations"),
    resources:
        **cpu_job(),
    benchmark:
        L.benchmark("calibrate_rotations")
    script:
        "../scripts/calibrate_rotations.py"


rule fit_cluster_predictor:
    input:
        centroids=L.centroids(W),
        ffn=[L.ffn_inputs(s) for s in SPLITS],
        patterns=[L.patterns(s) for s in SPLITS],
    output:
        predictor=L.cluster_predictor(W, "{kind}"),
        report=L.cluster_predictor_report(W, "{kind}"),
    params:
        predict=predict_settings(),
        cell_key=lambda wc: Cell(wc.proj, wc.scope, wc.method, int(wc.k), float(wc.density), int(wc.seed)).key,
        device=C["device"],
    threads: 1  # fitting many small layers: more threads were slower under load
    priority: 30
    log:
        L.log("fit_cluster_predictor_{kind}", W),
    resources:
        **predictor_job(),
    benchmark:
        L.benchmark("fit_cluster_predictor_{kind}", W)
    script:
        "../scripts/fit_cluster_predictor.py"


rule fit_neuron_predictor:
    input:
        ffn=[L.ffn_inputs(s) for s in SPLITS],
        patterns=[L.patterns(s) for s in SPLITS],
    output:
        predictor=L.neuron_predictor("{proj}", "{kind}-k{k}-x{factor}", "{seed}"),
        report=L.neuron_predictor_report("{proj}", "{kind}-k{k}-x{factor}", "{seed}"),
    params:
        predict=predict_settings(),
        densities=C["frontier"]["kept_shares"],
        device=C["device"],
    threads: 1
    priority: 40
    log:
        L.log("fit_neuron_predictor", proj="{proj}", kind="{kind}", k="{k}", factor="{factor}", seed="{seed}"),
    resources:
        **predictor_job(),
    benchmark:
        L.benchmark("fit_neuron_predictor", proj="{proj}", kind="{kind}", k="{k}", factor="{factor}", seed="{seed}")
    script:
        "../scripts/fit_neuron_predictor.py"
