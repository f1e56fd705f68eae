"""DVC stage entry points: `python -m pipelines.<stage> [--params FILE]`."""
