"""``python -m datamodules.synthetic --out DIR``: write ``DIR/generated_modelnet`` and
``DIR/generated_shapenetpart``."""

from __future__ import annotations

import argparse
import time
from dataclasses import fields
from pathlib import Path

from datamodules.synthetic.write import GeneratorConfig, generate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("data"), help="parent folder of the two data sets")
    for f in fields(GeneratorConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    args = parser.parse_args(argv)
    cfg = GeneratorConfig(**{f.name: getattr(args, f.name) for f in fields(GeneratorConfig)})
    for kind, folder in (("modelnet", "generated_modelnet"), ("shapenetpart", "generated_shapenetpart")):
        start = time.perf_counter()
        path = generate(args.out / folder, kind, cfg)
        print(f"{kind}: {path} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
