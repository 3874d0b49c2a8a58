import os

from hypothesis import HealthCheck, settings

# Property tests: no per-example deadline (CI machines are slow and shared); a modest example count keeps
# the whole suite within its time budget. HYPOTHESIS_PROFILE=thorough runs many more.
settings.register_profile(
    "ci", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile("thorough", deadline=None, max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
