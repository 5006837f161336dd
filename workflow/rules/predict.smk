# Calibrations and predictors of the compute-quality frontier: magnitude thresholds per kept share, one
# calibration per line (apc.lines), greedy cell allocations, a cluster-id predictor per (frontier cell, kind),
# neuron predictors (apc.prediction).


rule calibrate_kept_shares:
    # T_rho of the threshold line: other quantiles of the calibration pass's histograms (no model pass). A
    # 2-s job that a frontier line waits on: first as soon as its histograms exist (at priority 0 it ran after
    # every clustering and evaluation job, and that line then ran alone at the end of the run).
    priority: 60
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


rule calibrate_line:
    # One line's calibration (apc.lines.Line.calibrate: thresholds, allocations, rotations, factors) from train FFN
    # inputs through the MLP weights (and the attention inputs of train tokens where the line asks for them): one
    # job and file per line, so adding a line reruns no other.
    input:
        unpack(lambda wc: calibration_inputs(C, L, wc.line)),
    output:
        L.line_calibration("{line}"),
    params:
        shares=lambda wc: line_shares(C, wc.line),
        settings=lambda wc: {**settings_of(C, wc.line), "allocation_step": C["frontier"]["allocation_step"]},
        calibration_tokens=C["frontier"]["calibration_tokens"],
        seed=C["predict"]["seed"],
        device=C["device"],
    wildcard_constraints:
        line=one_of(calibration_lines(C)),
    threads: 1  # so that it starts early, beside the clustering jobs, and its line's job with it
    priority: 45
    log:
        L.log("calibrate_line", line="{line}"),
    resources:
        **model_job(C["frontier"]["calibration_tokens"], passes=2 + 2 * round(1 / C["frontier"]["allocation_step"])),
    benchmark:
        L.benchmark("calibrate_line", line="{line}")
    script:
        "../scripts/calibrate_line.py"


rule calibrate_cell_allocation:
    # Per-layer densities of the frontier cells with allocation: layer-greedy, greedily across layers on train.
    input:
        model=L.manifest(),
        ffn=L.ffn_inputs("train"),
    output:
        L.cell_allocation(),
    params:
        kept_shares=C["frontier"]["kept_shares"],
        calibration_tokens=C["frontier"]["calibration_tokens"],
        step=C["frontier"]["allocation_step"],
        seed=C["predict"]["seed"],
        device=C["device"],
    threads: 1
    priority: 45
    log:
        L.log("calibrate_cell_allocation"),
    resources:
        **model_job(C["frontier"]["calibration_tokens"], passes=2 + round(1 / C["frontier"]["allocation_step"])),
    benchmark:
        L.benchmark("calibrate_cell_allocation")
    script:
        "../scripts/calibrate_cell_allocation.py"


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
