"""DVC stage `import_official` of the pretrained DAG (`pretrained/dvc.yaml`): the released weights named
by `official` become the spherical tokenizer and generator exports where `train_vae` / `train_ar` would
have written them (`sphereard.layout.export_dir`), so `sample`, `evaluate` and `report` run unchanged.

Outputs: `<tokenizer.out>/spherical/{model,info.json}` and `<generator.out>/spherical/{model,info.json}`.
The info files record the source file, its SHA-256, the entry imported (ema / model), the epochs the
checkpoint reports and the parameter count.
"""

from __future__ import annotations

import json
import logging

from sphereard.config import Params
from sphereard.convert.importer import convert_official
from sphereard.convert.preflight import require_file, required_files
from sphereard.export import META_FILE
from sphereard.layout import export_dir, info_file
from sphereard.utils.io import atomic_write_text, sha256_file

log = logging.getLogger(__name__)
POSTERIOR = "spherical"  # the released S-VAE's posterior


def import_to_layout(params: Params) -> dict:
    """Import `params.official` into the DAG's export folders and write both blocks' info files.
    Returns the importer's summary. Raises UserError (one line naming the key or file) on bad input;
    nothing is written then (the exports are renamed into place only when complete). The exports go to
    the first (only) run of `seeds`, where train_vae@spherical-0 / train_ar@spherical-0 would write."""
    params = params.for_run(params.seeds[0])
    official = params.official
    files = required_files(params)
    vae = require_file(files["official.vae"], "official.vae")
    generator = require_file(files["official.generator"], "official.generator")
    tok_dir, gen_dir = export_dir(params, "tokenizer", POSTERIOR), export_dir(params, "generator", POSTERIOR)
    summary = convert_official(None, generator=generator, vae=vae, preset=params.generator.preset,
                               weights=official.weights, tokenizer_preset=params.tokenizer.preset,
                               tokenizer_overrides=params.tokenizer.overrides,
                               generator_overrides=params.generator.overrides,
                               tokenizer_dir=tok_dir, generator_dir=gen_dir)
    for block, model_dir, source, epochs in (("tokenizer", tok_dir, vae, summary["tokenizer_epochs"]),
                                             ("generator", gen_dir, generator, summary["generator_epochs"])):
        meta = json.loads((model_dir / META_FILE).read_text())
        info = {"imported": True, "source": meta["source"], "file": str(source), "sha256": sha256_file(source),
                "epochs": epochs, "params": meta["params"], "preset": meta["preset"], "overrides": meta["overrides"],
                "radius": meta["radius"], "weights": official.weights if block == "generator" else "auto"}
        if block == "generator" and "vae_check" in summary:
            info["vae_check"] = summary["vae_check"]
        atomic_write_text(info_file(params, block, POSTERIOR), json.dumps(info, indent=2) + "\n")
        log.info("%s: %s -> %s (%d parameters)", block, meta["source"], model_dir, meta["params"])
    return summary
