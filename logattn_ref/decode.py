"""Greedy decoding of a whole :class:`~logattn_ref.model.GPT` from static buffers, one CUDA graph per token.

    python -m logattn_ref.decode --out DIR [--quick] [--budget-s S] [--batches 1 64] [--contexts ...]
                                 [--long-contexts ...]

:class:`StaticDecoder` preallocates every buffer a decode step touches (the input token, its position, each
layer's token-shift input and attention memory, the logits) and runs the whole model's step on them: embedding,
every layer's norm, q/k/v (the model's own :meth:`~logattn_ref.model.CausalSelfAttention.qkv`), attention step
and output projection, MLP, final norm, head, and the greedy argmax written back into the input-token buffer.
Nothing in the step reads a value back to the host, so on CUDA :meth:`StaticDecoder.capture` records it into ONE
CUDA graph and each token is one replay: tokens per second then measure the model, not Python's kernel launches.
On the CPU the same step runs eagerly (what the tests check).

Attention memory per arm (``ModelConfig.attention``):

- ``"log-signed"``: the constant-size state of :class:`logattn_ref.recurrent.Decoder` per layer, updated in
  place (``fused=True`` on CUDA: the one-kernel Triton step). Recurrence eq. 6 of arXiv:2404.05843v1 in linear
  space with a running key maximum, read with eq. 5.
- ``"log"``: the paper's log-space states ``H^(S) [B, H, d_k, d_v]`` and ``H^(Z) [B, H, d_k]`` (eq. 6), updated
  in place with ``torch.logaddexp``; v is read as log V and ``log Y = log S - log Z`` (eqs. 5 and 2) goes on to
  the output projection, as the model's "log" arm does.
- ``"softmax"``: a static KV cache of ``capacity`` positions, zero-filled. The step writes k, v at a position held
  in a device tensor and attends over the whole capacity with a mask of the filled positions (the usual static
  cache decode). It reads ``capacity`` keys, not the filled length: at most ``capacity - context`` extra keys,
  which the benchmark keeps small (it rewinds the position after each timed block).

The benchmark (:func:`main`) runs the shakespeare preset's architecture with random weights (the speed of a step
does not depend on the weights or on the prompt's values), bf16 on CUDA, at batch 1 and 64, and writes
``decode_<gpu>.json`` and ``decode_<gpu>.png``. ``--quick`` is a CPU smoke test (tiny model, eager, seconds).
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from . import recurrent
from .model import GPT, LayerCache, ModelConfig
from .runio import run_environment, write_json

__all__ = ["SOFTMAX_KERNELS", "available_softmax_kernels", "StaticDecoder", "crossover_contexts", "main",
           "markdown_table"]

#: How the softmax arm attends over its static cache: ``"sdpa"`` (``F.scaled_dot_product_attention`` with a
#: boolean mask; flash attention takes no mask, so PyTorch picks memory-efficient attention or math),
#: ``"matmul"`` (scores = q K^T, masked softmax, times V: two batched matrix products from cuBLAS) or
#: ``"splitkv"`` (:func:`logattn_ref.triton_kernels.softmax_decode_triton`: the cache split over many programs,
#: flash-decoding's idea, so a small batch still fills the GPU; where the Triton kernels run).
SOFTMAX_KERNELS = ("sdpa", "matmul", "splitkv")


def available_softmax_kernels(device, dtype: torch.dtype = torch.float32) -> tuple:
    """The softmax kernels that run on ``device`` in ``dtype`` here: "splitkv" needs the Triton kernels (a CUDA
    GPU, or the interpreter on a CPU)."""
    module, _ = recurrent._triton_module()
    probe = torch.empty(0, device=device, dtype=dtype)
    runs = module is not None and module.is_supported(probe)
    return tuple(k for k in SOFTMAX_KERNELS if k != "splitkv" or runs)
_MASKED_BACKENDS = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


class StaticDecoder:
    """Greedy decoding of ``model`` with every buffer preallocated, so one step can be captured in a CUDA graph.

    Usage: ``dec = StaticDecoder(model, batch, capacity)``; ``dec.prefill(prompt)`` (or :meth:`load` of a model
    cache); then :meth:`step` (one token; replays the graph after :meth:`capture`) or :meth:`generate`.
    ``dec.token: [batch, 1]`` always holds the next input token (the greedy choice after the last step).

    Args:
        model: a :class:`~logattn_ref.model.GPT`; put in eval mode (dropout must not run in a captured step).
            Its parameters' dtype is the step's dtype (the log arms keep their states in float32).
        batch: rows decoded at once (positive integer).
        capacity: the most tokens (prompt plus generated) the decoder will hold; sizes the softmax KV cache,
            and bounds a ``position='learned'`` model (which has ``block_size`` positions).
        fused: ``"log-signed"`` only: the Triton step of :class:`~logattn_ref.recurrent.Decoder`. None: on CUDA.
        softmax_kernel: ``"softmax"`` only: one of :data:`SOFTMAX_KERNELS` that runs here
            (:func:`available_softmax_kernels`).

    Raises:
        TypeError: ``model`` is not a GPT. ValueError: ``batch``, ``capacity`` or ``softmax_kernel`` invalid, or
        ``capacity`` past ``block_size`` for a ``position='learned'`` model.
    """

    def __init__(self, model: GPT, batch: int, capacity: int, fused: Optional[bool] = None,
                 softmax_kernel: str = "sdpa"):
        if not isinstance(model, GPT):
            raise TypeError(f"model must be a logattn_ref.model.GPT, got {type(model).__name__}")
        for name, value in (("batch", batch), ("capacity", capacity)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if softmax_kernel not in SOFTMAX_KERNELS:
            raise ValueError(f"softmax_kernel must be one of {SOFTMAX_KERNELS}, got {softmax_kernel!r}")
        config: ModelConfig = model.config
        if config.position == "learned" and capacity > config.block_size:
            raise ValueError(
                f"capacity={capacity} is past block_size={config.block_size}: a position='learned' model has "
                f"{config.block_size} positions; use position='shift' to decode past the training context")
        model.eval()
        param = next(model.parameters())
        available = available_softmax_kernels(param.device, param.dtype)
        if softmax_kernel not in available:
            raise ValueError(f"softmax_kernel={softmax_kernel!r} does not run on {param.device} in {param.dtype} here "
                             f"(available: {available})")
        self.model, self.config, self.batch, self.capacity = model, config, batch, capacity
        self.device, self.dtype = param.device, param.dtype
        self.arm = config.attention
        self.softmax_kernel = softmax_kernel
        if fused is None:
            fused = self.device.type == "cuda" and self.arm == "log-signed"
        self.fused = bool(fused) and self.arm == "log-signed"
        self.length = 0  # host-side count of tokens in the decoder (for the capacity check only)
        b, h, d, c, dev = batch, config.n_head, config.head_size, config.n_embd, self.device
        self.token = torch.zeros(b, 1, dtype=torch.long, device=dev)
        self.position = torch.zeros(1, dtype=torch.long, device=dev)  # the next token's index, on the device
        self.logits = torch.zeros(b, config.vocab_size, dtype=self.dtype, device=dev)
        shift = config.position == "shift"
        self.prev = [torch.zeros(b, 1, c, dtype=self.dtype, device=dev) if shift else None for _ in model.blocks]
        self.keys: List[torch.Tensor] = []
        self.values: List[torch.Tensor] = []
        self.log_states: List[tuple] = []
        self.decoders: List[recurrent.Decoder] = []
        for _ in model.blocks:
            if self.arm == "softmax":
                # Zero-filled: a masked score becomes -inf, but a NaN in an unfilled value row would still
                # reach the output through 0 * NaN.
                self.keys.append(torch.zeros(b, h, capacity, d, dtype=self.dtype, device=dev))
                self.values.append(torch.zeros(b, h, capacity, d, dtype=self.dtype, device=dev))
            elif self.arm == "log":
                self.log_states.append((torch.full((b, h, d, d), float("-inf"), device=dev),
                                        torch.full((b, h, d), float("-inf"), device=dev)))
            else:
                self.decoders.append(recurrent.Decoder((b, h), d, d, device=dev, fused=self.fused))
        self._slots = torch.arange(capacity, device=dev)
        self._graph = None

    # ----------------------------------------------------------------- sizes
    def memory_bytes(self) -> int:
        """Bytes of the attention memory (KV cache or states) of every layer, from the buffers themselves."""
        tensors = list(self.keys) + list(self.values) + [t for pair in self.log_states for t in pair]
        tensors += [t for dec in self.decoders for t in (dec.state.sum_kv, dec.state.sum_k, dec.state.key_max)]
        return sum(t.numel() * t.element_size() for t in tensors)

    # ----------------------------------------------------------------- filling
    def _autocast(self):
        low = self.dtype in (torch.bfloat16, torch.float16)
        # The model's cache path returns float32 log Y for the "log" arm; autocast feeds it to a low-precision
        # projection. In float32 there is nothing to cast.
        return torch.autocast(self.device.type, dtype=self.dtype) if low else nullcontext()

    @torch.no_grad()
    def prefill(self, prompt: torch.Tensor, block: int = 4096) -> None:
        """Run ``prompt`` through the model's own cache path in blocks of ``block`` tokens, then :meth:`load` it.

        ``prompt: [1, T]`` (copied into every row) or ``[batch, T]`` token ids, T >= 1. The log arms' cache is
        a constant-size state, so their memory does not grow with T.
        """
        if not isinstance(prompt, torch.Tensor) or prompt.dim() != 2 or prompt.shape[0] not in (1, self.batch) \
                or prompt.shape[1] < 1:
            raise ValueError(f"prompt must be token ids [1 or batch={self.batch}, T >= 1], got "
                             f"{getattr(prompt, 'shape', type(prompt).__name__)}")
        if not isinstance(block, int) or block < 1:
            raise ValueError(f"block must be a positive integer, got {block!r}")
        cache = self.model.new_cache()
        with self._autocast():
            for start in range(0, prompt.shape[1], block):
                logits, _ = self.model(prompt[:, start:start + block].to(self.device), cache=cache)
        self.load(cache, logits[:, -1])

    @torch.no_grad()
    def load(self, cache: List[LayerCache], last_logits: torch.Tensor) -> None:
        """Copy a model cache (from ``model(idx, cache=cache)``, batch 1 or ``batch``) into the static buffers.

        ``last_logits: [1 or batch, vocab]``, the logits of the cache's last token: its greedy choice becomes
        the first input token. Rows of a batch-1 cache are copied into every row (identical rows).

        Raises:
            ValueError: the cache is empty, holds more than ``capacity`` tokens, or has another batch size.
        """
        if len(cache) != len(self.model.blocks) or cache[0].seen < 1:
            raise ValueError("cache must be the model's per-layer cache after at least one token")
        length = cache[0].seen
        if length >= self.capacity:
            raise ValueError(f"the cache holds {length} tokens; capacity={self.capacity} leaves no room to decode")
        rows = last_logits.shape[0]
        if rows not in (1, self.batch):
            raise ValueError(f"last_logits must have 1 or batch={self.batch} rows, got {rows}")
        for i, layer in enumerate(cache):
            if self.prev[i] is not None:
                self.prev[i].copy_(layer.prev)
            if self.arm == "softmax":
                self.keys[i].zero_()
                self.values[i].zero_()
                self.keys[i][:, :, :length].copy_(layer.keys[:, :, :length])
                self.values[i][:, :, :length].copy_(layer.values[:, :, :length])
            elif self.arm == "log":
                log_s, log_z = layer.state
                self.log_states[i][0].copy_(log_s)
                self.log_states[i][1].copy_(log_z)
            else:
                target = self.decoders[i].state
                for dst, src in ((target.sum_kv, layer.state.sum_kv), (target.sum_k, layer.state.sum_k),
                                 (target.key_max, layer.state.key_max)):
                    dst.copy_(src)
        self.logits.copy_(last_logits)
        self.token.copy_(last_logits.argmax(dim=-1, keepdim=True))
        self.position.fill_(length)
        self.length = length

    # ----------------------------------------------------------------- the step
    def _attend(self, i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """One token's attention in layer i: q, k, v ``[B, H, 1, D]`` -> ``[B, H, 1, D]`` (model dtype)."""
        if self.arm == "softmax":
            keys, values = self.keys[i], self.values[i]
            keys.index_copy_(2, self.position, k)  # the position is a device tensor: no host int in the graph
            values.index_copy_(2, self.position, v)
            filled = (self._slots <= self.position).view(1, 1, 1, -1)  # [1, 1, 1, capacity]
            if self.softmax_kernel == "splitkv":  # reads slots 0..position only, no mask tensor
                return recurrent._triton_module()[0].softmax_decode_triton(q[:, :, 0], keys, values,
                                                                           self.position)[:, :, None]
            if self.softmax_kernel == "sdpa":
                with sdpa_kernel(_MASKED_BACKENDS):
                    return F.scaled_dot_product_attention(q, keys, values, attn_mask=filled)
            scores = (q @ keys.transpose(-1, -2)) * (q.shape[-1] ** -0.5)  # [B, H, 1, capacity]
            weights = scores.masked_fill(~filled, float("-inf")).softmax(dim=-1, dtype=torch.float32)
            return weights.to(values.dtype) @ values
        if self.arm == "log":
            log_s, log_z = self.log_states[i]  # H^(S) [B, H, d_k, d_v], H^(Z) [B, H, d_k]
            q_t, k_t, log_v = (x[:, :, 0].float() for x in (q, k, v))
            torch.logaddexp(log_s, k_t[..., :, None] + log_v[..., None, :], out=log_s)  # eq. 6
            torch.logaddexp(log_z, k_t, out=log_z)
            log_num = torch.logsumexp(q_t[..., :, None] + log_s, dim=-2)  # log S [B, H, d_v] (eq. 5)
            log_den = torch.logsumexp(q_t + log_z, dim=-1, keepdim=True)  # log Z [B, H, 1]
            return (log_num - log_den)[:, :, None].to(q.dtype)  # log Y (eq. 2)
        return self.decoders[i].step(q[:, :, 0], k[:, :, 0], v[:, :, 0])[:, :, None]

    def _step(self) -> None:
        model = self.model
        x = model.embed(self.token)  # [B, 1, C]
        if model.position is not None:
            x = x + model.position(self.position)  # [1, C], indexed by the device-side position
        for i, block in enumerate(model.blocks):
            h = block.norm_attn(x)
            # qkv reads the token shift's previous input from the cache and rebinds cache.prev to h; the
            # static buffer is updated in place after q, k, v are computed from it.
            q, k, v = block.attn.qkv(h, LayerCache(prev=self.prev[i]))
            if self.prev[i] is not None:
                self.prev[i].copy_(h)
            x = x + block.attn.output(self._attend(i, q, k, v).to(x.dtype))
            x = x + block.mlp(block.norm_mlp(x))
        self.logits.copy_(model.head(model.norm(x))[:, -1])
        self.token.copy_(self.logits.argmax(dim=-1, keepdim=True))
        self.position.add_(1)

    @torch.no_grad()
    def step(self) -> torch.Tensor:
        """Consume ``self.token`` and write the next greedy token into it; returns ``self.token`` ``[batch, 1]``.

        After :meth:`capture` this is one graph replay. No host synchronisation either way.

        Raises:
            RuntimeError: nothing loaded yet, or the decoder is full (``capacity`` tokens).
        """
        if self.length < 1:
            raise RuntimeError("prefill (or load) a prompt before stepping")
        if self.length >= self.capacity:
            raise RuntimeError(f"the decoder is full: capacity={self.capacity} tokens")
        if self._graph is not None:
            self._graph.replay()
        else:
            self._step()
        self.length += 1
        return self.token

    @torch.no_grad()
    def generate(self, max_new_tokens: int) -> torch.Tensor:
        """The next ``max_new_tokens`` greedy tokens ``[batch, max_new_tokens]``, as ``GPT.generate(greedy=True)``
        continues the prompt: the first is the choice after the prompt, each later one costs one :meth:`step`."""
        if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
        out = []
        for i in range(max_new_tokens):
            out.append(self.token.clone())
            if i + 1 < max_new_tokens:
                self.step()
        return torch.cat(out, dim=1) if out else self.token.new_empty(self.batch, 0)

    def _small_buffers(self) -> List[torch.Tensor]:
        """Everything a step changes except the KV cache (whose written slot lies past the restored position)."""
        tensors = [self.token, self.position, self.logits] + [p for p in self.prev if p is not None]
        tensors += [t for pair in self.log_states for t in pair]
        tensors += [t for dec in self.decoders for t in (dec.state.sum_kv, dec.state.sum_k, dec.state.key_max)]
        return tensors

    @torch.no_grad()
    def capture(self, warmup: int = 2) -> None:
        """Record one whole-model step into a CUDA graph; :meth:`step` then replays it.

        Warm-up steps (on a side stream, as PyTorch recommends before capture; they also compile the Triton
        kernel) and the capture itself run on the live buffers, so every buffer a step changes is saved first
        and restored after: capturing leaves the decoder as it was. (The KV cache is not copied: the slot the
        warm-up wrote lies at the restored position, which the next step overwrites and the mask hides.)

        Raises:
            RuntimeError: the decoder is not on a CUDA device, or nothing is loaded.
        """
        if self.device.type != "cuda":
            raise RuntimeError("capture needs the model on a CUDA device; on the CPU, step() runs eagerly")
        if self.length < 1 or self.length + 1 > self.capacity:
            raise RuntimeError("capture needs a loaded decoder with room for one more token")
        saved = [t.clone() for t in self._small_buffers()]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self._restore(saved)
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        self._restore(saved)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step()
        self._restore(saved)
        torch.cuda.synchronize(self.device)
        self._graph = graph

    def _restore(self, saved: List[torch.Tensor]) -> None:
        for dst, src in zip(self._small_buffers(), saved):
            dst.copy_(src)

    def rewind(self, length: int) -> None:
        """Set the position back to ``length`` tokens (device copy; the benchmark keeps the softmax cache's
        read within ``capacity`` this way). The states of the log arms are not rewound: their cost per step
        does not depend on what they hold."""
        self.position.fill_(length)
        self.length = length


