# Stage 5: one summary table, plots, the MLflow store and the HTML report.


rule summary:
    input:
        eval_files(),
        ppl_files(),
    output:
        report(f"{OUT}/summary.csv", caption="../report/summary.rst", category="Summary"),
    log:
        f"{OUT}/logs/summary.log",
    script:
        "../scripts/summary.py"


rule plots:
    input:
        f"{OUT}/summary.csv",
    output:
        report(
            directory(f"{OUT}/plots"),
            patterns=["{name}.png"],
            caption="../report/plots.rst",
            category="Plots",
        ),
    log:
        f"{OUT}/logs/plots.log",
    script:
        "../scripts/plots.py"


rule track:
    input:
        extraction_files(),
        centroid_files(),
        eval_files(),
        ppl_files(),
        f"{OUT}/summary.csv",
        f"{OUT}/plots",
    output:
        f"{OUT}/mlflow_runs.json",
    params:
        config=C,
        tracking_uri=C["mlflow"]["tracking_uri"],
        experiment=C["mlflow"]["experiment"],
        repo=workflow.basedir,
    log:
        f"{OUT}/logs/track.log",
    script:
        "../scripts/track.py"
