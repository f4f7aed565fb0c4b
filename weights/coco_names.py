"""COCO's category names in torchvision's 91-entry label space, background excluded.

torchvision's detection models predict labels 1..90 of COCO's original category ids, whose gaps
(ids never used by the 2017 annotations) are named ``"N/A"``; label 0 is the background. npfrcnn
labels are 0-based without the background, so npfrcnn label ``i`` is torchvision label ``i + 1``
and ``TORCHVISION_COCO_NAMES[i]`` its name (90 entries).
"""

__all__ = ["TORCHVISION_COCO_NAMES"]

TORCHVISION_COCO_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "N/A", "backpack",
    "umbrella", "N/A", "N/A", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "N/A", "wine glass", "cup", "fork", "knife", "spoon", "bowl",
    "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut",
    "cake", "chair", "couch", "potted plant", "bed", "N/A", "dining table", "N/A", "N/A",
    "toilet", "N/A", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave",
    "oven", "toaster", "sink", "refrigerator", "N/A", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)
