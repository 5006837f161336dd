# Stage 2: one clustering job per sweep cell (apc.clustering.cell).


rule cluster:
    input:
        unpack(lambda wc: norms_input(wc.method)),
        unpack(lambda wc: allocation_input(wc.method)),
        patterns=L.patterns("train"),
    output:
        centroids=L.centroids(W),
        meta=L.centroids_meta(W),
    params:
        cluster=lambda wc: cluster_settings(wc.method),
        device=C["device"],
    threads: 1
    priority: 30
    log:
        L.log("cluster", W),
    resources:
        **per_cell(cluster_resources),
    benchmark:
        L.benchmark("cluster", W)
    script:
        "../scripts/cluster.py"
