"""Perceptual hashing, bit for bit equal to imagehash 4.3 (layer 1)."""

from ._decode import hash_files
from ._fitted import check_fit, read_colour_dct_features
from .api import METHODS, HashResult, from_hex, hash_array, hash_bits, hash_images, to_hex
from .colour_dct import COLOUR_DCT_DIMS, COLOUR_DCT_VERSION, colour_dct_features
from .colour_dct_fit import (ColourDctFit, cosine_for_threshold, fit_colour_dct, fit_colour_dct_images,
                             threshold_for_cosine)
from .views import (VIEW_SETS, VIEWS_VERSION, colour_dct_view_features, image_views, stack_views, view_codes,
                    view_count)

__all__ = [
    "COLOUR_DCT_DIMS", "COLOUR_DCT_VERSION", "ColourDctFit", "HashResult", "METHODS", "VIEWS_VERSION", "VIEW_SETS",
    "check_fit", "colour_dct_features", "colour_dct_view_features", "cosine_for_threshold", "fit_colour_dct",
    "fit_colour_dct_images", "from_hex", "hash_array", "hash_bits", "hash_files", "hash_images", "image_views",
    "read_colour_dct_features", "stack_views", "threshold_for_cosine", "to_hex", "view_codes", "view_count",
]
