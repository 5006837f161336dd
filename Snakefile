# APC: activation-pattern clustering study.
#   snakemake --cores all                       # embedded default
#   snakemake --cores all --config preset=smoke # tiny budgets
#   snakemake -n                                # dry-run: show the DAG
# README.md documents every rule, output and config key.

configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/cluster.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/perplexity.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/experts.smk"
include: "workflow/rules/frontier.smk"
include: "workflow/rules/results.smk"


# Jobs that reach the hub (prepare_model downloads, prepare_data may) or the tracking server, and the
# second-long aggregations (perplexity_cell splits a batch file), run on the submitting machine
# under a cluster executor.
localrules:
    prepare_model,
    prepare_data,
    resolved_config,
    summary,
    plots,
    track,
    frontier_table,
    perplexity_cell,


rule all:
    input:
        all_outputs(),
    default_target: True
