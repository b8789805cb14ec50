"""The reference PyTorch FPHTR architecture, in plain torch, as a speed baseline.

Re-creates the unofficial PyTorch Lightning FPHTR model the project started
from: a torchvision-style ResNet18/34 (1-channel 7x7 stride-2 stem, BatchNorm,
max pool, four stages of BasicBlocks, no average pool or classifier), a 1x1
conv to d_model, a 2D sinusoidal position encoding and dropout; then
nn.TransformerDecoder (post-norm, GELU, batch_first) over token embeddings
x sqrt(d_model) plus a 1D sinusoidal position encoding, and a linear head.
Loss: cross-entropy ignoring <PAD>; optimizer: Adam.

torchvision is not needed: the ResNet is written out here with torchvision's
layer shapes, so parameter counts match torchvision's resnet18/34 trunks.
Only benchmarks import this module; the project itself does not need torch.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

PAD_ID = 0


class BasicBlock(nn.Module):
  """torchvision's BasicBlock: two 3x3 convs, BN, ReLU, residual."""

  def __init__(self, in_channels: int, channels: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(channels)
    self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(channels)
    self.downsample = None
    if stride != 1 or in_channels != channels:
      self.downsample = nn.Sequential(
        nn.Conv2d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm2d(channels)
      )

  def forward(self, x):
    residual = x if self.downsample is None else self.downsample(x)
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return F.relu(y + residual)


STAGE_SIZES = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


class ResNetTrunk(nn.Module):
  """[B, 1, H, W] -> [B, 512, ceil(H/32), ceil(W/32)], torchvision layout."""

  def __init__(self, encoder: str):
    super().__init__()
    if encoder not in STAGE_SIZES:
      raise ValueError(f"encoder={encoder!r} is unknown; use one of {tuple(STAGE_SIZES)}.")
    layers = [
      nn.Conv2d(1, 64, 7, 2, 3, bias=False),
      nn.BatchNorm2d(64),
      nn.ReLU(inplace=True),
      nn.MaxPool2d(3, 2, 1),
    ]
    in_channels = 64
    for stage, num_blocks in enumerate(STAGE_SIZES[encoder]):
      channels = 64 * 2**stage
      for index in range(num_blocks):
        stride = 2 if stage > 0 and index == 0 else 1
        layers.append(BasicBlock(in_channels, channels, stride))
        in_channels = channels
    self.layers = nn.Sequential(*layers)
    self.out_channels = in_channels
    for module in self.modules():  # torchvision's init
      if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

  def forward(self, x):
    return self.layers(x)


def sinusoidal_1d(length: int, dim: int) -> torch.Tensor:
  """float32 [length, dim]; sin on even channels, cos on odd ones."""
  position = torch.arange(length, dtype=torch.float32)[:, None]
  inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
  table = torch.zeros(length, dim)
  table[:, 0::2] = torch.sin(position * inv_freq)
  table[:, 1::2] = torch.cos(position * inv_freq)
  return table


def sinusoidal_2d(height: int, width: int, dim: int) -> torch.Tensor:
  """float32 [height, width, dim]: first dim/2 channels encode y, the rest x."""
  half = dim // 2
  rows = sinusoidal_1d(height, half)[:, None, :].expand(height, width, half)
  cols = sinusoidal_1d(width, half)[None, :, :].expand(height, width, half)
  return torch.cat([rows, cols], dim=-1)


class ImageEncoder(nn.Module):
  """images [B, 1, H, W] -> memory [B, S, d_model], S = ceil(H/32) * ceil(W/32)."""

  def __init__(self, encoder: str, d_model: int, dropout: float):
    super().__init__()
    self.trunk = ResNetTrunk(encoder)
    self.projection = nn.Conv2d(self.trunk.out_channels, d_model, 1)
    self.dropout = nn.Dropout(dropout)
    self.d_model = d_model

  def forward(self, images):
    x = self.projection(self.trunk(images)).permute(0, 2, 3, 1)  # [B, h, w, d]
    _, height, width, _ = x.shape
    x = x + sinusoidal_2d(height, width, self.d_model).to(x.device)
    return self.dropout(x).flatten(1, 2)


class TextDecoder(nn.Module):
  """memory [B, S, d], tokens int64 [B, T] -> logits [B, T, vocab_size]."""

  def __init__(
    self,
    vocab_size: int,
    max_len: int,
    d_model: int,
    num_layers: int,
    num_heads: int,
    mlp_dim: int,
    dropout: float,
  ):
    super().__init__()
    self.embed = nn.Embedding(vocab_size, d_model)
    self.register_buffer("position", sinusoidal_1d(max_len, d_model), persistent=False)
    self.dropout = nn.Dropout(dropout)
    layer = nn.TransformerDecoderLayer(
      d_model, num_heads, mlp_dim, dropout, activation="gelu", batch_first=True, norm_first=False
    )
    self.layers = nn.TransformerDecoder(layer, num_layers)
    self.head = nn.Linear(d_model, vocab_size)
    self.d_model = d_model

  def forward(self, memory, tokens):
    length = tokens.shape[1]
    # Boolean masks (True = may not attend), both of the same type as torch wants.
    causal_mask = torch.ones(length, length, dtype=torch.bool, device=tokens.device).triu(1)
    x = self.embed(tokens) * math.sqrt(self.d_model) + self.position[:length]
    x = self.layers(
      self.dropout(x),
      memory,
      tgt_mask=causal_mask,
      tgt_key_padding_mask=tokens == PAD_ID,
      tgt_is_causal=True,
    )
    return self.head(x)


class FPHTR(nn.Module):
  """images [B, 1, H, W] float32, tokens int64 [B, T] -> logits [B, T, vocab_size]."""

  def __init__(
    self,
    vocab_size: int,
    max_len: int,
    encoder: str = "resnet18",
    d_model: int = 260,
    num_layers: int = 6,
    num_heads: int = 4,
    mlp_dim: int = 1024,
    dropout: float = 0.1,
  ):
    super().__init__()
    self.encoder = ImageEncoder(encoder, d_model, dropout)
    self.decoder = TextDecoder(
      vocab_size, max_len, d_model, num_layers, num_heads, mlp_dim, dropout
    )

  def forward(self, images, tokens):
    return self.decoder(self.encoder(images), tokens)


def count_params(module: nn.Module) -> int:
  return sum(p.numel() for p in module.parameters())


class TrainStep:
  """One reference training step: forward, CE ignoring <PAD>, backward, Adam."""

  def __init__(self, model: FPHTR, learning_rate: float = 2e-4):
    self.model = model.train()
    self.optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)

  def __call__(self, images, tokens) -> float:
    """images float32 [B, 1, H, W]; tokens int64 [B, T] (<SOS> ... <EOS> <PAD>...)."""
    logits = self.model(images, tokens[:, :-1])
    loss = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], ignore_index=PAD_ID)
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    self.optimizer.step()
    return loss.item()
