"""roi_align. PLACEHOLDER: being written."""
def roi_align(features, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False, backend="cpu"): raise NotImplementedError
