"""one_channel_conv and conv_general_dilated_by_shifts against jax.lax.conv_general_dilated."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxtricks.backend import PLAIN, use_speed_paths
from jaxtricks.models import CNN, ResNet
from jaxtricks.models.conv import conv_general_dilated_by_shifts, one_channel_conv

NHWC = ("NHWC", "HWIO", "NHWC")

# (input shape, kernel shape, padding)
CASES = [
    ((4, 28, 28, 1), (3, 3, 1, 16), "SAME"),
    ((3, 9, 7, 1), (3, 3, 1, 5), "VALID"),
    ((2, 8, 8, 1), (5, 5, 1, 3), "SAME"),
    ((2, 6, 5, 1), (2, 4, 1, 3), "SAME"),  # even sizes: SAME pads more at the end
    ((2, 6, 6, 1), (3, 3, 1, 2), ((0, 2), (1, 0))),
    ((5, 4, 4, 1), (1, 1, 1, 7), "SAME"),
]


def _xla(x, kernel, padding):
    return lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=NHWC)


def _arrays(x_shape, kernel_shape, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(x_shape, np.float32))
    kernel = jnp.asarray(rng.standard_normal(kernel_shape, np.float32))
    return x, kernel


@pytest.mark.parametrize(("x_shape", "kernel_shape", "padding"), CASES)
def test_the_output_is_the_convolution(x_shape, kernel_shape, padding):
    x, kernel = _arrays(x_shape, kernel_shape)
    expected = _xla(x, kernel, padding)
    got = jax.jit(one_channel_conv, static_argnums=2)(x, kernel, padding)
    chex.assert_equal_shape((got, expected))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("x_shape", "kernel_shape", "padding"), CASES)
def test_the_gradients_are_the_convolutions_bit_for_bit(x_shape, kernel_shape, padding):
    x, kernel = _arrays(x_shape, kernel_shape, seed=1)
    cotangent = _arrays(_xla(x, kernel, padding).shape, (1,), seed=2)[0]

    def grads(conv):
        return jax.jit(jax.grad(lambda x, k: jnp.sum(conv(x, k, padding) * cotangent),
                                argnums=(0, 1)))(x, kernel)

    # The backward pass is XLA's convolution gradient of the same cotangent: the same bits.
    chex.assert_trees_all_equal(grads(one_channel_conv), grads(_xla))


def test_vmap_and_a_second_order_gradient():
    x, kernel = _arrays((3, 2, 6, 6, 1), (3, 3, 1, 4))
    batched = jax.vmap(one_channel_conv, in_axes=(0, None))(x, kernel)
    np.testing.assert_allclose(batched, jax.vmap(_xla, in_axes=(0, None, None))(x, kernel, "SAME"),
                               rtol=1e-5, atol=1e-5)

    def curvature(conv):
        def loss(k):
            return jnp.sum(jnp.tanh(conv(x[0], k, "SAME")))
        return jax.jit(jax.hessian(loss))(kernel)

    np.testing.assert_allclose(curvature(one_channel_conv), curvature(_xla), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("x_shape", "kernel_shape", "kwargs"),
    [
        ((2, 8, 8, 1), (3, 3, 1, 4), {}),  # the one call that fits
        ((2, 8, 8, 3), (3, 3, 3, 4), {"channels": 3}),
        ((2, 8, 8, 1), (3, 3, 1, 4), {"window_strides": (2, 2)}),
        ((2, 8, 8, 1), (3, 3, 1, 4), {"rhs_dilation": (2, 2)}),
        ((2, 8, 8, 1), (3, 3, 1, 4), {"lhs_dilation": (2, 1), "padding": ((1, 1), (1, 1))}),
        ((2, 8, 8, 1), (3, 3, 1, 4), {"dtype": jnp.bfloat16}),
        ((2, 8, 8, 1), (3, 3, 1, 4), {"dimension_numbers": ("NCHW", "OIHW", "NCHW")}),
        ((2, 8, 8, 1), (3, 3, 1, 4), {"preferred_element_type": jnp.float32}),
    ],
)
def test_only_the_fitting_call_leaves_xla_s_convolution(x_shape, kernel_shape, kwargs):
    fits = not kwargs
    kwargs = dict(kwargs)
    kwargs.pop("channels", None)
    dtype = kwargs.pop("dtype", jnp.float32)
    x, kernel = (a.astype(dtype) for a in _arrays(x_shape, kernel_shape))
    call = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=NHWC) | kwargs
    if call["dimension_numbers"] == ("NCHW", "OIHW", "NCHW"):
        x, kernel = jnp.moveaxis(x, 3, 1), jnp.transpose(kernel, (3, 2, 0, 1))
    expected = lax.conv_general_dilated(x, kernel, **call)
    got = conv_general_dilated_by_shifts(x, kernel, **call)
    text = str(jax.make_jaxpr(lambda x, k: conv_general_dilated_by_shifts(x, k, **call))(x, kernel))
    assert ("conv_general_dilated" not in text) == fits, text
    if fits:
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    else:  # handed to lax: the same program, the same bits
        chex.assert_trees_all_equal(got, expected)


def _conv_count(model, x, paths, train):
    variables = model.init(jax.random.key(0), x, train=False)
    with use_speed_paths(paths):
        def apply(variables):
            return model.apply(variables, x, train=train, mutable=["batch_stats"],
                               rngs={"dropout": jax.random.key(1)})[0]
        text = str(jax.make_jaxpr(apply)(variables))
        logits = jax.jit(apply)(variables)
    return text.count("conv_general_dilated["), logits


@pytest.mark.parametrize("model", [CNN(features=(4, 8), hidden=16, use_batch_norm=True),
                                   ResNet(stage_sizes=(1,), width=4)],
                         ids=["cnn", "resnet"])
def test_the_models_take_the_path_in_training_only(model):
    x = _arrays((4, 12, 12, 1), (1,))[0]
    shifts = PLAIN._replace(one_channel_conv_by_shifts=True)
    plain_train, plain_logits = _conv_count(model, x, PLAIN, train=True)
    fast_train, fast_logits = _conv_count(model, x, shifts, train=True)
    # Only the first convolution, the one with a single input channel, leaves XLA's kernel.
    assert fast_train == plain_train - 1
    np.testing.assert_allclose(fast_logits, plain_logits, rtol=1e-4, atol=1e-5)
    # Evaluation keeps XLA's convolution on every path: the same program.
    assert _conv_count(model, x, shifts, train=False)[0] == _conv_count(model, x, PLAIN,
                                                                        train=False)[0]


def test_a_flax_layer_with_it_has_flax_s_parameters():
    x = jnp.ones((2, 10, 10, 1))
    plain = nn.Conv(3, (3, 3)).init(jax.random.key(0), x)
    shifted = nn.Conv(3, (3, 3), conv_general_dilated=conv_general_dilated_by_shifts).init(
        jax.random.key(0), x)
    chex.assert_trees_all_equal(plain, shifted)


@pytest.mark.parametrize(
    ("x_shape", "kernel_shape", "dtype", "padding", "message"),
    [
        ((2, 8, 8, 3), (3, 3, 3, 4), jnp.float32, "SAME", "x must have shape"),
        ((8, 8, 1), (3, 3, 1, 4), jnp.float32, "SAME", "x must have shape"),
        ((2, 8, 8, 1), (3, 3, 2, 4), jnp.float32, "SAME", "kernel must have shape"),
        ((2, 8, 8, 1), (3, 3, 1, 4), jnp.bfloat16, "SAME", "x must be float32"),
        ((2, 8, 8, 1), (3, 3, 1, 4), jnp.float32, "CIRCULAR", "padding must be"),
        ((2, 8, 8, 1), (3, 3, 1, 4), jnp.float32, ((1, 1),), "padding must be"),
        ((2, 8, 8, 1), (3, 3, 1, 4), jnp.float32, ((-1, 1), (1, 1)), "padding must be"),
    ],
)
def test_bad_arguments_are_refused(x_shape, kernel_shape, dtype, padding, message):
    x, kernel = _arrays(x_shape, kernel_shape)
    with pytest.raises(ValueError, match=message):
        one_channel_conv(x.astype(dtype), kernel, padding)
