"""logattn_ref.results: the lessons find the committed measurements from any folder below the repository."""

from pathlib import Path

from logattn_ref.results import find_results

ROOT = Path(__file__).resolve().parent.parent


def test_finds_a_committed_file_from_a_folder_below_the_root():
    found = find_results("train_shakespeare.json", start=ROOT / "notebooks")
    assert found == ROOT / "benchmarks" / "results" / "train_shakespeare.json"


def test_nearest_folder_wins_and_a_missing_file_is_none(tmp_path, monkeypatch):
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "x.json").write_text("{}")
    inner = tmp_path / "a" / "b"
    (inner / "benchmarks" / "results").mkdir(parents=True)
    (inner / "benchmarks" / "results" / "x.json").write_text("{}")
    (inner / "c").mkdir()
    assert find_results("x.json", start=inner / "c") == inner / "benchmarks" / "results" / "x.json"
    assert find_results("x.json", start=tmp_path / "a") == tmp_path / "benchmarks" / "results" / "x.json"
    assert find_results("missing.json", start=inner) is None
    monkeypatch.chdir(tmp_path / "a")
    assert find_results("x.json") == tmp_path / "benchmarks" / "results" / "x.json"
