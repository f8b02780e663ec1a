"""Turn the many accepted input kinds into grayscale ``uint8`` pixel arrays.

Accepted: PIL images, file paths, ``uint8`` numpy arrays (``HW`` or ``HWC``) and torch
tensors (``CHW``/``HW``; ``uint8``, or float in [0, 1]), one by one in a sequence; or one
stacked ``uint8`` ndarray ``(N, H, W[, C])`` or stacked tensor ``(N, C, H, W)``.

Channels follow ``PIL.Image.fromarray``/torchvision's ``to_pil_image``: 1 -> ``L``,
2 -> ``LA``, 3 -> ``RGB``, 4 -> ``RGBA``; grayscale is then Pillow's ``convert('L')``.
Float tensors are converted exactly as ``to_pil_image`` does: ``pic.mul(255).byte()``
(truncation toward zero, so 0.999 -> 254), and only when every value lies in [0, 1]
(within ``FLOAT_SLACK``, which that conversion still maps to 0 and 255): a normalised
tensor (``transforms.Normalize``) or NaN is refused, since its bytes would wrap around and
hash as noise. torch is imported only when a tensor is passed (this module never imports it).
"""

from __future__ import annotations

import numpy as np

from torch_dedup.hashing._resample import rgb_to_l

__all__ = ["FLOAT_SLACK", "is_torch_tensor", "stack_to_gray", "tensor_to_numpy", "to_channels_last", "validate_stack"]

_CHANNELS = (1, 2, 3, 4)
#: Float values this far outside [0, 1] (rounding of an un-normalisation) still convert to 0 or 255.
FLOAT_SLACK = 1e-5


def is_torch_tensor(x: object) -> bool:
    """True for a torch tensor, decided without importing torch."""
    return type(x).__module__.startswith("torch") and hasattr(x, "dtype") and hasattr(x, "dim")


def tensor_to_numpy(t, what: str, stacked: bool) -> np.ndarray:
    """A tensor as channels-last ``uint8`` numpy, with ``to_pil_image``'s conversion.

    Args:
        t: ``(C, H, W)``/``(H, W)`` tensor, or ``(N, C, H, W)`` when ``stacked``.
        what: how to name the input in errors (``"images"``, ``"images[3]"``).
        stacked: whether a leading batch axis is expected.

    Returns:
        ``(H, W)``/``(H, W, C)`` or ``(N, H, W, C)`` ``uint8`` array.
    """
    want = 4 if stacked else (2, 3)
    ndim = t.dim()
    if (stacked and ndim != 4) or (not stacked and ndim not in (2, 3)):
        shape = "(N, C, H, W)" if stacked else "(C, H, W) or (H, W)"
        raise ValueError(f"{what} is a tensor of shape {tuple(t.shape)}; expected {shape} (ndim {want})")
    _check_channels_first(t, what, stacked)
    t = t.detach().cpu()
    if t.is_floating_point():
        _check_unit_range(t, what)
        # torchvision.transforms.functional.to_pil_image: pic.mul(255).byte()
        t = t.mul(255).byte()
    elif str(t.dtype) != "torch.uint8":
        raise ValueError(
            f"{what} has dtype {t.dtype}; expected torch.uint8 or a float tensor in [0, 1]. "
            f"Convert it, e.g. t.to(torch.uint8)."
        )
    arr = t.numpy()
    if stacked:
        arr = arr.transpose(0, 2, 3, 1)
    elif arr.ndim == 3:
        arr = arr.transpose(1, 2, 0)
    c = arr.shape[-1] if arr.ndim == (4 if stacked else 3) else 1
    if c not in _CHANNELS:
        raise ValueError(f"{what} has {c} channels (shape {tuple(t.shape)}); expected 1, 2, 3 or 4 channels")
    return np.ascontiguousarray(arr)


def _check_channels_first(t, what: str, stacked: bool) -> None:
    """Refuse a channels-last tensor with the permute that fixes it (tensors are read as torchvision's CHW)."""
    shape = tuple(t.shape)
    if len(shape) != (4 if stacked else 3):
        return
    c_first, c_last = shape[-3], shape[-1]
    if c_first in _CHANNELS or c_last not in _CHANNELS:
        return
    order, layout = ("(0, 3, 1, 2)", "(N, H, W, C)") if stacked else ("(2, 0, 1)", "(H, W, C)")
    raise ValueError(
        f"{what} is a tensor of shape {shape}: that looks channels-last {layout} with {c_last} channel(s), but "
        f"tensors are read channels-first as torchvision does, {'(N, C, H, W)' if stacked else '(C, H, W)'}, "
        f"which would make {c_first} channels. Pass t.permute{order}, or t.numpy() (numpy arrays are read "
        f"channels-last)."
    )


def _check_unit_range(t, what: str) -> None:
    """Refuse float values outside [0, 1]: ``mul(255).byte()`` would wrap them into unrelated bytes."""
    if t.numel() == 0:
        return
    lo, hi = float(t.min()), float(t.max())
    if lo >= -FLOAT_SLACK and hi <= 1 + FLOAT_SLACK:  # NaN fails both comparisons
        return
    seen = "NaN values" if lo != lo or hi != hi else f"values in [{lo:.3g}, {hi:.3g}]"
    raise ValueError(
        f"{what} is a float tensor with {seen}, outside [0, 1]: it looks normalised (transforms.Normalize) "
        f"or scaled, and hashing it would give hashes unrelated to the image. Hash the raw images instead: "
        f"pass image_fn=lambda i: <the un-normalised image of item i> (e.g. from the base dataset without "
        f"its transform), pass the base dataset itself, or undo the normalisation (t * std + mean, clamped "
        f"to [0, 1])."
    )


def validate_stack(arr: np.ndarray, what: str = "images") -> np.ndarray:
    """Check a stacked array: ``uint8`` ``(N, H, W)`` or ``(N, H, W, C)`` with C in 1..4."""
    if arr.dtype != np.uint8:
        raise ValueError(
            f"{what} has dtype {arr.dtype}; expected uint8 (N, H, W[, C]). Scale and convert "
            f"it first, e.g. (x * 255).round().astype(np.uint8)."
        )
    if arr.ndim == 3:
        return arr
    if arr.ndim == 4 and arr.shape[3] in _CHANNELS:
        return arr
    raise ValueError(
        f"{what} has shape {arr.shape}; expected a stack (N, H, W) or (N, H, W, C) with C in "
        f"{_CHANNELS}. For a single image pass a list: [image]."
    )


def to_channels_last(arr: np.ndarray, what: str) -> np.ndarray:
    """Check one ``uint8`` image array ``(H, W)`` or ``(H, W, C)`` (C in 1..4)."""
    if arr.dtype != np.uint8:
        raise ValueError(
            f"{what} has dtype {arr.dtype}; expected uint8 (H, W) or (H, W, C). Convert it, "
            f"e.g. (x * 255).round().astype(np.uint8)."
        )
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in _CHANNELS):
        if 0 in arr.shape[:2]:
            raise ValueError(f"{what} has an empty shape {arr.shape}")
        return arr
    raise ValueError(f"{what} has shape {arr.shape}; expected (H, W) or (H, W, C) with C in {_CHANNELS}")


def stack_to_gray(arr: np.ndarray) -> np.ndarray:
    """Pillow's ``convert('L')`` of a validated stack: ``(N, H, W[, C])`` -> ``(N, H, W)``."""
    if arr.ndim == 3:
        return arr
    c = arr.shape[3]
    if c <= 2:  # L or LA: the luminance channel as is
        return np.ascontiguousarray(arr[..., 0])
    return rgb_to_l(arr)
