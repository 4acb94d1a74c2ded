"""Finding, checking and loading the photographs a course step works on.

A folder of "training photos" collected from a phone, a scanner or the web is rarely clean: there
are zero-byte files left by an interrupted copy, half-written JPEGs, a ``notes.txt`` renamed to
``notes.jpg``, animated GIFs, macOS ``._photo.jpg`` shadow files, 16-bit scans, CMYK prints, photos
whose pixels are stored sideways with an EXIF "rotate me" tag, and now and then a file crafted to
decompress into billions of pixels (a *decompression bomb*).

This module turns such a folder into a list of images every later step can trust:

* :func:`list_images` walks a folder recursively (sorted, so runs are reproducible) and returns
  the files whose extension says "image", leaving out hidden files and folders and anything under
  an ``exclude`` path (the course keeps ``data_samples/held_out`` out of training that way).
* :func:`validate_image` opens one file and either returns an :class:`ImageInfo` (size after EXIF
  rotation, mode, format) or raises :class:`UnusableImageError` saying *why* it cannot be used.
* :func:`find_usable_images` combines the two: every unusable file is skipped with exactly one
  :class:`SkippedImageWarning` naming the file and the reason, every usable one is kept, and a
  folder with nothing usable is an error that names the folder.
* :func:`load_rgb` / :func:`to_rgb` return an upright 8-bit RGB :class:`PIL.Image.Image`, whatever
  the file stored (grayscale, alpha, palette, 16-bit, CMYK, ...).

Nothing here knows about degradations or tensors; ``data.py`` and ``degrade.py`` build on it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "ImageInfo",
    "SkippedImageWarning",
    "UnusableImageError",
    "centre_window",
    "find_usable_images",
    "is_hidden",
    "list_images",
    "load_rgb",
    "to_rgb",
    "validate_image",
]

#: File name endings treated as images (compared case-insensitively). Everything else in a data
#: folder (``README.md``, ``captions.json``, ...) is ignored without a warning.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")

#: Largest image (width * height) we agree to decode: 8192 x 8192, about 67 megapixels, which is
#: more than any camera photo a restoration LoRA trains on and about 200 MB as 8-bit RGB. PIL's own
#: guard only *warns* up to ~179 megapixels; a larger file in a data folder is far more likely a
#: decompression bomb (or a mistake) than a training photo. Change it here if you really need to.
MAX_IMAGE_PIXELS: int = 8192 * 8192

# EXIF orientation values 5-8 store the picture transposed: width and height swap when fixed.
_EXIF_ORIENTATION_TAG = 0x0112
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})


class SkippedImageWarning(UserWarning):
    """An image file in a data folder was left out; the message names the file and the reason."""


class UnusableImageError(ValueError):
    """A file cannot be used as an image. ``reason`` holds the short explanation."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`validate_image` learned about a usable image file.

    ``width`` and ``height`` are in pixels *after* EXIF orientation is applied, i.e. the size that
    :func:`load_rgb` returns. ``mode`` is the mode stored in the file (``"RGB"``, ``"L"``,
    ``"I;16"``, ``"CMYK"``, ...), before conversion to RGB.
    """

    path: Path
    width: int
    height: int
    mode: str
    format: str | None

    @property
    def short_side(self) -> int:
        return min(self.width, self.height)


# ---------------------------------------------------------------------------------------------
# Listing
# ---------------------------------------------------------------------------------------------


def is_hidden(path: str | os.PathLike, root: str | os.PathLike | None = None) -> bool:
    """True if ``path`` or any folder between ``root`` and it starts with a dot.

    Only the part of ``path`` below ``root`` counts, so a data folder that itself lives inside a
    hidden folder (``~/.cache/photos``) still works.
    """
    path = Path(path)
    parts = path.relative_to(root).parts if root is not None else (path.name,)
    return any(part.startswith(".") for part in parts)


def _resolve_excludes(root: Path, exclude: Iterable[str | os.PathLike]) -> list[Path]:
    """Absolute forms of the ``exclude`` entries.

    A relative entry is first read relative to the current folder (how a command line names it:
    ``--exclude data_samples/held_out``); if nothing exists there it is read relative to ``root``
    (``exclude=["held_out"]``).
    """
    if isinstance(exclude, (str, os.PathLike)):
        exclude = [exclude]
    resolved = []
    for entry in exclude:
        entry_path = Path(entry).expanduser()
        if not entry_path.is_absolute() and not entry_path.exists() and (root / entry_path).exists():
            entry_path = root / entry_path
        resolved.append(entry_path.resolve())
    return resolved


def _is_excluded(path: Path, excluded: list[Path]) -> bool:
    if not excluded:
        return False
    resolved = Path(os.path.realpath(path))  # unlike Path.resolve, never raises on a symlink loop
    return any(resolved == entry or entry in resolved.parents for entry in excluded)


def list_images(
    root: str | os.PathLike,
    exclude: Iterable[str | os.PathLike] = (),
    *,
    warn_hidden: bool = True,
) -> list[Path]:
    """All files under ``root`` whose extension is in :data:`IMAGE_EXTENSIONS`, sorted.

    Args:
        root: a folder (searched recursively) or a single image file (returned as a one-item list
            if its extension is an image extension).
        exclude: files or folders to leave out; see :func:`_resolve_excludes` for how relative
            entries are read. Anything equal to or inside an entry is skipped silently.
        warn_hidden: hidden image files (name starting with a dot, such as macOS ``._IMG_1.jpg``
            shadow files) are skipped with one :class:`SkippedImageWarning` each; hidden folders
            (``.git``, ``.ipynb_checkpoints``) are not entered, silently.

    Returns:
        Paths sorted by their path relative to ``root`` (POSIX form), so the order is the same on
        every machine and file system. Only the extension is checked here; whether a file really is
        a usable image is :func:`validate_image`'s job.

    Raises:
        FileNotFoundError: ``root`` does not exist.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"image folder or file {str(root)!r} does not exist")
    if root.is_file():
        return [root] if root.suffix.lower() in IMAGE_EXTENSIONS else []

    excluded = _resolve_excludes(root, exclude)
    found: list[Path] = []
    for folder, subfolders, files in os.walk(root):
        folder_path = Path(folder)
        # Pruning in place stops os.walk from descending into hidden or excluded folders.
        subfolders[:] = sorted(
            name
            for name in subfolders
            if not name.startswith(".") and not _is_excluded(folder_path / name, excluded)
        )
        for name in files:
            path = folder_path / name
            if path.suffix.lower() not in IMAGE_EXTENSIONS or _is_excluded(path, excluded):
                continue
            if name.startswith("."):
                if warn_hidden:
                    warnings.warn(
                        f"skipping {path}: hidden file (name starts with '.')",
                        SkippedImageWarning,
                        stacklevel=2,
                    )
                continue
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


