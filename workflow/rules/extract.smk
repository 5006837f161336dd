# Stage 1: model, token windows, thresholds, bit-packed activation patterns.
from apc.extraction.corpus import split_settings


rule prepare_model:
    output:
        f"{OUT}/model/manifest.json",
    params:
        model=C["model"],
    log:
        f"{OUT}/logs/prepare_model.log",
    script:
        "../scripts/prepare_model.py"


rule prepare_data:
    # One job per split: each gets only the settings its own windows depend on,
    # so changing one split's budget reruns only that split's work.
    input:
        model=f"{OUT}/model/manifest.json",
        text=C["data"]["text_files"] if C["data"]["source"] == "text" else [],
    output:
        tokens=f"{OUT}/tokens/{{split}}.npy",
        meta=f"{OUT}/tokens/{{split}}.json",
    params:
        data=lambda wc: split_settings(C["data"], wc.split),
    log:
        f"{OUT}/logs/prepare_data_{{split}}.log",
    script:
        "../scripts/prepare_data.py"


rule calibrate_thresholds:
    input:
        model=f"{OUT}/model/manifest.json",
        tokens=f"{OUT}/tokens/train.npy",
    output:
        f"{OUT}/thresholds.json",
    params:
        extract=C["extract"],
        device=C["device"],
    threads: C["threads"]
    log:
        f"{OUT}/logs/calibrate_thresholds.log",
    script:
        "../scripts/calibrate_thresholds.py"


rule extract_patterns:
    input:
        model=f"{OUT}/model/manifest.json",
        tokens=f"{OUT}/tokens/{{split}}.npy",
        thresholds=f"{OUT}/thresholds.json",
    output:
        directory(f"{OUT}/patterns/{{split}}"),
    params:
        extract=C["extract"],
        device=C["device"],
        dataset=C["data"],
    threads: C["threads"]
    log:
        f"{OUT}/logs/extract_patterns_{{split}}.log",
    script:
        "../scripts/extract_patterns.py"
