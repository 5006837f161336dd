#!/usr/bin/env bash
# Every GPU measurement of the decode page in one run on one card, writing raw files into WORK:
#
#   benchmarks/decode_gpu_run.sh EXT WORK [GGUF]
#
# EXT holds the fetched peers (not part of this project): EXT/gpt-fast (pytorch-labs/gpt-fast: model.py,
# generate.py, tokenizer.py) and EXT/teal_sparse_gemv.py (FasterDecoding/TEAL kernels/sparse_gemv.py), and
# EXT/prompts.json (the SmolLM2 prompts' token ids).  GGUF: the embedded SmolLM2 GGUF (its de-quantisation
# needs the gguf package on PYTHONPATH; the step waits up to GGUF_WAIT x 5 s for the file); without it the
# SmolLM2 step is skipped.  Steps, each logged to
# WORK/<step>.log and continuing past a failed one:
#   gpu.txt       nvidia-smi, torch and Triton versions
#   kernel_tests  the operator and kernel tests on this GPU
#   gemv          bench_gemv_bound.py: tile sweep per shape, ours (bf16, fp16) beside TEAL's kernel and cuBLAS
#   attn          bench_decode_attn.py: the decode attention kernel's tile sweep, ours against Inductor's SDPA;
#                 its chosen tiles are merged into WORK/tiles.json (a copy of CONF where the gemv step did not run)
#   decode        bench_decode.py on the Mistral-7B shape, compiled, every line, batch 1, 4, 16, with the tiles
#   gptfast       gptfast_peer.py: gpt-fast's own model and decode loop, batch 1, 4, 16
#   smollm2       smollm2_tokens.py: the embedded model compiled against eager, TEAL's token agreement
#   smollm2_fp32  the same model in float32, dense only: compiled against eager without bf16's rounding
# STEPS (default "kernel_tests gemv attn decode gptfast smollm2 smollm2_fp32") names the steps to run, in that order; CONF (a
# tiles.json) is used where the gemv step did not write WORK/tiles.json.  WORK/DONE is written last.
set -uo pipefail
EXT=$1 WORK=$2 GGUF=${3:-}
mkdir -p "$WORK"
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
step() {  # name, command...
    local name=$1; shift
    local t0; t0=$(date +%s)
    echo "== $name: $*" | tee -a "$WORK/run.log"
    "$@" > "$WORK/$name.log" 2>&1
    echo "== $name: rc $? in $(( $(date +%s) - t0 )) s" | tee -a "$WORK/run.log"
    tail -n 25 "$WORK/$name.log" >> "$WORK/run.log"
}
{ nvidia-smi; python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'; } > "$WORK/gpu.txt" 2>&1
run_kernel_tests() {
    step kernel_tests python3 -m pytest -q -p no:cacheprovider tests/test_deploy_ops.py tests/test_sparse_gemv.py \
        tests/test_decoder.py
}
run_gemv() {
    step gemv python3 benchmarks/bench_gemv_bound.py --teal "$EXT/teal_sparse_gemv.py" --out "$WORK/gemv.csv" \
        --sweep-out "$WORK/gemv_sweep.csv" --save "$WORK/tiles.json"
}
run_attn() {
    [ -f "$WORK/tiles.json" ] || { [ -n "${CONF:-}" ] && cp "$CONF" "$WORK/tiles.json"; }
    step attn python3 benchmarks/bench_decode_attn.py --out "$WORK/attn.csv" --save "$WORK/tiles.json"
}
tiles() { if [ -f "$WORK/tiles.json" ]; then echo "$WORK/tiles.json"; else echo "${CONF:-}"; fi; }
run_decode() {
    local c; c=$(tiles)
    step decode python3 benchmarks/bench_decode.py ${c:+--config "$c"} --out "$WORK/decode.csv" \
        --profile-out "$WORK/profile.json" ${DECODE_ARGS:-}
}
run_gptfast() {
    step gptfast python3 benchmarks/gptfast_peer.py --src "$EXT/gpt-fast" --out "$WORK/gptfast.csv" ${GPTFAST_ARGS:-}
}
run_smollm2() {
    [ -n "$GGUF" ] || return 0
    # the GGUF may arrive while the steps above run (carried in parts over two calls): wait for it
    for _ in $(seq 1 ${GGUF_WAIT:-180}); do [ -f "$GGUF" ] && break; sleep 5; done
    local c; c=$(tiles)
    step smollm2 python3 benchmarks/smollm2_tokens.py ${c:+--config "$c"} --gguf "$GGUF" --prompts "$EXT/prompts.json" \
        --out "$WORK/smollm2.csv"
}
run_smollm2_fp32() {
    [ -f "$GGUF" ] || return 0
    step smollm2_fp32 python3 benchmarks/smollm2_tokens.py --dtype float32 --gguf "$GGUF" \
        --prompts "$EXT/prompts.json" --out "$WORK/smollm2_fp32.csv"
}
for s in ${STEPS:-kernel_tests gemv attn decode gptfast smollm2 smollm2_fp32}; do "run_$s"; done
date > "$WORK/DONE"
