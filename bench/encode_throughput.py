"""Encode throughput (items/s) of a modality encoder over a data set's catalogue.

    python -m bench.encode_throughput --data configs/data/amazon-beauty.yaml --encoder minilm \
        --output checkpoints/amazon-beauty/embeddings/minilm.safetensors

Encodes every item from scratch (an existing output is moved aside first) and records
items/s, device and settings in docs/benchmarks.md. The output file is kept, so the same run
produces the embeddings later stages use.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from bench.record import record
from genrec.encode import embedding_metadata, encode_catalog
from genrec.stages.encode import encode_options, encode_parser


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="data preset YAML")
    parser.add_argument("--encoder", default="configs/encode/minilm.yaml", help="encoder YAML")
    parser.add_argument("--output", required=True)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--precision", default=None, help="e.g. bf16-mixed on a GPU")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    args = parser.parse_args()
    torch.set_float32_matmul_precision("high")
    cli = encode_parser()
    config = cli.parse_args(["--config", args.data, "--config", args.encoder])
    init = cli.instantiate_classes(config)
    catalog = init.data.data.catalog
    output = Path(args.output)
    if output.exists():
        os.replace(output, output.with_suffix(".previous"))
    start = time.perf_counter()
    encode_catalog(
        catalog, output, init.encoder, template=encode_options(config, init.data)["template"], batch_size=args.batch_size,
        precision=args.precision, dtype=args.dtype, data_name=init.data.name,
    )
    seconds = time.perf_counter() - start
    meta = embedding_metadata(output)
    record(
        "Encode throughput",
        [{
            "data": init.data.name, "items": len(catalog), "encoder": init.encoder.model, "dim": meta["dim"],
            "batch": args.batch_size, "precision": args.precision or "32", "encode s": meta["encode_seconds"],
            "items/s (encode)": f"{len(catalog) / float(meta['encode_seconds']):.0f}",
            "wall s (incl. model load)": f"{seconds:.1f}",
        }],
        note="Items encoded per second by `genrec.encode.encode_catalog` (Lightning predict), "
        "model load excluded from `encode s`.",
    )


if __name__ == "__main__":
    main()
