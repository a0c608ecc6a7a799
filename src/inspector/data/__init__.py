"""Reading images and MVTec-style folders; generating and fetching data sets."""

from inspector.data.io import ImageReadError, read_image, read_mask
from inspector.data.mvtec import CategoryNotFoundError, Dataset, Sample, list_images

__all__ = [
    "CategoryNotFoundError",
    "Dataset",
    "ImageReadError",
    "Sample",
    "list_images",
    "read_image",
    "read_mask",
]
