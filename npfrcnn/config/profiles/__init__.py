"""Named profiles: one module per family of real systems (``torchvision``)."""
