"""npfrcnn: a framework-free Faster R-CNN (the workshop's ResNet C4, torchvision's ResNet-FPN) in
NumPy and Numba.

Checked op by op and end to end against TensorFlow and torchvision. See README.md.

    >>> from npfrcnn import FasterRCNN
    >>> model = FasterRCNN.from_hdf5("weights.h5")      # doctest: +SKIP
    >>> [pred] = model.predict("cats.jpg")              # doctest: +SKIP
    >>> pred[pred.scores > 0.5].draw().save("cats-drawn.jpg")  # doctest: +SKIP
"""

__version__ = "0.1.0"

from npfrcnn.model import FasterRCNN  # noqa: E402
from npfrcnn.results import Detection, Detections, InputError, Prediction  # noqa: E402

__all__ = ["Detection", "Detections", "FasterRCNN", "InputError", "Prediction", "__version__"]
