"""roi_pool. PLACEHOLDER: being written."""
def roi_pool(features, rois, output_size, spatial_scale=1.0, backend="cpu"): raise NotImplementedError