# ---------------------------------------------------------------------------------------------
# Checking one file
# ---------------------------------------------------------------------------------------------


def _open_checked(path: Path, max_pixels: int | None) -> Image.Image:
    """Open ``path`` lazily (header only) or raise :class:`UnusableImageError` with a reason."""
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if not path.is_file():
        raise UnusableImageError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise UnusableImageError(path, "empty file (0 bytes)")
    try:
        # PIL only *warns* about very large images; inside this block the warning is an error,
        # and PIL's own hard limit raises DecompressionBombError.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise UnusableImageError(path, f"decompression bomb ({error})") from None
    except UnidentifiedImageError:
        raise UnusableImageError(
            path, "not an image PIL can read (a text or other file with an image extension?)"
        ) from None
    except Exception as error:  # noqa: BLE001 - any failure to parse the header means "unusable"
        raise UnusableImageError(
            path, f"cannot read the image header ({type(error).__name__}: {error})"
        ) from None

    pixels = image.width * image.height
    if pixels > limit:
        image.close()
        raise UnusableImageError(
            path,
            f"decompression bomb: {image.width} x {image.height} = {pixels:,} pixels is more than "
            f"the limit of {limit:,} (kontext_lora_helpers.images.MAX_IMAGE_PIXELS)",
        )
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        image.close()
        raise UnusableImageError(path, f"animated image with {frames} frames (use a still image)")
    return image


