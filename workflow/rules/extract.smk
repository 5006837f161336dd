# Stage 1: model, token windows, thresholds, bit-packed activation patterns.


rule prepare_model:
    output:
        L.manifest(),
    params:
        model=C["model"],
    log:
        L.log("prepare_model"),
    script:
        "../scripts/prepare_model.py"


rule prepare_data:
    input:
        L.manifest(),
    output:
        tokens=expand(L.tokens("{split}"), split=SPLITS),
        meta=[L.tokens_meta(s) for s in SPLITS],
    params:
        data=C["data"],
    log:
        L.log("prepare_data"),
    script:
        "../scripts/prepare_data.py"


rule calibrate_thresholds:
    input:
        model=L.manifest(),
        tokens=L.tokens("train"),
    output:
        L.thresholds(),
    params:
        extract=C["extract"],
        device=C["device"],
    threads: C["threads"]
    log:
        L.log("calibrate_thresholds"),
    script:
        "../scripts/calibrate_thresholds.py"


rule extract_patterns:
    input:
        model=L.manifest(),
        tokens=L.tokens("{split}"),
        thresholds=L.thresholds(),
    output:
        directory(L.patterns("{split}")),
    params:
        extract=C["extract"],
        device=C["device"],
        dataset=C["data"],
    threads: C["threads"]
    log:
        L.log("extract_patterns", split="{split}"),
    script:
        "../scripts/extract_patterns.py"
