"""Tests for xai_jax.train and xai_jax.reports.training.

References: a plain-numpy Adam (L2 and decoupled) written from Kingma & Ba / torch's update rule,
a numpy cross-entropy, the early-stopping rule of Tjoa & Guan replayed by hand, and uninterrupted
runs for the checkpoint/resume tests (compared bit for bit).
"""

import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xai_jax import models
from xai_jax import train
from xai_jax.data import cells
from xai_jax.reports import training as training_report

# ---------------------------------------------------------------------------------------------
# Fixtures: a tiny conv net with batch norm and dropout, and a colour-separable task.


class Tiny(nn.Module):
  """BatchNorm on the input (so its running mean is the input mean), conv, ReLU, dropout, dense."""
  num_classes: int = 2

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
    x = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
    x = nn.Dropout(0.25, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name="dense")(x.mean((1, 2)))


MODEL = Tiny()
TX = train.make_optimizer(learning_rate=1e-2)
SHAPE = (8, 8, 3)


def colour_shards(seed, num_shards, size, *, random_labels=False):
  """Class 0 has a brighter red channel, class 1 a brighter blue one (plus uniform noise)."""
  rng = np.random.default_rng(seed)
  shards = []
  for _ in range(num_shards):
    labels = rng.integers(0, 2, size).astype(np.int32)
    images = rng.uniform(0, 0.5, (size, *SHAPE)).astype(np.float32)
    images[labels == 0, ..., 0] += 0.5
    images[labels == 1, ..., 2] += 0.5
    if random_labels:
      labels = rng.integers(0, 2, size).astype(np.int32)
    shards.append({"image": images, "label": labels, "heatmap": np.zeros((size, 8, 8))})
  return shards


TRAIN_SHARDS = colour_shards(0, 3, 10)   # batches 4, 4, 2 per shard
VALID_SHARDS = colour_shards(1, 3, 16)


def fresh_state(seed=0):
  return train.init_train_state(MODEL, tx=TX, key=jax.random.key(seed), input_shape=(1, *SHAPE))


def assert_trees_equal(a, b):
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def numpy_cross_entropy(logits, labels):
  logits = np.asarray(logits, np.float64)
  log_z = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
  return log_z - logits[np.arange(len(labels)), labels]


# ---------------------------------------------------------------------------------------------
# Optimiser


