import re

# Neuron experts (apc.clustering.experts): one job per (shared share, routed experts) cell fits the
# experts and the learned router of every layer and reports each router's coverage on test.


def experts_cell_params(wc):
    """The cell of an experts job from its folder name ``s{shared}-e{n}``."""
    m = re.fullmatch(r"s([0-9.]+)-e(\d+)", wc.ecell)
    if m is None:
        raise WorkflowError(f"not a neuron-experts cell: {wc.ecell!r} (expected s<shared>-e<n>)")
    return {"shared": float(m[1]), "n": int(m[2])}


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
