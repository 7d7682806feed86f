"""Natural images for evaluation: image folders, TFDS image datasets, bounding-box masks.

Two random-access sources (`sources.RandomAccessSource`: `len`, `source[i]`,
`get_batch(indices)`) give the batches `xai_jax.runner.evaluate` consumes:

* `ImageFolderSource(root, size=...)`: the sorted JPEG/PNG files of a folder (flat, or
  `root/<class>/<image>`), optionally with Pascal-VOC XML annotations (Pascal VOC, and the
  ImageNet (ILSVRC) validation boxes, which use the same format) whose boxes become `"mask"`.
* `TfdsImageSource(name, split, size=...)`: a prepared TFDS dataset read with
  `tfds.data_source` (array_record files, no TensorFlow), its `"image"` / `"label"` features
  and, when present, bounding boxes (`"objects/bbox"` or `"bbox"`) as `"mask"`.

Batch keys: `"image"` `float32[n, size, size, 3]` (RGB in [0, 1], or normalised with the
ImageNet mean and standard deviation when `normalize="imagenet"`: what a ported torchvision
model takes), `"label"` `int32[n]` (-1 when unknown), `"index"` `int64[n]` and, with
annotations, `"mask"` `bool[n, size, size]` (union of the boxes).

Geometry (`crop`), the same for the image and its boxes:

* `"resize"` (default): the whole image is resized to `size x size`; the aspect ratio is NOT
  kept (objects are stretched), nothing is cut off, so every box stays inside.
* `"center"`: torchvision's ImageNet evaluation transform: the shorter side is resized to
  `round(size / 0.875)` (256 for 224), keeping the aspect, then the central `size x size` is
  cut out; box parts outside the crop are lost.

Resizing is bilinear with anti-aliasing when shrinking (`skimage.transform.resize`, order 1).
A box covers the output pixels whose *centre*, mapped back to the original image, falls in
the box (see `box_mask`); Pascal-VOC coordinates are 1-based and inclusive, so the VOC box
`xmin..xmax` covers the continuous interval `[xmin - 1, xmax)` of the original image.

References:
  M. Everingham et al., "The PASCAL Visual Object Classes (VOC) Challenge", IJCV 2010
    (annotation format).
  B. Gattas, "Evaluating Feature Attribution Methods", thesis, University of Queensland, 2020
    (IOU/IOU* against ILSVRC validation bounding boxes).
"""

from __future__ import annotations

import dataclasses
import operator
import os
import pathlib
from typing import Any, Callable, Mapping, Sequence
import xml.etree.ElementTree as ElementTree

import numpy as np
from skimage import io
from skimage import transform
import tensorflow_datasets as tfds

from xai_jax.data import sources

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
CROPS = ("resize", "center")
NORMALIZATIONS = ("none", "imagenet")
# torchvision's ImageNet statistics (RGB, images in [0, 1]).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# torchvision's evaluation transform resizes to size / 0.875 (256 for 224), then crops.
CENTER_CROP_FRACTION = 0.875


# --------------------------------------------------------------------------------------------
# Pascal-VOC annotations.


@dataclasses.dataclass(frozen=True)
class VocObject:
  """One annotated object: class name and box in VOC pixel coordinates (1-based, inclusive)."""
  name: str
  xmin: float
  ymin: float
  xmax: float
  ymax: float
  difficult: bool = False
  truncated: bool = False


@dataclasses.dataclass(frozen=True)
class VocAnnotation:
  """A parsed Pascal-VOC XML file.

  Attributes:
    filename: the `<filename>` entry (may lack the extension, as in ILSVRC).
    width, height: the `<size>` entry (pixels of the annotated image; 0 if absent).
    objects: the annotated objects, in file order (at least one).
  """
  filename: str
  width: int
  height: int
  objects: tuple[VocObject, ...]

  def boxes(self, *, include_difficult: bool = True) -> np.ndarray:
    """`float32[K, 4]` boxes `(xmin, ymin, xmax, ymax)`, VOC 1-based inclusive coordinates."""
    return np.array([[o.xmin, o.ymin, o.xmax, o.ymax] for o in self.objects
                     if include_difficult or not o.difficult], np.float32).reshape(-1, 4)

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(o.name for o in self.objects)


