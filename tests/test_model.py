"""The model: each arm's layer against the float64 oracle, streaming == full forward, config errors, decode."""

import numpy as np
import pytest
import torch

from logattn_ref import family, numpy_ref
from logattn_ref.generate import decode_latency, sample_text
from logattn_ref.model import ATTENTIONS, GPT, ModelConfig, layer_attention
from logattn_ref.data import CharTokenizer


def _model(attention, seed=0, scale=1.0, **kw):
    torch.manual_seed(seed)
    settings = dict(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0, attention=attention)
    settings.update(kw)
    model = GPT(ModelConfig(**settings)).eval()
    if scale != 1.0:  # larger weights: sharper attention, a wider range of log V
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(("query.weight", "key.weight", "value.weight")):
                    p.mul_(scale)
    return model


def _layer_inputs(attn, x):
    """q, k, v of one attention layer, recomputed from its weights (float64 for the oracle)."""
    prev = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)
    delta = prev - x
    heads = lambda t: t.view(x.shape[0], x.shape[1], attn.n_head, attn.head_size).transpose(1, 2)
    q = heads(attn.query(x + attn.shift_mix[0] * delta))
    k = heads(attn.key(x + attn.shift_mix[1] * delta))
    v = heads(attn.value(x + attn.shift_mix[2] * delta))
    return [t.detach().double().numpy() for t in (q, k, v)]


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("n", [1, 7, 37])
def test_attention_layer_matches_the_oracle(attention, n):
    """The layer's attention is the mechanism it claims: compare its pre-projection output with numpy_ref."""
    model = _model(attention, seed=n, scale=8.0)
    attn = model.blocks[0].attn
    x = torch.randn(3, n, 16)
    captured = {}
    handle = attn.proj.register_forward_hook(lambda mod, inp, out: captured.setdefault("y", inp[0]))
    with torch.no_grad():
        attn(x)
    handle.remove()
    y = captured["y"].double().view(3, n, 2, 8).transpose(1, 2).numpy()
    q, k, v = _layer_inputs(attn, x)
    per_head = lambda linear: linear(x).detach().double().transpose(1, 2).numpy()  # [B, H, n]
    if attention in ("softmax", "hybrid"):  # hybrid: layer 0 is softmax
        expected = numpy_ref.softmax_attention(q, k, v)
    elif attention == "linear-elu":
        expected = family.linear_attention_quadratic(q, k, v, "elu+1")
    elif attention == "log-decay":
        log_gate = -np.logaddexp(0.0, -per_head(attn.decay))  # log sigmoid
        expected = family.linear_attention_quadratic(q, k, v, "exp", log_gate)
    elif attention == "delta":
        beta = 1.0 / (1.0 + np.exp(-per_head(attn.write_strength)))
        expected = family.delta_rule_quadratic(family.l2_normalize(q), k, v, beta)
    elif attention == "log":
        expected = numpy_ref.log_attention_logspace(q, k, v)  # v is read as log V; the layer passes log Y on
    else:
        expected = numpy_ref.log_attention(q, k, v)
    assert numpy_ref.scaled_error(y, expected, v) < 1e-5


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("scale", [1.0, 20.0])
def test_streaming_logits_equal_full_forward(attention, scale):
    """Prefill in uneven blocks, then one token at a time: the same logits as one causal forward."""
    model = _model(attention, seed=3, scale=scale)
    idx = torch.randint(11, (2, 29))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_cache()
        parts = [model(idx[:, :1], cache=cache)[0], model(idx[:, 1:12], cache=cache)[0]]
        parts += [model(idx[:, i : i + 1], cache=cache)[0] for i in range(12, 29)]
    streamed = torch.cat(parts, dim=1)
    assert torch.isfinite(streamed).all()
    err = (streamed - full).abs().max().item() / full.abs().max().item()
    assert err < 1e-5, f"{attention}: streaming differs from the full forward by {err:.2e} (relative)"


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_greedy_generation_equals_argmax_of_full_forward(attention):
    model = _model(attention, seed=5, scale=4.0)
    prompt = torch.randint(11, (1, 5))
    out = model.generate(prompt, 12, greedy=True)
    assert out.shape == (1, 17) and torch.equal(out[:, :5], prompt)
    with torch.no_grad():
        logits, _ = model(out[:, :-1])
    assert torch.equal(logits[:, 4:].argmax(-1), out[:, 5:])


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_gradients_flow_and_are_finite(attention):
    model = _model(attention, seed=1).train()
    idx = torch.randint(11, (2, 9))
    _, loss = model(idx, idx.roll(-1, dims=1))
    loss.backward()
    assert abs(loss.item() - np.log(11)) < 0.5  # near-uniform predictions at initialisation
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_head_is_tied_and_runs_past_the_training_context():
    model = _model("softmax")
    assert model.head.weight is model.embed.weight
    with torch.no_grad():
        logits, _ = model(torch.randint(11, (1, 5 * model.config.block_size)))
    assert logits.shape == (1, 80, 11)


