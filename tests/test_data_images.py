"""Tests of `xai_jax.data.images`: VOC parsing, box masks, image-folder and TFDS sources.

References are closed forms (hand-written XML, boxes whose masks are numpy slices, constant
images that any resize keeps constant) and a slow per-pixel loop for `box_mask`.
"""

import pathlib

import numpy as np
import pytest
from skimage import io

from xai_jax.data import images


def _voc(filename, objects, *, width=12, height=8):
  parts = [f"<annotation><folder>VOC</folder><filename>{filename}</filename>",
           f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"]
  for name, (xmin, ymin, xmax, ymax), difficult in objects:
    parts.append(f"<object><name>{name}</name><difficult>{difficult}</difficult>"
                 f"<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax>"
                 f"<ymax>{ymax}</ymax></bndbox></object>")
  return "".join(parts) + "</annotation>"


def _write_png(path: pathlib.Path, array: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  io.imsave(path, array, check_contrast=False)


def _slow_box_mask(boxes, height, width):
  """Per-pixel loop: 0-based pixel (r, c) is in a VOC box if xmin <= c + 1 <= xmax, ..."""
  mask = np.zeros((height, width), bool)
  for r in range(height):
    for c in range(width):
      for xmin, ymin, xmax, ymax in boxes:
        if xmin <= c + 1 <= xmax and ymin <= r + 1 <= ymax:
          mask[r, c] = True
  return mask


# ------------------------------------------------------------------------------------------
# parse_voc


def test_parse_voc_reads_every_field(tmp_path):
  path = tmp_path / "a.xml"
  path.write_text(_voc("a.jpg", [("dog", (2, 3, 5, 6), 0), ("cat", (1, 1, 12, 8), 1)]))
  annotation = images.parse_voc(path)
  assert annotation.filename == "a.jpg"
  assert (annotation.width, annotation.height) == (12, 8)
  assert annotation.names == ("dog", "cat")
  assert [o.difficult for o in annotation.objects] == [False, True]
  np.testing.assert_array_equal(annotation.boxes(), [[2, 3, 5, 6], [1, 1, 12, 8]])
  np.testing.assert_array_equal(annotation.boxes(include_difficult=False), [[2, 3, 5, 6]])


@pytest.mark.parametrize("text, message", [
    (_voc("a.jpg", []), "no <object>"),
    ("<annotation><filename>a", "malformed XML"),
    (_voc("a.jpg", [("dog", (5, 3, 2, 6), 0)]), "empty box"),
    ("<annotation><object><name>x</name></object></annotation>", "missing <filename>"),
    (_voc("a.jpg", [("dog", ("two", 3, 5, 6), 0)]), "not a number"),
])
def test_parse_voc_rejects_bad_files(tmp_path, text, message):
  path = tmp_path / "bad.xml"
  path.write_text(text)
  with pytest.raises(ValueError, match=message):
    images.parse_voc(path)


def test_parse_voc_missing_file(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    images.parse_voc(tmp_path / "missing.xml")


# ------------------------------------------------------------------------------------------
# box_mask


def test_box_mask_is_one_based_inclusive():
  # VOC box xmin=2..xmax=4, ymin=3..ymax=5 covers 0-based columns 1..3 and rows 2..4.
  expected = np.zeros((6, 8), bool)
  expected[2:5, 1:4] = True
  np.testing.assert_array_equal(images.box_mask([2, 3, 4, 5], 6, 8), expected)
  np.testing.assert_array_equal(images.box_mask(np.zeros((0, 4)), 6, 8), np.zeros((6, 8), bool))


def test_box_mask_union_matches_a_pixel_loop():
  rng = np.random.default_rng(0)
  for _ in range(5):
    x = np.sort(rng.integers(1, 14, size=(3, 2)), axis=1)
    y = np.sort(rng.integers(1, 10, size=(3, 2)), axis=1)
    boxes = np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)
    np.testing.assert_array_equal(images.box_mask(boxes, 9, 13), _slow_box_mask(boxes, 9, 13))


def test_box_mask_after_resize_and_center_crop():
  # Resize 10x20 -> 10x10: the left half (VOC columns 1..10) becomes output columns 0..4.
  mask = images.box_mask([1, 1, 10, 10], 10, 20, size=10)
  assert mask[:, :5].all() and not mask[:, 5:].any()
  # Upscaling 4x4 -> 8x8 doubles a box: VOC (2, 2, 3, 3) = pixels 1..2 -> 2..5.
  expected = np.zeros((8, 8), bool)
  expected[2:6, 2:6] = True
  np.testing.assert_array_equal(images.box_mask([2, 2, 3, 3], 4, 4, size=8), expected)
  # Centre crop of a 200x300 image at 56: resized to 64x96 (short side 56 / 0.875), crop
  # offset (4, 20). The left third [0, 100) maps to resized columns [0, 32), i.e. crop columns
  # j with j + 20 + 0.5 < 32: j <= 11.
  mask = images.box_mask([1, 1, 100, 200], 200, 300, size=56, crop="center")
  assert mask.shape == (56, 56)
  assert mask[:, :12].all() and not mask[:, 12:].any()
  assert images.box_mask([1, 1, 300, 200], 200, 300, size=56, crop="center").all()


@pytest.mark.parametrize("boxes, message", [
    ([[1, 2, 3]], r"\[K, 4\]"), ([[4, 1, 2, 3]], "xmin <= xmax"), ([[1, np.nan, 2, 3]], "NaN")])
def test_box_mask_rejects_bad_boxes(boxes, message):
  with pytest.raises(ValueError, match=message):
    images.box_mask(boxes, 5, 5)


def test_box_mask_rejects_unknown_crop():
  with pytest.raises(ValueError, match="unknown crop 'pad'; valid: resize, center"):
    images.box_mask([1, 1, 2, 2], 5, 5, size=4, crop="pad")


# ------------------------------------------------------------------------------------------
# ImageFolderSource


@pytest.fixture
def voc_folder(tmp_path):
  """Three images (8x12 and 16x24, constant colours) with VOC annotations."""
  root, notes = tmp_path / "JPEGImages", tmp_path / "Annotations"
  notes.mkdir()
  colours = {"b": (0, 0, 255), "a": (255, 0, 0), "c": (0, 128, 0)}
  for name, colour in colours.items():
    height, width = (16, 24) if name == "c" else (8, 12)
    _write_png(root / f"{name}.png", np.broadcast_to(np.uint8(colour), (height, width, 3)).copy())
  (notes / "a.xml").write_text(_voc("a.png", [("cat", (1, 1, 6, 8), 0)]))
  (notes / "b.xml").write_text(_voc("b", [("dog", (7, 1, 12, 4), 0), ("cat", (1, 5, 3, 8), 1)]))
  (notes / "c.xml").write_text(_voc("c.png", [("dog", (1, 1, 24, 8), 0)], width=24, height=16))
  return root, notes


def test_image_folder_images_labels_masks(voc_folder):
  root, notes = voc_folder
  source = images.ImageFolderSource(root, size=8, annotations_dir=notes,
                                    class_names=("cat", "dog"))
  assert len(source) == 3
  batch = source.get_batch([0, 1, 2])
  assert batch["image"].shape == (3, 8, 8, 3) and batch["image"].dtype == np.float32
  # Sorted files a, b, c; constant colours stay constant through any resize.
  np.testing.assert_allclose(batch["image"][0], np.broadcast_to([1, 0, 0], (8, 8, 3)), atol=1e-6)
  np.testing.assert_allclose(batch["image"][1], np.broadcast_to([0, 0, 1], (8, 8, 3)), atol=1e-6)
  np.testing.assert_allclose(batch["image"][2], np.broadcast_to([0, 128 / 255, 0], (8, 8, 3)),
                             atol=1e-6)
  np.testing.assert_array_equal(batch["label"], [0, 1, 1])  # first object's name
  np.testing.assert_array_equal(batch["index"], [0, 1, 2])
  # a: left half (VOC columns 1..6 of 12) -> output columns 0..3.
  expected_a = np.zeros((8, 8), bool)
  expected_a[:, :4] = True
  np.testing.assert_array_equal(batch["mask"][0], expected_a)
  # b: union of two boxes, as box_mask; c: top half of a 16x24 image.
  np.testing.assert_array_equal(
      batch["mask"][1], images.box_mask([[7, 1, 12, 4], [1, 5, 3, 8]], 8, 12, size=8))
  assert batch["mask"][2][:4].all() and not batch["mask"][2][4:].any()
  single = source[1]
  np.testing.assert_array_equal(single["mask"], batch["mask"][1])
  # Without the difficult box of b only its first box remains.
  easy = images.ImageFolderSource(root, size=8, annotations_dir=notes, include_difficult=False)
  np.testing.assert_array_equal(easy[1]["mask"], images.box_mask([7, 1, 12, 4], 8, 12, size=8))
  assert easy[1]["label"] == -1  # no class names, flat folder


def test_image_folder_exact_pixels_and_normalisation(tmp_path):
  rng = np.random.default_rng(1)
  array = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
  _write_png(tmp_path / "x.png", array)
  grey = rng.integers(0, 256, size=(6, 6), dtype=np.uint8)
  _write_png(tmp_path / "y.png", grey)
  source = images.ImageFolderSource(tmp_path, size=6)
  batch = source.get_batch([0, 1])
  np.testing.assert_allclose(batch["image"][0], array / 255.0, atol=1e-6)  # same size: as is
  np.testing.assert_allclose(batch["image"][1], np.repeat(grey[..., None], 3, -1) / 255.0,
                             atol=1e-6)
  normalised = images.ImageFolderSource(tmp_path, size=6, normalize="imagenet")[0]["image"]
  np.testing.assert_allclose(normalised, (array / 255.0 - images.IMAGENET_MEAN)
                             / images.IMAGENET_STD, atol=1e-5)
  np.testing.assert_array_equal(images.fill_value("imagenet"), np.zeros(3))
  np.testing.assert_allclose(images.fill_value("none"), images.IMAGENET_MEAN)


def test_image_folder_subfolders_labels_and_filters(tmp_path):
  for cls, count in (("ant", 3), ("bee", 2), ("cow", 1)):
    for i in range(count):
      _write_png(tmp_path / cls / f"{cls}{i}.png", np.full((4, 5, 3), 10 * i, np.uint8))
  source = images.ImageFolderSource(tmp_path, size=4)
  assert source.class_names == ("ant", "bee", "cow")
  np.testing.assert_array_equal(source.labels, [0, 0, 0, 1, 1, 2])
  filtered = images.ImageFolderSource(tmp_path, size=4, keep_labels=[0, 2], per_class=2)
  assert [p.name for p in filtered.files] == ["ant0.png", "ant1.png", "cow0.png"]
  np.testing.assert_array_equal(filtered.get_batch([0, 1, 2])["label"], [0, 0, 2])
  mapped = images.ImageFolderSource(tmp_path, size=4, labels={f"{c}{i}": 7 for c in
                                                              ("ant", "bee", "cow")
                                                              for i in range(3)})
  assert (mapped.labels == 7).all()
  with pytest.raises(ValueError, match="subfolder 'cow' is not in class_names"):
    images.ImageFolderSource(tmp_path, size=4, class_names=("ant", "bee"))
  with pytest.raises(ValueError, match="one entry per image"):
    images.ImageFolderSource(tmp_path, size=4, labels=[1, 2])


def test_image_folder_errors(tmp_path, voc_folder):
  root, notes = voc_folder
  with pytest.raises(ValueError, match="does not exist"):
    images.ImageFolderSource(tmp_path / "nowhere", size=8)
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="no images"):
    images.ImageFolderSource(tmp_path / "empty", size=8)
  with pytest.raises(ValueError, match="annotations folder .* does not exist"):
    images.ImageFolderSource(root, size=8, annotations_dir=tmp_path / "nope")
  (notes / "c.xml").unlink()
  with pytest.raises(ValueError, match="no annotation for .*c.png"):
    images.ImageFolderSource(root, size=8, annotations_dir=notes)
  (notes / "c.xml").write_text(_voc("zzz.png", [("dog", (1, 1, 2, 2), 0)], width=24, height=16))
  source = images.ImageFolderSource(root, size=8, annotations_dir=notes)
  with pytest.raises(ValueError, match="'zzz.png' does not match the image 'c'"):
    source[2]
  (notes / "c.xml").write_text(_voc("c.png", [("dog", (1, 1, 2, 2), 0)], width=30, height=16))
  with pytest.raises(ValueError, match="annotated size 16x30 differs"):
    images.ImageFolderSource(root, size=8, annotations_dir=notes)[2]
  (notes / "c.xml").write_text(_voc("c.png", []))
  with pytest.raises(ValueError, match="no <object>"):
    images.ImageFolderSource(root, size=8, annotations_dir=notes)[2]
  with pytest.raises(ValueError, match="unknown normalize 'zscore'; valid: none, imagenet"):
    images.ImageFolderSource(root, size=8, normalize="zscore")
  with pytest.raises(ValueError, match="need a label for every image"):
    images.ImageFolderSource(root, size=8, keep_labels=[0])


# ------------------------------------------------------------------------------------------
# TfdsImageSource, on a minimal custom builder with bounding boxes.


def _tiny_boxes_builder(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  import io as stdio  # pylint: disable=import-outside-toplevel

  def png(array):
    buffer = stdio.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()

  class XaiTestBoxes(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
          "label": tfds.features.ClassLabel(num_classes=3),
          "objects": tfds.features.Sequence({"bbox": tfds.features.BBoxFeature()}),
      }), disable_shuffling=True)

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      # (height, width, label, boxes as (ymin, xmin, ymax, xmax) relative)
      specs = [(8, 8, 0, [(0.0, 0.0, 0.5, 0.5)]), (6, 12, 2, [(0.5, 0.0, 1.0, 1.0)]),
               (8, 8, 0, [(0.0, 0.75, 0.25, 1.0), (0.75, 0.0, 1.0, 0.25)])]
      for i, (height, width, label, boxes) in enumerate(specs):
        image = np.full((height, width, 3), 40 * (i + 1), np.uint8)
        yield i, {"image": png(image), "label": label,
                  "objects": {"bbox": [tfds.features.BBox(*b) for b in boxes]}}

  builder = XaiTestBoxes(data_dir=str(tmp_path), file_format="array_record")
  builder.download_and_prepare()
  return builder


