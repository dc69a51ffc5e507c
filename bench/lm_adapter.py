"""Write a trained LM recommender checkpoint's adapter file (:mod:`genrec.models.lm_adapter`).

    python -m bench.lm_adapter CKPT OUT.safetensors

Loads the Lightning checkpoint ``CKPT`` as :class:`~genrec.models.LMRecModule` (its base weights
rebuilt from its own config, then its state, read weights-only) and writes the parameters that
trained (LoRA matrices, a trained CF map) to ``OUT.safetensors``, with the checkpoint's settings
and the base weights' digest. ``bench.lm_decode --adapter OUT.safetensors`` decodes with it on a
machine that has the base weights but not the checkpoint (the GPU hold brings the adapter back:
``bench/hold/run.sh adapter NAME``).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt", help="an LMRecModule checkpoint (.ckpt)")
    parser.add_argument("out", help="the adapter file to write (.safetensors)")
    args = parser.parse_args(argv)
    from genrec.artifacts import read_checkpoint
    from genrec.errors import ArtifactError, UserError
    from genrec.models import LMRecModule
    from genrec.models.lm_adapter import save_adapter

    try:
        if "lora" not in read_checkpoint(args.ckpt).get("hyper_parameters", {}):  # weights-only, memory-mapped
            raise ArtifactError(f"{args.ckpt}: not an LMRecModule checkpoint (no 'lora' in its hyper_parameters)")
        module = LMRecModule.load_from_checkpoint(args.ckpt, map_location="cpu", weights_only=True)
        meta = save_adapter(module, args.out, source=args.ckpt)
    except (UserError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{args.out}: {int(meta['parameters']):,} trained parameters of {args.ckpt}, base weights {meta['base_digest']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
