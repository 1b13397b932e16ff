"""Hypothesis profiles for the property tests, chosen by ``HYPOTHESIS_PROFILE``.

``default`` (a quick local run) and ``ci`` (many more examples) differ only in the number of
examples; a test parametrized over many cases draws at most 50 per case (``per_case.py``).
There is no deadline: the first examples of a test pay for compilation.
"""

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True)

settings.register_profile("default", max_examples=6, **_COMMON)
settings.register_profile("ci", max_examples=100, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
