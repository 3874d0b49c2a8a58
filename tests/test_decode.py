"""The static-buffer decoder (logattn_ref.decode): greedy tokens equal the full forward pass and GPT.generate for
every arm, rows agree, bad arguments are named, the crossover rule, and the benchmark CLI in --quick mode."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from logattn_ref import decode
from logattn_ref.decode import SOFTMAX_KERNELS, StaticDecoder, crossover_contexts
from logattn_ref.model import GPT, ModelConfig

# The PyTorch softmax kernels; "splitkv" (Triton) is tested in test_triton_kernels.py under the interpreter.
CPU_SOFTMAX_KERNELS = tuple(k for k in SOFTMAX_KERNELS if k != "splitkv")
ARMS_AND_KERNELS = [("softmax", k) for k in CPU_SOFTMAX_KERNELS] + [("log", "sdpa"), ("log-signed", "sdpa")]


def tiny_model(arm: str, position: str = "shift", seed: int = 0, device: str = "cpu") -> GPT:
    torch.manual_seed(seed)
    model = GPT(ModelConfig(vocab_size=23, block_size=40, n_layer=2, n_head=2, n_embd=16, dropout=0.0,
                            attention=arm, position=position)).to(device)
    with torch.no_grad():
        # Spread the logits (std ~4 instead of ~0.1) so a greedy choice is never a near-tie that rounding could
        # flip; give attention and MLP outputs the embedding's scale (at the usual init the residual stream is
        # almost the embedding, and greedy decoding repeats one token whatever the attention state holds); and
        # make every layer's token shift differ from the initial 0.5.
        model.embed.weight.normal_(0.0, 1.0)
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module is not model.head:
                module.weight.normal_(0.0, 1.5 / module.in_features ** 0.5)
        # An untied head: with the tied one, a token's own embedding dominates its logits and greedy decoding
        # repeats it, so the tests would not see the attention state at all.
        model.head.weight = torch.nn.Parameter(torch.randn(model.config.vocab_size, model.config.n_embd,
                                                       device=model.embed.weight.device))
        for block in model.blocks:
            if block.attn.shift_mix is not None:
                block.attn.shift_mix.uniform_(0.0, 1.0)
    return model.eval()


def prompt_ids(batch: int, length: int, seed: int = 1, vocab: int = 23) -> torch.Tensor:
    return torch.randint(vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("position", ["shift", "learned"])
@pytest.mark.parametrize("arm,kernel", ARMS_AND_KERNELS)
@pytest.mark.parametrize("length,new,block", [(7, 9, 3), (1, 5, 4), (13, 6, 13)])
def test_greedy_tokens_equal_full_forward_and_generate(arm, kernel, position, length, new, block):
    model = tiny_model(arm, position)
    prompt = prompt_ids(1, length)
    dec = StaticDecoder(model, batch=1, capacity=length + new, softmax_kernel=kernel)
    dec.prefill(prompt, block=block)
    tokens = dec.generate(new)
    assert tokens.shape == (1, new)
    expected = model.generate(prompt, new, greedy=True)[:, length:]
    assert torch.equal(tokens, expected), f"{arm}: static decoder {tokens.tolist()} != generate {expected.tolist()}"
    full, _ = model(torch.cat([prompt, tokens], dim=1))
    assert torch.equal(full[:, length - 1:-1].argmax(-1), tokens), "greedy tokens differ from the full forward"
    if new > 1:  # the last step's logits are those of the full pass at the same position
        torch.testing.assert_close(dec.logits, full[:, -2], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arm,kernel", ARMS_AND_KERNELS)
def test_rows_of_one_prompt_are_identical_and_distinct_prompts_decode_alone(arm, kernel):
    model = tiny_model(arm)
    one = StaticDecoder(model, batch=1, capacity=20, softmax_kernel=kernel)
    one.prefill(prompt_ids(1, 9))
    alone = one.generate(8)
    many = StaticDecoder(model, batch=3, capacity=20, softmax_kernel=kernel)
    many.prefill(prompt_ids(1, 9))  # one prompt copied into every row
    rows = many.generate(8)
    assert torch.equal(rows, alone.expand(3, -1))
    # Different prompts per row (rows 0 and 2 the same): each row decodes as it would alone.
    prompts = prompt_ids(3, 9, seed=5)
    prompts[2] = prompts[0]
    mixed = StaticDecoder(model, batch=3, capacity=20, softmax_kernel=kernel)
    mixed.prefill(prompts, block=4)
    out = mixed.generate(8)
    assert torch.equal(out[0], out[2])
    for r in range(3):
        assert torch.equal(out[r:r + 1], model.generate(prompts[r:r + 1], 8, greedy=True)[:, 9:]), f"row {r}"


def test_load_from_a_model_cache_continues_like_prefill():
    model = tiny_model("log")
    prompt = prompt_ids(1, 11)
    cache = model.new_cache()
    with torch.no_grad():
        model(prompt[:, :5], cache=cache)
        logits, _ = model(prompt[:, 5:], cache=cache)
    loaded = StaticDecoder(model, batch=2, capacity=30)
    loaded.load(cache, logits[:, -1])
    filled = StaticDecoder(model, batch=2, capacity=30)
    filled.prefill(prompt)
    assert torch.equal(loaded.generate(7), filled.generate(7))


def test_memory_bytes_come_from_the_buffers():
    soft = StaticDecoder(tiny_model("softmax"), batch=3, capacity=50)
    # 2 layers x (keys + values) x [3, 2 heads, 50, d = 8] float32
    assert soft.memory_bytes() == 2 * 2 * 3 * 2 * 50 * 8 * 4
    for arm in ("log", "log-signed"):
        small, large = (StaticDecoder(tiny_model(arm), batch=3, capacity=c).memory_bytes() for c in (20, 5000))
        assert small == large > 0, f"{arm}: the state must not grow with the capacity"
    log = StaticDecoder(tiny_model("log"), batch=3, capacity=20)
    assert log.memory_bytes() == 2 * 3 * 2 * (8 * 8 + 8) * 4  # H^(S) [3, 2, 8, 8] and H^(Z) [3, 2, 8], float32


def test_rewind_makes_room_again_without_touching_the_weights_of_the_step():
    dec = StaticDecoder(tiny_model("softmax"), batch=1, capacity=8)
    dec.prefill(prompt_ids(1, 6))
    dec.step()
    dec.step()
    with pytest.raises(RuntimeError, match="full"):
        dec.step()
    dec.rewind(6)
    dec.step()
    assert dec.length == 7 and dec.position.tolist() == [7]


@pytest.mark.parametrize("kwargs,match", [
    (dict(batch=0), "batch"), (dict(batch=True), "batch"), (dict(capacity=0), "capacity"),
    (dict(capacity="8"), "capacity"), (dict(softmax_kernel="flash"), "softmax_kernel"),
])
def test_bad_constructor_arguments_are_named(kwargs, match):
    args = dict(batch=1, capacity=8)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        StaticDecoder(tiny_model("softmax"), **args)


def test_other_bad_uses_are_named():
    with pytest.raises(TypeError, match="model"):
        StaticDecoder(torch.nn.Linear(2, 2), batch=1, capacity=4)
    with pytest.raises(ValueError, match="capacity=41.*block_size=40"):
        StaticDecoder(tiny_model("softmax", position="learned"), batch=1, capacity=41)
    dec = StaticDecoder(tiny_model("log-signed"), batch=2, capacity=6)
    with pytest.raises(RuntimeError, match="prefill"):
        dec.step()
    for bad in (prompt_ids(3, 4), prompt_ids(2, 4)[:, :0], prompt_ids(2, 4)[0]):
        with pytest.raises(ValueError, match="prompt"):
            dec.prefill(bad)
    with pytest.raises(ValueError, match="block"):
        dec.prefill(prompt_ids(1, 4), block=0)
    with pytest.raises(ValueError, match="capacity"):
        dec.prefill(prompt_ids(1, 6))  # no room left to decode
    dec.prefill(prompt_ids(1, 4))
    dec.step()
    dec.step()  # the cache now holds 6 tokens
    with pytest.raises(RuntimeError, match="capacity=6"):
        dec.step()
    with pytest.raises(ValueError, match="max_new_tokens"):
        dec.generate(-1)
    with pytest.raises(RuntimeError, match="CUDA"):
        dec.capture()


@pytest.mark.parametrize("arm,kernel", ARMS_AND_KERNELS)
def test_a_step_reads_nothing_back_to_the_host(arm, kernel, monkeypatch):
    """What a CUDA graph cannot hold: a value read back to Python (a data-dependent branch or index)."""
    dec = StaticDecoder(tiny_model(arm), batch=2, capacity=12, softmax_kernel=kernel)
    dec.prefill(prompt_ids(1, 5))

    def refuse(*args, **kwargs):
        raise AssertionError("the step read a tensor's value on the host")

    for name in ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    dec.step()
    dec.step()
    monkeypatch.undo()
    assert dec.position.tolist() == [7]


FUSED_SCRIPT = """
import sys, torch
sys.path.insert(0, sys.argv[1])
from test_decode import tiny_model, prompt_ids
from logattn_ref.decode import StaticDecoder
model, prompt = tiny_model("log-signed"), prompt_ids(2, 7)
dec = StaticDecoder(model, batch=2, capacity=20, fused=True)
assert dec.decoders[0]._fused is not None
dec.prefill(prompt, block=3)
tokens, expected = dec.generate(9), model.generate(prompt, 9, greedy=True)[:, 7:]
assert torch.equal(tokens, expected), (tokens.tolist(), expected.tolist())
print("fused ok")
"""


def test_fused_log_signed_step_under_the_triton_interpreter():
    """The Triton step the GPU run uses, on the CPU through the interpreter (its own process: the variable
    must be set before triton is imported)."""
    pytest.importorskip("triton")
    from logattn_ref.triton_kernels import interpreter_runs

    if not interpreter_runs():
        pytest.skip("this triton's interpreter cannot run the kernels (triton >= 3.7 can)")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", FUSED_SCRIPT, str(Path(__file__).parent)], env=env,
                          capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent)
    assert done.returncode == 0 and "fused ok" in done.stdout, done.stderr[-3000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("arm,kernel", ARMS_AND_KERNELS)
def test_captured_graph_gives_the_eager_tokens(arm, kernel):
    model = tiny_model(arm, device="cuda")
    prompt = prompt_ids(1, 10).cuda()
    eager, graphed = (StaticDecoder(model, batch=4, capacity=40, softmax_kernel=kernel) for _ in range(2))
    eager.prefill(prompt)
    graphed.prefill(prompt)
    graphed.capture()
    tokens = graphed.generate(12)
    assert graphed._graph is not None
    assert torch.equal(tokens, eager.generate(12)), "graph replay and eager steps disagree"
    assert torch.equal(tokens, model.generate(prompt, 12, greedy=True)[:, 10:].expand(4, -1))


def _rows(batch, table):
    return [{"arm": arm, "kernel": "k", "batch": batch, "context": c, "tokens_per_s": t}
            for arm, points in table.items() for c, t in points]


def test_crossover_is_the_first_context_from_which_a_log_arm_stays_ahead():
    rows = _rows(1, {
        "softmax": [(256, 100.0), (1024, 90.0), (4096, 60.0), (16384, 30.0)],
        "log": [(256, 50.0), (1024, 95.0), (4096, 55.0), (16384, 45.0)],  # ahead at 1K, behind at 4K, ahead after
        "log-signed": [(256, 40.0), (1024, 41.0), (4096, 42.0), (16384, 29.0)],  # never ahead
    })
    rows += [{"arm": "softmax", "kernel": "other", "batch": 1, "context": 16384, "tokens_per_s": 50.0},  # faster
             {"arm": "log", "batch": 1, "context": 65536, "error": "OutOfMemoryError"},
             {"arm": "log", "batch": 64, "context": 256, "tokens_per_s": 1e9}]  # another batch size
    result = crossover_contexts(rows, batch=1)
    # At 16K softmax's best kernel (50) is ahead of log (45): log is never ahead at the longest context.
    assert result["log"] == {"context": None, "ratio": pytest.approx(45 / 50), "contexts_compared": 4}
    assert result["log-signed"]["context"] is None and result["log-signed"]["ratio"] == pytest.approx(29 / 50)
    rows = [r for r in rows if r.get("kernel") != "other"]
    result = crossover_contexts(rows, batch=1)
    assert result["log"] == {"context": 16384, "ratio": pytest.approx(1.5), "contexts_compared": 4}
    assert crossover_contexts(rows, batch=64)["log"] == {"context": None, "ratio": None, "contexts_compared": 0}
    ahead_everywhere = _rows(2, {"softmax": [(1, 1.0), (2, 1.0)], "log": [(1, 2.0), (2, 3.0)]})
    assert crossover_contexts(ahead_everywhere, 2)["log"]["context"] == 1


def test_quick_cli_writes_json_and_plot(tmp_path):
    result = decode.main(["--out", str(tmp_path), "--quick", "--contexts", "5", "12", "--long-contexts", "30",
                          "--batches", "1", "2", "--replays", "2", "--blocks", "2"])
    path = tmp_path / "decode_quick_cpu.json"
    saved = json.loads(path.read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    assert (tmp_path / "decode_quick_cpu.png").stat().st_size > 0
    assert not list(tmp_path.glob("bench_*")), "lesson 4 reads every bench_*.json as a full run"
    expected = {(arm, k, b, c) for arm, k in [("softmax", "sdpa"), ("softmax", "matmul"), ("log", "torch"),
                                               ("log-signed", "torch")] for b in (1, 2) for c in (5, 12)}
    expected |= {(arm, "torch", 1, 30) for arm in ("log", "log-signed")}
    assert {(r["arm"], r["kernel"], r["batch"], r["context"]) for r in saved["rows"]} == expected
    for row in saved["rows"]:
        assert "error" not in row and "skipped" not in row, row
        assert row["tokens_per_s"] == pytest.approx(row["batch"] / row["median_s"])
        assert row["p10_s"] <= row["median_s"] <= row["p90_s"]
        assert row["state_bytes"] > 0 and row["graph"] is False
    assert set(saved["crossover"]) == {"1", "2"} and saved["stopped_early"] is None
    assert saved["environment"]["device"] == "cpu" and saved["settings"]["dtype"] == "float32"


def test_quick_cli_records_errors_and_stops_at_the_budget(tmp_path, monkeypatch):
    measure = decode._measure

    def failing(model, cache, logits, arm, kernel, *rest):
        if kernel == "matmul":
            raise RuntimeError("injected failure")
        return measure(model, cache, logits, arm, kernel, *rest)

    monkeypatch.setattr(decode, "_measure", failing)
    saved = decode.main(["--out", str(tmp_path), "--quick", "--contexts", "5", "--long-contexts",
                         "--batches", "1", "--arms", "softmax", "log", "--replays", "1", "--blocks", "1"])
    by_kernel = {r["kernel"]: r for r in saved["rows"]}
    assert by_kernel["matmul"]["error"] == "RuntimeError: injected failure"
    assert "tokens_per_s" in by_kernel["sdpa"] and "tokens_per_s" in by_kernel["torch"]
    stopped = decode.main(["--out", str(tmp_path / "b"), "--quick", "--budget-s", "0", "--batches", "1"])
    on_disk = json.loads((tmp_path / "b" / "decode_quick_cpu.json").read_text())
    assert on_disk["stopped_early"] and "budget" in on_disk["stopped_early"]
    assert on_disk["rows"] and all(r["skipped"] == "wall-clock budget spent" for r in on_disk["rows"])
    assert len(on_disk["rows"]) == len(stopped["rows"])


def test_full_run_without_cuda_is_refused(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit):
        decode.main(["--out", str(tmp_path)])
