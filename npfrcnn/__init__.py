"""npfrcnn: a framework-free Faster R-CNN (ResNet C4) in NumPy and Numba.

Checked op by op and end to end against TensorFlow. See README.md.
"""

__version__ = "0.1.0"
