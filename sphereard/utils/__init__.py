"""Small shared helpers: device, imports, io (atomic writes), lazy imports, logs, rng, stats, weights."""
