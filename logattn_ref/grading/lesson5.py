"""Graded tasks of lesson 5 (the small model): the layer's head split around the log-space call, the causal
language-modelling loss, and greedy generation through the streaming cache.

Expected values come from the float64 oracle (:mod:`logattn_ref.numpy_ref`) for 5.1 and 5.2, and from the
full causal forward pass of the model (argmax at each step) for 5.3.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import numpy_ref
from ..model import GPT, ModelConfig
from .registry import Case, InputModified, Mistake, task

# --------------------------------------------------------------------------------------------------------
# 5.1 the attention core of a "log" layer: split heads, causal log-space attention, merge heads
# --------------------------------------------------------------------------------------------------------


def _np(t) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def _split(x: np.ndarray, n_head: int) -> np.ndarray:
    b, n, c = x.shape
    return x.reshape(b, n, n_head, c // n_head).transpose(0, 2, 1, 3)  # [B, H, T, D]


def _merge(y: np.ndarray) -> np.ndarray:
    b, h, n, d = y.shape
    return y.transpose(0, 2, 1, 3).reshape(b, n, h * d)


def _heads_reference(q, k, log_v, n_head):
    q, k, log_v = (_split(_np(t), n_head) for t in (q, k, log_v))
    return _merge(numpy_ref.log_attention_logspace(q, k, log_v, causal=True))


def _heads_no_transpose(q, k, log_v, n_head):
    b, n, c = q.shape
    view = lambda t: _np(t).reshape(b, n_head, n, c // n_head)  # heads taken from the wrong axis
    y = numpy_ref.log_attention_logspace(view(q), view(k), view(log_v), causal=True)
    return y.reshape(b, n, c)


def _heads_merge_without_transpose(q, k, log_v, n_head):
    q, k, log_v = (_split(_np(t), n_head) for t in (q, k, log_v))
    y = numpy_ref.log_attention_logspace(q, k, log_v, causal=True)
    return y.reshape(y.shape[0], y.shape[2], -1)


def _heads_not_causal(q, k, log_v, n_head):
    q, k, log_v = (_split(_np(t), n_head) for t in (q, k, log_v))
    return _merge(numpy_ref.log_attention_logspace(q, k, log_v, causal=False))


def _heads_linear_y(q, k, log_v, n_head):
    return np.exp(_heads_reference(q, k, log_v, n_head))


def _heads_one_head(q, k, log_v, n_head):
    return _heads_reference(q, k, log_v, 1)


def _heads_interleaved(q, k, log_v, n_head):
    b, n, c = q.shape
    d = c // n_head
    # Head h taken as features h, h + H, h + 2H, ...: a [B, T, D, H] view instead of [B, T, H, D].
    split = lambda t: _np(t).reshape(b, n, d, n_head).transpose(0, 3, 1, 2)
    y = numpy_ref.log_attention_logspace(split(q), split(k), split(log_v), causal=True)
    return y.transpose(0, 2, 3, 1).reshape(b, n, c)


@task(
    "5.1",
    "Heads around the log-space attention call",
    points=2,
    concept="split C into H heads of D = C/H ([B, T, C] -> [B, H, T, D]), run causal log-space attention per "
    "head, and merge back to [B, T, C]; the layer passes log Y on",
    hints=[
        "Reshape [B, T, C] to [B, T, H, D], then move the head axis in front of the token axis.",
        "Call logattn_ref.torch_attention.log_attention_logspace(q, k, log_v, causal=True) on [B, H, T, D] "
        "tensors: it returns log Y with the same shape.",
        "Merging is the inverse of splitting: transpose back to [B, T, H, D], then reshape to [B, T, C].",
    ],
    reference=_heads_reference,
    mistakes=[
        Mistake(_heads_no_transpose, "your head split takes heads from the wrong axis: view [B, T, C] as "
                "[B, T, H, D] and then transpose to [B, H, T, D]; a direct view to [B, H, T, D] mixes tokens"),
        Mistake(_heads_merge_without_transpose, "the merge must undo the split: transpose [B, H, T, D] back "
                "to [B, T, H, D] before reshaping to [B, T, C]"),
        Mistake(_heads_not_causal, "the attention must be causal: token i may only see tokens j <= i"),
        Mistake(_heads_linear_y, "the \"log\" layer passes log Y on (what log_attention_logspace returns); "
                "do not exponentiate it"),
        Mistake(_heads_one_head, "you attended with a single head over all C features: split into n_head heads"),
        Mistake(_heads_interleaved, "each head is a contiguous block of D = C/H features: view [B, T, C] as "
                "[B, T, H, D], not [B, T, D, H] (that interleaves the heads)"),
    ],
    rtol=1e-4,
    atol=1e-4,
)
def _cases_5_1(rng):
    def case(name, b, n, n_head, d, scale=1.0):
        c = n_head * d
        q, k, log_v = (torch.tensor(scale * rng.normal(size=(b, n, c)), dtype=torch.float32) for _ in range(3))
        return Case(name, (q, k, log_v, n_head))

    fixed = np.random.default_rng(5_1)  # corner cases: the same numbers on every check

    def corner(name, b, n, n_head, d, scale=1.0, spread=0.0):
        q, k, log_v = (scale * fixed.normal(size=(b, n, n_head * d)) for _ in range(3))
        q[0] += spread  # the rows of the batch differ by hundreds
        k[:, 0] += spread  # and a huge key at index 0
        return Case(name, tuple(torch.tensor(t, dtype=torch.float32) for t in (q, k, log_v)) + (n_head,), corner=True)

    return [
        corner("B=2, T=5, 3 heads of 2 (T, H, D all different)", 2, 5, 3, 2),
        corner("T = 6, 2 heads of 4, a batch row shifted by 300, a huge key at index 0", 2, 6, 2, 4, spread=300.0),
        case("B=2, T=7, 3 heads of 4", 2, 7, 3, 4),
        case("n = 1", 1, 1, 2, 5),
        case("T = 33, 4 heads of 2", 3, 33, 4, 2),
        case("large |q|, |k|, log V ~ 5", 2, 9, 2, 3, scale=5.0),
    ]


# --------------------------------------------------------------------------------------------------------
# 5.2 the causal language-modelling loss
# --------------------------------------------------------------------------------------------------------


def _lm_reference(logits, idx):
    z, t = _np(logits), idx.cpu().numpy()
    log_p = z - numpy_ref.logsumexp(z, axis=-1, keepdims=True)
    picked = np.take_along_axis(log_p[:, :-1], t[:, 1:, None], axis=-1)[..., 0]
    return np.asarray(-picked.mean())


def _lm_no_shift(logits, idx):
    z, t = _np(logits), idx.cpu().numpy()
    log_p = z - numpy_ref.logsumexp(z, axis=-1, keepdims=True)
    return np.asarray(-np.take_along_axis(log_p, t[..., None], axis=-1).mean())


def _lm_wrong_direction(logits, idx):
    z, t = _np(logits), idx.cpu().numpy()
    log_p = z - numpy_ref.logsumexp(z, axis=-1, keepdims=True)
    return np.asarray(-np.take_along_axis(log_p[:, 1:], t[:, :-1, None], axis=-1).mean())


def _lm_sum(logits, idx):
    z, t = _np(logits), idx.cpu().numpy()
    log_p = z - numpy_ref.logsumexp(z, axis=-1, keepdims=True)
    return np.asarray(-np.take_along_axis(log_p[:, :-1], t[:, 1:, None], axis=-1).sum())


def _lm_wraps_around(logits, idx):
    z, t = _np(logits), idx.cpu().numpy()
    log_p = z - numpy_ref.logsumexp(z, axis=-1, keepdims=True)
    return np.asarray(-np.take_along_axis(log_p, np.roll(t, -1, axis=1)[..., None], axis=-1).mean())


def _lm_unstable_logsumexp(logits, idx):
    z, t = _np(logits), idx.cpu().numpy()
    with np.errstate(over="ignore", divide="ignore"):
        log_p = z - np.log(np.exp(z.astype(np.float32)).sum(-1, keepdims=True)).astype(np.float64)
    return np.asarray(-np.take_along_axis(log_p[:, :-1], t[:, 1:, None], axis=-1).mean())


def _lm_raw_logits(logits, idx):
    z, t = _np(logits), idx.cpu().numpy()
    return np.asarray(-np.take_along_axis(z[:, :-1], t[:, 1:, None], axis=-1).mean())


def _scalar_call(fn, case):
    # The loss is a scalar; compare it as a 1-element array (the checker indexes differing entries).
    out = fn(*case.args)
    if hasattr(out, "detach"):
        out = out.detach().cpu().double().numpy()
    return np.atleast_1d(np.asarray(out, dtype=np.float64))


@task(
    "5.2",
    "The causal language-modelling loss",
    points=1,
    concept="position t predicts token t+1: compare logits[:, :-1] with idx[:, 1:], cross-entropy averaged "
    "over every predicted token",
    hints=[
        "The last position has nothing to predict, and the first token is never predicted.",
        "torch.nn.functional.cross_entropy wants [N, vocab] logits and [N] targets: flatten batch and time.",
        "F.cross_entropy(logits[:, :-1].reshape(-1, V), idx[:, 1:].reshape(-1)) (mean is its default).",
    ],
    reference=_lm_reference,
    mistakes=[
        Mistake(_lm_wraps_around, "the last position has nothing to predict: drop it (logits[:, :-1]) instead of "
                "wrapping the targets around (roll makes it predict the first token)"),
        Mistake(_lm_unstable_logsumexp, "log-softmax subtracts the max before exp (F.cross_entropy and "
                "F.log_softmax do): log(sum(exp(logits))) overflows for logits of a few hundred"),
        Mistake(_lm_no_shift, "the targets must be shifted by one: position t predicts token t+1, not itself"),
        Mistake(_lm_wrong_direction, "the shift goes the other way: logits[:, :-1] predict idx[:, 1:]"),
        Mistake(_lm_sum, "average over the predicted tokens (the mean), not the sum"),
        Mistake(_lm_raw_logits, "cross-entropy uses log-probabilities: log_softmax of the logits, not the "
                "raw logits (the normaliser logsumexp is missing)"),
    ],
    rtol=1e-4,
    atol=1e-5,
    call=_scalar_call,
)
def _cases_5_2(rng):
    def case(name, b, n, vocab, scale=1.0):
        logits = torch.tensor(scale * rng.normal(size=(b, n, vocab)), dtype=torch.float32)
        idx = torch.tensor(rng.integers(0, vocab, size=(b, n)), dtype=torch.long)
        return Case(name, (logits, idx))

    fixed = np.random.default_rng(5_2)  # corner cases: the same numbers on every check
    spread = fixed.normal(size=(2, 6, 9))
    spread[0, :, 0] += 1000.0  # a row of logits spanning ~1e3: exp overflows without the max shift
    spread[1] -= 400.0  # the rows of the batch differ by hundreds
    corners = [
        Case("logits spanning ~1e3 in a row, batch rows 400 apart", (torch.tensor(spread, dtype=torch.float32),
             torch.tensor(fixed.integers(0, 9, size=(2, 6)), dtype=torch.long)), corner=True),
        Case("T = 3, vocab 4, ordinary logits", (torch.tensor(fixed.normal(size=(1, 3, 4)), dtype=torch.float32),
             torch.tensor([[1, 3, 0]], dtype=torch.long)), corner=True),
    ]
    return corners + [case("B=3, T=9, 11 tokens", 3, 9, 11), case("T = 2 (one prediction)", 1, 2, 5),
            case("T = 65, vocab 65", 2, 65, 65), case("large logits (~ 200)", 2, 5, 7, scale=200.0)]


# --------------------------------------------------------------------------------------------------------
# 5.3 greedy generation through the streaming cache
# --------------------------------------------------------------------------------------------------------

_VOCAB = 13


def _small_model(attention: str, seed: int) -> GPT:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=_VOCAB, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0,
                         attention=attention)
    model = GPT(config).eval()
    with torch.no_grad():  # larger weights than at initialisation: confident, varied predictions
        for p in model.parameters():
            p.mul_(4.0)
    return model


class _Recorder:
    """Wraps a model and remembers, for every forward call, how many tokens it got and whether a cache came."""

    def __init__(self, model: GPT):
        self.model, self.calls = model, []
        self.config = model.config

    def new_cache(self):
        return self.model.new_cache()

    def __call__(self, idx, targets=None, cache=None):
        self.calls.append((int(idx.shape[1]), cache is not None))
        return self.model(idx, targets, cache=cache)

    forward = __call__


def _run_generation(fn, case):
    attention, seed, prompt, n_new = case.args
    recorder = _Recorder(_small_model(attention, seed))
    given = prompt.clone()
    with torch.no_grad():
        out = fn(recorder, given, n_new)
    if not torch.equal(given, prompt):
        raise InputModified("your function changed its input `prompt` in place")
    out = torch.as_tensor(out).cpu().numpy()
    calls = recorder.calls
    streamed = len(calls) >= 1 and all(cached for _, cached in calls) and all(n == 1 for n, _ in calls[1:])
    return out, np.atleast_1d(np.asarray(bool(streamed)))  # 1-element: the checker indexes entries


def _generate_reference(model, prompt, n_new):
    cache = model.new_cache()
    logits, _ = model(prompt, cache=cache)
    out = [prompt]
    for i in range(n_new):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        out.append(nxt)
        if i + 1 < n_new:
            logits, _ = model(nxt, cache=cache)
    return torch.cat(out, dim=1)


def _generate_recompute(model, prompt, n_new):
    out = prompt
    for _ in range(n_new):
        logits, _ = model(out)
        out = torch.cat([out, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return out


def _generate_first_position(model, prompt, n_new):
    cache = model.new_cache()
    logits, _ = model(prompt, cache=cache)
    out = [prompt]
    for _ in range(n_new):
        nxt = logits[:, 0].argmax(-1, keepdim=True)
        out.append(nxt)
        logits, _ = model(nxt, cache=cache)
    return torch.cat(out, dim=1)


def _generate_fresh_cache_per_step(model, prompt, n_new):
    logits, _ = model(prompt, cache=model.new_cache())
    out = [prompt]
    for i in range(n_new):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        out.append(nxt)
        if i + 1 < n_new:
            logits, _ = model(nxt, cache=model.new_cache())  # a fresh cache knows only this token
    return torch.cat(out, dim=1)


def _generate_one_short(model, prompt, n_new):
    return _generate_reference(model, prompt, n_new)[:, :-1]


def _generate_without_prompt(model, prompt, n_new):
    return _generate_reference(model, prompt, n_new)[:, prompt.shape[1]:]


def _generate_last_prompt_token_only(model, prompt, n_new):
    tail = _generate_reference(model, prompt[:, -1:], n_new)
    return torch.cat([prompt, tail[:, 1:]], dim=1)


@task(
    "5.3",
    "Greedy generation through the streaming state",
    points=2,
    concept="prefill the whole prompt into a cache once, then feed ONE token per step with the same cache; "
    "the next token is the argmax of the LAST position's logits",
    hints=[
        "cache = model.new_cache(); logits, _ = model(prompt, cache=cache) reads the prompt once.",
        "Each new token is logits[:, -1].argmax(-1, keepdim=True), shape [B, 1].",
        "Feed only that new token next: logits, _ = model(next_token, cache=cache); collect tokens and "
        "return torch.cat([prompt, *new_tokens], dim=1).",
    ],
    reference=_generate_reference,
    mistakes=[
        Mistake(_generate_recompute, "the tokens are right, but you re-ran the whole context at every step: "
                "pass a cache (model.new_cache()) and feed one token per step, so that the cost per token stays "
                "constant"),
        Mistake(_generate_first_position, "take the prediction at the LAST position, logits[:, -1]; "
                "logits[:, 0] predicts the second token of the prompt"),
        Mistake(_generate_last_prompt_token_only, "prefill the WHOLE prompt into the cache, not only its "
                "last token: the model must read the context it continues"),
        Mistake(_generate_fresh_cache_per_step, "keep ONE cache for the whole generation: a new cache at each "
                "step forgets the prompt and every earlier token"),
        Mistake(_generate_one_short, "generate exactly n_new tokens: the output has prompt length + n_new columns"),
        Mistake(_generate_without_prompt, "return the prompt followed by the new tokens: torch.cat([prompt, "
                "*new_tokens], dim=1)"),
    ],
    call=_run_generation,
    exact=True,
)
def _cases_5_3(rng):
    def case(name, attention, b, n_prompt, n_new):
        prompt = torch.tensor(rng.integers(0, _VOCAB, size=(b, n_prompt)), dtype=torch.long)
        return Case(name, (attention, int(rng.integers(1 << 30)), prompt, n_new))

    fixed = np.random.default_rng(5_3)  # corner cases: the same model seeds and prompts on every check

    def corner(name, attention, b, n_prompt, n_new):
        prompt = torch.tensor(fixed.integers(0, _VOCAB, size=(b, n_prompt)), dtype=torch.long)
        return Case(name, (attention, int(fixed.integers(1 << 30)), prompt, n_new), corner=True)

    return [
        corner("log arm, batch of 2 different prompts of 6, 5 new", "log", 2, 6, 5),
        corner("log-signed arm, prompt of 3, 5 new", "log-signed", 1, 3, 5),
        case("softmax, prompt of 5, 6 new", "softmax", 1, 5, 6),
        case("log arm, batch of 2", "log", 2, 7, 5),
        case("log-signed arm, prompt of 1", "log-signed", 1, 1, 5),
        case("log arm, one new token", "log", 1, 4, 1),
    ]