def _text(element: ElementTree.Element, tag: str, path: Any, *, default: str | None = None
          ) -> str:
  child = element.find(tag)
  if child is None or child.text is None or not child.text.strip():
    if default is not None:
      return default
    raise ValueError(f"{path}: missing <{tag}> in <{element.tag}>")
  return child.text.strip()


def _number(element: ElementTree.Element, tag: str, path: Any) -> float:
  text = _text(element, tag, path)
  try:
    value = float(text)
  except ValueError:
    raise ValueError(f"{path}: <{tag}> is not a number: {text!r}") from None
  if not np.isfinite(value):
    raise ValueError(f"{path}: <{tag}> is not finite: {text!r}")
  return value


def parse_voc(xml_path: str | os.PathLike) -> VocAnnotation:
  """Parses a Pascal-VOC (or ILSVRC) XML annotation file.

  Coordinates are kept as written: VOC pixel indices, 1-based and inclusive (the box
  `xmin=1, xmax=3` spans the first three pixel columns). `box_mask` converts them.

  Args:
    xml_path: path of the `.xml` file.

  Returns:
    A `VocAnnotation`.

  Raises:
    ValueError: a missing file, malformed XML, a missing `<filename>`, an object without
      `<name>` or `<bndbox>` coordinates, a box with `xmin > xmax` or `ymin > ymax`, or a file
      without any `<object>`.
  """
  path = pathlib.Path(xml_path)
  if not path.is_file():
    raise ValueError(f"annotation file {path} does not exist")
  try:
    root = ElementTree.parse(path).getroot()
  except ElementTree.ParseError as error:
    raise ValueError(f"{path}: malformed XML ({error})") from None
  filename = _text(root, "filename", path)
  size = root.find("size")
  width = height = 0
  if size is not None:
    width = int(round(_number(size, "width", path)))
    height = int(round(_number(size, "height", path)))
  objects = []
  for number, element in enumerate(root.findall("object")):
    name = _text(element, "name", path)
    box = element.find("bndbox")
    if box is None:
      raise ValueError(f"{path}: object {number} ({name!r}) has no <bndbox>")
    xmin, ymin, xmax, ymax = (_number(box, t, path) for t in ("xmin", "ymin", "xmax", "ymax"))
    if xmin > xmax or ymin > ymax:
      raise ValueError(f"{path}: object {number} ({name!r}) has an empty box "
                       f"xmin={xmin} xmax={xmax} ymin={ymin} ymax={ymax}")
    flag = lambda tag: _text(element, tag, path, default="0") not in ("0", "false", "False")
    objects.append(VocObject(name, xmin, ymin, xmax, ymax, difficult=flag("difficult"),
                             truncated=flag("truncated")))
  if not objects:
    raise ValueError(f"{path}: no <object> annotated (a localisation mask needs at least one box)")
  return VocAnnotation(filename=filename, width=width, height=height, objects=tuple(objects))


# --------------------------------------------------------------------------------------------
# Geometry: resizing, cropping, masks.


@dataclasses.dataclass(frozen=True)
class _Geometry:
  """Original (h, w) -> resized (rh, rw) -> crop of `out` pixels at (top, left)."""
  height: int
  width: int
  resized: tuple[int, int]
  top: int
  left: int
  out: tuple[int, int]


def _check_size(size: Any) -> int:
  if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
    raise ValueError(f"size must be a positive int, got {size!r}")
  return int(size)


def _check_crop(crop: str) -> str:
  if crop not in CROPS:
    raise ValueError(f"unknown crop {crop!r}; valid: {', '.join(CROPS)}")
  return crop


def _geometry(height: int, width: int, size: int | None, crop: str) -> _Geometry:
  if height < 1 or width < 1:
    raise ValueError(f"image size must be positive, got {height}x{width}")
  if size is None:
    return _Geometry(height, width, (height, width), 0, 0, (height, width))
  if crop == "resize":
    return _Geometry(height, width, (size, size), 0, 0, (size, size))
  short = int(round(size / CENTER_CROP_FRACTION))
  scale = short / min(height, width)
  resized = (short, max(short, int(round(width * scale)))) if height <= width else (
      max(short, int(round(height * scale))), short)
  # torchvision's CenterCrop: int(round((h - size) / 2)).
  top = int(round((resized[0] - size) / 2.0))
  left = int(round((resized[1] - size) / 2.0))
  return _Geometry(height, width, resized, top, left, (size, size))


