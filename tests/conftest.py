"""Shared test settings: hypothesis profiles for the property-based tests.

`ci` (the default): a bounded, fixed (derandomized) set of examples per property test, so
the suite stays fast and every run tests the same cases. `long`: many more examples drawn
at random, for local hunting: `SDMCL_HYPOTHESIS_PROFILE=long python -m pytest tests/test_hostile_properties.py`.
At the end of a session the number of generated cases that ran is printed.
"""

import os

from hypothesis import HealthCheck, settings

PROFILE = os.environ.get("SDMCL_HYPOTHESIS_PROFILE", "ci")
LONG_FACTOR = 20  # the long profile runs this many times the CI examples of each test

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                                     HealthCheck.data_too_large, HealthCheck.filter_too_much])
settings.register_profile("ci", derandomize=True, database=None, print_blob=True, **_common)
settings.register_profile("long", derandomize=False, print_blob=True, **_common)
settings.load_profile(PROFILE)

# generated cases run, per test (filled in by the property tests through `count_case`)
GENERATED_CASES: dict[str, int] = {}


def examples(n: int) -> int:
    """The number of examples of a property test: `n` in CI, LONG_FACTOR × n in the long profile."""
    return n * LONG_FACTOR if PROFILE == "long" else n


def pytest_terminal_summary(terminalreporter):
    if GENERATED_CASES:
        total = sum(GENERATED_CASES.values())
        terminalreporter.write_line(f"hypothesis ({PROFILE} profile): {total} generated cases ran: "
                                    + ", ".join(f"{k} {v}" for k, v in sorted(GENERATED_CASES.items())))