def numpy_adam(params, grad_fn, *, steps, lr, wd, decoupled, b1=0.9, b2=0.999, eps=1e-8):
  """torch.optim.Adam(weight_decay=wd) / torch.optim.AdamW(weight_decay=wd), in numpy."""
  params = {k: np.array(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in params.items()}
  v = {k: np.zeros_like(v) for k, v in params.items()}
  for t in range(1, steps + 1):
    grads = grad_fn(params)
    for k in params:
      g = grads[k] if decoupled else grads[k] + wd * params[k]
      m[k] = b1 * m[k] + (1 - b1) * g
      v[k] = b2 * v[k] + (1 - b2) * g * g
      m_hat, v_hat = m[k] / (1 - b1 ** t), v[k] / (1 - b2 ** t)
      if decoupled:
        params[k] = params[k] * (1 - lr * wd)   # AdamW decays before the Adam step
      params[k] = params[k] - lr * m_hat / (np.sqrt(v_hat) + eps)
  return params


QUAD_A = {"w": np.array([1.0, 3.0, 0.2]), "b": np.array(5.0)}
QUAD_C = {"w": np.array([0.5, -1.0, 2.0]), "b": np.array(-0.3)}


def quadratic_grad(params):   # of 0.5 * sum a * (p - c)^2
  return {k: QUAD_A[k] * (params[k] - QUAD_C[k]) for k in params}


@pytest.mark.slow
@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_weight_decay_matches_numpy_reference(decoupled):
  lr, wd, steps = 0.1, 0.3, 6
  start = {"w": np.array([2.0, 1.0, -1.0]), "b": np.array(1.5)}
  expected = numpy_adam(start, quadratic_grad, steps=steps, lr=lr, wd=wd, decoupled=decoupled)
  tx = train.make_optimizer(learning_rate=lr, weight_decay=wd, decoupled=decoupled)
  with jax.enable_x64(True):
    params = {k: jnp.asarray(v) for k, v in start.items()}
    opt_state = tx.init(params)

    def step(params, opt_state):
      grads = jax.tree.map(jnp.asarray, quadratic_grad(params))
      updates, opt_state = tx.update(grads, opt_state, params)
      return jax.tree.map(lambda p, u: p + u, params, updates), opt_state

    eager, jitted = (params, opt_state), (params, opt_state)
    for _ in range(steps):
      eager = step(*eager)
      jitted = jax.jit(step)(*jitted)
    for k in expected:
      np.testing.assert_allclose(np.asarray(eager[0][k]), expected[k], rtol=1e-12, atol=1e-14)
      np.testing.assert_allclose(np.asarray(jitted[0][k]), expected[k], rtol=1e-12, atol=1e-14)
  other = numpy_adam(start, quadratic_grad, steps=steps, lr=lr, wd=wd, decoupled=not decoupled)
  assert np.abs(other["w"] - expected["w"]).max() > 1e-3   # the two decays really differ


def test_make_optimizer_is_cached_and_validates():
  assert train.make_optimizer(learning_rate=1e-3) is train.make_optimizer(learning_rate=1e-3)
  with pytest.raises(ValueError, match="learning_rate"):
    train.make_optimizer(learning_rate=0.0)
  with pytest.raises(ValueError, match="weight_decay"):
    train.make_optimizer(learning_rate=1e-3, weight_decay=-1.0)


def test_paper_settings():
  resnet, vgg = train.paper_settings("resnet34"), train.paper_settings("vgg16")
  assert (resnet["learning_rate"], resnet["batch_size"], resnet["patience"],
          resnet["refresh_fraction"]) == (1e-3, 4, 24, 0.4)
  assert (vgg["learning_rate"], vgg["batch_size"], vgg["patience"],
          vgg["refresh_fraction"]) == (1e-4, 16, 48, 0.3)
  assert train.paper_settings("alexnet")["epochs_continuous"] == 16
  assert resnet["weight_decay"] == 1e-5 and resnet["target_accuracy"] == 0.96
  with pytest.raises(ValueError, match="resnet.*alexnet.*vgg"):
    train.paper_settings("cnn")


# ---------------------------------------------------------------------------------------------
# Steps


@pytest.mark.slow
def test_train_step_loss_batch_stats_dropout_and_update():
  state = fresh_state()
  batch = {"image": TRAIN_SHARDS[0]["image"][:4], "label": TRAIN_SHARDS[0]["label"][:4]}
  new_state, metrics = train.train_step(MODEL, TX, state, batch)

  # Loss: numpy cross-entropy of the training-mode logits with the documented dropout key.
  dropout_key = jax.random.fold_in(state.rng, 0)
  # The references are jitted only to keep the test fast on a busy CPU.
  logits, _ = jax.jit(lambda v, x, k: MODEL.apply(v, x, train=True, rngs={"dropout": k},
                                                   mutable=["batch_stats"]))(
      state.variables, batch["image"], dropout_key)
  np.testing.assert_allclose(float(metrics["loss"]),
                             numpy_cross_entropy(logits, batch["label"]).mean(), rtol=1e-6)
  np.testing.assert_allclose(float(metrics["accuracy"]),
                             np.mean(np.argmax(logits, 1) == batch["label"]))
  # Batch norm sits on the input: running mean <- 0.99 * 0 + 0.01 * batch mean.
  np.testing.assert_allclose(new_state.batch_stats["bn"]["mean"],
                             0.01 * batch["image"].mean((0, 1, 2)), rtol=1e-5)
  assert int(new_state.step) == 1
  # First Adam step with coupled L2: p - lr * g' / (|g'| + eps), g' = grad + 1e-5 * p.
  def loss_fn(params):
    out, _ = MODEL.apply({"params": params, "batch_stats": state.batch_stats}, batch["image"],
                         train=True, rngs={"dropout": dropout_key}, mutable=["batch_stats"])
    return jnp.mean(-jax.nn.log_softmax(out)[jnp.arange(4), batch["label"]])
  grads = jax.jit(jax.grad(loss_fn))(state.params)
  expected = jax.tree.map(
      lambda p, g: np.asarray(p) - 1e-2 * (np.asarray(g) + 1e-5 * np.asarray(p))
      / (np.abs(np.asarray(g) + 1e-5 * np.asarray(p)) + 1e-8), state.params, grads)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               new_state.params, expected)

  # Deterministic for a given state; a different step draws a different dropout mask.
  again, metrics_again = train.train_step(MODEL, TX, state, batch)
  assert_trees_equal((again, metrics_again), (new_state, metrics))
  _, metrics_step_5 = train.train_step(MODEL, TX, state.replace(step=jnp.int32(5)), batch)
  assert float(metrics_step_5["loss"]) != float(metrics["loss"])



