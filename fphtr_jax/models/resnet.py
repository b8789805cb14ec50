"""ResNet image encoder, channels-last, laid out like torchvision's ResNet.

Same blocks, strides, paddings and parameter shapes as torchvision's
resnet18/34/50 (v1.5: a Bottleneck strides in its 3x3 conv), with a 1-channel
stem and without the average pool and classifier. Parameter names follow
torchvision (`conv1`, `bn1`, `layer1_0/conv1`, `layer1_0/downsample_conv`, ...)
so that weights can be mapped across by name.

Spatial sizes: every strided layer uses torchvision's symmetric padding, which
for stride 2 gives ceil(n / 2), the same size as 'SAME' padding; the trunk
turns an H x W image into ceil(H / 32) x ceil(W / 32) features.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from fphtr_jax import pixels
from fphtr_jax.models import position

Strides = int | tuple[int, int]  # one for both axes, or (height, width)

# He-normal over fan_out, as torchvision initialises its convolutions.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_CONV_AXES = ("conv_height", "conv_width", "conv_in", "conv_out")


def _pair(strides: Strides) -> tuple[int, int]:
  return (strides, strides) if isinstance(strides, int) else tuple(strides)


def _conv(features: int, kernel: int, strides: Strides, dtype: Any, name: str) -> nn.Conv:
  """Bias-free conv with torchvision's padding (kernel // 2 on each side)."""
  pad = kernel // 2
  return nn.Conv(
    features,
    (kernel, kernel),
    strides=_pair(strides),
    padding=((pad, pad), (pad, pad)),
    use_bias=False,
    dtype=dtype,
    param_dtype=jnp.float32,
    kernel_init=nn.with_logical_partitioning(_conv_init, _CONV_AXES),
    name=name,
  )


def _batch_norm(train: bool, dtype: Any, name: str) -> nn.BatchNorm:
  """BatchNorm matching torch's defaults (momentum 0.1 == flax momentum 0.9)."""
  return nn.BatchNorm(
    use_running_average=not train,
    momentum=0.9,
    epsilon=1e-5,
    dtype=dtype,
    param_dtype=jnp.float32,
    scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("conv_out",)),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)),
    name=name,
  )


class BasicBlock(nn.Module):
  """Two 3x3 convs with a residual connection (ResNet18/34)."""

  features: int
  strides: Strides = 1
  dtype: Any = jnp.float32
  expansion = 1

  @nn.compact
  def __call__(self, x, *, train: bool):
    residual = x
    y = _conv(self.features, 3, self.strides, self.dtype, "conv1")(x)
    y = nn.relu(_batch_norm(train, self.dtype, "bn1")(y))
    y = _conv(self.features, 3, 1, self.dtype, "conv2")(y)
    y = _batch_norm(train, self.dtype, "bn2")(y)
    if _pair(self.strides) != (1, 1) or x.shape[-1] != self.features:
      residual = _conv(self.features, 1, self.strides, self.dtype, "downsample_conv")(x)
      residual = _batch_norm(train, self.dtype, "downsample_bn")(residual)
    return nn.relu(y + residual)


class Bottleneck(nn.Module):
  """1x1 reduce, strided 3x3, 1x1 expand (x4), residual (ResNet50)."""

  features: int
  strides: Strides = 1
  dtype: Any = jnp.float32
  expansion = 4

  @nn.compact
  def __call__(self, x, *, train: bool):
    out_features = self.features * self.expansion
    residual = x
    y = _conv(self.features, 1, 1, self.dtype, "conv1")(x)
    y = nn.relu(_batch_norm(train, self.dtype, "bn1")(y))
    y = _conv(self.features, 3, self.strides, self.dtype, "conv2")(y)
    y = nn.relu(_batch_norm(train, self.dtype, "bn2")(y))
    y = _conv(out_features, 1, 1, self.dtype, "conv3")(y)
    y = _batch_norm(train, self.dtype, "bn3")(y)
    if _pair(self.strides) != (1, 1) or x.shape[-1] != out_features:
      residual = _conv(out_features, 1, self.strides, self.dtype, "downsample_conv")(x)
      residual = _batch_norm(train, self.dtype, "downsample_bn")(residual)
    return nn.relu(y + residual)


