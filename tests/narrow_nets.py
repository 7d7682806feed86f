"""torchvision networks with a narrow classifier, for the parity tests.

A VGG's classifier holds a 25088 x 4096 matrix (103M weights, 0.8 GB in float64) whatever
the input size; the parity tests compare attributions, which the classifier's width does not
change in kind, so they give it `WIDTH` units. The Flax model and the port take the same
width (`models.get(name, classifier_width=WIDTH)`, `port.from_torchvision(...,
classifier_width=WIDTH)`).
"""

WIDTH = 64


def narrow_vgg(net, width: int = WIDTH):
  """`net` (a torchvision VGG) with `classifier.0`, `.3` and `.6` replaced by freshly
  initialised linears `25088 -> width -> width -> num_classes`; returns `net`."""
  import torch  # pylint: disable=import-outside-toplevel
  classifier = net.classifier
  num_classes = classifier[6].out_features
  classifier[0] = torch.nn.Linear(classifier[0].in_features, width)
  classifier[3] = torch.nn.Linear(width, width)
  classifier[6] = torch.nn.Linear(width, num_classes)
  return net
