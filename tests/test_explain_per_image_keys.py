"""Keyed explainers with one key per image (`key[N]`, `explain.sampling.check_keys`).

Image i's result must depend only on image i and `key[i]`: it equals explaining image i
alone (with the single key `key[i]`, or for LIME and Shapley value sampling, which draw per
feature id, with the one-key batch `key[i:i+1]`), and reordering the batch reorders the
results. A single key keeps the stream each method always drew (replayed for SmoothGrad and
the random map). Computed in float32 on CPU: a batch of another composition may round a
model call differently, hence allclose.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xai_jax import explain, models
from xai_jax.explain import sampling

SIZE, N = 16, 3
MODEL = models.get("small_vgg", num_classes=10, widths=(4, 8))
VARIABLES = models.init(MODEL, jax.random.key(0), (1, SIZE, SIZE, 3))
X = jax.random.uniform(jax.random.key(1), (N, SIZE, SIZE, 3))
TARGET = jnp.array([1, 2, 3])
KEYS = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(5), jnp.arange(N))
MASK = jnp.asarray(np.arange(SIZE * SIZE).reshape(SIZE, SIZE) // 32)  # 8 features
REFERENCES = jax.random.uniform(jax.random.key(2), (4, SIZE, SIZE, 3))
CASES = {
    "smoothgrad": dict(samples=3, stdev_spread=0.1),
    "gradient_shap": dict(baselines=REFERENCES, samples=3, stdev=0.1),
    "random": {},
    "lime": dict(samples=20),  # quickshift superpixels on the host, segment-mean fill
    "kernel_shap": dict(feature_mask=MASK, samples=10),
    "shapley_sampling": dict(feature_mask=MASK, samples=2),
    "layer_shap": dict(background=REFERENCES, samples=3, local_smoothing=0.1, guided=False),
}
PER_FEATURE = ("lime", "shapley_sampling")  # draws per feature id from key[i]


def _explain(name, x, target, key, **options):
  return np.asarray(explain.explain(name, MODEL, VARIABLES, x, target, key=key,
                                    **{**CASES[name], **options}))


def test_every_keyed_method_is_covered():
  assert set(CASES) == {name for name in explain.METHODS if explain.takes_key(name)}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_image_is_explained_as_if_alone(name):
  batch = _explain(name, X, TARGET, KEYS)
  for i in range(N):
    key = KEYS[i:i + 1] if name in PER_FEATURE else KEYS[i]
    alone = _explain(name, X[i:i + 1], TARGET[i:i + 1], key)
    np.testing.assert_allclose(batch[i], alone[0], rtol=1e-5, atol=1e-6, err_msg=f"{name} {i}")
  order = np.array([2, 0, 1])
  np.testing.assert_allclose(_explain(name, X[order], TARGET[order], KEYS[order]), batch[order],
                             rtol=1e-5, atol=1e-6)
  # The keys matter: other keys give other results (a legacy uint32[N, 2] batch is accepted).
  other = _explain(name, X, TARGET, jax.random.key_data(
      jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(6), jnp.arange(N))))
  assert not np.allclose(other, batch), name


@pytest.mark.parametrize("name", PER_FEATURE)
def test_per_feature_draws_do_not_depend_on_the_other_images_features(name):
  # Image 0 has 4 features, image 1 has 8: in the batch F = 8, alone image 0 has F = 4. Its
  # result is the same (LIME leaves absent features out of the fit; in Shapley value
  # sampling they contribute nothing and the present ones keep their relative order).
  masks = jnp.stack([MASK // 2, MASK])
  options = {"feature_mask": masks, "reference": "lime"} if name == "lime" else {
      "feature_mask": masks}
  batch = _explain(name, X[:2], TARGET[:2], KEYS[:2], **options)
  alone = _explain(name, X[:1], TARGET[:1], KEYS[:1], **{**options, "feature_mask": masks[:1]})
  np.testing.assert_allclose(batch[0], alone[0], rtol=1e-5, atol=1e-6)


def test_a_single_key_draws_the_batch_stream():
  # SmoothGrad: sample s adds sigma * normal(split(key, S)[s], x.shape) to the whole batch.
  key = jax.random.key(9)
  flat = X.reshape(N, -1)
  sigma = 0.1 * (flat.max(1) - flat.min(1))
  expected = np.mean([explain.gradient(MODEL, VARIABLES, X + sigma[:, None, None, None]
                                       * jax.random.normal(k, X.shape), TARGET)
                      for k in jax.random.split(key, 3)], axis=0)
  np.testing.assert_allclose(explain.explain("smoothgrad", MODEL, VARIABLES, X, TARGET, key=key,
                                             samples=3, stdev_spread=0.1),
                             expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(explain.random_map(None, None, X, key=key),
                                jax.random.uniform(key, (N, SIZE, SIZE)))
  # Per image: image i's map is uniform(key[i], (1, H, W))[0].
  np.testing.assert_array_equal(explain.random_map(None, None, X, key=KEYS)[1],
                                jax.random.uniform(KEYS[1], (1, SIZE, SIZE))[0])


@pytest.mark.parametrize("name", ["gradient_shap", "deeplift_shap"])
def test_one_reference_set_per_image(name):
  # Sets [N, M, H, W, C]: image i uses set i, as if explained alone with it; N equal sets
  # give the shared set's result (the same draws).
  sets = jnp.stack([REFERENCES, REFERENCES[::-1], 0.5 * REFERENCES])
  options = dict(samples=3, key=KEYS) if name == "gradient_shap" else {}
  run = lambda x, t, b, **o: np.asarray(explain.explain(name, MODEL, VARIABLES, x, t,
                                                        baselines=b, **{**options, **o}))
  batch = run(X, TARGET, sets)
  for i in range(N):
    alone = run(X[i:i + 1], TARGET[i:i + 1], sets[i:i + 1],
                **({"key": KEYS[i:i + 1]} if name == "gradient_shap" else {}))
    np.testing.assert_allclose(batch[i], alone[0], rtol=1e-5, atol=1e-7, err_msg=str(i))
  np.testing.assert_allclose(run(X, TARGET, jnp.stack([REFERENCES] * N)),
                             run(X, TARGET, REFERENCES), rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match=r"baselines must be \[M, 16, 16, 3\] with M >= 1 or "
                                       r"\[N = 3, M, 16, 16, 3\]"):
    run(X, TARGET, sets[:2])


def test_check_keys():
  key, per_image = sampling.check_keys(KEYS, N)
  assert per_image and key.shape == (N,)
  key, per_image = sampling.check_keys(jax.random.key_data(KEYS), N)  # legacy uint32[N, 2]
  assert per_image and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
  np.testing.assert_array_equal(jax.random.key_data(key), jax.random.key_data(KEYS))
  for single in (jax.random.key(0), jax.random.PRNGKey(0)):
    assert sampling.check_keys(single, N) == (single, False)
  with pytest.raises(ValueError, match=r"key must be a jax.random.key\(\.\.\.\) or one key "
                                       r"per image \(a key array of shape \[3\]\); got 2 keys"):
    sampling.check_keys(KEYS[:2], N)
  with pytest.raises(ValueError, match="Wrap an integer seed"):
    sampling.check_keys(0, N)
  with pytest.raises(ValueError, match=r"one key per image: a key array of shape \[3\]"):
    sampling.check_keys(jnp.zeros((3, 3)), N)
  with pytest.raises(ValueError, match="got 2 keys"):
    explain.explain("smoothgrad", MODEL, VARIABLES, X, TARGET, key=KEYS[:2], samples=2)
