#!/usr/bin/env bash
# The paper-shaped run on one GPU machine with no network: install the carried wheels, write the
# model once, run the workflow (bounded in time), and pack what the per-rule report reads.
#
#   benchmarks/paper_shaped_run.sh BUNDLE OUT SECONDS GPU_JOBS [snakemake --config overrides ...]
#
# BUNDLE holds wheels/*.whl (snakemake, datasets and their needs, built for the machine's Python),
# tokenizer/ (the embedded SmolLM2 tokenizer) and wiki.utf8 (the embedded Wikipedia text of
# exllamav2 0.3.2, placed where the corpus reader looks for it), and optionally tokens/ (the
# windows of prepare_data, used only where `datasets` cannot be imported).  OUT receives
# paper_shaped_results.tgz (benchmarks, logs, sidecars, tables, the Snakemake log) and disk.txt.
set -uo pipefail
BUNDLE=$1 OUT=$2 SECONDS_MAX=$3 GPU_JOBS=$4
shift 4
t0=$(date +%s)
if [ -d "$BUNDLE/wheels" ]; then  # else the wheels were installed into /tmp/site by an earlier call
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$BUNDLE"/wheels/*.whl || exit 1
fi
test -d /tmp/site/snakemake || { echo "no snakemake under /tmp/site: carry BUNDLE/wheels"; exit 1; }
mkdir -p /tmp/site/exllamav2/conversion/standard_cal_data
touch /tmp/site/exllamav2/__init__.py
cp "$BUNDLE/wiki.utf8" /tmp/site/exllamav2/conversion/standard_cal_data/wiki.utf8
export PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
echo "setup: $(( $(date +%s) - t0 )) s"
python3 -c "import datasets, pyarrow; print('datasets', datasets.__version__, 'pyarrow', pyarrow.__version__)"
DATASETS_OK=$?
python3 benchmarks/paper_shaped_model.py --out results/models/paper-shaped --tokenizer "$BUNDLE/tokenizer" || exit 1
echo "model: $(( $(date +%s) - t0 )) s"
if [ "$DATASETS_OK" != 0 ] && [ -d "$BUNDLE/tokens" ]; then
    # no usable `datasets` here: the token windows, made by prepare_data elsewhere from the same text
    # and tokenizer, are put in place after prepare_model
    python3 -m snakemake --cores 2 --config preset=paper-shaped "$@" -- results/paper-shaped/model/manifest.json
    mkdir -p results/paper-shaped/tokens && cp "$BUNDLE"/tokens/* results/paper-shaped/tokens/
    echo "token windows carried (datasets unavailable)"
fi
timeout -s INT "$SECONDS_MAX" python3 -m snakemake --cores "${CORES:-all}" --resources gpu="$GPU_JOBS" --keep-going --rerun-incomplete \
    --config preset=paper-shaped "$@" -- \
    results/paper-shaped/summary.csv results/paper-shaped/plots results/paper-shaped/frontier.csv 2>&1 \
    | grep -v "^\s*$" | tail -n 60
echo "workflow: $(( $(date +%s) - t0 )) s"
du -sb results/paper-shaped/* results/paper-shaped/patterns/* results/paper-shaped/ffn_inputs/* \
    results/models/paper-shaped > "$OUT/disk.txt" 2>/dev/null
PYTHONPATH=src:/tmp/site python3 -m apc plan --preset paper-shaped > "$OUT/plan.txt" 2>&1
tar czf "$OUT/paper_shaped_results.tgz" --exclude='*.npy' --exclude='*.safetensors' \
    results/paper-shaped .snakemake/log
ls -la "$OUT"