def test_tfds_image_source_images_labels_masks(tmp_path):
  _tiny_boxes_builder(tmp_path)
  source = images.TfdsImageSource("xai_test_boxes", "train", size=4, data_dir=tmp_path)
  assert len(source) == 3
  batch = source.get_batch([0, 1, 2])
  for i in range(3):
    np.testing.assert_allclose(batch["image"][i], 40 * (i + 1) / 255.0, atol=1e-6)
  np.testing.assert_array_equal(batch["label"], [0, 2, 0])
  expected = np.zeros((3, 4, 4), bool)
  expected[0, :2, :2] = True          # top-left quadrant
  expected[1, 2:, :] = True           # bottom half (6x12 squashed to 4x4)
  expected[2, 0, 3] = expected[2, 3, 0] = True  # two corner pixels
  np.testing.assert_array_equal(batch["mask"], expected)
  filtered = images.TfdsImageSource("xai_test_boxes", "train", size=4, data_dir=tmp_path,
                                    keep_labels=[0], per_class=1)
  assert len(filtered) == 1
  np.testing.assert_allclose(filtered[0]["image"], 40 / 255.0, atol=1e-6)
  with pytest.raises(ValueError, match="data_dir .* does not exist"):
    images.TfdsImageSource("xai_test_boxes", "train", size=4, data_dir=tmp_path / "no")
  with pytest.raises(ValueError, match="cannot open TFDS dataset 'xai_test_boxes'"):
    images.TfdsImageSource("xai_test_boxes", "train", size=4,
                           data_dir=tmp_path / "xai_test_boxes")
