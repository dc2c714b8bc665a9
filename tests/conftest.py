"""Hypothesis profiles for the whole suite, chosen by `HYPOTHESIS_PROFILE` (`.ci/run` sets `ci`).

Both keep Hypothesis's default number of examples (no profile is weaker than the default) and
drop the per-example deadline: the suite runs on shared 2-core machines, where a slow example
is load, not a bug, and a deadline made property tests fail at random under load. `ci` also
prints the reproduction blob of a failure. `fuzz-deep` (tests/tosca/test_fuzz.py) runs more."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("dev", deadline=None)
settings.register_profile("ci", deadline=None, print_blob=True)
_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "dev")
if _PROFILE in ("dev", "ci"):
    settings.load_profile(_PROFILE)