@pytest.mark.slow
def test_eval_step_and_evaluate_use_eval_mode_and_weight_batches():
  state = fresh_state()
  images, labels = VALID_SHARDS[0]["image"], VALID_SHARDS[0]["label"]
  logits = np.asarray(jax.jit(MODEL.apply)(state.variables, images))
  metrics = train.eval_step(MODEL, state, {"image": images, "label": labels})
  np.testing.assert_allclose(float(metrics["loss"]),
                             numpy_cross_entropy(logits, labels).mean(), rtol=1e-6)
  expected_accuracy = np.mean(logits.argmax(1) == labels)
  assert float(metrics["accuracy"]) == pytest.approx(expected_accuracy)
  # Uneven batches are weighted by their size; an apply function works as well as a module.
  batches = [{"image": images[:13], "label": labels[:13]},
             {"image": images[13:], "label": labels[13:]}]
  assert train.evaluate(MODEL, state.variables, batches) == pytest.approx(expected_accuracy)
  apply = lambda variables, x: MODEL.apply(variables, x)
  assert train.evaluate(apply, state, batches) == pytest.approx(expected_accuracy)


@pytest.mark.slow
def test_branch_has_fresh_optimizer_state_and_own_key():
  state, _ = train.train_step(MODEL, TX, fresh_state(), {"image": TRAIN_SHARDS[0]["image"][:4],
                                                         "label": TRAIN_SHARDS[0]["label"][:4]})
  child = train.branch(state, tx=TX, key=jax.random.key(7))
  assert_trees_equal(child.opt_state, TX.init(state.params))
  assert_trees_equal((child.params, child.batch_stats, child.step),
                     (state.params, state.batch_stats, state.step))
  assert not np.array_equal(child.rng, state.rng)


# ---------------------------------------------------------------------------------------------
# Data order


