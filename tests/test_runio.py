"""logattn_ref.runio: the atomic write every results file goes through, and the record of the run environment."""

import json

import pytest
import torch

from logattn_ref import runio


def test_atomic_open_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")
    with runio.atomic_open(path) as f:
        f.write("new")
        assert path.read_text() == "old"  # nothing is visible before the rename
    assert path.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(b"intact")
    with pytest.raises(RuntimeError, match="killed"):
        with runio.atomic_open(path, "wb") as f:
            f.write(b"half")
            raise RuntimeError("killed mid-write")
    assert path.read_bytes() == b"intact"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_binary_mode_takes_torch_save(tmp_path):
    path = tmp_path / "t.pt"
    with runio.atomic_open(path, "wb") as f:
        torch.save({"x": torch.arange(3)}, f)
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.arange(3))


def test_only_write_modes(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with runio.atomic_open(tmp_path / "a", "a"):
            pass


def test_write_json_round_trips_with_a_final_newline(tmp_path):
    payload = {"a": [1, 2.5, None], "b": "µs"}
    runio.write_json(tmp_path / "p.json", payload)
    text = (tmp_path / "p.json").read_text(encoding="utf-8")
    assert text.endswith("\n") and json.loads(text) == payload


def test_run_environment_on_the_cpu():
    env = runio.run_environment("cpu")
    assert env["device"] == "cpu" and env["cpu"] and "gpu" not in env
    assert env["torch"] == torch.__version__ and env["python"].count(".") == 2
    assert env["date_utc"].endswith("+00:00")
    assert {"numpy", "triton", "cuda", "platform"} <= set(env)
    json.dumps(env)  # JSON-ready


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_run_environment_on_a_gpu_names_it():
    env = runio.run_environment("cuda")
    assert env["device"] == env["gpu"] == torch.cuda.get_device_name(0)
    assert env["gpu_memory_bytes"] > 0 and env["multiprocessors"] > 0


def test_recorded_date_reads_new_and_old_records():
    assert runio.recorded_date({"date_utc": "2026-01-02T00:00:00+00:00"}).startswith("2026-01-02")
    assert runio.recorded_date({"date": "2025-11-29T04:48:26+00:00"}).startswith("2025-11-29")
    with pytest.raises(KeyError):
        runio.recorded_date({})


def test_bench_environment_is_the_runio_record_with_a_deprecation_warning():
    from logattn_ref import bench

    with pytest.warns(DeprecationWarning, match="runio.run_environment"):
        assert bench.environment is runio.run_environment
