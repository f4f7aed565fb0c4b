"""The parts a Faster R-CNN is composed of; ``npfrcnn.model.build_parts`` picks them by config.

* :mod:`.c4`: the ResNet-C4 parts (workshop);
* :mod:`.transform`, :mod:`.backbone`, :mod:`.rpn`, :mod:`.poolers`, :mod:`.heads`,
  :mod:`.postprocess`: torchvision's ResNet + FPN Faster R-CNN.
"""
