"""Lesson 4b's kernel checks accept right kernels and reject wrong ones naming their concept; the grader gives the
solutions full marks and the exercises none.

The kernels here are written the way a learner would write them, independently of the known-mistake variants
inside logattn_ref/grading/lesson4b.py, so a test passes only when the diagnosis recognises the mistake itself.
Without a GPU they run in Triton's interpreter (TRITON_INTERPRET=1, set before triton is imported). Every verdict is
asserted on five seeds: the corner cases are fixed, the random draws are not.
"""

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (kernels decorated as interpreted)

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402
from grading_verdicts import assert_passes_on_every_seed, assert_rejected_with_concept, case_ids  # noqa: E402

from logattn_ref import grade as grade_cli  # noqa: E402
from logattn_ref.grading import check, get_task, lesson4b  # noqa: E402

# The interpreter evaluates exp on masked-off lanes too (tl.where drops them); NumPy warns about the overflow.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------- 4b.1 kernels


@triton.jit
def _update(k_ptr, v_ptr, sum_kv_ptr, sum_k_ptr, key_max_ptr, n, n_rows, start, C: tl.constexpr,
            D_K: tl.constexpr, D_V: tl.constexpr, USE_MASK: tl.constexpr, RESCALE: tl.constexpr,
            PAD: tl.constexpr):
    """A learner's update: outer products summed by broadcasting (no tl.dot), switches for their mistakes."""
    head = tl.program_id(0)
    t = start + tl.arange(0, C)
    a = tl.arange(0, D_K)
    b = tl.arange(0, D_V)
    if USE_MASK:
        keys = tl.load(k_ptr + head * n_rows * D_K + t[:, None] * D_K + a[None, :], mask=t[:, None] < n, other=PAD)
        vals = tl.load(v_ptr + head * n_rows * D_V + t[:, None] * D_V + b[None, :], mask=t[:, None] < n, other=0.0)
    else:
        keys = tl.load(k_ptr + head * n_rows * D_K + t[:, None] * D_K + a[None, :])
        vals = tl.load(v_ptr + head * n_rows * D_V + t[:, None] * D_V + b[None, :])
    old = tl.load(key_max_ptr + head * D_K + a)
    top = tl.maximum(old, tl.max(keys, 0))
    w = tl.exp(keys - top[None, :])
    scale = tl.exp(old - top) if RESCALE else 1.0
    kv = tl.load(sum_kv_ptr + head * D_K * D_V + a[:, None] * D_V + b[None, :]) * scale[:, None] if RESCALE else \
        tl.load(sum_kv_ptr + head * D_K * D_V + a[:, None] * D_V + b[None, :])
    kv = kv + tl.sum(w[:, :, None] * vals[:, None, :], 0)
    z = tl.load(sum_k_ptr + head * D_K + a) * scale + tl.sum(w, 0)
    tl.store(sum_kv_ptr + head * D_K * D_V + a[:, None] * D_V + b[None, :], kv)
    tl.store(sum_k_ptr + head * D_K + a, z)
    tl.store(key_max_ptr + head * D_K + a, top)


class _Launch:
    """Binds the switches of a test kernel, indexed by a grid like the learner's kernel."""

    def __init__(self, kernel, name, **switches):
        self.kernel, self.switches, self.__name__ = kernel, switches, name

    def __call__(self, *args):
        raise TypeError("a kernel")

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.kernel[grid](*args, **kwargs, **self.switches)


update_broadcast = _Launch(_update, "update_broadcast", USE_MASK=True, RESCALE=True, PAD=float("-inf"))
update_no_rescale = _Launch(_update, "update_no_rescale", USE_MASK=True, RESCALE=False, PAD=float("-inf"))
update_unmasked = _Launch(_update, "update_unmasked", USE_MASK=False, RESCALE=True, PAD=float("-inf"))
update_pads_with_zero = _Launch(_update, "update_pads_with_zero", USE_MASK=True, RESCALE=True, PAD=0.0)


# ------------------------------------------------------------------------------------------- 4b.2 kernels