# --------------------------------------------------------------------------- the benchmark
def crossover_contexts(rows: Iterable[dict], batch: int, arms: Sequence[str] = ("log", "log-signed")) -> Dict[str, dict]:
    """Per log arm, the smallest measured context from which its tokens/s stays above softmax's (batch ``batch``).

    ``rows``: benchmark rows with ``arm``, ``batch``, ``context`` and ``tokens_per_s`` (rows without it, e.g.
    errors or skips, are ignored). Softmax at a context is its best row there (over its kernels). Only contexts
    where both were measured count. Returns ``{arm: {"context": int or None, "ratio": log / softmax tokens/s at
    that context (or, when None, at the largest common context), "contexts_compared": n}}``; ``context`` is None
    when the arm is never ahead at the largest common context (or nothing was compared).
    """
    measured = [r for r in rows if r.get("batch") == batch and isinstance(r.get("tokens_per_s"), (int, float))]
    softmax: Dict[int, float] = {}
    for r in measured:
        if r["arm"] == "softmax":
            softmax[r["context"]] = max(softmax.get(r["context"], 0.0), r["tokens_per_s"])
    result = {}
    for arm in arms:
        speed: Dict[int, float] = {}
        for r in measured:
            if r["arm"] == arm:
                speed[r["context"]] = max(speed.get(r["context"], 0.0), r["tokens_per_s"])
        common = sorted(set(speed) & set(softmax))
        ratios = [speed[c] / softmax[c] for c in common]
        context, ratio = None, (ratios[-1] if ratios else None)
        for j in range(len(common) - 1, -1, -1):  # walk down from the longest context while ahead
            if ratios[j] <= 1.0:
                break
            context, ratio = common[j], ratios[j]
        result[arm] = {"context": context, "ratio": ratio, "contexts_compared": len(common)}
    return result


