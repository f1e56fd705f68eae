"""The pinned environment: torch and torchvision import and their compiled ops run on this machine."""

import torch
import torchvision
from torchvision.ops import nms, roi_align

PINNED_TORCH, PINNED_TORCHVISION = "2.14.1", "0.29.1"


def test_pinned_versions():
    assert torch.__version__.split("+")[0] == PINNED_TORCH
    assert torchvision.__version__.split("+")[0] == PINNED_TORCHVISION


def test_torchvision_compiled_ops_work():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [50.0, 50.0, 60.0, 60.0]])
    keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert keep.tolist() == [0, 2]  # the second box overlaps the first (IoU 0.68) and is suppressed
    feats = torch.arange(16.0).reshape(1, 1, 4, 4)
    pooled = roi_align(feats, [torch.tensor([[0.0, 0.0, 4.0, 4.0]])], output_size=1, spatial_scale=1.0,
                       sampling_ratio=2, aligned=True)
    assert pooled.item() == feats.mean().item()