def _edges_mask(edges: np.ndarray, geometry: _Geometry) -> np.ndarray:
  """bool[out] mask of boxes given as continuous edges `(x0, y0, x1, y1)` of the original.

  An output pixel (i, j) is inside a box when its centre, mapped back to the original image,
  satisfies `x0 <= x < x1` and `y0 <= y < y1`.
  """
  g = geometry
  rows = (np.arange(g.out[0]) + g.top + 0.5) * (g.height / g.resized[0])
  cols = (np.arange(g.out[1]) + g.left + 0.5) * (g.width / g.resized[1])
  mask = np.zeros(g.out, bool)
  for x0, y0, x1, y1 in np.asarray(edges, np.float64).reshape(-1, 4):
    inside_rows = (rows >= y0) & (rows < y1)
    inside_cols = (cols >= x0) & (cols < x1)
    mask |= inside_rows[:, None] & inside_cols[None, :]
  return mask


def box_mask(boxes: Any, height: int, width: int, *, size: int | None = None,
             crop: str = "resize") -> np.ndarray:
  """The union of bounding boxes as a binary mask.

  Boxes are in Pascal-VOC pixel coordinates of an image of `height x width` pixels: 1-based
  and inclusive, so `(xmin, ymin, xmax, ymax)` covers columns `xmin - 1 .. xmax - 1` and rows
  `ymin - 1 .. ymax - 1` (0-based), i.e. the continuous region `[xmin - 1, xmax) x
  [ymin - 1, ymax)`. With `size`, the mask is that of the image after the same resize / crop
  as `ImageFolderSource` applies (see the module docstring): an output pixel is inside when
  its centre maps back into a box. Coordinates outside the image are clipped implicitly.

  Args:
    boxes: `float[K, 4]` (or `[4]`) boxes `(xmin, ymin, xmax, ymax)`; K = 0 gives an empty mask.
    height: the annotated image's height in pixels.
    width: the annotated image's width in pixels.
    size: output side length; None: the mask of the original `height x width` image.
    crop: "resize" (squash to `size x size`) or "center" (resize the shorter side to
      `round(size / 0.875)`, then the central crop).

  Returns:
    `bool[height, width]`, or `bool[size, size]` with `size`.

  Raises:
    ValueError: boxes not of shape `[K, 4]`, NaN, `xmin > xmax` or `ymin > ymax`, a bad size
      or crop.
  """
  boxes = np.asarray(boxes, np.float64)
  if boxes.ndim == 1 and boxes.shape[0] == 4:
    boxes = boxes[None]
  if boxes.ndim != 2 or boxes.shape[1] != 4:
    raise ValueError(f"boxes must be [K, 4] (xmin, ymin, xmax, ymax); got shape {boxes.shape}")
  if not np.isfinite(boxes).all():
    raise ValueError("boxes contain NaN or inf")
  if ((boxes[:, 0] > boxes[:, 2]) | (boxes[:, 1] > boxes[:, 3])).any():
    raise ValueError(f"boxes need xmin <= xmax and ymin <= ymax; got {boxes.tolist()}")
  height, width = operator.index(height), operator.index(width)
  size = None if size is None else _check_size(size)
  edges = boxes.copy()
  edges[:, :2] -= 1.0  # 1-based inclusive -> continuous [xmin - 1, xmax)
  return _edges_mask(edges, _geometry(height, width, size, _check_crop(crop)))


def _as_rgb_float(image: np.ndarray, where: Any) -> np.ndarray:
  """Any decoded image -> float32[H, W, 3] in [0, 1]."""
  image = np.asarray(image)
  if image.dtype == np.uint8:
    image = image.astype(np.float32) / np.float32(255)
  elif image.dtype == np.uint16:
    image = image.astype(np.float32) / np.float32(65535)
  elif image.dtype == bool:
    image = image.astype(np.float32)
  else:
    image = image.astype(np.float32)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 2, 3, 4):
    raise ValueError(f"{where}: not an image of shape [H, W] or [H, W, 1..4]; got {image.shape}")
  if image.shape[-1] in (1, 2):  # grey (and grey + alpha)
    image = np.repeat(image[..., :1], 3, axis=-1)
  return image[..., :3]