def _slug(device_name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", device_name.lower()).strip("_")


def _time_steps(dec: StaticDecoder, context: int, replays: int, blocks: int, warmup: int) -> dict:
    """Seconds per step: median, p10, p90 over ``blocks`` blocks of ``replays`` steps (after ``warmup``)."""
    cuda = dec.device.type == "cuda"
    dec.rewind(context)
    for _ in range(warmup):
        dec.step()
    per_step = []
    for _ in range(blocks):
        dec.rewind(context)
        if cuda:
            torch.cuda.synchronize(dec.device)
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(replays):
                dec.step()
            stop.record()
            stop.synchronize()
            per_step.append(start.elapsed_time(stop) / 1e3 / replays)
        else:
            t0 = time.perf_counter()
            for _ in range(replays):
                dec.step()
            per_step.append((time.perf_counter() - t0) / replays)
    per_step.sort()
    return {"median_s": statistics.median(per_step), "p10_s": per_step[int(0.1 * (len(per_step) - 1))],
            "p90_s": per_step[int(math.ceil(0.9 * (len(per_step) - 1)))], "blocks": blocks,
            "replays_per_block": replays, "warmup_replays": warmup}


def _state_bytes_estimate(config: ModelConfig, arm: str, batch: int, capacity: int, itemsize: int) -> int:
    h, d, layers = config.n_head, config.head_size, config.n_layer
    if arm == "softmax":
        # KV cache, plus the step's scores/weights [B, H, capacity] in float32 (a few copies)
        return layers * 2 * batch * h * capacity * d * itemsize + 4 * batch * h * capacity * 4
    return layers * batch * h * (d * d + 2 * d) * 4 * 3  # states, plus the per-step temporaries


def _measure(model: GPT, cache, last_logits, arm: str, kernel: str, batch: int, context: int, args,
             device: torch.device) -> dict:
    cuda = device.type == "cuda"
    # Room for the longest run of steps between rewinds, rounded up to 16 slots (aligned rows for the kernels)
    capacity = -(-(context + max(args.replays, args.warmup) + 1) // 16) * 16
    row: dict = {}
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        need = _state_bytes_estimate(model.config, arm, batch, capacity, next(model.parameters()).element_size())
        free, _ = torch.cuda.mem_get_info(device)
        if need > 0.85 * free:
            return {"skipped": f"needs ~{need / 2**30:.1f} GiB of static buffers, {free / 2**30:.1f} GiB free"}
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    dec = StaticDecoder(model, batch, capacity, fused=kernel == "fused",
                        softmax_kernel=kernel if arm == "softmax" else "sdpa")
    dec.load(cache, last_logits)
    row["state_bytes"] = dec.memory_bytes()
    if cuda:
        t0 = time.perf_counter()
        dec.capture()
        row["capture_s"] = time.perf_counter() - t0
    row.update(_time_steps(dec, context, args.replays, args.blocks, args.warmup))
    row["tokens_per_s"] = batch / row["median_s"]
    row["graph"] = dec._graph is not None
    row["keys_read_per_step"] = capacity if arm == "softmax" else None
    if cuda:
        torch.cuda.synchronize(device)
        row["peak_bytes"] = int(torch.cuda.max_memory_allocated(device) - base)
    del dec
    return row


def plot(result: dict, path: Path) -> Path:
    """Tokens/s against context (log x, log y), one panel per batch size, one line per arm (and kernel)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = result["settings"]["batches"]
    fig, axes = plt.subplots(1, len(batches), figsize=(5.5 * len(batches), 4), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        rows = [r for r in result["rows"] if r["batch"] == batch and "tokens_per_s" in r]
        for label in sorted({(r["arm"], r["kernel"]) for r in rows}):
            pts = sorted((r["context"], r["tokens_per_s"]) for r in rows if (r["arm"], r["kernel"]) == label)
            ax.plot(*zip(*pts), marker="o", label=f"{label[0]} ({label[1]})")
        ax.set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel="tokens / s",
               title=f"batch {batch}, {result['settings']['dtype']}, {result['environment']['device']}")
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _table(result: dict) -> str:
    lines = [f"{'arm':<11} {'kernel':<7} {'batch':>5} {'context':>9} {'tokens/s':>11} {'ms/step':>8} "
             f"{'state MiB':>10} {'peak MiB':>9}  note"]
    for r in result["rows"]:
        note = r.get("error") or r.get("skipped") or ""
        tps = f"{r['tokens_per_s']:11.0f}" if "tokens_per_s" in r else f"{'-':>11}"
        ms = f"{r['median_s'] * 1e3:8.3f}" if "median_s" in r else f"{'-':>8}"
        st = f"{r['state_bytes'] / 2**20:10.2f}" if "state_bytes" in r else f"{'-':>10}"
        pk = f"{r['peak_bytes'] / 2**20:9.0f}" if r.get("peak_bytes") is not None else f"{'-':>9}"
        lines.append(f"{r['arm']:<11} {r['kernel']:<7} {r['batch']:>5} {r['context']:>9} {tps} {ms} {st} {pk}  "
                     f"{note[:60]}")
    for batch, arms in result["crossover"].items():
        for arm, c in arms.items():
            lines.append(f"crossover batch {batch}, {arm}: context {c['context']} (ratio {c['ratio']})")
    return "\n".join(lines)


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def markdown_table(result: dict) -> str:
    """The README's decode table, written from a benchmark result (so no figure is typed by hand).

    One line per (batch, context): tokens/s of every (arm, kernel) measured there ("–" where not measured) and
    each arm's KV cache or state size; then the crossover context per batch from ``result["crossover"]``.
    """
    settings, env = result["settings"], result["environment"]
    model = settings["model"]
    rows = [r for r in result["rows"] if "tokens_per_s" in r]
    labels = sorted({(r["arm"], r["kernel"]) for r in rows}, key=lambda a: (settings["arms"].index(a[0]), a[1]))
    arms = [a for a in settings["arms"] if any(r["arm"] == a for r in rows)]
    lines = [f"{env.get('gpu', env['device'])}, torch {env['torch']}, {env['date_utc'][:10]}; the whole model's "
             f"greedy decode step {'in one CUDA graph' if all(r['graph'] for r in rows) else 'eager'}, {settings['dtype']}, "
             f"the `shakespeare` architecture ({model['n_layer']} layers, {model['n_head']} heads, "
             f"{model['n_embd']} wide) with {settings['weights'].split(';')[0]} weights; tokens/s = batch / median "
             "seconds per step; memory = KV cache (softmax) or state (log arms) of every layer.", "",
             "| batch | context | " + " | ".join(f"{a} `{k}` tokens/s" for a, k in labels) + " | "
             + " | ".join(f"{a} {'KV cache' if a == 'softmax' else 'state'}" for a in arms) + " |",
             "|---:|---:|" + "---:|" * (len(labels) + len(arms))]
    for batch, context in sorted({(r["batch"], r["context"]) for r in rows}):
        here = [r for r in rows if r["batch"] == batch and r["context"] == context]
        speed = {(r["arm"], r["kernel"]): r["tokens_per_s"] for r in here}
        memory = {r["arm"]: r["state_bytes"] for r in here}
        cells = [f"{speed[label]:,.0f}" if label in speed else "–" for label in labels]
        cells += [_size(memory[a]) if a in memory else "–" for a in arms]
        lines.append(f"| {batch} | {context:,} | " + " | ".join(cells) + " |")
    lines.append("")
    for batch, per_arm in result["crossover"].items():
        said = [f"`{arm}` from context {c['context']:,} on ({c['ratio']:.2f}× there)" if c["context"] is not None
                else f"`{arm}` never ({c['ratio']:.2f}× at the longest common context)" for arm, c in per_arm.items()]
        lines.append(f"- Crossover at batch {batch}, {settings['dtype']} (each log arm's fastest kernel against the "
                     "fastest softmax kernel at each context): " + "; ".join(said) + ".")
    return "\n".join(lines)


def _plan(args, arms: Sequence[str]) -> List[dict]:
    """Every configuration, in the order run: each arm's contexts ascending (its prefill continues from one
    to the next), the log arms' long contexts at batch 1 last."""
    plan = []
    for arm in arms:
        if arm == "softmax":  # the Triton kernel is timed on a GPU only (the interpreter is no benchmark)
            kernels = available_softmax_kernels(args.device) if args.device == "cuda" else ("sdpa", "matmul")
        elif arm == "log-signed" and args.device == "cuda":
            kernels = ("fused", "torch")  # the Triton step, and recurrent.Decoder's PyTorch ops beside it
        else:
            kernels = ("torch",)
        contexts = sorted(set(args.contexts) | (set(args.long_contexts) if arm != "softmax" else set()))
        for context in contexts:
            long = context not in args.contexts
            for batch in ([min(args.batches)] if long else args.batches):
                for kernel in kernels:
                    plan.append({"arm": arm, "kernel": kernel, "batch": batch, "context": context})
    return plan


def main(argv: Optional[List[str]] = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m logattn_ref.decode", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for decode_<gpu>.json and .png")
    parser.add_argument("--quick", action="store_true", help="CPU smoke test: tiny model, eager steps, seconds")
    parser.add_argument("--budget-s", type=float, default=120.0,
                        help="wall-clock seconds after which no new configuration starts (default 120; the one "
                             "running then finishes, e.g. a long prefill)")
    parser.add_argument("--batches", type=int, nargs="+", default=None)
    parser.add_argument("--contexts", type=int, nargs="+", default=None, help="contexts for every arm")
    parser.add_argument("--long-contexts", type=int, nargs="*", default=None,
                        help="longer contexts for the log arms, at the smallest batch only")
    parser.add_argument("--arms", nargs="+", default=["softmax", "log", "log-signed"],
                        choices=["softmax", "log", "log-signed"])
    parser.add_argument("--replays", type=int, default=None, help="steps per timed block")
    parser.add_argument("--blocks", type=int, default=None, help="timed blocks (median, p10, p90 over them)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps before the timed blocks")
    parser.add_argument("--prefill-block", type=int, default=4096, help="prompt tokens per model call")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.quick:
        device = torch.device("cpu")
        model_sizes = dict(block_size=64, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
        dtype = torch.float32
        defaults = dict(batches=[1, 3], contexts=[16, 40], long_contexts=[100], replays=3, blocks=3, warmup=1)
    else:
        if not torch.cuda.is_available():
            parser.error("the full benchmark needs a CUDA GPU; use --quick for the CPU smoke test")
        device = torch.device("cuda")
        from .train import PRESETS

        model_sizes = {**PRESETS["shakespeare"]["model"], "dropout": 0.0}
        dtype = torch.bfloat16
        defaults = dict(batches=[1, 64], contexts=[256, 1024, 4096, 16384, 65536],
                        long_contexts=[262144, 1048576], replays=20, blocks=7, warmup=5)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("replays", "blocks", "prefill_block"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or min(args.batches + args.contexts + (args.long_contexts or [1])) < 1:
        parser.error("--warmup must be >= 0, and every batch and context >= 1")
    args.device = device.type
    args.out.mkdir(parents=True, exist_ok=True)
    env = run_environment(device)
    slug = "quick_cpu" if args.quick else _slug(env["device"])
    json_path, png_path = args.out / f"decode_{slug}.json", args.out / f"decode_{slug}.png"
    plan = _plan(args, args.arms)
    result = {
        "environment": env,
        "settings": {
            "model": model_sizes, "weights": "random (seed 0); a step's cost does not depend on them",
            "dtype": str(dtype).replace("torch.", ""), "batches": args.batches, "contexts": args.contexts,
            "long_contexts": args.long_contexts, "arms": args.arms, "replays_per_block": args.replays,
            "blocks": args.blocks, "warmup_replays": args.warmup, "prefill_block": args.prefill_block,
            "budget_s": args.budget_s, "quick": args.quick, "cuda_graph": device.type == "cuda",
        },
        "notes": [
            "One decode step = the whole model (embedding, every layer's norm, q/k/v with token shift, attention "
            "step, output, MLP, final norm, head, greedy argmax into the input buffer); on CUDA captured in one "
            "CUDA graph and replayed, so launch overhead is not what is measured (CPU --quick: eager).",
            "The context is a real prompt of random token ids prefilled at batch 1 through the model's own cache "
            "path (model(idx, cache=...) in blocks of prefill_block tokens; bf16 autocast on CUDA), continued "
            "from one context to the next; its KV cache or state is then copied into every row of the batch "
            "(identical rows: the decode cost does not depend on the values).",
            "Timing: warm-up replays, then blocks of replays_per_block steps between two CUDA events (wall clock "
            "on the CPU); median_s, p10_s, p90_s are seconds per step over the blocks; tokens_per_s = batch / "
            "median_s. Before each block the position is rewound to the context.",
            "softmax reads its whole static cache every step: keys_read_per_step = context + "
            "max(replays_per_block, warmup_replays) + 1 rounded up to a multiple of 16 (e.g. 288 at context "
            "256, 65,568 at 65,536), so short contexts pay for up to 12.5% extra keys. Kernels: 'sdpa' = "
            "scaled_dot_product_attention with a boolean mask (flash attention takes no mask; efficient or math "
            "backend), 'matmul' = q K^T, masked softmax, times V, 'splitkv' = the split-KV Triton kernel "
            "(triton_kernels.softmax_decode_triton, flash-decoding's idea). The crossover compares each log arm with the "
            "fastest softmax kernel at each context.",
            "log: states H^(S), H^(Z) in float32 updated in place with logaddexp (eq. 6), read with eq. 5; "
            "log-signed: recurrent.Decoder's in-place state, fused Triton step on CUDA.",
            "state_bytes: KV cache or states of every layer, from the buffers. peak_bytes: "
            "max_memory_allocated during build, load, capture and timing, minus what was allocated before "
            "(model weights and the batch-1 prefill cache excluded).",
            "Not measured: prefill speed (prefill_s is the time to extend the batch-1 prompt, for information), "
            "sampling other than greedy, a trained model's output quality, multi-GPU, torch.compile.",
        ],
        "rows": [],
        "crossover": {},
        "stopped_early": None,
    }
    print(f"decode benchmark on {env['device']} ({len(plan)} configurations), writing {json_path}")
    torch.manual_seed(0)
    gen = torch.Generator(device="cpu").manual_seed(0)
    state: dict = {}  # per arm: model, cache, filled length, last logits

    def save() -> None:
        result["elapsed_s"] = time.perf_counter() - started
        result["crossover"] = {str(b): crossover_contexts(result["rows"], b) for b in args.batches}
        write_json(json_path, result)

    for config in plan:
        row = dict(config)
        if result["stopped_early"] is not None:
            row["skipped"] = "wall-clock budget spent"
            result["rows"].append(row)
            continue
        elapsed = time.perf_counter() - started
        if elapsed > args.budget_s:
            result["stopped_early"] = (f"budget {args.budget_s:.0f} s spent after {elapsed:.0f} s: no new "
                                       f"configuration started from {config}")
            row["skipped"] = "wall-clock budget spent"
            result["rows"].append(row)
            print(result["stopped_early"])
            save()
            continue
        arm, context = config["arm"], config["context"]
        try:
            if state.get("arm") != arm:
                state.clear()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                torch.manual_seed(0)
                model = GPT(ModelConfig(**model_sizes, attention=arm)).to(device=device, dtype=dtype)
                state.update(arm=arm, model=model, cache=model.new_cache(), filled=0, logits=None, error=None)
                result["settings"].setdefault("parameters", {})[arm] = model.num_parameters()
            if state["error"] is not None:
                raise RuntimeError(f"this arm's prefill failed earlier: {state['error']}")
            if state["filled"] < context:
                t0 = time.perf_counter()
                model = state["model"]
                try:
                    with torch.no_grad(), (torch.autocast("cuda", dtype=dtype) if device.type == "cuda"
                                           else nullcontext()):
                        while state["filled"] < context:
                            size = min(args.prefill_block, context - state["filled"])
                            ids = torch.randint(model.config.vocab_size, (1, size), generator=gen).to(device)
                            logits, _ = model(ids, cache=state["cache"])
                            state["logits"] = logits[:, -1].to(dtype)
                            state["filled"] += size
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                except Exception as exc:
                    state["error"] = f"{type(exc).__name__}: {exc}"
                    raise
                row["prefill_s"] = time.perf_counter() - t0
            row.update(_measure(state["model"], state["cache"], state["logits"], arm, config["kernel"],
                                config["batch"], context, args, device))
        except Exception as exc:  # recorded, and the next configuration runs
            row["error"] = f"{type(exc).__name__}: {exc}"[:500]
            if device.type == "cuda":
                torch.cuda.empty_cache()
        result["rows"].append(row)
        print(f"  {arm:<10} {config['kernel']:<6} batch {config['batch']:>3} context {context:>8}: "
              + (f"{row['tokens_per_s']:.0f} tokens/s" if "tokens_per_s" in row
                 else row.get("error") or row.get("skipped", "")), flush=True)
        save()
    save()
    plot(result, png_path)
    print(_table(result))
    print(f"wrote {json_path} and {png_path} in {result['elapsed_s']:.0f} s")
    return result


if __name__ == "__main__":
    main()
