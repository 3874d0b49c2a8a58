"""A small GPT-style character model whose attention is one setting: softmax, or the paper's log-of-exponentials.

``ModelConfig.attention`` picks the mechanism of every layer; everything else (norms, MLP, init, tied head,
position scheme) is identical across the three arms:

- ``"softmax"``: ordinary causal scaled dot-product attention (``F.scaled_dot_product_attention``).
- ``"log"``: the paper's variant (Heinsen, arXiv:2404.05843v1, its causal log-space form, eq. 4). The value
  projection is *read as* ``log V`` (so V = exp(.) > 0 without any constraint on the weights), the layer
  computes ``log Y`` with the library's log-space form :func:`logattn_ref.torch_attention.log_attention_logspace`,
  and ``log Y`` itself goes on to the output projection.
- ``"log-signed"``: the same similarity ``s_ij = log(exp(q_i) . exp(k_j))`` for V of any sign
  (:func:`logattn_ref.torch_attention.log_attention`); Y goes on.

The family's arms (issue 17; each computed by :mod:`logattn_ref.family`'s chunked form while training and its
recurrent step while decoding one token at a time):

- ``"linear-elu"``: normalised linear attention with phi(x) = elu(x) + 1 (Katharopoulos et al. 2020).
- ``"log-decay"``: the "log-signed" mechanism with a learned, data-dependent forget gate per head,
  ``g_t = sigmoid(w_h . x_t + b_h)`` (x_t the layer's normalised input): the state decays by g_t before token t
  is added (:func:`logattn_ref.family.exp_decay_chunked`). The biases start spread over the heads from 2 to 6
  (g from 0.88 to 0.998: memories of a few to a few hundred tokens), so that some heads start long-lived.
- ``"delta"``: DeltaNet's delta rule (:func:`logattn_ref.family.delta_chunked`): L2-normalised keys (and
  queries, so the read-out is bounded by the memory's size), a write strength ``beta_t = sigmoid(w_h . x_t +
  b_h)`` per head, no normaliser.
- ``"hybrid"``: layer 0 is softmax attention (its KV cache grows with the context), every later layer is
  "log-signed" (constant state). The one exact-recall layer can look pairs up; the constant states need not.

Position scheme (``ModelConfig.position``):

- ``"shift"`` (the default, every arm): no position embeddings at all. Each attention layer mixes its input with
  the previous token's input before the q/k/v projections (a learned per-channel "token shift", as in RWKV), and
  the causal mask supplies order beyond that. Why: learned position tables stop at the training context, and
  rotary embeddings rely on the dot product q.k, which the log arms do not compute; a token shift works for every
  arm, at any length, and in the streaming state it costs one stored vector per layer. Decoding is measured far
  past the training context, which only a length-free scheme allows.
- ``"learned"``: a learned absolute position table of ``block_size`` rows added to the token embedding, and no
  token shift: nanoGPT's scheme, the strongest softmax baseline at the training context. It cannot run past
  ``block_size`` tokens (a clear error says so).

``ModelConfig.head_dim`` sets the width of each head's query, key and value (``d_k = d_v``) independently of
``n_embd`` (default ``n_embd // n_head``), so the state size ``n_head * d_k * d_v`` can vary at a fixed width
and a fixed number of heads.

Generation (:meth:`GPT.generate`) keeps a per-layer cache: a growing KV cache for softmax, and for the log
arms a constant-size state (:mod:`logattn_ref.recurrent` for "log-signed", the log-space states of
:func:`logattn_ref.torch_attention.logspace_prefill` for "log"; prefill the prompt, then one step a token), so a log arm's cost per token does not grow with the context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from . import family, recurrent, torch_attention
from .torch_attention import LOGSPACE_METHODS, METHODS

__all__ = ["ATTENTIONS", "FAMILY_ATTENTIONS", "POSITIONS", "ATTENTION_METHODS", "ModelConfig", "LayerCache", "CausalSelfAttention", "Block", "GPT"]

ATTENTIONS = ("softmax", "log", "log-signed", "linear-elu", "log-decay", "delta", "hybrid")
#: The arms whose layers are :mod:`logattn_ref.family` forms (chunked in training, one step per decoded token).
FAMILY_ATTENTIONS = ("linear-elu", "log-decay", "delta")
POSITIONS = ("shift", "learned")
#: The ``attention_method`` values each arm accepts: the library's lists (softmax ignores it, so it takes the
#: methods both log arms share).
ATTENTION_METHODS = {
    "log": LOGSPACE_METHODS,
    "log-signed": METHODS,
    "softmax": tuple(m for m in METHODS if m in LOGSPACE_METHODS),
    # The family's arms have one form (chunked): "auto" and "chunked" both name it.
    **{arm: ("auto", "chunked") for arm in FAMILY_ATTENTIONS},
    "hybrid": METHODS,  # its log-signed layers take log-signed's methods; its softmax layer ignores it
}
#: Starting biases of "log-decay"'s gate, spread over the heads (sigmoid(2) = 0.88 ... sigmoid(6) = 0.998).
DECAY_BIAS_RANGE = (2.0, 6.0)
_DECODE_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@dataclass
class ModelConfig:
    """Sizes of the model. ``block_size`` is the training context; the model itself runs at any length."""

    vocab_size: int = 65
    block_size: int = 256
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.2
    attention: str = "softmax"
    attention_method: str = "auto"  # how the log arms compute (logattn_ref.torch_attention's ``method``)
    bias: bool = False
    position: str = "shift"  # "shift" (token shift, any length) or "learned" (absolute table, <= block_size)
    head_dim: Optional[int] = None  # d_k = d_v of each head; None: n_embd // n_head

    def __post_init__(self):
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        methods = ATTENTION_METHODS[self.attention]
        if self.attention_method not in methods:
            raise ValueError(
                f"attention_method must be one of {methods} for attention={self.attention!r}, "
                f"got {self.attention_method!r}"
            )
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {self.position!r}")
        if self.head_dim is None:
            if self.n_embd % self.n_head:
                raise ValueError(
                    f"n_embd={self.n_embd} must be divisible by n_head={self.n_head} (or set head_dim)"
                )
        elif not isinstance(self.head_dim, int) or self.head_dim < 1:
            raise ValueError(f"head_dim must be a positive integer or None, got {self.head_dim!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")

    @property
    def head_size(self) -> int:
        """``d_k = d_v`` of each head."""
        return self.head_dim if self.head_dim is not None else self.n_embd // self.n_head

    @property
    def inner_size(self) -> int:
        """Width of the concatenated heads, ``n_head * head_size`` (``n_embd`` unless ``head_dim`` is set)."""
        return self.n_head * self.head_size


@dataclass
class LayerCache:
    """What one layer remembers while generating.

    ``prev``: the layer's last normalised input ``[B, 1, C]`` (for the token shift); ``seen``: how many tokens
    the layer has processed. Softmax: ``keys`` and
    ``values`` ``[B, H, capacity, D]`` filled up to ``length``. ``"log-signed"``: ``state``, the library's
    recurrent state (:func:`logattn_ref.recurrent.initial_state`). ``"log"``: ``state`` is the pair
    ``(H^(S), H^(Z))``, the paper's log-space states (eq. 6; see ``_attend_log_state``). ``"linear-elu"``: a
    :class:`logattn_ref.family.LinearState`; ``"log-decay"``: a ``recurrent.LogAttentionState`` (decayed by its
    gate); ``"delta"``: the memory ``[B, H, d_k, d_v]``. ``"hybrid"``: layer 0 as softmax, the rest as
    "log-signed".
    """

    prev: Optional[torch.Tensor] = None
    seen: int = 0  # tokens this layer has processed (the next token's absolute position)
    keys: Optional[torch.Tensor] = None
    values: Optional[torch.Tensor] = None
    length: int = 0
    state: object = None


def layer_attention(config: ModelConfig, layer_index: int) -> str:
    """The mechanism of layer ``layer_index``: the arm's, except "hybrid" (softmax at layer 0, else log-signed)."""
    if config.attention == "hybrid":
        return "softmax" if layer_index == 0 else "log-signed"
    return config.attention


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int = 0):
        super().__init__()
        self.config = config
        self.kind = layer_attention(config, layer_index)  # this layer's mechanism
        self.n_head, self.head_size = config.n_head, config.head_size
        c, inner = config.n_embd, config.inner_size
        self.query = nn.Linear(c, inner, bias=config.bias)
        self.key = nn.Linear(c, inner, bias=config.bias)
        self.value = nn.Linear(c, inner, bias=config.bias)
        self.proj = nn.Linear(inner, c, bias=config.bias)
        # Token shift: input_for_q = x + mix_q * (x_prev - x), one mix per channel for each of q, k, v.
        # With learned absolute positions there is no shift (nanoGPT's block), so no parameter either.
        self.shift_mix = nn.Parameter(torch.full((3, c), 0.5)) if config.position == "shift" else None
        self.resid_dropout = nn.Dropout(config.dropout)
        # Per-head, per-token gates of the family's arms, read from the layer's normalised input.
        if self.kind == "log-decay":
            self.decay = nn.Linear(c, config.n_head, bias=True)
        elif self.kind == "delta":
            self.write_strength = nn.Linear(c, config.n_head, bias=True)

    def reset_gate_biases(self) -> None:
        """Start "log-decay"'s gate biases spread over :data:`DECAY_BIAS_RANGE` (called after the model's init)."""
        if self.kind == "log-decay":
            with torch.no_grad():
                self.decay.bias.copy_(torch.linspace(*DECAY_BIAS_RANGE, self.n_head))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_head, self.head_size).transpose(1, 2)  # [B, H, T, D]

    def forward(self, x: torch.Tensor, cache: Optional[LayerCache] = None) -> torch.Tensor:
        """``x: [B, T, C]`` (normalised) -> ``[B, T, C]``. With ``cache``, T new tokens continue it."""
        b, t, _ = x.shape
        q, k, v = self.qkv(x, cache)
        if self.kind in FAMILY_ATTENTIONS:
            y = self._attend_family(x, q, k, v, cache)
        elif cache is None:
            y = self._attend(q, k, v)
        elif self.kind == "softmax":
            y = self._attend_kv_cache(q, k, v, cache)
        else:
            y = self._attend_state(q, k, v, cache)
        return self.output(y)

    def output(self, y: torch.Tensor) -> torch.Tensor:
        """Heads ``y: [B, H, T, head_size]`` -> the layer's output ``[B, T, C]`` (concatenate, project)."""
        b, _, t, _ = y.shape
        y = y.transpose(1, 2).reshape(b, t, self.config.inner_size)
        return self.resid_dropout(self.proj(y))

    def qkv(self, x: torch.Tensor, cache: Optional[LayerCache] = None):
        """``x: [B, T, C]`` (normalised) -> q, k, v ``[B, H, T, head_size]``, the token shift applied.

        With ``cache`` the shift continues from the cached previous input, and ``cache.prev`` and ``cache.seen``
        advance by the T tokens (so call it once per new block of tokens).
        """
        b, t, c = x.shape
        if self.shift_mix is None:
            x_q = x_k = x_v = x
        else:
            first = cache.prev if cache is not None and cache.prev is not None else x.new_zeros(b, 1, c)
            x_prev = torch.cat([first, x[:, :-1]], dim=1)  # [B, T, C]: token t sees token t-1's input
            if cache is not None:
                cache.prev = x[:, -1:].detach()
            delta = x_prev - x
            x_q, x_k, x_v = (x + self.shift_mix[i] * delta for i in range(3))
        if cache is not None:
            cache.seen += t
        return self._heads(self.query(x_q)), self._heads(self.key(x_k)), self._heads(self.value(x_v))

    def _attend(self, q, k, v):
        kind = self.kind
        if kind == "softmax":
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if kind == "log":
            # v is read as log V; returns log Y
            return torch_attention.log_attention_logspace(q, k, v, causal=True, method=self.config.attention_method)
        return torch_attention.log_attention(q, k, v, causal=True, method=self.config.attention_method)

    def _attend_kv_cache(self, q, k, v, cache: LayerCache):
        t, start = q.shape[-2], cache.length
        if cache.keys is None or start + t > cache.keys.shape[-2]:
            # Grow the buffers geometrically: appending is then amortised O(1) per token, not a full copy.
            capacity = max(64, 2 * (start + t))
            keys = k.new_empty(k.shape[:-2] + (capacity, k.shape[-1]))
            values = v.new_empty(v.shape[:-2] + (capacity, v.shape[-1]))
            if start:
                keys[..., :start, :] = cache.keys[..., :start, :]
                values[..., :start, :] = cache.values[..., :start, :]
            cache.keys, cache.values = keys, values
        cache.keys[..., start : start + t, :] = k
        cache.values[..., start : start + t, :] = v
        cache.length = start + t
        keys, values = cache.keys[..., : cache.length, :], cache.values[..., : cache.length, :]
        if start == 0:
            return F.scaled_dot_product_attention(q, keys, values, is_causal=True)
        if t == 1:  # one new query sees every cached key
            # Not the cuDNN backend here: it builds a graph for every new key length (tens of ms per token
            # when the cache grows by one each step), which would charge softmax a cost that is not attention's.
            with sdpa_kernel(_DECODE_BACKENDS):
                return F.scaled_dot_product_attention(q, keys, values)
        mask = torch.ones(t, cache.length, dtype=torch.bool, device=q.device).tril(diagonal=start)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)

    def _attend_state(self, q, k, v, cache: LayerCache):
        if self.kind == "log":
            return self._attend_log_state(q, k, v, cache)
        if cache.state is None:
            cache.state = recurrent.initial_state(
                tuple(q.shape[:-2]), q.shape[-1], v.shape[-1], device=q.device, dtype=torch.float32
            )
        y, cache.state = recurrent.prefill(cache.state, q, k, v)
        return y.to(q.dtype)

    def _attend_log_state(self, q, k, log_v, cache: LayerCache):
        """The paper's recurrence in log space (eqs. 5-6) continued from a cached state, for the "log" arm.

        ``log_s: [B, H, d_k, d_v]`` and ``log_z: [B, H, d_k]`` are the states ``H^(S) = LSE_j(k_jf + log v_jd)``
        and ``H^(Z) = LSE_j(k_jf)`` over the tokens seen so far, starting empty at -inf (not at the paper's 0 of
        eq. 7, which would count a phantom token). :func:`logattn_ref.torch_attention.logspace_prefill` extends
        them block by block with a cumulative LSE, and token i reads ``log y_i = log S_i - log Z_i = LSE_f(q_if + H^(S)_i) - LSE_f(q_if + H^(Z)_i)``.
        Why not the any-sign state: it holds V = exp(log V) in linear space, and when log V spans more than
        float32's ~87 nats exp underflows and log(y) becomes -inf; in log space nothing under- or overflows.
        Memory is O(c * d_k * d_v) for the block (the prompt is fed in blocks), O(d_k * d_v) between calls.
        """
        log_y, cache.state = torch_attention.logspace_prefill(cache.state, q.float(), k.float(), log_v.float())
        return log_y


    def _attend_family(self, x, q, k, v, cache: Optional[LayerCache]):
        """The family's arms: the chunked form over a block (from the cached state, if any), the recurrent step
        for a single decoded token. ``x: [B, T, C]`` feeds the gates; q, k, v ``[B, H, T, D]``; returns y."""
        out_dtype = q.dtype
        q, k, v = q.float(), k.float(), v.float()
        state = cache.state if cache is not None else None
        one_token = cache is not None and q.shape[-2] == 1
        if one_token and state is None:  # the empty state of this arm
            batch, d_k, d_v = tuple(q.shape[:2]), q.shape[-1], v.shape[-1]
            state = (family.linear_initial_state(batch, d_k, d_v, "elu+1", device=q.device)
                     if self.kind == "linear-elu" else
                     recurrent.initial_state(batch, d_k, d_v, device=q.device) if self.kind == "log-decay" else
                     family.delta_initial_state(batch, d_k, d_v, device=q.device))
        if self.kind == "linear-elu":
            if one_token:
                y, state = family.linear_step(state, q[..., 0, :], k[..., 0, :], v[..., 0, :], "elu+1",
                                              check_values=False)
            else:
                y, state = family.linear_chunked(q, k, v, "elu+1", state=state, check_values=False)
        elif self.kind == "log-decay":
            log_gate = F.logsigmoid(self.decay(x).float()).transpose(1, 2)  # [B, H, T], log g <= 0
            if one_token:
                y, state = family.exp_decay_step(state, q[..., 0, :], k[..., 0, :], v[..., 0, :], log_gate[..., 0],
                                                 check_values=False)
            else:
                y, state = family.exp_decay_chunked(q, k, v, log_gate, state=state, check_values=False)
        else:  # delta
            beta = torch.sigmoid(self.write_strength(x).float()).transpose(1, 2)  # [B, H, T] in (0, 1)
            q = family.l2_normalize(q)
            if one_token:
                y, state = family.delta_step(state, q[..., 0, :], k[..., 0, :], v[..., 0, :], beta[..., 0],
                                             check_values=False)
            else:
                y, state = family.delta_chunked(q, k, v, beta, state=state, check_values=False)
        if one_token:
            y = y[..., None, :]
        if cache is not None:
            cache.state = state
        return y.to(out_dtype)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.up = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.down = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.down(F.gelu(self.up(x))))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, config: ModelConfig, layer_index: int = 0):
        super().__init__()
        self.norm_attn = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_index)
        self.norm_mlp = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cache: Optional[LayerCache] = None):
        x = x + self.attn(self.norm_attn(x), cache)
        return x + self.mlp(self.norm_mlp(x))


