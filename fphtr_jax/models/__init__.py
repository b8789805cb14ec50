"""FPHTR model: ResNet image encoder -> transformer text decoder."""

from fphtr_jax.models.fphtr import ENCODERS
from fphtr_jax.models.fphtr import FPHTR
from fphtr_jax.models.fphtr import create_model
from fphtr_jax.models.fphtr import init_cache
