"""The small CNN and MLP trained from scratch in the sanity-check experiments.

Adebayo et al., "Sanity Checks for Saliency Maps" (NeurIPS 2018), appendix, the models of
the MNIST / Fashion-MNIST experiments (28x28x1 inputs in [0, 1], `xai_jax.data.mnist`):

* CNN: conv5x5-32 SAME, ReLU, max-pool 2, conv5x5-64 SAME, ReLU, max-pool 2, dense 1024,
  ReLU, dense classes ("input -> conv (5x5, 32) -> pooling (2x2) -> conv (5x5, 64) ->
  pooling (2x2) -> fully connected (1024 units) -> softmax (10 units)", all ReLU). At
  28x28x1: 28 -> 14 -> 7, fc1 takes 7 * 7 * 64 = 3136 features; 3,274,634 parameters.
* MLP: dense 2500-1500-500, ReLUs, dense classes; 6,469,510 parameters at 28x28x1.

Both accept any NHWC input size; the first dense layer's width follows from it at `init`.
Flattening is in NCHW order like every model here (see `layers.flatten_nchw`). `widths`
and `hidden` (CNN) and `hidden` (MLP) shrink them for quick tests; the defaults are the
paper's.

Training (appendix): Adam for 20,000 iterations (`PAPER_TRAINING_STEPS`), the CNN with
weight decay 0.001 on its weights (`PAPER_WEIGHT_DECAY`; in `xai_jax.train.make_optimizer`
terms an L2 term whose gradient is 0.001 * w, i.e. TensorFlow's `0.001 * tf.nn.l2_loss(w)`;
the appendix names no decay for the MLP); MNIST test accuracy 99.2% (CNN) and 98.7% (MLP)
(`PAPER_TEST_ACCURACY`). Learning rate and batch size are not given; the CNN, the step
count and the 99.2% are those of TensorFlow's "Deep MNIST" tutorial, which uses Adam 1e-4
and batches of 50 (`TUTORIAL_LEARNING_RATE`, `TUTORIAL_BATCH_SIZE`; it also has dropout
0.5 before the last layer, which the appendix does not mention and these models omit).
Data randomisation (Sec. 4): the same architecture trained on permuted training labels to
more than 95% training accuracy (`PAPER_RANDOM_LABEL_TRAIN_ACCURACY`); its test accuracy
is chance. See `xai_jax.data.mnist` for the training recipe.

Taps (see `taps`): CNN activations "relu1", "relu2", "relu3", bias sites
"conv1/bias", "conv2/bias", "fc1/bias", "fc2/bias"; Grad-CAM layer "relu2"; DeepMaps
layers "relu1", "relu2" (the conv ReLUs, as DeepMaps sums for VGG16).
MLP activations "relu1".."relu3", bias sites "fc1/bias".."fc4/bias"; no Grad-CAM
layer and no DeepMaps layer (no spatial activation: Grad-CAM, guided Grad-CAM and layer
SHAP do not apply, DeepMaps has only the input map).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from xai_jax.models import layers, taps

# Adebayo et al.'s appendix (see the module docstring).
PAPER_TRAINING_STEPS = 20_000
PAPER_WEIGHT_DECAY = {"cnn": 1e-3, "mlp": 0.0}
PAPER_TEST_ACCURACY = {"cnn": 0.992, "mlp": 0.987}  # MNIST
PAPER_RANDOM_LABEL_TRAIN_ACCURACY = 0.95
# Not in the paper: TensorFlow's "Deep MNIST" tutorial, whose CNN and 20,000 steps it uses.
TUTORIAL_LEARNING_RATE = 1e-4
TUTORIAL_BATCH_SIZE = 50


class CNN(nn.Module):
  """conv5x5-32, pool, conv5x5-64, pool, dense 1024, dense classes.

  Attributes:
    num_classes: number of logits.
    dtype: computation dtype.
    ops: nonlinearities (see `taps.Ops`).
    widths: channels of conv1 and conv2 (paper: 32, 64).
    hidden: width of fc1 (paper: 1024).
  """
  num_classes: int = 10
  dtype: Any = jnp.float32
  ops: taps.Ops = taps.DEFAULT_OPS
  widths: tuple[int, int] = (32, 64)
  hidden: int = 1024
  gradcam_layer = "relu2"
  deepmaps_layers = ("relu1", "relu2")

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    """x: float32[N, H, W, C] -> logits float32[N, num_classes]."""
    del train  # no dropout or batch norm
    if len(self.widths) != 2:
      raise ValueError(f"CNN has two conv layers: widths must have 2 entries, got "
                       f"{self.widths!r}")
    x = layers.Conv(self.widths[0], 5, padding="SAME", dtype=self.dtype, name="conv1")(x)
    x = taps.activation(self, "relu1", self.ops.relu(x))
    x = self.ops.max_pool(x, window=2, stride=2, padding=0)
    x = layers.Conv(self.widths[1], 5, padding="SAME", dtype=self.dtype, name="conv2")(x)
    x = taps.activation(self, "relu2", self.ops.relu(x))
    x = self.ops.max_pool(x, window=2, stride=2, padding=0)
    x = layers.flatten_nchw(x)
    x = layers.Dense(self.hidden, dtype=self.dtype, name="fc1")(x)
    x = taps.activation(self, "relu3", self.ops.relu(x))
    x = layers.Dense(self.num_classes, dtype=self.dtype, name="fc2")(x)
    return x.astype(layers.output_dtype(self.dtype))


class MLP(nn.Module):
  """Dense 2500-1500-500-classes with ReLUs (input flattened).

  Attributes:
    num_classes: number of logits.
    dtype: computation dtype.
    ops: nonlinearities (see `taps.Ops`).
    hidden: hidden widths.
  """
  num_classes: int = 10
  dtype: Any = jnp.float32
  ops: taps.Ops = taps.DEFAULT_OPS
  hidden: tuple[int, ...] = (2500, 1500, 500)
  gradcam_layer = None
  deepmaps_layers = ()

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    """x: float32[N, H, W, C] (or [N, D]) -> logits float32[N, num_classes]."""
    del train
    x = layers.flatten_nchw(x) if x.ndim == 4 else x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.hidden):
      x = layers.Dense(width, dtype=self.dtype, name=f"fc{i + 1}")(x)
      x = taps.activation(self, f"relu{i + 1}", self.ops.relu(x))
    x = layers.Dense(self.num_classes, dtype=self.dtype,
                     name=f"fc{len(self.hidden) + 1}")(x)
    return x.astype(layers.output_dtype(self.dtype))


class SmallVGG(nn.Module):
  """A small VGG-style CNN for the quick cells experiment (an xai_jax addition).

  Blocks of two conv3x3 (padding 1) + batch norm + ReLU layers, a 2x2 max-pool
  after each block, then a global max-pool (a max-pool whose window is the
  whole remaining feature map, so explainers apply their max-pool rule), dense
  `hidden` + ReLU, dense classes. The quick cells experiment uses widths
  (8, 16, 32, 32) at 96x96 (about 26k parameters): 0.95 test accuracy on 600
  test cells after 1200 Adam steps of batch 32 (cosine schedule, peak 3e-3),
  3.5 minutes on a 2-core CPU. At 64x64 the thin bars and poles that tell
  classes 1 and 2 apart are 1-4 pixels wide and the accuracy stalls near 0.90.

  Taps: activations "relu{b}_{i}" (block b, layer i, 1-based) and "relu_fc";
  bias sites "conv{b}_{i}/bias", "bn{b}_{i}/bias", "fc1/bias", "fc2/bias";
  Grad-CAM layer: the last conv ReLU; DeepMaps layers: every conv ReLU.

  Attributes:
    num_classes: number of logits.
    dtype: computation dtype.
    ops: nonlinearities (see `taps.Ops`).
    widths: channels of each block.
    hidden: width of the hidden dense layer.
  """
  num_classes: int = 10
  dtype: Any = jnp.float32
  ops: taps.Ops = taps.DEFAULT_OPS
  widths: tuple[int, ...] = (16, 32, 64)
  hidden: int = 64

  @property
  def gradcam_layer(self) -> str:
    return f"relu{len(self.widths)}_2"

  @property
  def deepmaps_layers(self) -> tuple[str, ...]:
    """Every conv ReLU, as DeepMaps sums for VGG16."""
    return tuple(f"relu{b}_{i}" for b in range(1, len(self.widths) + 1) for i in (1, 2))

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    """x: float32[N, H, W, C] with H == W divisible by 2**len(widths) -> float32[N, classes]."""
    if x.ndim != 4 or x.shape[1] != x.shape[2]:
      raise ValueError(f"SmallVGG expects square NHWC images; got shape {x.shape}")
    if x.shape[1] % 2 ** len(self.widths):
      raise ValueError(f"SmallVGG: image size {x.shape[1]} must be divisible by "
                       f"{2 ** len(self.widths)} ({len(self.widths)} 2x2 max-pools)")
    for b, width in enumerate(self.widths, start=1):
      for i in (1, 2):
        x = layers.Conv(width, 3, padding=1, dtype=self.dtype, name=f"conv{b}_{i}")(x)
        x = layers.BatchNorm(dtype=self.dtype, name=f"bn{b}_{i}")(x, train=train)
        x = taps.activation(self, f"relu{b}_{i}", self.ops.relu(x))
      x = self.ops.max_pool(x, window=2, stride=2, padding=0)
    x = self.ops.max_pool(x, window=x.shape[1], stride=x.shape[1], padding=0)
    x = x.reshape(x.shape[0], -1)
    x = layers.Dense(self.hidden, dtype=self.dtype, name="fc1")(x)
    x = taps.activation(self, "relu_fc", self.ops.relu(x))
    x = layers.Dense(self.num_classes, dtype=self.dtype, name="fc2")(x)
    return x.astype(layers.output_dtype(self.dtype))