def test_config_and_input_errors():
    with pytest.raises(ValueError, match="attention must be one of"):
        ModelConfig(attention="linear")
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(n_embd=10, n_head=3)
    model = _model("softmax")
    with pytest.raises(ValueError, match="idx must be an int64 tensor"):
        model(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="targets must have"):
        model(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_decode_latency_and_sampling_run(attention):
    model = _model(attention)
    rows = decode_latency(model, contexts=(3, 40), steps=3, warmup=1, prefill_block=16)
    assert [r["context"] for r in rows] == [3, 40] and all(r["median_s"] > 0 for r in rows)
    tok = CharTokenizer("abcdefghijk")
    text = sample_text(model, tok, "abc", max_new_tokens=10, seed=1)
    assert text.startswith("abc") and len(text) == 13
    assert text == sample_text(model, tok, "abc", max_new_tokens=10, seed=1)


def test_attention_methods_are_the_librarys_lists():
    from logattn_ref import torch_attention as ta
    from logattn_ref.model import ATTENTION_METHODS

    assert ATTENTION_METHODS["log"] == ta.LOGSPACE_METHODS and ATTENTION_METHODS["log-signed"] == ta.METHODS
    for arm, methods in ATTENTION_METHODS.items():
        for method in methods:
            ModelConfig(attention=arm, attention_method=method)
        for method in set(ta.METHODS + ta.LOGSPACE_METHODS) - set(methods):
            with pytest.raises(ValueError, match="attention_method must be one of"):
                ModelConfig(attention=arm, attention_method=method)


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("variant", [dict(position="learned"), dict(head_dim=5), dict(head_dim=12, position="learned")])
def test_position_table_and_head_dim_stream_like_the_full_forward(attention, variant):
    """Learned absolute positions and a head width apart from n_embd / n_head: streaming still equals the full
    forward (the position offset follows the cache), and generation is the full forward's argmax."""
    model = _model(attention, seed=7, scale=4.0, **variant)
    assert model.blocks[0].attn.query.out_features == 2 * model.config.head_size
    assert (model.position is not None) == (variant.get("position") == "learned")
    assert (model.blocks[0].attn.shift_mix is None) == (variant.get("position") == "learned")
    idx = torch.randint(11, (2, 16))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_cache()
        parts = [model(idx[:, :5], cache=cache)[0]] + [model(idx[:, i : i + 1], cache=cache)[0] for i in range(5, 16)]
    streamed = torch.cat(parts, dim=1)
    assert (streamed - full).abs().max().item() <= 1e-5 * full.abs().max().item()
    out = model.generate(idx[:1, :4], 12, greedy=True)
    with torch.no_grad():
        logits, _ = model(out[:, :-1])
    assert torch.equal(logits[:, 3:].argmax(-1), out[:, 4:])


def test_learned_positions_refuse_tokens_past_the_table():
    model = _model("softmax", position="learned")
    with pytest.raises(ValueError, match="position='learned' has 16 positions"):
        model(torch.zeros(1, 17, dtype=torch.long))
    cache = model.new_cache()
    with torch.no_grad():
        model(torch.zeros(1, 16, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match=r"tokens 16\.\.16"):
        model(torch.zeros(1, 1, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="position must be one of"):
        ModelConfig(position="rotary")
    with pytest.raises(ValueError, match="head_dim must be a positive integer"):
        ModelConfig(head_dim=0)
    ModelConfig(n_embd=10, n_head=3, head_dim=4)  # head_dim frees n_embd from divisibility


def test_hybrid_layers_and_decay_gate_init():
    """hybrid: softmax at layer 0 only (a growing KV cache there, a constant state elsewhere); log-decay's gate
    biases start spread over the heads, so its initial memories range from a few tokens to hundreds."""
    config = ModelConfig(attention="hybrid", n_layer=3, n_head=2, n_embd=16)
    assert [layer_attention(config, i) for i in range(3)] == ["softmax", "log-signed", "log-signed"]
    model = _model("hybrid", n_layer=3)
    cache = model.new_cache()
    with torch.no_grad():
        model(torch.randint(11, (1, 9)), cache=cache)
    assert cache[0].length == 9 and cache[0].state is None
    assert all(c.keys is None and c.state is not None for c in cache[1:])
    gates = torch.sigmoid(_model("log-decay", n_head=4, n_embd=16).blocks[1].attn.decay.bias)
    assert gates.min() < 0.9 and gates.max() > 0.99 and torch.all(gates[1:] > gates[:-1])
