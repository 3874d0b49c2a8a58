import os

import pytest
from hypothesis import HealthCheck, settings

# Property tests: no per-example deadline (CI machines are slow and shared); a modest example count keeps
# the whole suite within its time budget. HYPOTHESIS_PROFILE=thorough runs many more.
settings.register_profile(
    "ci", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile("thorough", deadline=None, max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# What a skipped test needs, and how to get it: said once more just above pytest's last line, grouped, so a
# learner who sees "N skipped" knows whether anything is wrong (no) and how to run those tests too.
_HOW_TO_ENABLE = [
    (("has a gpu",), "check what runs without a GPU",
     "they run on a machine without one, as CI does"),
    (("cuda", "gpu", "bfloat16"), "need a CUDA GPU",
     "run `make test` on a machine with an NVIDIA GPU and a CUDA build of torch; `make doctor` checks"),
    (("chromium",), "need Chromium", "apt-get install chromium, or set LOGATTN_CHROMIUM to a Chromium binary"),
    (("interpreter cannot run",), "need a triton whose interpreter runs the kernels",
     "pip install -U 'triton>=3.7' (only the CPU interpreter needs it; on a CUDA GPU the kernels are compiled)"),
    (("unprivileged", "nobody", "runuser"), "need an unprivileged user who can run this Python",
     "run the suite as a normal user, or with a Python that user nobody may execute"),
]


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    # The outermost wrapper: its code after the yield runs after pytest's short summary, right above the last line.
    result = yield
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return result
    groups: dict = {}
    for report in skipped:
        reason = _skip_reason(report)
        key = next(((need, how) for words, need, how in _HOW_TO_ENABLE if any(w in reason.lower() for w in words)),
                   ("other", reason))
        groups[key] = groups.get(key, 0) + 1
    parts = [f"{count} {need} ({how})" if need != "other" else f"{count} skipped because: {how}"
             for (need, how), count in sorted(groups.items(), key=lambda item: -item[1])]
    terminalreporter.write_line(f"{len(skipped)} skipped, none of them failures: " + "; ".join(parts))
    return result