def _transform(image: np.ndarray, geometry: _Geometry) -> np.ndarray:
  """Resizes (bilinear, anti-aliased when shrinking) and crops `image` float32[H, W, 3]."""
  g = geometry
  if g.resized != (g.height, g.width):
    shrinking = g.resized[0] < g.height or g.resized[1] < g.width
    image = transform.resize(image, g.resized, order=1, mode="edge",
                             anti_aliasing=shrinking, preserve_range=True)
  image = image[g.top:g.top + g.out[0], g.left:g.left + g.out[1]]
  return np.clip(image, 0.0, 1.0).astype(np.float32)


def _normalize(images: np.ndarray, normalize: str) -> np.ndarray:
  if normalize == "imagenet":
    return (images - IMAGENET_MEAN) / IMAGENET_STD
  return images


def _check_normalize(normalize: str) -> str:
  if normalize not in NORMALIZATIONS:
    raise ValueError(f"unknown normalize {normalize!r}; valid: {', '.join(NORMALIZATIONS)}")
  return normalize


def fill_value(normalize: str = "none") -> np.ndarray:
  """The ImageNet mean RGB in the images' space: the papers' pixel-removal fill, `float32[3]`.

  With `normalize="imagenet"` the mean maps to zero; without, it is `IMAGENET_MEAN`.
  """
  return np.zeros(3, np.float32) if _check_normalize(normalize) == "imagenet" else (
      IMAGENET_MEAN.copy())


# --------------------------------------------------------------------------------------------
# Image folders.


def _is_image(path: pathlib.Path) -> bool:
  return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _filtered_positions(count: int, labels: Callable[[], np.ndarray], *,
                        keep_labels, per_class, num_examples, what: str) -> np.ndarray:
  """Positions `int64[M]` of the `count` records left by the filters, in record order.

  Keeps records whose label is in `keep_labels`, then the first `per_class` of each label,
  then the first `num_examples`. `labels()` gives every record's label and is called only
  when a label filter is set (reading TFDS labels means a pass over the records).

  Raises:
    ValueError: when no record is left (`what` names the records).
  """
  positions = np.arange(count)
  if keep_labels is not None or per_class is not None:
    all_labels = labels()
    if keep_labels is not None:
      positions = positions[np.isin(all_labels, np.asarray(list(keep_labels), np.int64))]
    if per_class is not None:
      seen: dict[int, int] = {}
      chosen = []
      for i in positions:
        seen[int(all_labels[i])] = seen.get(int(all_labels[i]), 0) + 1
        if seen[int(all_labels[i])] <= per_class:
          chosen.append(i)
      positions = np.asarray(chosen, np.int64)
  if num_examples is not None:
    positions = positions[:operator.index(num_examples)]
  if not len(positions):
    raise ValueError(f"no {what} are left after the filters (keep_labels={keep_labels}, "
                     f"per_class={per_class}, num_examples={num_examples})")
  return positions