class GPT(nn.Module):
    """Token embedding -> ``n_layer`` blocks -> final norm -> head tied to the embedding."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.n_embd)
        # Learned absolute positions (nanoGPT's scheme) only when asked; the default arms have none.
        self.position = nn.Embedding(config.block_size, config.n_embd) if config.position == "learned" else None
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.head.weight = self.embed.weight  # tied: one matrix both reads and writes tokens
        self.apply(self._init_weights)
        # Residual branches end in proj/down; shrinking them keeps the residual stream's variance from
        # growing with depth at initialisation.
        for name, param in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.down.weight")):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        for block in self.blocks:
            block.attn.reset_gate_biases()

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_cache(self) -> List[LayerCache]:
        return [LayerCache() for _ in self.blocks]

    def forward(
        self,
        idx: torch.Tensor,
        targets: Optional[torch.Tensor] = None,
        cache: Optional[List[LayerCache]] = None,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Logits ``[B, T, vocab]`` for token ids ``idx: [B, T]``, and the mean cross-entropy when ``targets``
        ``[B, T]`` are given (the causal LM loss: position t predicts token t+1, so targets are idx shifted).

        With ``cache`` (from :meth:`new_cache`) the T tokens continue the cached context.

        Raises:
            ValueError: ``idx`` is not an integer tensor of shape [B, T], or holds ids outside the vocabulary.
        """
        if idx.dim() != 2 or idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"idx must be an int64 tensor [batch, tokens], got {idx.dtype} {tuple(idx.shape)}")
        if targets is not None and targets.shape != idx.shape:
            raise ValueError(f"targets must have idx's shape {tuple(idx.shape)}, got {tuple(targets.shape)}")
        x = self.embed(idx)
        if self.position is not None:
            start = cache[0].seen if cache is not None else 0
            end = start + idx.shape[1]
            if end > self.config.block_size:
                raise ValueError(
                    f"position='learned' has {self.config.block_size} positions (block_size); tokens "
                    f"{start}..{end - 1} were asked for: use position='shift' to run past the training context"
                )
            x = x + self.position(torch.arange(start, end, device=idx.device))
        x = self.dropout(x)
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache[i])
        logits = self.head(self.norm(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: Optional[int] = None,
        greedy: bool = False,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """Continue ``idx: [B, T]`` by ``max_new_tokens`` sampled tokens; returns ``[B, T + max_new_tokens]``.

        The prompt is prefilled into the cache in one call, then each new token costs one step: a KV-cache
        lookup for softmax (grows with context), a constant-size state update for the log arms.
        """
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if temperature <= 0 and not greedy:
            raise ValueError(f"temperature must be > 0 (or pass greedy=True), got {temperature}")
        was_training = self.training
        self.eval()
        cache = self.new_cache()
        out = [idx]
        logits, _ = self(idx, cache=cache)
        for i in range(max_new_tokens):
            last = logits[:, -1, :].float()
            if greedy:
                nxt = last.argmax(dim=-1, keepdim=True)
            else:
                last = last / temperature
                if top_k is not None:
                    kth = torch.topk(last, min(top_k, last.size(-1))).values[:, -1:]
                    last = last.masked_fill(last < kth, float("-inf"))
                nxt = torch.multinomial(torch.softmax(last, dim=-1), 1, generator=generator)
            out.append(nxt)
            if i + 1 < max_new_tokens:  # the last token needs no forward of its own
                logits, _ = self(nxt, cache=cache)
        self.train(was_training)
        return torch.cat(out, dim=1)
