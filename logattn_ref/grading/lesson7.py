"""Graded tasks of lesson 7 (the family): a decay gate on the recurrent step, the delta-rule update, and a
measurement of how each memory recalls stored pairs.

- 7.1 one token of gated linear attention with the elu+1 feature map and a per-channel gate (a scalar gate is the
  case of equal channels), checked against :func:`logattn_ref.family.linear_step`;
- 7.2 one token of the delta rule, checked against :func:`logattn_ref.family.delta_step`;
- 7.3 store pairs with the additive rule and with the delta rule (beta = 1), read every key back from the final
  memory and return each memory's relative recall error; the expected errors come from the library's forms
  (:func:`logattn_ref.family.delta_chunked` for the delta memory).

Inputs are float64 NumPy arrays; the learner may compute in NumPy or PyTorch (outputs are compared in float64).
Every check runs fixed corner cases first (built from constants, identical on every check), then fresh draws.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import family
from .registry import Case, Mistake, task


def _t(x) -> torch.Tensor:
    return torch.tensor(np.asarray(x), dtype=torch.float64)


def _np(x) -> np.ndarray:
    return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)


def _elu1(x):
    return family.feature_map(np.asarray(x, dtype=np.float64), "elu+1")


# --------------------------------------------------------------------------------------------------------
# 7.1 a decay gate on the recurrent step of linear attention (phi = elu + 1)
# --------------------------------------------------------------------------------------------------------


def _gated_reference(kv, k_sum, q_t, k_t, v_t, log_gate_t):
    state = family.LinearState(_t(kv), _t(k_sum))
    y, new = family.linear_step(state, _t(q_t), _t(k_t), _t(v_t), feature="elu+1", log_gate_t=_t(log_gate_t))
    return _np(y), _np(new.kv), _np(new.k_sum)


def _gated(kv, k_sum, q_t, k_t, v_t, log_gate_t, *, gate_fn=np.exp, gate_after=False, gate_z=True, phi=_elu1,
           read_old=False, normalize=True):
    """The step with one thing changed; the defaults give the right answer."""
    kv, k_sum, q_t, k_t, v_t = (np.asarray(a, dtype=np.float64) for a in (kv, k_sum, q_t, k_t, v_t))
    g = gate_fn(np.asarray(log_gate_t, dtype=np.float64))  # [..., d_k]
    phi_q, phi_k = phi(q_t), phi(k_t)
    write = phi_k[..., :, None] * v_t[..., None, :]
    if gate_after:
        new_kv, new_k_sum = g[..., None] * (kv + write), g * (k_sum + phi_k)
    else:
        new_kv, new_k_sum = g[..., None] * kv + write, (g if gate_z else 1.0) * k_sum + phi_k
    read_kv, read_k_sum = (kv, k_sum) if read_old else (new_kv, new_k_sum)
    y = np.einsum("...f,...fv->...v", phi_q, read_kv)
    if normalize:
        y = y / np.einsum("...f,...f->...", phi_q, read_k_sum)[..., None]
    return y, new_kv, new_k_sum


def _gated_after_write(*args):
    return _gated(*args, gate_after=True)


def _gated_z_not_gated(*args):
    return _gated(*args, gate_z=False)


def _gated_log_as_gate(*args):
    return _gated(*args, gate_fn=lambda log_g: log_g)


def _gated_no_features(*args):
    return _gated(*args, phi=lambda x: x)


def _gated_read_before_write(*args):
    return _gated(*args, read_old=True)


def _gated_unnormalised(*args):
    return _gated(*args, normalize=False)


@task(
    "7.1",
    "A decay gate on the recurrent step",
    points=2,
    concept="decay first, then write: state <- g * state + phi(k_t) v_t^T and k_sum <- g * k_sum + phi(k_t), with "
    "g = exp(log_gate_t) per feature channel (a row of the state); then y_t = phi(q_t)^T state / phi(q_t) . k_sum",
    hints=[
        "Take g = exp(log_gate_t): one factor in (0, 1] per feature channel f, i.e. per ROW of the [d_k, d_v] state.",
        "Decay the old state AND the old normaliser first (g[..., :, None] * kv, g * k_sum), then add the new "
        "token's phi(k_t) v_t^T and phi(k_t).",
        "phi is elu(x) + 1 (family.feature_map(x, 'elu+1')); read the NEW state: y = phi(q) @ kv / (phi(q) . k_sum).",
    ],
    reference=_gated_reference,
    mistakes=[
        Mistake(_gated_log_as_gate, "the gate is g = exp(log_gate_t), in (0, 1]; multiplying by log_gate_t itself "
                "(<= 0) flips and scales the state"),
        Mistake(_gated_after_write, "decay the OLD state, then write: the new token enters undecayed (g * state + "
                "phi(k) v^T, not g * (state + phi(k) v^T))"),
        Mistake(_gated_z_not_gated, "the normaliser k_sum decays with the same gate as the state: otherwise the "
                "denominator keeps weights the numerator has forgotten"),
        Mistake(_gated_read_before_write, "y_t reads the state AFTER this token's write (token t sees itself)"),
        Mistake(_gated_no_features, "apply the feature map phi(x) = elu(x) + 1 to q_t and k_t before using them"),
        Mistake(_gated_unnormalised, "divide the read phi(q)^T state by the normaliser phi(q) . k_sum"),
    ],
    rtol=1e-9,
    atol=1e-12,
    output_names=("y_t", "kv", "k_sum"),
)
def _cases_7_1(rng):
    def state_of(rng_, batch, d_k, d_v, tokens):
        k = rng_.normal(size=batch + (tokens, d_k))
        v = rng_.normal(size=batch + (tokens, d_v))
        phi_k = _elu1(k)
        return np.einsum("...jf,...jv->...fv", phi_k, v), phi_k.sum(-2)

    def case(name, batch, d_k, d_v, gate=None, tokens=None, rng_=rng, corner=False):
        tokens = int(rng_.integers(1, 6)) if tokens is None else tokens
        kv, k_sum = state_of(rng_, batch, d_k, d_v, tokens)
        q, k = rng_.normal(size=batch + (d_k,)), rng_.normal(size=batch + (d_k,))
        v = rng_.normal(size=batch + (d_v,))
        log_gate = np.log(rng_.uniform(0.2, 0.99, size=batch + (d_k,))) if gate is None else gate(batch, d_k)
        return Case(name, (kv, k_sum, q, k, v, log_gate), corner=corner)

    fixed = np.random.default_rng(7_1)
    corners = [
        case("one head, d_k = 3, d_v = 2, gates 0.5 / 0.9 / 0.3", (), 3, 2, rng_=fixed, tokens=3, corner=True,
             gate=lambda b, d: np.log(np.array([0.5, 0.9, 0.3]))),
        case("a scalar gate (every channel 0.7), batch of 2 heads", (2,), 4, 5, rng_=fixed, tokens=2, corner=True,
             gate=lambda b, d: np.full(b + (d,), np.log(0.7))),
        case("gate 1 (log_gate 0): the ungated step", (3,), 2, 3, rng_=fixed, tokens=4, corner=True,
             gate=lambda b, d: np.zeros(b + (d,))),
        case("an empty state (nothing stored yet)", (2,), 3, 3, rng_=fixed, tokens=0, corner=True),
    ]
    return corners + [
        case("batch and heads, d_k != d_v", (2, 3), 4, 6),
        case("a strong gate (g ~ 0.01) on some channels", (2,), 5, 3,
             gate=lambda b, d: np.log(rng.choice([0.01, 0.5, 1.0], size=b + (d,)))),
        case("one channel, one value", (), 1, 1),
    ]


# --------------------------------------------------------------------------------------------------------
# 7.2 the delta-rule update (one token)
# --------------------------------------------------------------------------------------------------------


def _delta_reference(state, q_t, k_t, v_t, beta_t):
    y, new = family.delta_step(_t(state), _t(q_t), _t(k_t), _t(v_t), _t(beta_t))
    return _np(y), _np(new)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _delta(state, q_t, k_t, v_t, beta_t, *, normalize=True, beta_on_v=False, sign=1.0, transposed=False,
           read_old=False, additive=False):
    state, q_t, k_t, v_t, beta_t = (np.asarray(a, dtype=np.float64) for a in (state, q_t, k_t, v_t, beta_t))
    k = _unit(k_t) if normalize else k_t
    if transposed:  # the memory read along the wrong axis: state k instead of state^T k (needs d_k = d_v)
        recalled = np.einsum("...fv,...v->...f", state, k)
    else:
        recalled = np.einsum("...fv,...f->...v", state, k)  # state^T k
    b = beta_t[..., None]
    if additive:
        correction = b * v_t
    elif beta_on_v:
        correction = b * v_t - recalled
    else:
        correction = sign * b * (v_t - recalled)
    new = state + k[..., :, None] * correction[..., None, :]
    y = np.einsum("...f,...fv->...v", q_t, state if read_old else new)
    return y, new


def _delta_beta_on_v(*args):
    return _delta(*args, beta_on_v=True)


def _delta_not_normalised(*args):
    return _delta(*args, normalize=False)


def _delta_sign(*args):
    return _delta(*args, sign=-1.0)


def _delta_transposed(*args):
    return _delta(*args, transposed=True)


def _delta_read_old(*args):
    return _delta(*args, read_old=True)


def _delta_additive(*args):
    return _delta(*args, additive=True)


@task(
    "7.2",
    "The delta-rule update",
    points=2,
    concept="normalise k_t, read what the memory holds for it (state^T k_t), and move that a fraction beta_t of "
    "the way to v_t: state <- state + beta_t k_t (v_t - state^T k_t)^T; then y_t = state^T q_t",
    hints=[
        "k = k_t / |k_t| first: with a unit key, beta = 1 makes the memory return exactly v_t for k.",
        "recalled = state^T k (shape [..., d_v]: k @ state in NumPy); the error is v_t - recalled.",
        "new = state + beta_t[..., None, None] * k[..., :, None] * (v_t - recalled)[..., None, :]; y = q_t @ new "
        "(q_t as given).",
    ],
    reference=_delta_reference,
    mistakes=[
        Mistake(_delta_transposed, "the memory returns state^T k (sum over the KEY axis, rows of the [d_k, d_v] "
                "state), not state k: the outer product k (v - state^T k)^T has keys on the rows"),
        Mistake(_delta_additive, "the delta rule subtracts what the memory already returns for k_t: write "
                "beta (v_t - state^T k_t), not beta v_t (that is the additive rule)"),
        Mistake(_delta_beta_on_v, "beta scales the whole error: beta (v_t - state^T k_t), not beta v_t - state^T k_t"),
        Mistake(_delta_sign, "the correction is v_t - state^T k_t (target minus recall): the opposite sign pushes "
                "the memory away from v_t"),
        Mistake(_delta_not_normalised, "normalise the key first (k_t / |k_t|): the rule corrects exactly only for "
                "unit keys"),
        Mistake(_delta_read_old, "y_t reads the memory AFTER this token's update"),
    ],
    rtol=1e-9,
    atol=1e-12,
    output_names=("y_t", "state"),
)
def _cases_7_2(rng):
    def case(name, batch, d_k, d_v, rng_=rng, beta=None, corner=False, scale=1.0):
        state = rng_.normal(size=batch + (d_k, d_v))
        q, k = rng_.normal(size=batch + (d_k,)), scale * rng_.normal(size=batch + (d_k,))
        v = rng_.normal(size=batch + (d_v,))
        beta_t = rng_.uniform(0.1, 1.0, size=batch) if beta is None else np.full(batch, beta)
        return Case(name, (state, q, k, v, beta_t), corner=corner)

    fixed = np.random.default_rng(7_2)
    corners = [  # square first: a transposed read gives a wrong value here rather than a shape error
        case("one head, d_k = d_v = 3, beta 0.6, a key of norm ~ 6", (), 3, 3, rng_=fixed, beta=0.6, scale=3.5,
             corner=True),
        case("beta = 1: the memory returns v_t for k_t afterwards", (2,), 4, 4, rng_=fixed, beta=1.0, corner=True),
        case("d_k = 3 != d_v = 5, a batch of 2", (2,), 3, 5, rng_=fixed, beta=0.3, scale=2.0, corner=True),
    ]
    return corners + [
        case("batch and heads, d_k = d_v", (2, 3), 4, 4, scale=2.0),
        case("d_k != d_v", (3,), 5, 2, scale=0.5),
        case("beta = 0: nothing changes", (2,), 3, 3, beta=0.0),
        case("one channel", (), 1, 1, scale=3.0),
    ]


# --------------------------------------------------------------------------------------------------------
# 7.3 predict, then measure: recall error of the additive and the delta memory
# --------------------------------------------------------------------------------------------------------


def _relative_error(read, values):
    return np.linalg.norm(read - values, axis=(-2, -1)) / np.linalg.norm(values, axis=(-2, -1))


def _recall_reference(keys, values):
    keys, values = np.asarray(keys, dtype=np.float64), np.asarray(values, dtype=np.float64)
    unit = family.l2_normalize(keys)
    additive = np.swapaxes(unit, -1, -2) @ values  # sum_i k_i v_i^T
    beta = torch.ones(keys.shape[:-1], dtype=torch.float64)
    _, delta = family.delta_chunked(_t(unit), _t(unit), _t(values), beta)
    delta = _np(delta)
    return _relative_error(unit @ additive, values), _relative_error(unit @ delta, values)


def _recall(keys, values, *, normalize_store=True, normalize_read=True, relative=True, swap=False,
            read_each_after_write=False, per_pair=False):
    keys, values = np.asarray(keys, dtype=np.float64), np.asarray(values, dtype=np.float64)
    store = _unit(keys) if normalize_store else keys
    read = _unit(keys) if normalize_read else keys
    additive = np.swapaxes(store, -1, -2) @ values
    memory = np.zeros(keys.shape[:-2] + (keys.shape[-1], values.shape[-1]))
    right_after = []
    for i in range(keys.shape[-2]):
        k, v = store[..., i, :], values[..., i, :]
        memory = memory + k[..., :, None] * (v - np.einsum("...fv,...f->...v", memory, k))[..., None, :]
        right_after.append(np.einsum("...fv,...f->...v", memory, read[..., i, :]))
    delta_read = np.stack(right_after, -2) if read_each_after_write else read @ memory
    additive_read = read @ additive

    def err(y):
        if per_pair:
            return np.mean(np.linalg.norm(y - values, axis=-1) / np.linalg.norm(values, axis=-1), axis=-1)
        if not relative:
            return np.linalg.norm(y - values, axis=(-2, -1))
        return _relative_error(y, values)

    out = (err(additive_read), err(delta_read))
    return out[::-1] if swap else out


def _recall_not_normalised(keys, values):
    return _recall(keys, values, normalize_store=False, normalize_read=False)


def _recall_read_raw(keys, values):
    return _recall(keys, values, normalize_read=False)


def _recall_absolute(keys, values):
    return _recall(keys, values, relative=False)


def _recall_swapped(keys, values):
    return _recall(keys, values, swap=True)


def _recall_right_after(keys, values):
    return _recall(keys, values, read_each_after_write=True)


def _recall_per_pair(keys, values):
    return _recall(keys, values, per_pair=True)


def _correlated_keys(rng_, batch, m, d_k, shared=0.8):
    common = rng_.normal(size=batch + (1, d_k))
    return shared * common + (1.0 - shared) * rng_.normal(size=batch + (m, d_k))


@task(
    "7.3",
    "Additive vs delta memory: recall error",
    points=2,
    concept="store every pair (unit keys) into an empty memory, additive (sum_i k_i v_i^T) and delta (beta = 1, in "
    "order), THEN read every key back from the final memory; error = |Y - V|_F / |V|_F per memory",
    hints=[
        "Normalise the keys once (k / |k|) and use the same unit keys to store and to read.",
        "Additive: M = K^T V. Delta: start from zeros and apply your delta update with beta = 1 for i = 0, 1, ..., "
        "m - 1; read both memories only when all pairs are in: Y = K M.",
        "error = np.linalg.norm(Y - V, axis=(-2, -1)) / np.linalg.norm(V, axis=(-2, -1)); return (additive, delta).",
    ],
    reference=_recall_reference,
    mistakes=[
        Mistake(_recall_swapped, "return the errors in the order (additive, delta)"),
        Mistake(_recall_right_after, "read every key from the FINAL memory, after all pairs are stored: a read right "
                "after its own write hides what later writes do to it"),
        Mistake(_recall_not_normalised, "normalise the keys (k / |k|) before storing and reading: the delta rule "
                "overwrites exactly only along unit keys"),
        Mistake(_recall_read_raw, "read with the same unit keys you stored with"),
        Mistake(_recall_absolute, "the error is relative: divide |Y - V|_F by |V|_F"),
        Mistake(_recall_per_pair, "measure the error over all pairs at once, |Y - V|_F / |V|_F, not a mean of "
                "per-pair ratios"),
    ],
    rtol=1e-8,
    atol=1e-11,
    output_names=("additive error", "delta error"),
)
def _cases_7_3(rng):
    fixed = np.random.default_rng(7_3)
    q_basis = np.linalg.qr(fixed.normal(size=(6, 6)))[0]
    corners = [
        Case("4 correlated keys (a shared direction), d_k = 6, d_v = 3, key norms ~ 3",
             (3.0 * _correlated_keys(fixed, (), 4, 6), fixed.normal(size=(4, 3))), corner=True),
        Case("5 orthonormal keys scaled by 2 (both memories exact)", (2.0 * q_basis[:5], fixed.normal(size=(5, 4))),
             corner=True),
        Case("a batch of 2: 8 random keys in d_k = 4 (more pairs than channels)",
             (fixed.normal(size=(2, 8, 4)), fixed.normal(size=(2, 8, 2))), corner=True),
    ]

    def case(name, batch, m, d_k, d_v, correlated=True):
        keys = _correlated_keys(rng, batch, m, d_k, rng.uniform(0.3, 0.9)) if correlated else rng.normal(
            size=batch + (m, d_k))
        return Case(name, (rng.uniform(0.5, 4.0) * keys, rng.normal(size=batch + (m, d_v))))

    return corners + [
        case("batch and heads, 6 correlated keys, d_k = 8", (2, 2), 6, 8, 5),
        case("random keys, fewer than d_k", (3,), 3, 7, 4, correlated=False),
        case("one pair", (), 1, 4, 3),
    ]
