# Stage 5: the resolved config, one summary table, plots, the MLflow store and the HTML report.
# Aggregations read exactly their declared inputs: the files of the current sweep (apc.results.inputs).


rule resolved_config:
    output:
        L.config(),
    params:
        config=C,
    log:
        L.log("resolved_config"),
    resources:
        **cpu_job(),
    benchmark:
        L.benchmark("resolved_config")
    script:
        "../scripts/resolved_config.py"


rule summary:
    input:
        evals=FILES.evals,
        metas=FILES.centroid_metas,
        refs=FILES.refs,
        ppl=FILES.ppl,
    output:
        report(L.summary(), caption="../report/summary.rst", category="Summary"),
    log:
        L.log("summary"),
    resources:
        **cpu_job(),
    benchmark:
        L.benchmark("summary")
    script:
        "../scripts/summary.py"


rule plots:
    input:
        evals=FILES.evals,
        refs=FILES.refs,
        ppl=FILES.ppl,
        frontier=FILES.frontier_table,
        frontier_refs=FILES.frontier_refs,
    output:
        report(
            directory(L.plots()),
            patterns=["{name}.png", "{name}.html"],
            caption="../report/plots.rst",
            category="Plots",
        ),
    log:
        L.log("plots"),
    resources:
        **cpu_job(),
    benchmark:
        L.benchmark("plots")
    script:
        "../scripts/plots.py"


rule track:
    input:
        config=L.config(),
        thresholds=L.thresholds(),
        patterns=[L.patterns(s) for s in SPLITS],
        centroids=FILES.centroids,
        metas=FILES.centroid_metas,
        evals=FILES.evals,
        refs=FILES.refs,
        ppl=FILES.ppl,
        frontier=FILES.frontier,
        frontier_table=FILES.frontier_table,
        predictor_reports=FILES.predictor_reports,
        experts_reports=FILES.experts_reports,
        summary=L.summary(),
        plots=L.plots(),
    output:
        L.mlflow_runs(),
    params:
        tracking_uri=tracking_uri(),
        experiment=C["mlflow"]["experiment"],
        repo=workflow.basedir,
    log:
        L.log("track"),
    resources:
        **cpu_job(),
    benchmark:
        L.benchmark("track")
    script:
        "../scripts/track.py"