@triton.jit
def _output(q_ptr, k_ptr, v_ptr, sum_kv_ptr, sum_k_ptr, key_max_ptr, y_ptr, n, n_rows, n_chunks,
            C: tl.constexpr, D_K: tl.constexpr, D_V: tl.constexpr, DIAGONAL: tl.constexpr,
            WHOLE_CHUNK_MAX: tl.constexpr, DIVIDE: tl.constexpr, USE_MASK: tl.constexpr):
    """A learner's chunk output: exp after a where, sums by broadcasting, the running max r_i as a masked max."""
    chunk = tl.program_id(0)
    head = tl.program_id(1)
    t = chunk * C + tl.arange(0, C)
    a = tl.arange(0, D_K)
    b = tl.arange(0, D_V)
    ok = t[:, None] < n
    if USE_MASK:
        qq = tl.load(q_ptr + (head * n_rows + t[:, None]) * D_K + a[None, :], mask=ok, other=0.0)
        kk = tl.load(k_ptr + (head * n_rows + t[:, None]) * D_K + a[None, :], mask=ok, other=float("-inf"))
        vv = tl.load(v_ptr + (head * n_rows + t[:, None]) * D_V + b[None, :], mask=ok, other=0.0)
    else:
        qq = tl.load(q_ptr + (head * n_rows + t[:, None]) * D_K + a[None, :])
        kk = tl.load(k_ptr + (head * n_rows + t[:, None]) * D_K + a[None, :])
        vv = tl.load(v_ptr + (head * n_rows + t[:, None]) * D_V + b[None, :])
    s = head * n_chunks + chunk
    m = tl.load(key_max_ptr + s * D_K + a)
    kv = tl.load(sum_kv_ptr + s * D_K * D_V + a[:, None] * D_V + b[None, :])
    z = tl.load(sum_k_ptr + s * D_K + a)
    i = tl.arange(0, C)[:, None]
    j = tl.arange(0, C)[None, :]
    if DIAGONAL:
        see = j <= i
    else:
        see = j < i
    if WHOLE_CHUNK_MAX:
        r = tl.maximum(m, tl.max(kk, 0))[None, :] + tl.zeros([C, D_K], tl.float32)  # one reference for all rows
    else:
        r = tl.max(tl.where(see[:, :, None], kk[None, :, :], float("-inf")), 1)  # r_i = max_{j<=i} k_j
        r = tl.maximum(r, m[None, :])
    top = tl.max(qq + r, 1)  # M_i
    e = tl.exp(tl.where(see[:, :, None], qq[:, None, :] + kk[None, :, :] - top[:, None, None], float("-inf")))
    w = tl.sum(e, 2)
    p = tl.exp(qq + m[None, :] - top[:, None])
    num = tl.sum(w[:, :, None] * vv[None, :, :], 1) + tl.sum(p[:, :, None] * kv[None, :, :], 1)
    den = tl.sum(w, 1) + tl.sum(p * z[None, :], 1)
    y = num / den[:, None] if DIVIDE else num
    tl.store(y_ptr + (head * n_rows + t[:, None]) * D_V + b[None, :], y, mask=ok)


def _output_kernel(name, diagonal=True, whole=False, divide=True, mask=True):
    return _Launch(_output, name, DIAGONAL=diagonal, WHOLE_CHUNK_MAX=whole, DIVIDE=divide, USE_MASK=mask)


output_broadcast = _output_kernel("output_broadcast")
output_without_diagonal = _output_kernel("output_without_diagonal", diagonal=False)
output_chunk_max = _output_kernel("output_chunk_max", whole=True)
output_unnormalised = _output_kernel("output_unnormalised", divide=False)
output_unmasked = _output_kernel("output_unmasked", mask=False)


RIGHT = [
    ("4b.1", lesson4b._state_variant("module_variant")),  # the module's switches all off: the right kernel
    ("4b.1", update_broadcast),
    ("4b.2", lesson4b._output_variant("module_variant")),
    ("4b.2", output_broadcast),
]


@pytest.mark.parametrize("task_id, fn", RIGHT, ids=case_ids(RIGHT))
def test_right_kernels_pass(task_id, fn):
    assert_passes_on_every_seed(task_id, fn)


