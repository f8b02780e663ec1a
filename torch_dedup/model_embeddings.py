"""A model's embeddings of images (layer 3): fingerprint the weights, run the model batched.

Any ``torch.nn.Module`` or callable that maps a batch of images ``(B, C, H, W)`` to a batch of
vectors can embed images here:

- :func:`model_fingerprint` digests the model's class, ``repr`` and weights (the key of the
  embedding sidecars and fits of :mod:`torch_dedup.embedding`).
- :func:`embed_images` reads images as RGB (the default transform is torchvision's
  ``to_tensor``), batches them and runs the model on the device the caller picks, under
  ``torch.inference_mode()``, with the module switched to ``eval()`` for the call (and every
  submodule's training flag restored afterwards, also on error).

A dataset's embeddings (the sidecar cache, ``embed_dataset``, its ``torch.distributed`` form)
live in :mod:`torch_dedup.embedding`, which re-exports both names and reuses the image reading,
the batching runner and the eval-mode switch of this module.

See docs/embeddings.md.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from PIL import Image

from ._checks import check_bool, check_int
from .errors import ImageDecodeError
from .hashing.hyperplanes import EMBED_VERSION

__all__ = ["embed_images", "model_fingerprint"]

_DEFAULT_TRANSFORM = "rgb-to-tensor"  # torchvision's to_tensor of the RGB image: CHW float in [0, 1]
_FLOAT_SLACK = 1e-5  # as torch_dedup.hashing: a float tensor this far outside [0, 1] still converts
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


# --------------------------------------------------------------------------- fingerprints


def _module_of(embed) -> torch.nn.Module | None:
    """The module behind ``embed``: itself, or the owner of a bound method (``model.encode_image``)."""
    if isinstance(embed, torch.nn.Module):
        return embed
    owner = getattr(embed, "__self__", None)
    return owner if isinstance(owner, torch.nn.Module) else None


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def model_fingerprint(embed, fingerprint: str | None = None) -> str:
    """A digest that changes whenever the embedding's weights do (the key of its sidecars and fits).

    For an ``nn.Module`` (or a method bound to one, such as ``model.encode_image``): BLAKE2b of
    the class's qualified name, the method's name, the module's ``repr`` (its layers and their
    settings) and every ``state_dict`` entry and buffer as name, dtype, shape and bytes. Code
    the digest cannot see (a changed ``forward``) needs ``fingerprint=``, which is mixed in.
    A plain callable has no weights to read: ``fingerprint=`` is required.

    Args:
        embed: the module or callable given as ``embed=``.
        fingerprint: a string that changes whenever the model does (a checkpoint name and its
            sha256, a version tag); required for a plain callable, mixed in for a module.

    Returns:
        32 hex digits.

    Raises:
        TypeError: ``embed`` is not callable.
        ValueError: a plain callable without ``fingerprint=``, or an empty fingerprint.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(4, 2)
        >>> a = model_fingerprint(net)
        >>> with torch.no_grad():
        ...     net.weight[0, 0] += 1
        >>> model_fingerprint(net) != a
        True
    """
    if not callable(embed):
        raise TypeError(f"embed={embed!r:.80} is not callable; pass a torch.nn.Module or a function "
                        f"images (B, C, H, W) -> embeddings (B, D)")
    if fingerprint is not None and (not isinstance(fingerprint, str) or not fingerprint):
        raise ValueError(f"fingerprint={fingerprint!r} must be a non-empty string that changes whenever the model "
                         f"does (e.g. the checkpoint's file name and sha256)")
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{EMBED_VERSION}\0".encode())
    module = _module_of(embed)
    if module is None:
        if fingerprint is None:
            name = getattr(embed, "__qualname__", type(embed).__name__)
            raise ValueError(f"embed={name} is a plain callable, whose weights cannot be read, so its embeddings "
                             f"cannot be keyed on them: pass fingerprint='<a string that changes whenever the model "
                             f"does>' (to embed_dataset: embed_fingerprint=), e.g. the checkpoint's name and sha256")
        h.update(b"callable\0")
    else:
        cls = type(module)
        method = "" if embed is module else getattr(embed, "__name__", "?")
        h.update(f"{cls.__module__}.{cls.__qualname__}\0{method}\0{module!r}\0".encode())
        state = module.state_dict()
        # non-persistent buffers are not in the state dict, but they change the outputs all the same
        entries = [*state.items(), *((f"buffer:{k}", v) for k, v in module.named_buffers() if k not in state)]
        for name, value in entries:
            if isinstance(value, torch.Tensor):
                h.update(f"{name}\0{value.dtype}\0{tuple(value.shape)}\0".encode())
                h.update(_tensor_bytes(value))
            else:  # a module's extra state: whatever it chose to store
                h.update(f"{name}\0{value!r}\0".encode())
    if fingerprint is not None:
        h.update(f"user\0{fingerprint}".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- images -> tensors


def _array_rgb(arr: np.ndarray, what: str, stacked: bool = False) -> np.ndarray:
    """uint8 ``(..., H, W[, C])`` pixels as RGB ``(..., H, W, 3)`` the way Pillow's ``convert("RGB")`` does."""
    base = 3 if stacked else 2
    if arr.dtype != np.uint8:
        raise ValueError(f"{what} has dtype {arr.dtype}; expected uint8 pixels. Convert it, e.g. "
                         f"(x * 255).round().astype(np.uint8)")
    if arr.ndim == base:
        arr = arr[..., None]
    if arr.ndim != base + 1 or arr.shape[-1] not in (1, 2, 3, 4) or 0 in arr.shape[base - 2:base]:
        layout = "(N, H, W[, C])" if stacked else "(H, W[, C])"
        raise ValueError(f"{what} has shape {arr.shape}; expected {layout} with C in 1..4 and no empty side")
    c = arr.shape[-1]
    if c <= 2:  # L, LA: the grey level in all three channels
        return np.repeat(arr[..., :1], 3, axis=-1)
    return arr if c == 3 else arr[..., :3]  # RGBA: alpha dropped, not composited (as Pillow)


