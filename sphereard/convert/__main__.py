"""`python -m sphereard.convert official --generator AR.pt [--vae vae.pt] --preset SphereAR-B --out DIR`;
`python -m sphereard.convert preflight [--params pretrained/params.yaml]` (`sphereard.convert.preflight`).

Exit status 2 with one line `error: ...` on bad input (as every sphereard entry point)."""

from __future__ import annotations

import argparse
import json
import sys

from sphereard.errors import UserError
from sphereard.utils.logs import configure_logging


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {err}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sphereard-convert", description="Import model weights trained elsewhere.")
    sub = parser.add_subparsers(dest="command", required=True)
    off = sub.add_parser("official", help="the authors' SphereAR checkpoints (github guolinke/SphereAR)")
    off.add_argument("--generator", help="SphereAR_{B,L,H}.pt (holds the S-VAE too, under vae.*)")
    off.add_argument("--vae", help="vae.pt; default: the generator file's vae.* (checked equal when both given)")
    off.add_argument("--preset", help="generator preset (default: the checkpoint's args.model)")
    off.add_argument("--out", required=True, help="writes OUT/tokenizer and OUT/generator")
    off.add_argument("--weights", choices=["auto", "ema", "model"], default="auto",
                     help="generator entry to import; auto: 'ema' if present, else 'model' (--vae: always auto)")
    off.add_argument("--tokenizer-preset", default="svae-paper")
    off.add_argument("--tokenizer-overrides", type=_json_object, default={}, help="JSON object (small test configs)")
    off.add_argument("--generator-overrides", type=_json_object, default={}, help="JSON object (small test configs)")
    pre = sub.add_parser("preflight", help="check a pretrained-DAG params file and its files before dvc repro")
    pre.add_argument("--params", default="pretrained/params.yaml")
    return parser


def run_preflight(params_file: str) -> list[str]:
    """Validate the params file, then check every file the pretrained DAG reads -> report lines."""
    from sphereard.config import load_params
    from sphereard.convert.preflight import preflight

    files = preflight(load_params(params_file))
    return [f"{params_file}: valid; found {len(files)} files: " + ", ".join(map(str, files))]


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    configure_logging()
    from sphereard.convert.importer import convert_official

    try:
        if args.command == "preflight":
            lines = run_preflight(args.params)
        else:
            summary = convert_official(args.out, generator=args.generator, vae=args.vae, preset=args.preset,
                                       weights=args.weights, tokenizer_preset=args.tokenizer_preset,
                                       tokenizer_overrides=args.tokenizer_overrides,
                                       generator_overrides=args.generator_overrides)
            lines = [f"{key}: {value}" for key, value in summary.items()]
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
