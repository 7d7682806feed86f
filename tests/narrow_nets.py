"""torchvision networks with a narrow classifier, for the parity tests.

A VGG's classifier holds a 25088 x 4096 matrix (103M weights, 0.8 GB in float64) whatever
the input size, AlexNet's a 9216 x 4096 and a 4096 x 4096 one. The parity tests compare
attributions, which the classifier's width does not change in kind, so they give it `WIDTH`
units. The Flax model and the port take the same width (`options(name)`:
`models.get(name, classifier_width=WIDTH)`, `port.from_torchvision(..., classifier_width=WIDTH)`).
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


def narrow_alexnet(net, width: int = WIDTH):
  """`net` (torchvision's AlexNet) with `classifier.1`, `.4` and `.6` replaced by freshly
  initialised linears `9216 -> width -> width -> num_classes`; returns `net`."""
  import torch  # pylint: disable=import-outside-toplevel
  classifier = net.classifier
  num_classes = classifier[6].out_features
  classifier[1] = torch.nn.Linear(classifier[1].in_features, width)
  classifier[4] = torch.nn.Linear(width, width)
  classifier[6] = torch.nn.Linear(width, num_classes)
  return net


def narrow(name: str, net):
  """`net` with a narrow classifier when `name` is AlexNet or a VGG, else unchanged."""
  if name.startswith("vgg"):
    return narrow_vgg(net)
  if name == "alexnet":
    return narrow_alexnet(net)
  return net


def options(name: str) -> dict:
  """The model / port options of `narrow(name, net)`."""
  return {"classifier_width": WIDTH} if name.startswith("vgg") or name == "alexnet" else {}
