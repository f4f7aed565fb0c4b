"""crop_and_resize. PLACEHOLDER: being written."""
def crop_and_resize(image, boxes, box_indices, crop_size, method="bilinear", extrapolation_value=0.0, backend="cpu"): raise NotImplementedError
def crop_and_pool(image, boxes, box_indices, crop_size, extrapolation_value=0.0, backend="cpu"): raise NotImplementedError
