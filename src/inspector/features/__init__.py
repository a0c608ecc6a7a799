"""What the network sees and what computes its features.

preprocess.py  resize, crop and batch RGB images (numpy and OpenCV only: the line box uses it)
backbones.py   frozen pretrained timm backbones with weights that never come from nowhere (torch)
"""
