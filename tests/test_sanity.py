"""Model randomisation machinery of the sanity checks, on closed-form toy models."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xai_jax.metrics import sanity, similarity


class TwoLayerLinear(nn.Module):
  """f(x) = W2 (W1 flat(x) + b1) + b2, with a batch norm in between (eval mode)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.Dense(5, name="hidden")(x.reshape(len(x), -1))
    h = nn.BatchNorm(use_running_average=not train, name="norm")(h)
    return nn.Dense(3, name="logits")(h)


def _gradient_explainer(model, variables, x, target):
  score = lambda images: jnp.take_along_axis(
      model.apply(variables, images), target[:, None], axis=1).sum()
  return jax.grad(score)(x)


def _setup():
  model = TwoLayerLinear()
  x = jax.random.normal(jax.random.key(0), (4, 6, 6, 2))
  variables = model.init(jax.random.key(1), x)
  variables = jax.tree_util.tree_map(lambda v: v, variables)
  stats = variables["batch_stats"]["norm"]
  variables = {**variables, "batch_stats": {"norm": {
      "mean": stats["mean"] + 0.3, "var": stats["var"] * 2.0}}}
  target = jnp.array([0, 1, 2, 0])
  return model, variables, x, target


def _closed_form_gradient(variables, target, image_shape):
  params, stats = variables["params"], variables["batch_stats"]["norm"]
  scale = params["norm"]["scale"] / jnp.sqrt(stats["var"] + 1e-5)
  w1, w2 = params["hidden"]["kernel"], params["logits"]["kernel"]
  rows = w1 @ (scale[:, None] * w2)  # [in, classes]
  return rows[:, target].T.reshape((len(target),) + image_shape)


@pytest.mark.slow
def test_layer_order_is_reverse_definition_order():
  model, variables, x, _ = _setup()
  # JAX sorts dict keys ("hidden" < "logits" < "norm"), so the order must come from the call.
  assert sanity.layer_order(model, variables, x) == ("logits", "norm", "hidden")


def test_randomize_replaces_exactly_the_named_layers():
  model, variables, x, _ = _setup()
  randomized = sanity.randomize(variables, ["logits"], key=jax.random.key(2), model=model, x=x)
  fresh = model.init(jax.random.key(2), x[:1])
  np.testing.assert_array_equal(randomized["params"]["logits"]["kernel"],
                                fresh["params"]["logits"]["kernel"])
  for name in ("hidden", "norm"):
    for leaf, original in zip(jax.tree_util.tree_leaves(randomized["params"][name]),
                              jax.tree_util.tree_leaves(variables["params"][name])):
      np.testing.assert_array_equal(leaf, original)
  np.testing.assert_array_equal(randomized["batch_stats"]["norm"]["mean"],
                                variables["batch_stats"]["norm"]["mean"])


def test_randomize_can_reset_batch_statistics_like_torch():
  model, variables, x, _ = _setup()
  randomized = sanity.randomize(variables, ["norm"], key=jax.random.key(2), model=model, x=x,
                                keep_batch_stats=False)
  np.testing.assert_array_equal(randomized["batch_stats"]["norm"]["mean"], 0.0)
  np.testing.assert_array_equal(randomized["batch_stats"]["norm"]["var"], 1.0)


def test_truncated_normal_init_has_the_requested_spread():
  model, variables, x, _ = _setup()
  randomized = sanity.randomize(variables, ["hidden"], key=jax.random.key(3),
                                init="truncated_normal", std=0.01)
  kernel = np.asarray(randomized["params"]["hidden"]["kernel"])
  assert np.abs(kernel).max() <= 0.02 + 1e-7
  # A normal truncated at 2 sigma has standard deviation 0.880 sigma.
  assert kernel.std() == pytest.approx(0.0088, rel=0.15)


@pytest.mark.slow
def test_cascading_randomization_matches_the_closed_form_gradient_at_every_stage():
  model, variables, x, target = _setup()
  key = jax.random.key(4)
  result = sanity.cascading_randomization(_gradient_explainer, model, variables, x, target,
                                          key=key)
  assert result.stages == ("original", "logits", "norm", "hidden")
  fresh = sanity.fresh_variables(model, variables, x, key=key)
  layers = sanity.layer_order(model, variables, x)
  for stage in range(4):
    expected_variables = sanity.randomize(variables, layers[:stage], fresh=fresh)
    expected = _closed_form_gradient(expected_variables, target, x.shape[1:])
    np.testing.assert_allclose(result.explanations[stage], expected, rtol=1e-4, atol=1e-6)
  # Randomising the logits changes the gradient explanation completely.
  assert not np.allclose(result.explanations[1], result.explanations[0], atol=1e-3)


def test_independent_randomization_touches_one_layer_per_stage():
  model, variables, x, target = _setup()
  key = jax.random.key(5)
  result = sanity.independent_randomization(_gradient_explainer, model, variables, x, target,
                                            key=key)
  fresh = sanity.fresh_variables(model, variables, x, key=key)
  for stage, layer in enumerate(sanity.layer_order(model, variables, x), start=1):
    expected = _closed_form_gradient(sanity.randomize(variables, [layer], fresh=fresh), target,
                                     x.shape[1:])
    np.testing.assert_allclose(result.explanations[stage], expected, rtol=1e-4, atol=1e-6)


def test_every_stage_reuses_one_compiled_explainer():
  model, variables, x, target = _setup()
  traces = []

  def counting_explainer(model, variables, x, target):
    traces.append(1)  # runs only while tracing
    return _gradient_explainer(model, variables, x, target)

  sanity.cascading_randomization(counting_explainer, model, variables, x, target,
                                 key=jax.random.key(6))
  assert len(traces) == 1


def test_similarity_table_has_one_row_per_stage_image_and_measure():
  model, variables, _, _ = _setup()
  x = jax.random.normal(jax.random.key(7), (2, 6, 6, 2))
  target = jnp.array([0, 1])
  result = sanity.cascading_randomization(_gradient_explainer, model, variables, x, target,
                                          key=jax.random.key(8))
  table = sanity.similarity_table(result, measures=("spearman_abs", "spearman_signed"))
  assert len(table) == 4 * 2 * 2
  original = table[table.stage == "original"]
  np.testing.assert_allclose(original.value, 1.0)


def test_unknown_layer_and_missing_key_are_rejected():
  model, variables, x, _ = _setup()
  with pytest.raises(ValueError, match="unknown layers"):
    sanity.randomize(variables, ["conv9"], key=jax.random.key(0), model=model, x=x)
  with pytest.raises(ValueError, match="PRNG"):
    sanity.randomize(variables, ["logits"])
  with pytest.raises(ValueError, match="model"):
    sanity.randomize(variables, ["logits"], key=jax.random.key(0))


@pytest.mark.slow
def test_the_input_dominates_input_times_random_gradient():
  # Section 5.2: with a sparse input, x*u and x*v share x's support, so their absolute
  # rank correlation is high although u and v are independent.
  key_x, key_mask, key_g = jax.random.split(jax.random.key(9), 3)
  x = jax.random.uniform(key_x, (4, 32, 32, 3))
  x = x * (jax.random.uniform(key_mask, (4, 32, 32, 1)) < 0.2)
  product_u, product_v = sanity.input_times_random_gradient(x, key=key_g)
  assert product_u.shape == x.shape
  assert np.all(similarity.spearman(product_u, product_v, absolute=True) > 0.5)
  noise_u, noise_v = sanity.input_times_random_gradient(jnp.ones_like(x), key=key_g)
  assert np.all(np.abs(similarity.spearman(noise_u, noise_v, absolute=True)) < 0.1)
