"""Device choice for single-process stages (training devices come from Ray Train)."""

import torch


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
