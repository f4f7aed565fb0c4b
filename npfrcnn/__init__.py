"""npfrcnn: a framework-free Faster R-CNN (ResNet C4) in NumPy and Numba.

Checked op by op and end to end against TensorFlow. See README.md.

    >>> from npfrcnn import FasterRCNN
    >>> model = FasterRCNN.from_hdf5("weights.h5")      # doctest: +SKIP
    >>> dets = model.detect(npfrcnn.image.load("cats.jpg"))  # doctest: +SKIP
"""

__version__ = "0.1.0"

from npfrcnn.model import Detections, FasterRCNN  # noqa: E402

__all__ = ["Detections", "FasterRCNN", "__version__"]