def test_schedule_shuffles_shards_and_samples_and_keeps_partial_batches():
  sizes = [10, 10, 7]
  shards = [{"image": np.zeros((n, 2, 2, 1), np.float32),
             "label": np.arange(100 * i, 100 * i + n, dtype=np.int32)}
            for i, n in enumerate(sizes)]
  source = train._Shards(shards, None, "training shards")
  key = jax.random.key_data(jax.random.key(3))
  full = list(train._schedule(source, epochs=4, batch_size=4, key=key))
  orders, per_epoch = [], {}
  for _, labels, epoch, _, _, _ in full:
    per_epoch.setdefault(epoch, []).append(labels)
  for epoch, batches in per_epoch.items():
    seen = np.concatenate(batches)
    np.testing.assert_array_equal(np.sort(seen), np.concatenate([s["label"] for s in shards]))
    shard_order = []
    for labels in batches:   # every batch comes from one shard
      assert len(set(labels // 100)) == 1
      if not shard_order or shard_order[-1] != labels[0] // 100:
        shard_order.append(int(labels[0] // 100))
    assert sorted(shard_order) == [0, 1, 2]
    orders.append(tuple(shard_order))
    sizes_by_shard = {}
    for labels in batches:
      sizes_by_shard.setdefault(int(labels[0] // 100), []).append(len(labels))
    assert sizes_by_shard == {0: [4, 4, 2], 1: [4, 4, 2], 2: [4, 3]}   # drop_last=False
  assert len(set(orders)) > 1                      # shard order reshuffled per epoch
  first_batches = {tuple(b[1]) for b in full if b[1][0] // 100 == 0 and len(b[1]) == 4}
  assert (0, 1, 2, 3) not in first_batches or len(first_batches) > 2   # samples shuffled
  assert [b[4] for b in full] == [False] * (len(full) - 1) + [True]
  # Deterministic, and resuming from any recorded position gives the rest of the schedule.
  again = list(train._schedule(source, epochs=4, batch_size=4, key=key))
  assert all(np.array_equal(a[1], b[1]) for a, b in zip(full, again))
  for cut in (5, 8, 13):
    rest = list(train._schedule(source, epochs=4, batch_size=4, key=key,
                                start=full[cut - 1][3]))
    assert len(rest) == len(full) - cut
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(full[cut:], rest))


def test_shards_as_callable_or_sample_lists_and_bad_input():
  samples = [{"image": np.full((2, 2, 1), i, np.float32), "label": np.int32(i)} for i in range(5)]
  source = train._Shards(lambda i: samples, 2, "training shards")
  images, labels = source[1]
  np.testing.assert_array_equal(labels, np.arange(5))
  assert images.shape == (5, 2, 2, 1)
  with pytest.raises(ValueError, match="num_shards"):
    train._Shards(lambda i: samples, None, "training shards")
  with pytest.raises(ValueError, match="'label'"):
    train._Shards([{"image": np.zeros((3, 2, 2, 1), np.float32)}], None, "x")[0]
  with pytest.raises(ValueError, match="float"):
    train._Shards([{"image": np.zeros((3, 2, 2, 1), np.uint8),
                    "label": np.zeros(3, np.int32)}], None, "x")[0]
  with pytest.raises(ValueError, match="matching"):
    train._Shards([{"image": np.zeros((3, 2, 2, 1), np.float32),
                    "label": np.zeros(2, np.int32)}], None, "x")[0]


# ---------------------------------------------------------------------------------------------
# Early stopping


def test_early_stopping_rule_of_tjoa_and_guan():
  rule = train.EarlyStopping(patience=3, refresh_fraction=0.5, target_accuracy=0.9)
  # acc:           0.0    0.5    0.4    0.4    0.6           0.55   0.5
  # best/counter:  first  0.5/0  /1     /2     0.6/int(1.0)=1 /2    /3 -> S2
  outcomes = [rule.update(a) for a in (0.0, 0.5, 0.4, 0.4, 0.6, 0.55, 0.5)]
  assert outcomes == [(True, None), (True, None), (False, None), (False, None), (True, None),
                      (False, None), (False, "patience")]
  assert (rule.counter, rule.best_accuracy, rule.evaluations) == (3, 0.6, 7)
  rule = train.EarlyStopping(patience=10, refresh_fraction=0.3, target_accuracy=0.9)
  assert [rule.update(a) for a in (0.5, 0.3, 0.3, 0.3, 0.92)] == [
      (True, None), (False, None), (False, None), (False, None), (True, "target")]
  assert rule.counter == int(0.3 * 3) == 0
  with pytest.raises(ValueError, match="refresh_fraction"):
    train.EarlyStopping(patience=3, refresh_fraction=1.0)


def replay_early_stopping(history, *, patience, refresh_fraction, target):
  """Independent replay of the paper's rule over the recorded single-shard accuracies."""
  counter, best, stop = 0, 0.0, None
  for record in history:
    if "eval_accuracy" not in record:
      continue
    assert stop is None, "evaluated after a stop"
    acc = record["eval_accuracy"]
    if acc > best:
      best, counter = acc, int(refresh_fraction * counter)
      stop = "target" if acc >= target else None
    else:
      counter += 1
      stop = "patience" if counter >= patience else None
    assert (record["patience_counter"], record["best_accuracy"]) == (counter, best)
  return stop


# ---------------------------------------------------------------------------------------------
# Training runs


@pytest.fixture(scope="module")
def trained():
  """Phase 1 on the colour task: 4 epochs x 3 shards x 3 batches = 36 steps."""
  return train.train_continuous(MODEL, fresh_state(), TRAIN_SHARDS, tx=TX, epochs=4,
                                batch_size=4, key=jax.random.key(1), progress=False)


def test_continuous_training_learns_a_separable_task(trained):
  assert trained.stop_reason == "epochs" and int(trained.state.step) == 36
  accuracy = train.evaluate(MODEL, trained.state, VALID_SHARDS)
  assert accuracy > 0.9, accuracy
  # Not luck of the initialisation: the same model also learns the opposite labelling.
  flipped = [dict(s, label=1 - s["label"]) for s in TRAIN_SHARDS]
  opposite = train.train_continuous(MODEL, fresh_state(), flipped, tx=TX, epochs=4,
                                    batch_size=4, key=jax.random.key(1), progress=False)
  assert train.evaluate(MODEL, opposite.state,
                        [dict(s, label=1 - s["label"]) for s in VALID_SHARDS]) > 0.9
  # Loss averaged every 4 steps: 9 records, and it went down.
  assert [r["step"] for r in trained.history] == list(range(4, 37, 4))
  assert trained.history[-1]["loss"] < trained.history[0]["loss"]


@pytest.mark.slow
def test_small_cnn_from_the_registry_learns():
  model = models.get("cnn", num_classes=2)
  tx = train.make_optimizer(learning_rate=1e-3)
  state = train.init_train_state(model, tx=tx, key=jax.random.key(0), input_shape=(1, *SHAPE))
  shards = [{"image": s["image"], "label": s["label"]} for s in TRAIN_SHARDS]
  result = train.train_continuous(model, state, shards, tx=tx, epochs=3, batch_size=5,
                                  key=jax.random.key(2), progress=False)
  assert train.evaluate(model, result.state, VALID_SHARDS) > 0.9


def test_regular_evaluation_stops_at_target(trained):
  result = train.train_regular_evaluation(
      MODEL, train.branch(trained.state, tx=TX, key=jax.random.key(5)), TRAIN_SHARDS,
      VALID_SHARDS, tx=TX, epochs=3, batch_size=4, key=jax.random.key(6), patience=48,
      refresh_fraction=0.3, target_accuracy=0.9, progress=False)
  assert result.stop_reason == "target"
  assert replay_early_stopping(result.history, patience=48, refresh_fraction=0.3,
                               target=0.9) == "target"
  evals = [r for r in result.history if "eval_accuracy" in r]
  assert all(r["step"] % 4 == 0 for r in evals)   # step counter carried on from phase 1 (36)
  assert result.best_accuracy == evals[-1]["eval_accuracy"] >= 0.9
  assert_trees_equal(result.best, result.state.variables)   # S1: the final model is the best
  # After S1 the model is evaluated on all validation shards.
  assert result.validation_accuracy == pytest.approx(
      train.evaluate(MODEL, result.state, VALID_SHARDS))


def test_regular_evaluation_early_stops_on_an_unlearnable_task():
  shards = colour_shards(2, 3, 10, random_labels=True)
  result = train.train_regular_evaluation(
      MODEL, fresh_state(), shards, VALID_SHARDS, tx=TX, epochs=20, batch_size=4,
      key=jax.random.key(8), patience=3, refresh_fraction=0.5, eval_every=2, progress=False)
  assert result.stop_reason == "patience"
  assert replay_early_stopping(result.history, patience=3, refresh_fraction=0.5,
                               target=0.96) == "patience"
  assert result.validation_accuracy is None   # the paper evaluates all shards after S1 only
  evals = [r for r in result.history if "eval_accuracy" in r]
  assert [r["step"] for r in evals] == list(range(2, 2 * len(evals) + 1, 2))
  assert len({r["eval_shard"] for r in evals}) > 1   # a random shard each time
  # `best` is the model that scored best_accuracy on its shard (first such evaluation).
  best_record = next(r for r in evals if r["eval_accuracy"] == result.best_accuracy)
  assert train.evaluate(MODEL, result.best, [VALID_SHARDS[best_record["eval_shard"]]]) == (
      result.best_accuracy)


class Interrupt(Exception):
  pass


def interrupt_at(step_to_fail):
  def callback(step, state, record):
    if step == step_to_fail:
      raise Interrupt
  return callback


@pytest.mark.slow
def test_continuous_resume_after_interruption_is_bitwise_identical(tmp_path):
  kwargs = dict(tx=TX, epochs=2, batch_size=4, key=jax.random.key(4), checkpoint_every=3,
                progress=False)
  reference = train.train_continuous(MODEL, fresh_state(), TRAIN_SHARDS,
                                     workdir=tmp_path / "a", **kwargs)
  assert int(reference.state.step) == 18
  # A crash at step 8 (last checkpoint: step 6), then a rerun of the same call.
  with pytest.raises(Interrupt):
    train.train_continuous(MODEL, fresh_state(), TRAIN_SHARDS, workdir=tmp_path / "b",
                           callback=interrupt_at(8), **kwargs)
  steps_after_restart = []
  resumed = train.train_continuous(MODEL, fresh_state(), TRAIN_SHARDS, workdir=tmp_path / "b",
                                   callback=lambda s, *_: steps_after_restart.append(s), **kwargs)
  assert steps_after_restart == list(range(7, 19))
  # A planned stop at step 5 (saved at 5; the 4-step loss window holds one pending step).
  stopped = train.train_continuous(MODEL, fresh_state(), TRAIN_SHARDS, workdir=tmp_path / "c",
                                   max_steps=5, **kwargs)
  assert stopped.stop_reason == "max_steps" and int(stopped.state.step) == 5
  continued = train.train_continuous(MODEL, fresh_state(), TRAIN_SHARDS, workdir=tmp_path / "c",
                                     **kwargs)
  for run in (resumed, continued):
    assert run.stop_reason == "epochs"
    assert_trees_equal(run.state, reference.state)   # params, batch stats, opt state, step, rng
    assert run.history == reference.history
    assert (tmp_path / "b" / "history.json").read_text() == (
        tmp_path / "a" / "history.json").read_text()
  # A finished run is returned from its checkpoint without training.
  calls = []
  again = train.train_continuous(MODEL, fresh_state(), TRAIN_SHARDS, workdir=tmp_path / "a",
                                 callback=lambda *a: calls.append(a), **kwargs)
  assert calls == [] and again.history == reference.history
  assert_trees_equal(again.state, reference.state)
  # A different run in the same workdir is refused.
  with pytest.raises(ValueError, match="new workdir"):
    train.train_continuous(MODEL, fresh_state(), TRAIN_SHARDS, workdir=tmp_path / "a",
                           **{**kwargs, "batch_size": 5})


@pytest.mark.slow
def test_regular_evaluation_resume_is_bitwise_identical(tmp_path, trained):
  base = trained.state
  kwargs = dict(tx=TX, epochs=1, batch_size=4, key=jax.random.key(9), patience=48,
                refresh_fraction=0.3, target_accuracy=1.01, checkpoint_every=2, progress=False)
  branch = lambda: train.branch(base, tx=TX, key=jax.random.key(1))
  reference = train.train_regular_evaluation(MODEL, branch(), TRAIN_SHARDS, VALID_SHARDS,
                                             workdir=tmp_path / "a", **kwargs)
  assert reference.stop_reason == "epochs" and reference.validation_accuracy is not None
  with pytest.raises(Interrupt):
    train.train_regular_evaluation(MODEL, branch(), TRAIN_SHARDS, VALID_SHARDS,
                                   workdir=tmp_path / "b",
                                   callback=interrupt_at(int(base.step) + 7), **kwargs)
  resumed = train.train_regular_evaluation(MODEL, branch(), TRAIN_SHARDS, VALID_SHARDS,
                                           workdir=tmp_path / "b", **kwargs)
  assert_trees_equal((resumed.state, resumed.best), (reference.state, reference.best))
  assert resumed.history == reference.history
  assert (resumed.stop_reason, resumed.best_accuracy, resumed.validation_accuracy) == (
      reference.stop_reason, reference.best_accuracy, reference.validation_accuracy)


def test_branches_start_from_the_base_and_differ(tmp_path, trained):
  results = train.train_branches(MODEL, trained.state, TRAIN_SHARDS, VALID_SHARDS, tx=TX,
                                 key=jax.random.key(11), num_branches=2, workdir=tmp_path,
                                 epochs=1, batch_size=4, patience=48, refresh_fraction=0.3,
                                 target_accuracy=1.01, progress=False)
  assert len(results) == 2
  assert [int(r.state.step) for r in results] == [45, 45]   # 36 base steps + 9
  assert not np.array_equal(results[0].state.params["dense"]["kernel"],
                            results[1].state.params["dense"]["kernel"])
  assert (tmp_path / "branch_0" / "history.json").exists()
  assert (tmp_path / "branch_1" / "checkpoints").is_dir()
  # One branch alone, by hand, equals the first branch.
  state_key, run_key = jax.random.split(jax.random.fold_in(jax.random.key_data(
      jax.random.key(11)), 0))
  by_hand = train.train_regular_evaluation(
      MODEL, train.branch(trained.state, tx=TX, key=state_key), TRAIN_SHARDS, VALID_SHARDS,
      tx=TX, key=run_key, epochs=1, batch_size=4, patience=48, refresh_fraction=0.3,
      target_accuracy=1.01, progress=False)
  assert_trees_equal(by_hand.state, results[0].state)


# ---------------------------------------------------------------------------------------------
# History files and the figure


def test_history_files_and_plot(tmp_path, trained):
  history = [dict(r, eval_accuracy=0.5 + 0.01 * i, best_accuracy=0.6)
             for i, r in enumerate(trained.history)]
  train._write_history(tmp_path, history)
  assert train.load_history(tmp_path) == history
  lines = (tmp_path / "history.csv").read_text().splitlines()
  assert lines[0].split(",")[:4] == ["step", "epoch", "loss", "train_accuracy"]
  assert len(lines) == len(history) + 1
  assert json.loads((tmp_path / "history.json").read_text())[0]["step"] == 4
  path = training_report.plot_history(history, tmp_path / "fig" / "history.png",
                                      title="tiny", stop_reason="epochs")
  data = pathlib.Path(path).read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
  with pytest.raises(ValueError, match="empty"):
    training_report.plot_history([], tmp_path / "x.png")


@pytest.mark.slow
def test_trains_on_synthetic_cells_fed_by_a_shard_callable():
  key = jax.random.key(21)
  fetched = []

  def get_shard(i):
    fetched.append(i)
    return cells.make_batch(jax.random.fold_in(key, i), 6, size=32)

  model = Tiny(num_classes=10)
  state = train.init_train_state(model, tx=TX, key=jax.random.key(0), input_shape=(1, 32, 32, 3))
  result = train.train_continuous(model, state, get_shard, num_shards=2, tx=TX, epochs=1,
                                  batch_size=4, key=jax.random.key(3), progress=False)
  assert sorted(fetched) == [0, 1]          # one load per shard and epoch
  assert int(result.state.step) == 4        # 2 shards x (4 + 2)
  assert np.isfinite(result.history[-1]["loss"])
  assert not np.array_equal(result.state.params["dense"]["kernel"], state.params["dense"]["kernel"])


def test_progress_bar_reports_rate_and_eta(capsys):
  train.train_continuous(MODEL, fresh_state(), TRAIN_SHARDS, tx=TX, epochs=1, batch_size=4,
                         key=jax.random.key(1), progress=True)
  err = capsys.readouterr().err
  assert "continuous" in err and "9/9" in err and "step/s" in err
  assert "<00:00" in err   # elapsed<remaining (the ETA)
