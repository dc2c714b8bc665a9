"""Hypothesis profiles for the whole suite, chosen by `HYPOTHESIS_PROFILE` (`.ci/run` sets `ci`).

Neither sets `max_examples`, so no profile is weaker than the default: a test's own
`@settings(max_examples=N)` holds under both, and the fuzzers (tests/tosca/test_fuzz.py,
tests/sfr/router/test_fuzz.py) keep their own counts, derandomized, under `dev` and `ci` alike
(only another profile, e.g. `fuzz-deep`, replaces them). Both drop the per-example deadline:
the suite runs on shared 2-core machines, where a slow example is load, not a bug, and a
deadline made property tests fail at random under load. `ci` also prints the reproduction blob
of a failure. `fuzz-deep` (tests/tosca/test_fuzz.py) runs more.

tests/ is on sys.path (this conftest's directory), so shared helpers import by name, e.g.
`from eventually import eventually` (tests/eventually.py: the one way tests wait)."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("dev", deadline=None)
settings.register_profile("ci", deadline=None, print_blob=True)
_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "dev")
if _PROFILE in ("dev", "ci"):
    settings.load_profile(_PROFILE)
