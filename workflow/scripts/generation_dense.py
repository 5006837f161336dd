import torch

from apc.common.atomic import read_npy, write_json
from apc.common.device import cuda_peak_memory
from apc.perplexity.generation import dense_prefill, dense_record, greedy, save_prefill, select_prompts
from apc.perplexity.protocol import select_windows
from apc.rulekit import job_model, start

log = start(snakemake, "generation_dense")
p = snakemake.params
g = p.generation
manifest, model, tok, device = job_model(snakemake)
windows = select_windows(torch.from_numpy(read_npy(snakemake.input.tokens)), p.test_tokens, key="frontier.test_tokens")
prompts = select_prompts(windows, g["prompts"], g["prompt_len"], bos=tok.bos_token_id is not None, seed=g["seed"])
log.info("dense greedy continuations of %d prompts of %d tokens, %d new tokens each", prompts.n, prompts.prompt_len,
         g["new_tokens"])
prefill = dense_prefill(model, prompts)  # kept for every frontier job, which copies it instead of recomputing it
dense = greedy(model, prompts, g["new_tokens"], prefilled=prefill)
save_prefill(prefill, snakemake.output.prefill, prompts)
write_json(snakemake.output.dense, dense_record(prompts, dense, model=manifest["name"], settings=g,
                                             **cuda_peak_memory(device)))
