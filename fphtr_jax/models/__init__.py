"""The FPHTR model: ResNet encoder, transformer decoder, and the two together (fphtr.py)."""
