"""The suite's last lines say how to enable each skipped test (tests/conftest.py's summary hook)."""

from pathlib import Path

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).with_name("conftest.py")


def test_skipped_tests_are_grouped_with_how_to_enable_them(pytester):
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(test_inner="""
        import pytest

        @pytest.mark.skipif(True, reason="needs a CUDA device")
        def test_gpu_a(): pass

        def test_gpu_b(): pytest.skip("no CUDA device")

        @pytest.mark.skipif(True, reason="no Chromium at /usr/bin/chromium: apt-get install chromium")
        def test_browser(): pass

        def test_other(): pytest.skip("an odd reason")

        def test_runs(): pass
        """)
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:xdist", "-p", "no:nbval", "-q", "-rs")
    result.assert_outcomes(passed=1, skipped=4)
    lines = result.outlines
    summary = next(line for line in lines if "skipped, none of them failures" in line)
    assert lines.index(summary) == len(lines) - 2  # right above pytest's own last line
    assert "2 need a CUDA GPU" in summary and "1 need Chromium (apt-get install chromium" in summary
    assert "1 skipped because: an odd reason" in summary


def test_no_line_without_skips(pytester):
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(test_inner="def test_ok(): pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:xdist", "-p", "no:nbval", "-q")
    result.assert_outcomes(passed=1)
    assert not any("none of them failures" in line for line in result.outlines)