# name -> (block, blocks per stage), as in torchvision.
RESNETS = {
  "resnet18": (BasicBlock, (2, 2, 2, 2)),
  "resnet34": (BasicBlock, (3, 4, 6, 3)),
  "resnet50": (Bottleneck, (3, 4, 6, 3)),
}


class ResNet(nn.Module):
  """ResNet trunk: stem + 4 stages, no pooling head.

  Attributes:
    block: BasicBlock or Bottleneck.
    stage_sizes: blocks per stage.
    width: channels of the stem and first stage (64 = torchvision); stage i
      has width * 2**i channels (times the block's expansion at its output).
    last_stride: (height, width) stride of the last stage; (2, 2) =
      torchvision. (2, 1) keeps twice the columns: a finer grid along the
      lines of text for the same rows, for about a quarter more compute.
    dtype: compute dtype; parameters stay float32.
  """

  block: Any
  stage_sizes: Sequence[int]
  width: int = 64
  last_stride: tuple[int, int] = (2, 2)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, *, train: bool):
    """[B, H, W, C] -> [B, ceil(H/sh), ceil(W/sw), 8 * width * expansion].

    (sh, sw) = encoder_stride(last_stride): (32, 32) for torchvision's trunk.
    """
    x = jnp.asarray(images, self.dtype)
    x = _conv(self.width, 7, 2, self.dtype, "conv1")(x)
    x = nn.relu(_batch_norm(train, self.dtype, "bn1")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    last = len(self.stage_sizes) - 1
    for stage, num_blocks in enumerate(self.stage_sizes):
      for index in range(num_blocks):
        strides = 1
        if stage > 0 and index == 0:
          strides = self.last_stride if stage == last else 2
        x = self.block(
          features=self.width * 2**stage,
          strides=strides,
          dtype=self.dtype,
          name=f"layer{stage + 1}_{index}",
        )(x, train=train)
    return x


def encoder_stride(last_stride=(2, 2)) -> tuple[int, int]:
  """Image pixels per feature cell, (height, width), of the trunk."""
  return 16 * int(last_stride[0]), 16 * int(last_stride[1])


class ImageEncoder(nn.Module):
  """ResNet trunk -> 1x1 projection to d_model -> 2D position encoding -> dropout.

  Attributes:
    encoder: a key of RESNETS.
    width: ResNet width (64 = torchvision).
    last_stride: (height, width) stride of the last ResNet stage.
    d_model: output channels; divisible by 4.
    dropout_rate: dropout after the position encoding.
    dtype: compute dtype.
  """

  encoder: str = "resnet18"
  width: int = 64
  last_stride: tuple[int, int] = (2, 2)
  d_model: int = 260
  dropout_rate: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, *, train: bool):
    """images float32 [B, H, W, 1] -> memory [B, S, d_model] in dtype.

    S = ceil(H/sh) * ceil(W/sw), rows first (index = y * ceil(W/sw) + x), with
    (sh, sw) = encoder_stride(last_stride).
    """
    block, stage_sizes = RESNETS[self.encoder]
    # Paper at 0: the convolutions' zero padding then continues the page
    # instead of framing it with a dark edge that draws the attention.
    features = ResNet(block, stage_sizes, self.width, self.last_stride, self.dtype, name="resnet")(
      images - pixels.PAPER, train=train
    )
    # A 1x1 conv is a dense layer over channels; its kernel is 2D.
    x = nn.Dense(
      self.d_model,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      kernel_init=nn.with_logical_partitioning(
        nn.initializers.lecun_normal(), ("conv_in", "embed")
      ),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
      name="projection",
    )(features)
    batch, height, width, _ = x.shape
    x = x + jnp.asarray(position.sinusoidal_2d(height, width, self.d_model), self.dtype)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    x = x.reshape(batch, height * width, self.d_model)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))
