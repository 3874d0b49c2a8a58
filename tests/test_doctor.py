"""The doctor: each check returns a record with a fix, a missing requirement fails the command, nothing crashes."""

import hashlib
import re
import sys
import tomllib
import urllib.error
from pathlib import Path

import pytest

from logattn_ref import data, doctor
from logattn_ref.doctor import MISSING, OK, WARN, Check

ROOT = Path(__file__).resolve().parent.parent


def test_minimum_versions_agree_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {}
    for requirement in project["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", requirement)
        assert match, f"dependency {requirement!r} should be a plain lower bound"
        declared[match[1]] = match[2]
    for name in ("numpy", "torch", "matplotlib", "ipywidgets"):
        assert doctor.MINIMUM_VERSIONS[name] == declared[name], name


def test_record_rejects_unknown_status_and_missing_fix():
    with pytest.raises(ValueError, match="status"):
        Check("x", "FINE", "found")
    with pytest.raises(ValueError, match="no fix"):
        Check("x", WARN, "found")
    line = Check("x", MISSING, "absent", "install x").line()
    assert line.startswith("MISSING x: absent") and "fix: install x" in line


def test_modules_are_reported_as_they_are_installed():
    import importlib.util

    assert doctor.check_python().status == OK
    for check, module in ((doctor.check_numpy, "numpy"), (doctor.check_torch, "torch"),
                          (doctor.check_ipywidgets, "ipywidgets"), (doctor.check_matplotlib, "matplotlib"),
                          (doctor.check_jupyterlab_widgets, "jupyterlab_widgets"), (doctor.check_nbval, "nbval")):
        result = check()
        installed = importlib.util.find_spec(module) is not None
        assert (result.status == OK) == installed, result.line()  # the course env has them all: all OK
        if installed:
            assert re.search(r"\d+\.\d+", result.detail), result.detail


@pytest.mark.parametrize("check, module, required", [
    (doctor.check_numpy, "numpy", True),
    (doctor.check_ipywidgets, "ipywidgets", True),
    (doctor.check_nbval, "nbval", False),
    (doctor.check_triton, "triton", False),
])
def test_unimportable_module_is_reported_with_a_fix(monkeypatch, check, module, required):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    result = check()
    assert result.status == (MISSING if required else WARN)
    assert result.required is required
    assert "pip install" in result.fix and module in result.fix
    assert doctor.exit_code([result]) == int(required)


def test_too_old_version_is_missing(monkeypatch):
    real = doctor.importlib.metadata.version
    monkeypatch.setattr(doctor.importlib.metadata, "version",
                        lambda dist: "1.20.0" if dist == "numpy" else real(dist))
    result = doctor.check_numpy()
    assert result.status == MISSING and "older than the 1.24" in result.detail


