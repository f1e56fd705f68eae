"""The paper's training augmentation (`sphereard/data/transforms.py`): random crop geometry within the
official bounds, the crop-probability schedule (1 until epoch 350, 0 at 375), determinism per seed, and
its wiring: the tokenizer crops stored squares at train time, the encode stage caches K crops per image
(drawn per row, so any worker draws the same), and the generator picks crop views by the schedule."""

import pytest
import torch

from sphereard.config import CropConfig, parse_params
from sphereard.data.transforms import (
    augment,
    crop_probability,
    crop_sizes,
    random_crop_batch,
    resize_square,
)
from sphereard.errors import UserError
from sphereard.latents import pick_views


def test_crop_sizes_are_the_official_bounds():
    assert crop_sizes(256, 0.8) == (256, 320)  # [ceil(256 / 1.0), ceil(256 / 0.8)]
    assert crop_sizes(32, 0.8) == (32, 40) and crop_sizes(32, 1.0) == (32, 32)


@pytest.mark.parametrize(("epoch", "prob"), [(0, 1.0), (349, 1.0), (350, 1.0), (355, 0.8), (360, 0.6),
                                             (374, 0.04), (375, 0.0), (399, 0.0)])
def test_crop_probability_schedule(epoch, prob):
    assert crop_probability(epoch, 350, 375) == pytest.approx(prob)
    assert crop_probability(epoch, None, None) == 1.0


def _marked(b: int, stored: int) -> torch.Tensor:
    """(B, 1, S, S) images whose pixel (i, j) holds i * S + j: a crop's values tell where it came from."""
    grid = torch.arange(stored * stored, dtype=torch.float32).view(1, 1, stored, stored)
    return grid.repeat(b, 1, 1, 1)


def test_random_crop_shapes_and_identities():
    x = _marked(8, 10)
    torch.manual_seed(0)
    assert random_crop_batch(x, 8, 0.8, 1.0).shape == (8, 1, 8, 8)
    assert torch.equal(random_crop_batch(x, 10, 1.0, 1.0), x)  # side == S == size: the identity
    # min_fraction 1: the side is the crop size, so the crop is the whole image resized
    assert torch.allclose(random_crop_batch(x, 8, 1.0, 1.0), resize_square(x, 8), atol=1e-4)


def test_random_crop_windows_are_inside_the_image():
    """side == stored (no resize): each crop must equal x[top:top+size, left:left+size] for some offsets
    in range, and over many draws every offset in range appears."""
    size, stored = 6, 8
    x = _marked(200, stored)
    torch.manual_seed(3)
    # min_fraction such that ceil(size / f) == stored and sides are capped at S: sides in [6, 8]
    out = random_crop_batch(x, size, min_fraction=0.75, prob=1.0)
    offsets = set()
    for img in out[:, 0]:
        if torch.equal(img.round(), img) and float(img[0, 1] - img[0, 0]) == 1.0 and \
                float(img[1, 0] - img[0, 0]) == stored:  # an unresized crop (side == S)
            top, left = divmod(int(img[0, 0]), stored)
            assert 0 <= top <= stored - size and 0 <= left <= stored - size
            offsets.add((top, left))
    assert len(offsets) == (stored - size + 1) ** 2  # every offset of the S-side crops is drawn


def test_crop_is_deterministic_per_seed_and_draws_a_fixed_stream():
    x = torch.randn(16, 3, 40, 40)
    torch.manual_seed(7)
    a = random_crop_batch(x, 32, 0.8, 0.5)
    after_a = torch.rand(1)
    torch.manual_seed(7)
    b = random_crop_batch(x, 32, 0.8, 0.5)
    assert torch.equal(a, b) and torch.equal(torch.rand(1), after_a)
    torch.manual_seed(8)
    assert not torch.equal(random_crop_batch(x, 32, 0.8, 0.5), a)
    for prob in (0.0, 1.0):  # 4 B uniforms whatever the probability
        torch.manual_seed(7)
        random_crop_batch(x, 32, 0.8, prob)
        assert torch.equal(torch.rand(1), after_a)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(random_crop_batch(x, 32, 0.8, 1.0, generator=g1),
                       random_crop_batch(x, 32, 0.8, 1.0, generator=g2))


def test_probability_zero_is_the_centre_view():
    x = torch.randn(4, 3, 40, 40)
    assert torch.allclose(random_crop_batch(x, 32, 0.8, 0.0), resize_square(x, 32))
    crop = CropConfig(enabled=True, decay_start_epoch=2, decay_end_epoch=4)
    torch.manual_seed(0)
    late = augment(x, 32, crop, epoch=10)  # past the decay: centre view, flipped or not
    centre = resize_square(x, 32)
    assert all(torch.allclose(late[i], centre[i]) or torch.allclose(late[i], centre[i].flip(-1)) for i in range(4))


def test_pick_views_follows_the_crop_probability():
    b, centre, crops = 4000, 2, 4
    views = torch.arange(centre + crops, dtype=torch.float32).view(1, -1, 1, 1).expand(b, -1, 1, 1)
    torch.manual_seed(0)
    picked = pick_views(views, centre, crop_prob=0.3).flatten()
    frac = (picked >= centre).float().mean().item()
    assert abs(frac - 0.3) < 0.03
    assert set(picked.long().tolist()) == set(range(centre + crops))
    assert (pick_views(views, centre, 0.0).flatten() < centre).all()
    assert (pick_views(views, centre, 1.0).flatten() >= centre).all()


def test_config_refuses_a_crop_without_room(tmp_path):
    from sphereard.profiles import materialise

    data = materialise("smoke")
    data["tokenizer"]["train"]["crop"] = {"enabled": True}
    with pytest.raises(UserError, match=r"^tokenizer\.train\.crop\.enabled=True: needs data\.store_size"):
        parse_params(data)
    data["data"]["store_size"] = 40
    assert parse_params(data).tokenizer.train.crop.enabled
    data["encode"]["crops"] = 2
    with pytest.raises(UserError, match=r"^encode\.crops=2: needs generator\.train\.crop\.enabled"):
        parse_params(data)
    data["data"]["store_size"] = 16
    with pytest.raises(UserError, match=r"data\.store_size"):
        parse_params(data)
    with pytest.raises(UserError, match=r"decay_end_epoch"):
        train = {**data["generator"]["train"], "crop": {"enabled": True, "decay_start_epoch": 5}}
        parse_params({**data, "data": {**data["data"], "store_size": 40},
                      "generator": {**data["generator"], "train": train}})
