"""Property tests of your own transform and initializer with ``jaxtricks.testing``.

    pip install "jaxtricks[testing]" pytest
    pytest examples/test_own_transform.py

Hypothesis draws pytrees mixing float32, bfloat16, float16 and complex64 leaves, with ``None``
and zero-size ones; ``check_transform`` checks dtypes kept, a stable state, finite updates,
``jit`` equal to eager without a second compilation, ``vmap`` equal to a loop, ``None`` and
zero-size leaves passed through, and the updates of Optax's own sign descent.
"""

import jax
import jax.numpy as jnp
import optax
from hypothesis import given, settings

from jaxtricks.testing import check_initializer, check_transform, problems


def sign_descent(learning_rate):
    """Yours: ``u = −η · sign(g)`` on every leaf, in the gradient's dtype."""
    def update(grads, state, params=None):
        return jax.tree.map(lambda g: -learning_rate * jnp.sign(g), grads), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


TX = sign_descent(0.01)  # built once: the checks compile per transform and tree structure
OPTAX_SIGN_DESCENT = optax.chain(optax.scale_by_sign(), optax.scale(-0.01))


@settings(max_examples=10, deadline=None)  # the first examples pay for compilation
@given(problem=problems())
def test_sign_descent_keeps_the_contract_and_matches_optax(problem):
    check_transform(TX, problem.params, problem.grads, reference=OPTAX_SIGN_DESCENT)


def small_uniform(key, shape, dtype=jnp.float32):
    """Yours too, with ``jax.nn.initializers``' signature: uniform on [−0.01, 0.01)."""
    return jax.random.uniform(key, shape, dtype, -0.01, 0.01)


def test_small_uniform_draws_what_was_asked_from_the_key():
    for dtype in (jnp.float32, jnp.bfloat16):
        check_initializer(small_uniform, jax.random.key(0), (3, 4), dtype)