def _tensor_pixels(t: torch.Tensor, what: str) -> np.ndarray:
    """A CHW/HW tensor as HWC uint8, converted as torchvision's ``to_pil_image`` does."""
    if t.dim() not in (2, 3):
        raise ValueError(f"{what} is a tensor of shape {tuple(t.shape)}; expected (C, H, W) or (H, W)")
    t = t.detach().to("cpu")
    if t.is_floating_point():
        lo, hi = (float(t.min()), float(t.max())) if t.numel() else (0.0, 1.0)
        if not (lo >= -_FLOAT_SLACK and hi <= 1 + _FLOAT_SLACK):
            raise ValueError(f"{what} is a float tensor with values in [{lo:.3g}, {hi:.3g}], outside [0, 1]: it "
                             f"looks normalised. Pass the raw image (image_fn=) and the model's normalisation as "
                             f"transform=")
        t = t.mul(255).byte()
    elif t.dtype != torch.uint8:
        raise ValueError(f"{what} has dtype {t.dtype}; expected torch.uint8 or a float tensor in [0, 1]")
    arr = t.numpy()
    return arr.transpose(1, 2, 0) if arr.ndim == 3 else arr


def _uint8_tensor(pixels: np.ndarray) -> torch.Tensor:
    """A writable copy as a tensor (read-only arrays, e.g. a PIL image's, cannot back a tensor)."""
    return torch.from_numpy(np.array(pixels, dtype=np.uint8, order="C"))


def _pil_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in _GREY_MODES:
        return image.convert("L").convert("RGB")
    return image.convert("RGB")


def _read_rgb(item: Any, what: str, as_pil: bool):
    """One image as RGB: an ``(H, W, 3)`` uint8 array, or a PIL image when ``as_pil``.

    Raises:
        ImageDecodeError: a file or lazy PIL image that cannot be decoded.
        ValueError: an input of the wrong type, dtype or shape.
    """
    if isinstance(item, (str, os.PathLike)):
        path = os.fspath(item)
        try:
            with Image.open(path) as im:
                rgb = _pil_rgb(im)
                rgb.load()
                return rgb if as_pil else np.asarray(rgb)
        except Exception as exc:  # any decoder failure is this file's failure
            raise ImageDecodeError(path, f"{type(exc).__name__}: {exc}") from exc
    if isinstance(item, Image.Image):
        try:
            rgb = _pil_rgb(item)
            return rgb if as_pil else np.asarray(rgb)
        except Exception as exc:  # a broken lazy image
            raise ImageDecodeError(what, f"{type(exc).__name__}: {exc}") from exc
    if isinstance(item, torch.Tensor):
        item = _tensor_pixels(item, what)
    if isinstance(item, np.ndarray):
        rgb = _array_rgb(item, what)
        return Image.fromarray(np.ascontiguousarray(rgb)) if as_pil else rgb
    raise ValueError(f"{what} has unsupported type {type(item).__name__}; expected a PIL image, a path, a uint8 "
                     f"array (H, W[, C]) or a tensor (C, H, W)")


