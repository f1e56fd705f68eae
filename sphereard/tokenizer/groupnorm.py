"""GroupNorm group count of the CNN stems and the PatchGAN discriminator (a pure rule, no torch:
the preset registry validates channel lists with it)."""

GN_MAX_GROUPS = 32
GN_CHANNELS_PER_GROUP = 4  # groups = min(32, channels / 4)


def gn_groups(channels: int) -> int:
    """min(32, channels // 4), at least 1."""
    return max(1, min(GN_MAX_GROUPS, channels // GN_CHANNELS_PER_GROUP))
