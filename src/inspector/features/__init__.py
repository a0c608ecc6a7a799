"""Frozen pretrained backbones and the image preprocessing in front of them."""