def _device(device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r} is not a torch device ({exc}); pass 'cpu', 'cuda', 'cuda:1', 'mps' "
                         f"or a torch.device") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available here (torch.cuda.is_available() is False); "
                         f"pass device='cpu'")
    return dev


def _input_dtype(module: torch.nn.Module | None, dev: torch.device) -> torch.dtype:
    """The module's floating dtype (inputs are cast to it); refuses weights on another device."""
    if module is None:
        return torch.float32
    dtype = None
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        if t.device.type != dev.type or (dev.index is not None and t.device.index not in (None, dev.index)):
            raise ValueError(f"embed's weights are on {t.device} ({name!r}) but device={str(dev)!r}; pass "
                             f"device={str(t.device)!r}, or move the model first: model.to({str(dev)!r})")
        if dtype is None and t.is_floating_point():
            dtype = t.dtype
    return dtype or torch.float32


@contextmanager
def _eval_mode(module: torch.nn.Module | None):
    """``module.eval()`` for the block; every submodule's own training flag restored after, also on error."""
    if module is None:
        yield
        return
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        if len({mode for _, mode in modes}) == 1:
            module.train(modes[0][1])
        else:  # a mixed state (e.g. frozen batch norms in a training model): each flag as it was
            for m, mode in modes:
                m.training = mode


class _Runner:
    """One embedding call's settings: turns images into batches and batches into float32 rows."""

    def __init__(self, embed, transform, device):
        if not callable(embed):
            raise TypeError(f"embed={embed!r:.80} is not callable; pass a torch.nn.Module or a function "
                            f"images (B, C, H, W) -> embeddings (B, D)")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform={transform!r:.80} is not callable; pass a function PIL image -> tensor "
                            f"(C, H, W), e.g. a torchvision transforms.Compose, or None")
        self.embed = embed
        self.module = _module_of(embed)
        self.device = _device(device)
        self.dtype = _input_dtype(self.module, self.device)
        self.transform = transform
        self.dims: int | None = None

    def read(self, item: Any, what: str):
        """One image as this call needs it: RGB uint8 ``(H, W, 3)`` (default transform) or a PIL RGB image.

        Raises:
            ImageDecodeError, ValueError: the item is not a readable image (its own failure).
        """
        return _read_rgb(item, what, as_pil=self.transform is not None)

    def tensor(self, pixels, what: str):
        """What :meth:`read` gave, ready for :meth:`stack`: the RGB array itself, or ``transform``'s CHW tensor."""
        if self.transform is None:
            return pixels
        out = self.transform(pixels)
        if not isinstance(out, torch.Tensor) or out.dim() != 3:
            shown = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
            raise TypeError(f"transform= returned {shown} for {what}; it must map one PIL image to a tensor "
                            f"(C, H, W): end it with transforms.ToTensor() (or PILToTensor + ConvertImageDtype)")
        return out

    def stack(self, tensors: list, names: list[str]) -> torch.Tensor:
        """One batch: ``(B, C, H, W)``; RGB arrays become a uint8 NHWC stack seen as NCHW (channels-last
        strides, as a stacked array input gets: the same pixels give the same embeddings either way)."""
        first = tensors[0].shape
        for t, name in zip(tensors, names):
            if t.shape != first:
                raise ValueError(f"images have different sizes ({names[0]} gives {tuple(first)}, {name} "
                                 f"{tuple(t.shape)}), so they cannot share a batch; pass transform= with a Resize, "
                                 f"e.g. transforms.Compose([transforms.Resize((224, 224)), transforms.ToTensor()])")
        if self.transform is None:
            return _uint8_tensor(np.stack(tensors)).permute(0, 3, 1, 2)
        return torch.stack(tensors)

    def run(self, batch: torch.Tensor, names: list[str]) -> np.ndarray:
        """Embeddings ``(B, D)`` float32 of a stacked batch (uint8 from the default transform, else float)."""
        x = batch.to(self.device)
        if self.transform is None:  # torchvision's to_tensor: float, then divided by 255
            x = x.to(torch.float32).div(255)
        if x.is_floating_point():
            x = x.to(self.dtype)
        with torch.inference_mode():
            out = self.embed(x)
        b = len(names)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"embed returned {type(out).__name__}; it must return a tensor of shape (batch, ...). "
                            f"Wrap the model, e.g. embed=lambda x: model(x).image_embeds (or [0])")
        if out.dim() == 0 or out.shape[0] != b or out.numel() == 0:
            raise ValueError(f"embed returned shape {tuple(out.shape)} for a batch of {b} images; it must return "
                             f"one non-empty row per image, (batch, ...)")
        rows = out.detach().reshape(b, -1).to("cpu", torch.float32).numpy()
        if self.dims is None:
            self.dims = rows.shape[1]
        elif rows.shape[1] != self.dims:
            raise ValueError(f"embed returned {rows.shape[1]} numbers per image for the batch from {names[0]} but "
                             f"{self.dims} before: images of different sizes reach a model without global pooling; "
                             f"pass transform= with a Resize so that every image has one size")
        bad = ~np.isfinite(rows).all(axis=1)
        if bad.any():
            raise ValueError(f"embed returned NaN or infinite values for {names[int(np.argmax(bad))]}; check the "
                             f"model's weights and its input: the default transform gives RGB in [0, 1], pass "
                             f"transform= with the model's own preprocessing")
        return rows