def _load_pixels(image: Image.Image, path: Path) -> None:
    """Decode all pixel data now, so truncated or corrupt files fail here and not mid-training."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
    except Exception as error:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
        image.close()
        raise UnusableImageError(
            path, f"corrupt or truncated image data ({type(error).__name__}: {error})"
        ) from None


def validate_image(path: str | os.PathLike, *, max_pixels: int | None = None) -> ImageInfo:
    """Check that ``path`` is a still image that decodes completely.

    The whole file is decoded once (a truncated JPEG only fails when its last rows are read), so
    this costs about as much as loading the image.

    Args:
        path: the file to check.
        max_pixels: largest width * height accepted; ``None`` means :data:`MAX_IMAGE_PIXELS`.

    Returns:
        :class:`ImageInfo` with the size *after* EXIF orientation.

    Raises:
        UnusableImageError: with ``reason`` one of: not a regular file, empty file, not an image,
            decompression bomb, animated image, corrupt or truncated image data.
    """
    path = Path(path)
    image = _open_checked(path, max_pixels)
    with image:
        _load_pixels(image, path)
        width, height = image.size
        if image.getexif().get(_EXIF_ORIENTATION_TAG) in _TRANSPOSING_ORIENTATIONS:
            width, height = height, width
        return ImageInfo(path=path, width=width, height=height, mode=image.mode, format=image.format)


def find_usable_images(
    root: str | os.PathLike,
    exclude: Iterable[str | os.PathLike] = (),
    *,
    max_pixels: int | None = None,
) -> list[ImageInfo]:
    """Every usable image under ``root`` (recursive, sorted), warning once about each unusable one.

    Each skipped file (hidden, empty, truncated, not an image, decompression bomb, animated) gets
    exactly one :class:`SkippedImageWarning` naming the file and the reason.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: ``root`` holds no usable image (the message names the folder and says how
            many files were skipped).
    """
    root = Path(root).expanduser()
    candidates = list_images(root, exclude)
    usable: list[ImageInfo] = []
    for path in candidates:
        try:
            usable.append(validate_image(path, max_pixels=max_pixels))
        except UnusableImageError as error:
            warnings.warn(f"skipping {path}: {error.reason}", SkippedImageWarning, stacklevel=2)
    if not usable:
        if not candidates:
            detail = f"no files ending in {', '.join(IMAGE_EXTENSIONS)}"
        else:
            detail = f"all {len(candidates)} image files were unusable (see the warnings above)"
        raise ValueError(f"no usable image in {str(root)!r}: {detail}")
    return usable


# ---------------------------------------------------------------------------------------------
# Loading as upright 8-bit RGB
# ---------------------------------------------------------------------------------------------


def _composite_on_white(image: Image.Image) -> Image.Image:
    """RGBA -> RGB by painting the image over a white sheet (how a transparent PNG looks printed)."""
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _wide_integer_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit (``I;16*``) or 32-bit integer (``I``) grayscale -> 8-bit RGB.

    PIL's own ``convert("L")`` *clips* values above 255, which turns a 16-bit scan white. Instead
    ``I;16`` is scaled from 0-65535 to 0-255. For mode ``I`` (how PIL opens many 16-bit PNGs and
    TIFFs) the stored range is not recorded, so values up to 255 are taken as 8-bit and anything
    larger as 16-bit.
    """
    values = np.asarray(image, dtype=np.float64)
    is_16_bit = image.mode.startswith("I;16") or values.max(initial=0) > 255
    if is_16_bit:
        values = values / 257.0  # 65535 / 257 = 255 exactly
    gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def centre_window(image: Image.Image, width: int, height: int) -> Image.Image:
    """A ``width`` x ``height`` window from the middle of ``image``, at the image's own resolution
    (no resizing: the content keeps its scale, as a tile or a crop of a real photo does).

    Raises:
        ValueError: the window is larger than the image.
    """
    if width > image.width or height > image.height:
        raise ValueError(f"a {width}x{height} window does not fit in a {image.width}x{image.height} image")
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image -> 8-bit ``"RGB"`` (a new image; EXIF orientation is *not* touched here).

    Policies: grayscale (``L``, ``1``) is repeated on three channels; anything with transparency
    (``RGBA``, ``LA``, ``PA``, palette images with a transparent colour) is composited on white;
    16/32-bit integer grayscale is rescaled (see :func:`_wide_integer_to_rgb`); float (``F``)
    images are read as 0-1 if their maximum is at most 1, else as 0-255; ``CMYK``, ``YCbCr``,
    ``LAB``, ``HSV`` and palette images use PIL's conversion.
    """
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        return _composite_on_white(image)
    if mode == "I" or mode.startswith("I;16"):
        return _wide_integer_to_rgb(image)
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if values.max(initial=0) <= 1.0:
            values = values * 255.0
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def load_rgb(
    path: str | os.PathLike,
    *,
    min_short_side: int | None = None,
    max_pixels: int | None = None,
) -> Image.Image:
    """Load ``path`` as an upright 8-bit RGB image (``PIL.Image``, mode ``"RGB"``, values 0-255).

    Args:
        path: an image file.
        min_short_side: optional speed hint for JPEGs: the decoder may shrink the image by 2, 4 or
            8 while decoding (libjpeg "draft" mode) as long as the short side stays at least this
            many pixels. A 4000 x 3000 photo needed at 512 px then decodes about 10x faster.
        max_pixels: largest width * height accepted (default :data:`MAX_IMAGE_PIXELS`).

    The EXIF orientation tag is applied (``ImageOps.exif_transpose``) so a phone photo stored
    sideways comes out the way it was shot; see :func:`to_rgb` for the colour-mode policies.

    Raises:
        UnusableImageError: for the same reasons as :func:`validate_image`.
    """
    path = Path(path)
    image = _open_checked(path, max_pixels)
    with image:
        if min_short_side is not None and image.format == "JPEG":
            scale = min(image.size) / float(min_short_side)
            if scale >= 2:
                requested = (int(np.ceil(image.width / scale)), int(np.ceil(image.height / scale)))
                image.draft(None, requested)
        _load_pixels(image, path)
        upright = ImageOps.exif_transpose(image)
        return to_rgb(upright)
