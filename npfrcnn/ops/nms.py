"""NMS. PLACEHOLDER: being written."""
def nms(boxes, scores, iou_threshold, max_output_size=None, score_threshold=float("-inf"), backend="cpu"): raise NotImplementedError
def soft_nms(*a, **k): raise NotImplementedError
def batched_nms(*a, **k): raise NotImplementedError