def _progress_bar(total: int, progress: bool, desc: str):
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="img", desc=desc, disable=not progress or total < 1000, leave=False)


def _image_list(images) -> tuple[np.ndarray | None, list]:
    """``(stack, [])`` for a uint8 stack (RGB ``(N, H, W, 3)``), else ``(None, items)``."""
    if isinstance(images, np.ndarray):
        return _array_rgb(images, "images", stacked=True), []
    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise ValueError(f"images is a tensor of shape {tuple(images.shape)}; a stack of tensors is (N, C, H, W), "
                             f"one image goes in a list: [image]")
        return None, list(images)
    if isinstance(images, (str, bytes, os.PathLike, Image.Image)):
        raise ValueError(f"images must be a sequence of images or a stacked array, got a single "  # noqa: TRY004 - as hash_images
                         f"{type(images).__name__}; wrap it in a list: [image]")
    return None, list(images)


def embed_images(images, embed, *, transform: Callable | None = None, device: str | torch.device = "cpu",
                 batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """Embeddings of images by a model, batched on ``device``, in eval mode, under ``torch.inference_mode()``.

    Args:
        images: a sequence of PIL images, file paths, uint8 arrays ``(H, W[, C])`` or tensors
            ``(C, H, W)`` (uint8, or float in [0, 1]); or a uint8 stack ``(N, H, W[, C])``.
            Every image is read as RGB (grey replicated, alpha dropped).
        embed: an ``nn.Module``, or any callable ``(B, C, H, W) tensor -> (B, ...) tensor``
            (e.g. ``model.encode_image``). A module (or a bound method's module) is switched to
            ``eval()`` for the call and back to its own flags after; its weights must be on
            ``device``, and inputs are cast to its floating dtype.
        transform: ``None``: torchvision's ``to_tensor`` of the RGB image (CHW float in [0, 1]);
            else a function from one PIL RGB image to a CHW tensor (the model's preprocessing:
            resize, crop, normalise).
        device: where the batches run (``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device``).
        batch_size: images per forward pass.
        progress: show a tqdm bar (for 1,000 images or more).

    Returns:
        float32 ``(N, D)``: the model's output for each image, flattened.

    Raises:
        ValueError: images of different sizes in one batch (pass ``transform=`` with a
            Resize), a model output that is not one finite row per image, weights on another
            device, a bad input. TypeError: ``embed``/``transform`` of the wrong kind.
        ImageDecodeError: a file that cannot be decoded.

    Example:
        >>> import numpy as np, torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
        ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        >>> embed_images(np.zeros((5, 28, 28), np.uint8), net).shape
        (5, 8)
    """
    runner = _Runner(embed, transform, device)
    batch_size = check_int("batch_size", batch_size, 1)
    check_bool("progress", progress)
    stack, items = _image_list(images)
    n = len(stack) if stack is not None else len(items)
    parts = []
    with _eval_mode(runner.module), _progress_bar(n, progress, "embedding") as bar:
        for b0 in range(0, n, batch_size):
            b1 = min(n, b0 + batch_size)
            names = [f"images[{i}]" for i in range(b0, b1)]
            if stack is not None and transform is None:
                batch = _uint8_tensor(stack[b0:b1]).permute(0, 3, 1, 2)
            else:
                rows = [stack[i] for i in range(b0, b1)] if stack is not None else items[b0:b1]
                tensors = []
                for i, item in zip(range(b0, b1), rows):
                    try:
                        pixels = runner.read(item, f"images[{i}]")
                    except ImageDecodeError as exc:
                        raise ImageDecodeError(exc.source, exc.reason, i) from exc
                    tensors.append(runner.tensor(pixels, f"images[{i}]"))
                batch = runner.stack(tensors, names)
            parts.append(runner.run(batch, names))
            bar.update(b1 - b0)
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
