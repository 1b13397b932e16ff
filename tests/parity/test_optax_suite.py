"""Optax's own tests, run against jaxtricks and against Optax (the harness is optax_suite.py).

Every selected Optax test (one that names a function jaxtricks shares with Optax) runs twice:
calling Optax's functions (the baseline) and calling jaxtricks'. The run must prove that the
redirection took effect (each test that ran called jaxtricks), and every test that passes
against Optax but not against jaxtricks must be listed, under its reason, in the table of
deliberate differences in docs/optax_parity.md. Both runs take 84–88 s of one worker (the
fixture's setup, ``pytest --durations``), the longest item of the quick suite, which must stay
under 5 minutes on 2 cores: the module is ``slow``, run by ``./run test`` and CI.
"""

import itertools

import optax_suite as suite
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def outcomes():
    return {target: suite.run(target) for target in ("optax", "jaxtricks")}


def test_both_runs_select_the_same_tests(outcomes):
    assert set(outcomes["optax"]) == set(outcomes["jaxtricks"])
    # Every module contributes; a broken selection would lose whole modules, not a test or two.
    modules = {test_id.rsplit(".", 2)[0] for test_id in outcomes["jaxtricks"]}
    assert modules == {name.removeprefix("optax.") for name in suite.MODULES}
    assert len(outcomes["jaxtricks"]) > 250


def test_every_test_that_ran_called_the_target(outcomes):
    for target, by_test in outcomes.items():
        silent = [
            test_id for test_id, outcome in by_test.items()
            if outcome.status != suite.SKIPPED and outcome.calls == 0
        ]
        assert not silent, f"{target}: ran without calling a shared function: {silent}"


def test_optax_passes_its_own_selection(outcomes):
    failed = {t: o.detail for t, o in outcomes["optax"].items() if o.status == suite.FAILED}
    assert not failed


def test_every_difference_from_optax_is_a_documented_deliberate_difference(outcomes):
    differing = {
        test_id
        for test_id, outcome in outcomes["jaxtricks"].items()
        if outcome.status != outcomes["optax"][test_id].status
    }
    documented = set(itertools.chain.from_iterable(suite.documented_differences().values()))
    print(suite.report(outcomes))
    assert differing == documented, suite.report(outcomes)
    # A deliberate difference is jaxtricks refusing what Optax accepts: Optax passes them all.
    assert all(outcomes["optax"][test_id].status == suite.PASSED for test_id in documented)