class ImageFolderSource(sources.RandomAccessSource):
  """Random access to the images of a folder, resized to `size x size`, with labels and masks.

  Files: the images directly in `root` and in its immediate subfolders (extensions
  `IMAGE_EXTENSIONS`, case-insensitive), sorted by relative path; sample `i` is the i-th.
  Labels, first rule that applies:

  1. `labels`: a mapping from file stem (name without extension) or relative path to an int,
     or a sequence of ints aligned with the sorted files;
  2. the subfolder layout `root/<class>/<image>`: the index of `<class>` in `class_names`
     (default: the sorted subfolder names);
  3. with `annotations_dir` and `class_names`: the index of the first annotated object's
     name (the ILSVRC validation XMLs name the WordNet id of the image's class);
  4. otherwise -1.

  Masks (`annotations_dir`): the XML of image `a/b.jpg` is `annotations_dir/a/b.xml` or
  `annotations_dir/b.xml`; its boxes (all of them, `difficult` included unless
  `include_difficult=False`) give `"mask"` through `box_mask`.

  A batch is `{"image": float32[n, size, size, 3], "label": int32[n], "index": int64[n]}` plus
  `"mask": bool[n, size, size]` with annotations. Images are decoded with `skimage.io.imread`
  on every access (nothing is cached).
  """

  def __init__(self, root: str | os.PathLike, *, size: int,
               labels: Mapping[str, int] | Sequence[int] | None = None,
               annotations_dir: str | os.PathLike | None = None,
               class_names: Sequence[str] | None = None, crop: str = "resize",
               normalize: str = "none", include_difficult: bool = True,
               keep_labels: Sequence[int] | None = None, per_class: int | None = None,
               num_examples: int | None = None):
    """Lists the images and checks their labels and annotations.

    Args:
      root: the image folder.
      size: output side length in pixels.
      labels: optional labels (see the class docstring).
      annotations_dir: optional folder of Pascal-VOC XML files, one per image.
      class_names: class names in label order (for subfolders or XML object names).
      crop: "resize" (aspect not kept) or "center" (torchvision's resize + centre crop).
      normalize: "none" (RGB in [0, 1]) or "imagenet" (minus `IMAGENET_MEAN`, over
        `IMAGENET_STD`: the input of torchvision's pretrained models).
      include_difficult: whether boxes flagged `difficult` enter the mask.
      keep_labels: keep only images with these labels (e.g. `range(100)`, DeepMaps' ImageNet
        classes 0..99).
      per_class: keep at most this many images per label (the first in sorted order).
      num_examples: keep only the first `num_examples` images (after the filters).

    Raises:
      ValueError: a missing folder, no images, a subfolder not in `class_names`, labels of
        the wrong length or missing a file, a missing or unmatched annotation (its
        `<filename>` names another image), an annotation without objects, filters that need
        labels the folder does not have, or bad options.
    """
    self.root = pathlib.Path(root)
    if not self.root.is_dir():
      raise ValueError(f"image folder {self.root} does not exist or is not a folder")
    self.size = _check_size(size)
    self.crop = _check_crop(crop)
    self.normalize = _check_normalize(normalize)
    self.include_difficult = bool(include_difficult)
    files = sorted(p for p in self.root.iterdir() if _is_image(p))
    subfolders = sorted(p for p in self.root.iterdir() if p.is_dir())
    nested = sorted(p for d in subfolders for p in d.iterdir() if _is_image(p))
    files = sorted(files + nested, key=lambda p: p.relative_to(self.root).as_posix())
    if not files:
      raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {self.root} or its "
                       "immediate subfolders")
    self.class_names = None if class_names is None else tuple(class_names)
    if self.class_names is None and nested:
      self.class_names = tuple(sorted({p.parent.name for p in nested}))
    self.annotations_dir = None
    if annotations_dir is not None:
      self.annotations_dir = pathlib.Path(annotations_dir)
      if not self.annotations_dir.is_dir():
        raise ValueError(f"annotations folder {self.annotations_dir} does not exist")
    self._annotation_paths = ([self._annotation_path(p) for p in files]
                              if self.annotations_dir is not None else None)
    self._annotations: dict[int, VocAnnotation] = {}
    all_labels = self._labels(files, labels)
    if (keep_labels is not None or per_class is not None) and (all_labels < 0).any():
      unknown = [files[i].name for i in np.flatnonzero(all_labels < 0)[:5]]
      raise ValueError(f"keep_labels / per_class need a label for every image; none for "
                       f"{unknown}")
    keep = _filtered_positions(len(files), lambda: all_labels, keep_labels=keep_labels,
                               per_class=per_class, num_examples=num_examples,
                               what=f"images of {self.root}")
    self._positions = keep
    self.files = tuple(files[i] for i in keep)
    self.labels = all_labels[keep].astype(np.int32)

  def _annotation_path(self, image: pathlib.Path) -> pathlib.Path:
    relative = image.relative_to(self.root).with_suffix(".xml")
    for candidate in (self.annotations_dir / relative, self.annotations_dir / relative.name):
      if candidate.is_file():
        return candidate
    raise ValueError(f"no annotation for {image} (looked for {self.annotations_dir / relative}"
                     f" and {self.annotations_dir / relative.name})")

  def _annotation(self, position: int) -> VocAnnotation:
    """The parsed and checked annotation of file `position` (of the unfiltered list)."""
    if position not in self._annotations:
      path = self._annotation_paths[position]
      annotation = parse_voc(path)
      image_stem = path.stem
      if pathlib.PurePath(annotation.filename).stem != image_stem and (
          annotation.filename != image_stem):
        raise ValueError(f"{path}: <filename> {annotation.filename!r} does not match the image "
                         f"{image_stem!r}")
      self._annotations[position] = annotation
    return self._annotations[position]

  def _labels(self, files: list[pathlib.Path], labels: Any) -> np.ndarray:
    if labels is not None:
      if isinstance(labels, Mapping):
        out = []
        for p in files:
          relative = p.relative_to(self.root).as_posix()
          for key in (relative, p.stem, p.name):
            if key in labels:
              out.append(int(labels[key]))
              break
          else:
            raise ValueError(f"labels has no entry for {relative!r} (keys are file stems or "
                             "relative paths)")
        return np.asarray(out, np.int64)
      labels = np.asarray(list(labels), np.int64)
      if labels.shape != (len(files),):
        raise ValueError(f"labels must have one entry per image ({len(files)} images); "
                         f"got shape {labels.shape}")
      return labels
    out = np.full(len(files), -1, np.int64)
    names = {n: i for i, n in enumerate(self.class_names or ())}
    for i, p in enumerate(files):
      if p.parent != self.root:
        if p.parent.name not in names:
          raise ValueError(f"subfolder {p.parent.name!r} is not in class_names; valid: "
                           f"{sorted(names)}")
        out[i] = names[p.parent.name]
      elif self._annotation_paths is not None and names:
        out[i] = names.get(self._annotation(i).objects[0].name, -1)
    return out

  def __len__(self) -> int:
    return len(self.files)

  def __repr__(self) -> str:
    return (f"ImageFolderSource(root={str(self.root)!r}, size={self.size}, crop={self.crop!r},"
            f" num_examples={len(self)}, masks={self.annotations_dir is not None})")

  def _load(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
    path = self.files[i]
    try:
      raw = io.imread(path)
    except Exception as error:  # decoder errors vary by plugin
      raise ValueError(f"cannot read image {path}: {error}") from None
    image = _as_rgb_float(raw, path)
    geometry = _geometry(image.shape[0], image.shape[1], self.size, self.crop)
    mask = None
    if self.annotations_dir is not None:
      annotation = self._annotation(int(self._positions[i]))
      if annotation.width and annotation.height and (
          (annotation.height, annotation.width) != image.shape[:2]):
        raise ValueError(f"{self._annotation_paths[int(self._positions[i])]}: annotated size "
                         f"{annotation.height}x{annotation.width} differs from the image "
                         f"{path.name} ({image.shape[0]}x{image.shape[1]})")
      mask = box_mask(annotation.boxes(include_difficult=self.include_difficult),
                      image.shape[0], image.shape[1], size=self.size, crop=self.crop)
    return _transform(image, geometry), mask

  def _get_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    loaded = [self._load(int(i)) for i in indices]
    images = (np.stack([image for image, _ in loaded]) if loaded
              else np.zeros((0, self.size, self.size, 3), np.float32))
    batch = {"image": _normalize(images, self.normalize).astype(np.float32),
             "label": self.labels[indices].astype(np.int32),
             "index": np.asarray(indices, np.int64)}
    if self.annotations_dir is not None:
      batch["mask"] = (np.stack([mask for _, mask in loaded]) if loaded
                       else np.zeros((0, self.size, self.size), bool))
    return batch


# --------------------------------------------------------------------------------------------
# TFDS image datasets.


def _tfds_boxes(record: Mapping[str, Any]) -> np.ndarray | None:
  """Normalised `(ymin, xmin, ymax, xmax)` boxes of a TFDS record, or None without boxes."""
  if isinstance(record.get("objects"), Mapping) and "bbox" in record["objects"]:
    return np.asarray(record["objects"]["bbox"], np.float64).reshape(-1, 4)
  if "bbox" in record:
    return np.asarray(record["bbox"], np.float64).reshape(-1, 4)
  return None


class TfdsImageSource(sources.RandomAccessSource):
  """Random access to a prepared TFDS image dataset (array_record; no TensorFlow).

  Features used: `"image"` (uint8 `[H, W, C]`, any size: resized / cropped to `size` as in
  the module docstring), `"label"` (int; -1 if the dataset has none) and bounding boxes, when
  present, as `"mask"`: `"objects"/"bbox"` (a sequence, e.g. `voc`) or a top-level `"bbox"`,
  TFDS `BBoxFeature`s `(ymin, xmin, ymax, xmax)` relative to the image, turned into pixel
  edges `[xmin * W, xmax * W) x [ymin * H, ymax * H)` and then into `box_mask`'s mask.
  """

  def __init__(self, name: str, split: str, *, size: int, data_dir: str | os.PathLike | None,
               crop: str = "resize", normalize: str = "none",
               keep_labels: Sequence[int] | None = None, per_class: int | None = None,
               num_examples: int | None = None):
    """Opens `name` (e.g. "imagenet2012", "voc/2007", "xai_cells/tiny") for reading.

    Args:
      name: TFDS dataset name, optionally with config and version. A dataset defined outside
        TFDS (such as `xai_cells`) must have its builder imported first.
      split: split name, TFDS slicing allowed ("validation[:5000]").
      size: output side length in pixels.
      data_dir: the TFDS data directory holding the prepared dataset.
      crop: "resize" or "center" (see the module docstring).
      normalize: "none" or "imagenet".
      keep_labels: keep only records with these labels (e.g. `range(100)`: DeepMaps' ImageNet
        classes 0..99). The labels are read once with the images left undecoded.
      per_class: keep at most this many records per label (the first in record order).
      num_examples: keep only the first `num_examples` records (after the filters).

    Raises:
      ValueError: a missing `data_dir`, a dataset that is not prepared there (or unknown), a
        dataset without an "image" feature (or without "label" for the filters), or bad
        options.
    """
    self.size = _check_size(size)
    self.crop = _check_crop(crop)
    self.normalize = _check_normalize(normalize)
    self.name, self.split = name, split
    if data_dir is not None and not pathlib.Path(data_dir).is_dir():
      raise ValueError(f"TFDS data_dir {data_dir} does not exist")
    try:
      self._records = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as error:  # tfds raises several types (not prepared, unknown name, ...)
      raise ValueError(f"cannot open TFDS dataset {name!r} split {split!r} under {data_dir}: "
                       f"{type(error).__name__}: {error}. Prepare it first (tfds build, or "
                       "builder.download_and_prepare(file_format='array_record')).") from None
    features = getattr(getattr(self._records, "dataset_info", None), "features", None)
    if features is not None and "image" not in features:
      raise ValueError(f"TFDS dataset {name!r} has no 'image' feature; it has "
                       f"{sorted(features.keys())}")
    self.has_labels = features is None or "label" in features
    if (keep_labels is not None or per_class is not None) and not self.has_labels:
      raise ValueError(f"keep_labels / per_class need a 'label' feature; {name!r} has none")

    def all_labels():
      undecoded = tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                                   decoders={"image": tfds.decode.SkipDecoding()})
      records = undecoded.__getitems__(list(range(len(self._records))))
      return np.array([int(r["label"]) for r in records], np.int64).reshape(-1)

    self._positions = _filtered_positions(
        len(self._records), all_labels, keep_labels=keep_labels, per_class=per_class,
        num_examples=num_examples, what=f"records of {name!r} {split!r}")

  def __len__(self) -> int:
    return len(self._positions)

  def __repr__(self) -> str:
    return (f"TfdsImageSource(name={self.name!r}, split={self.split!r}, size={self.size}, "
            f"num_examples={len(self)})")

  def _get_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    records = (self._records.__getitems__([int(self._positions[i]) for i in indices])
               if len(indices) else [])
    images, labels, masks = [], [], []
    for i, record in zip(indices, records):
      image = _as_rgb_float(record["image"], f"{self.name}[{i}]")
      geometry = _geometry(image.shape[0], image.shape[1], self.size, self.crop)
      images.append(_transform(image, geometry))
      labels.append(int(record["label"]) if "label" in record else -1)
      boxes = _tfds_boxes(record)
      if boxes is not None:
        height, width = image.shape[:2]
        edges = np.stack([boxes[:, 1] * width, boxes[:, 0] * height,
                          boxes[:, 3] * width, boxes[:, 2] * height], axis=1)
        masks.append(_edges_mask(edges, geometry))
    batch = {"image": _normalize(np.stack(images) if images else np.zeros(
        (0, self.size, self.size, 3), np.float32), self.normalize).astype(np.float32),
             "label": np.asarray(labels, np.int32).reshape(-1),
             "index": np.asarray(indices, np.int64)}
    if masks and len(masks) == len(images):
      batch["mask"] = np.stack(masks)
    return batch


__all__ = [
    "IMAGE_EXTENSIONS", "CROPS", "NORMALIZATIONS", "IMAGENET_MEAN", "IMAGENET_STD",
    "VocObject", "VocAnnotation", "parse_voc", "box_mask", "fill_value",
    "ImageFolderSource", "TfdsImageSource",
]