def test_no_gpu_is_a_warning_that_says_how_to_get_one(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = doctor.check_cuda()
    assert result.status == WARN and not result.required
    assert "Change runtime type" in result.fix
    assert doctor.exit_code([result]) == 0


def test_without_a_gpu_a_triton_whose_interpreter_cannot_run_the_kernels_is_a_warning(monkeypatch):
    torch = pytest.importorskip("torch")
    triton = pytest.importorskip("triton")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(triton, "__version__", "3.7.0")
    monkeypatch.setattr(doctor.importlib.metadata, "version", lambda dist: triton.__version__)
    assert doctor.check_triton().status == OK
    monkeypatch.setattr(triton, "__version__", "3.6.0")
    result = doctor.check_triton()
    assert result.status == WARN and not result.required
    assert "triton >= 3.7" in result.detail and "triton>=3.7" in result.fix


@pytest.mark.gpu
def test_gpu_is_named_when_present():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    result = doctor.check_cuda()
    assert result.status == OK and torch.cuda.get_device_name() in result.detail


def test_data_shipped_with_the_package_is_found_offline(monkeypatch):
    monkeypatch.delenv("LOGATTN_DATA_DIR", raising=False)

    def offline(request, timeout):
        raise AssertionError("the doctor probed the network although the corpus ships with the package")

    result = doctor.check_data(opener=offline)
    assert result.status == OK and "shipped with the package" in result.detail


def test_data_present_verified_or_corrupt(tmp_path):
    good = data.packaged_copy()
    assert doctor.check_data(good.parent, probe=False).status == OK
    (tmp_path / data.FILENAME).write_text("not shakespeare")
    result = doctor.check_data(tmp_path, probe=False)
    assert result.status == WARN and "SHA-256" in result.detail and "delete" in result.fix


def test_data_absent_downloadable_or_not(tmp_path):
    requests = []

    class Response:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def reachable(request, timeout):
        requests.append((request.get_method(), request.full_url))
        return Response()

    def offline(request, timeout):
        raise urllib.error.URLError("no route")

    result = doctor.check_data(tmp_path, opener=reachable)
    assert result.status == OK and "reachable" in result.detail
    assert requests == [("HEAD", data.SHAKESPEARE_URL)]
    result = doctor.check_data(tmp_path, opener=offline)
    assert result.status == WARN and "no route" in result.detail and "LOGATTN_DATA_DIR" in result.fix
    assert not (tmp_path / data.FILENAME).exists()  # the doctor never downloads


def test_data_dir_env_is_honoured(tmp_path, monkeypatch):
    monkeypatch.setenv("LOGATTN_DATA_DIR", str(tmp_path))
    result = doctor.check_data(probe=False)
    assert str(tmp_path) in result.detail and result.status == WARN


def test_a_crashing_check_is_reported_not_raised():
    def check_boom():
        raise RuntimeError("kaboom")

    results = doctor.run_checks([doctor.check_python, check_boom])
    assert [r.status for r in results] == [OK, WARN]
    assert results[1].name == "boom" and "kaboom" in results[1].detail


def test_main_prints_one_line_per_check_and_exit_code(monkeypatch, capsys):
    fine = lambda: Check("fine", OK, "v1")  # noqa: E731
    optional = lambda: Check("gpu", WARN, "none", "get one", required=False)  # noqa: E731
    broken = lambda: Check("numpy", MISSING, "absent", "pip install numpy")  # noqa: E731
    monkeypatch.setattr(doctor, "CHECKS", [fine, optional])
    assert doctor.main(["--offline"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^OK +fine: v1$", out, re.M) and re.search(r"^WARN +gpu: none$", out, re.M)
    assert "ready for the course (1 warning(s))" in out
    monkeypatch.setattr(doctor, "CHECKS", [fine, broken])
    assert doctor.main([]) == 1
    assert "not ready: fix numpy" in capsys.readouterr().out


def test_environment_line_says_when_the_interpreter_is_not_the_courses(tmp_path):
    repo = tmp_path / "clone"
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / ".venv" / "bin" / "python").touch()
    (repo / "Makefile").touch()
    inside = doctor.check_environment(prefix=str(repo / ".venv"), env={}, repo_root=repo)
    assert inside.status == OK
    outside = doctor.check_environment(prefix="/usr", env={}, repo_root=repo)
    assert outside.status == WARN and "make doctor" in outside.fix and "not the course's environment" in outside.detail
    conda = doctor.check_environment(prefix="/opt/conda/envs/logattn", env={"CONDA_DEFAULT_ENV": "logattn"},
                                     repo_root=repo)
    assert conda.status == OK
    (repo / ".venv" / "bin" / "python").unlink()
    fresh = doctor.check_environment(prefix="/usr", env={}, repo_root=repo)
    assert fresh.status == WARN and "make test" in fresh.fix


def test_install_fixes_name_this_interpreter():
    result = doctor._module_check("a_module_that_does_not_exist_xyz", required=False)
    assert result.status == WARN and sys.executable in result.fix
