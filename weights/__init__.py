"""Weights: the HDF5 format, converters and the TensorFlow reference exporter."""