WRONG = [
    ("4b.1", update_no_rescale, "rescale the carried state"),
    ("4b.1", update_unmasked, "mask the loads"),
    ("4b.1", update_pads_with_zero, "must load as -inf"),
    ("4b.2", output_without_diagonal, "off by one"),
    ("4b.2", output_chunk_max, "per position"),
    ("4b.2", output_unnormalised, "normaliser"),
    ("4b.2", output_unmasked, "mask the loads"),
]


@pytest.mark.parametrize("task_id, wrong, phrase", WRONG, ids=case_ids(WRONG))
def test_wrong_kernel_is_rejected_with_its_concept(task_id, wrong, phrase):
    assert_rejected_with_concept(task_id, wrong, phrase)


def test_the_whole_chunk_stabiliser_passes_ordinary_data_and_fails_only_the_corner():
    """The 0/0 trap needs extreme magnitudes: the check's fixed corner case is what rejects it."""
    task = get_task("4b.2")
    cases = task.cases(__import__("numpy").random.default_rng(0))
    ordinary = [c for c in cases if not c.corner]
    for case in ordinary:
        yours = task.run(output_chunk_max, case).numpy()
        assert abs(yours - task.answer(case)).max() < 1e-3, case.name
    corner = next(c for c in cases if "1e3 at index 11" in c.name)
    assert __import__("numpy").isnan(task.run(output_chunk_max, corner).numpy()).any()


@triton.jit
def _stub_update(k_ptr, v_ptr, sum_kv_ptr, sum_k_ptr, key_max_ptr, n, n_rows, start,
                 C: tl.constexpr, D_K: tl.constexpr, D_V: tl.constexpr):
    raise NotImplementedError("Task 4b.1: The per-chunk state update, as a Triton kernel")


@triton.jit
def _stub_output(q_ptr, k_ptr, v_ptr, sum_kv_ptr, sum_k_ptr, key_max_ptr, y_ptr, n, n_rows, n_chunks,
                 C: tl.constexpr, D_K: tl.constexpr, D_V: tl.constexpr):
    raise NotImplementedError("Task 4b.2: One chunk's causal output")


@pytest.mark.parametrize("task_id, stub", [("4b.1", _stub_update), ("4b.2", _stub_output)])
def test_stub_kernel_is_not_implemented(task_id, stub, capsys):
    """The exercise's stub raises inside the kernel: the interpreter wraps it, a GPU compiler rejects the raise."""
    result = check(task_id, stub)
    assert result.status == "not implemented" and not result.passed
    assert capsys.readouterr().out.startswith(f"Task {task_id}: not implemented yet")


def test_a_plain_function_is_not_a_kernel(capsys):
    result = check("4b.1", lambda *args: None)
    assert result.status == "fail" and "@triton.jit" in result.message


def test_every_known_mistake_names_a_different_concept():
    for task_id in ("4b.1", "4b.2"):
        messages = [m.message for m in get_task(task_id).mistakes]
        assert len(messages) >= 5 and len(set(messages)) == len(messages)


@pytest.mark.slow
def test_grader_full_marks_for_solutions_zero_for_exercises(tmp_path):
    solution, exercise = ROOT / "solutions" / "04b_kernels.ipynb", ROOT / "exercises" / "04b_kernels.ipynb"
    before = (solution.read_bytes(), exercise.read_bytes())
    out = tmp_path / "grades.json"
    assert grade_cli.main([str(solution), str(exercise), "--json", str(out)]) == 1  # the exercise is unfinished
    import json

    summary = json.loads(out.read_text())
    rows = {(Path(r["notebook"]).parent.name, r["task"]): r for r in summary["rows"]}
    assert {t for _, t in rows} == {"4b.1", "4b.2"}
    for task_id in ("4b.1", "4b.2"):
        assert rows[("solutions", task_id)]["status"] == "pass", rows[("solutions", task_id)]["message"]
        assert rows[("solutions", task_id)]["points"] == get_task(task_id).points
        assert rows[("exercises", task_id)]["status"] == "not implemented"
    assert summary["cell_errors"] == {str(solution): 0, str(exercise): 0}
    assert (solution.read_bytes(), exercise.read_bytes()) == before
