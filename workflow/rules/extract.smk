# Stage 1: model, token windows, thresholds, bit-packed activation patterns.


rule prepare_model:
    output:
        L.manifest(),
    params:
        model=C["model"],
    log:
        L.log("prepare_model"),
    resources:
        **cpu_job(mem_mb=PREPARE_MODEL_MB, runtime=60),
    benchmark:
        L.benchmark("prepare_model")
    script:
        "../scripts/prepare_model.py"


rule down_norms:
    # Column norms of every layer's down_proj, saved once for the `output` weighting of apc_weighted.
    input:
        model=L.manifest(),
    output:
        L.down_norms(),
    priority: 40
    log:
        L.log("down_norms"),
    resources:
        **cpu_job(2 * WEIGHTS_MB + 4096, 10 + WEIGHTS_MB / 200 / 60),
    benchmark:
        L.benchmark("down_norms")
    script:
        "../scripts/down_norms.py"


rule prepare_data:
    # One job per split: each gets only the settings its own windows depend on,
    # so changing one split's budget reruns only that split's work.
    input:
        model=L.manifest(),
        text=C["data"]["text_files"] if C["data"]["source"] == "text" else [],
    output:
        tokens=L.tokens("{split}"),
        meta=L.tokens_meta("{split}"),
    params:
        data=lambda wc: split_settings(C["data"], wc.split),
    log:
        L.log("prepare_data", split="{split}"),
    resources:
        **cpu_job(mem_mb=1900, runtime=30),  # tokenizer and text: 0.5-0.85 GB measured
    benchmark:
        L.benchmark("prepare_data", split="{split}")
    script:
        "../scripts/prepare_data.py"


rule calibrate_thresholds:
    input:
        model=L.manifest(),
        tokens=L.tokens("train"),
    output:
        thresholds=L.thresholds(),
        histograms=L.threshold_histograms(),
    params:
        extract={k: v for k, v in C["extract"].items() if k != "magnitudes"},  # thresholds do not depend on it
        device=C["device"],
    threads: C["threads"]
    # Snakemake's job selector maximises the sum of the started jobs' priorities: a job of all the cores waits
    # behind any two 1-core jobs whose priorities sum to more than its own.  The two multi-thread jobs that
    # unblock the others come first, above any pair of the rest (at most 50 each).
    priority: 200  # everything waits for it
    log:
        L.log("calibrate_thresholds"),
    resources:
        **model_job(C["data"]["train_tokens"]),
    benchmark:
        L.benchmark("calibrate_thresholds")
    script:
        "../scripts/calibrate_thresholds.py"


rule extract_patterns:
    input:
        model=L.manifest(),
        tokens=L.tokens("{split}"),
        thresholds=L.thresholds(),
    output:
        directory(L.patterns("{split}")),
        # the predictors' and the frontier calibration's FFN inputs, captured in the same pass
        **({"ffn": directory(L.ffn_inputs("{split}"))} if FFN_INPUTS else {}),
    params:
        extract=C["extract"],
        store=lambda wc: {"patterns": C["store"]["patterns"][wc.split],
                          "magnitudes": C["store"]["magnitudes"][wc.split], "seed": C["store"]["seed"],
                          **({"ffn_inputs": C["store"]["ffn_inputs"][wc.split]} if FFN_INPUTS else {})},
        device=C["device"],
        dataset=dataset_name(C["data"]),
    threads: C["threads"]
    priority: 150  # above any two 1-core jobs (see calibrate_thresholds): else it waits for both cores to come free
    log:
        L.log("extract_patterns", split="{split}"),
    resources:
        **per_cell(extract_resources),
    benchmark:
        L.benchmark("extract_patterns", split="{split}")
    script:
        "../scripts/extract_patterns.py"
