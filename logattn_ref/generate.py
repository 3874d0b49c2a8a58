"""Sampling text from a trained model, and the cost of one generated token against the context length.

:meth:`logattn_ref.model.GPT.generate` does the sampling (prompt prefilled into a cache, then one step per
token). Here: :func:`sample_text` (strings in, string out) and :func:`decode_latency`, which fills a model's
cache with ``context`` random tokens and then times single-token steps. For softmax the step reads a KV cache
that grows with the context; for the log arms it updates a state of constant size, so its latency should not
depend on the context at all. Timing uses CUDA events on a GPU (``time.perf_counter`` on a CPU), after
warm-up steps, with the device synchronised before and after each token (so a token's time includes its host
launches, as a user waiting for it sees), and reports the median over steps.
"""

from __future__ import annotations

import statistics
import time
from typing import Dict, List, Optional, Sequence

import torch

from .model import GPT

__all__ = ["sample_text", "decode_latency"]


@torch.no_grad()
def sample_text(
    model: GPT,
    tokenizer,
    prompt: str,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: Optional[int] = 40,
    seed: int = 0,
) -> str:
    """The prompt followed by ``max_new_tokens`` sampled characters (seeded, so it is reproducible)."""
    if not prompt:
        raise ValueError("prompt must hold at least one character (the model needs a token to start from)")
    device = next(model.parameters()).device
    idx = tokenizer.encode(prompt)[None, :].to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, generator=gen)
    return tokenizer.decode(out[0].cpu())


def _fill(model: GPT, cache, context: int, vocab: int, device, prefill_block: int, generator) -> None:
    # The prompt goes in blocks: for softmax, a [block, context] mask instead of a [context, context] one.
    for start in range(0, context, prefill_block):
        size = min(prefill_block, context - start)
        tokens = torch.randint(vocab, (1, size), device=device, generator=generator)
        model(tokens, cache=cache)


@torch.no_grad()
def decode_latency(
    model: GPT,
    contexts: Sequence[int] = (256, 4096, 65536),
    steps: int = 32,
    warmup: int = 8,
    prefill_block: int = 4096,
    autocast_dtype: Optional[torch.dtype] = None,
    seed: int = 0,
) -> List[Dict[str, float]]:
    """Median seconds per generated token after ``context`` tokens, for each context (batch 1).

    Returns a list of ``{"context", "median_s", "p10_s", "p90_s", "steps", "prefill_s"}``; on CUDA also the
    peak memory (``peak_bytes``) of the whole fill-and-decode.
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps must be >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    model.eval()
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    vocab = model.config.vocab_size
    gen = torch.Generator(device=device).manual_seed(seed)
    amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else torch.autocast(device.type, enabled=False)
    results = []
    from tqdm.auto import tqdm

    for context in tqdm(contexts, desc="decode latency", unit="context", leave=False):
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            torch.cuda.synchronize(device)
        with amp:
            cache = model.new_cache()
            t0 = time.perf_counter()
            _fill(model, cache, context, vocab, device, prefill_block, gen)
            if cuda:
                torch.cuda.synchronize(device)
            prefill_s = time.perf_counter() - t0
            tokens = torch.randint(vocab, (warmup + steps, 1, 1), device=device, generator=gen)
            times = []
            for i in range(warmup + steps):
                # Latency of one token from an idle device: host launches and device work both count, as
                # they do when a user waits for the next character. Synchronised before and after each step.
                if cuda:
                    torch.cuda.synchronize(device)
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    model(tokens[i], cache=cache)
                    end.record()
                    end.synchronize()
                    if i >= warmup:
                        times.append(start.elapsed_time(end) / 1000.0)
                else:
                    t = time.perf_counter()
                    model(tokens[i], cache=cache)
                    if i >= warmup:
                        times.append(time.perf_counter() - t)
        times.sort()
        entry = {
            "context": int(context),
            "median_s": statistics.median(times),
            "p10_s": times[int(0.1 * (len(times) - 1))],
            "p90_s": times[int(0.9 * (len(times) - 1))],
            "steps": steps,
            "prefill_s": prefill_s,
        }
        if cuda:
            entry["peak_bytes"] = int(torch.cuda.max_memory_allocated(device))
        results.append(entry)
        del cache
    return results
