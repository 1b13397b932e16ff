"""The examples each case of a many-case property test draws."""

from hypothesis import settings

# Each case of a test parametrized over every transform, initializer or schedule compiles its
# own functions, and the test draws cases × examples in all: the tests that compile or run
# eager trajectories per case take 50 per case under the "ci" profile (a quick run's fewer
# stay as they are). The rest draw the profile's full number (docs/reliability.md lists both).
PER_CASE = 50


def per_case(test):
    """Runs ``test`` with at most :data:`PER_CASE` examples (the profile's, if fewer)."""
    return settings(max_examples=min(settings.default.max_examples, PER_CASE))(test)
