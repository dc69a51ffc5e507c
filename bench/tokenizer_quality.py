"""Semantic-ID quality of the tokenizers on one embedding file.

    python -m bench.tokenizer_quality --data configs/data/amazon-beauty.yaml \
        --embeddings checkpoints/amazon-beauty/embeddings/minilm.safetensors

Trains each tokenizer config given (default: configs/tokenizer/rqvae.yaml, rqkmeans.yaml and
plain RVQ = rqkmeans with normalize none) through the same code as `train.py tokenize`, and
records per-level code usage, collision rate (items needing a dedup digit > 0), the largest
dedup digit, reconstruction error, training time and how often a user's next training item shares
the previous one's first 1 / 2 codes (against chance; ``next_item_prefix_match``) in
docs/benchmarks.md. Targets (issue 3): every level >= 90 % of its codes used, < 5 % of items
needing a dedup digit > 0. Collaborative embeddings: ``--embeddings <cf file> --encoder
configs/encode/cf.yaml --variants rqkmeans``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from bench.record import record
from genrec.encode import embedding_label
from genrec.quantize.semantic_ids import SemanticIDs
from genrec.stages.tokenize import read_tokenize, tokenize_stage

VARIANTS = {  # name -> (tokenizer YAML, its overrides)
    "rqvae": ("configs/tokenizer/rqvae.yaml", []),
    "rqkmeans": ("configs/tokenizer/rqkmeans.yaml", []),
    "rvq (rqkmeans, no normalisation)": ("configs/tokenizer/rqkmeans.yaml", ["--tokenizer.init_args.normalize", "none"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--embeddings", required=True)
    parser.add_argument("--encoder", default="configs/encode/minilm.yaml")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--max-epochs", type=int, default=None, help="override RQ-VAE epochs")
    args = parser.parse_args()
    torch.set_float32_matmul_precision("high")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants:
            output = Path(tmp) / f"{len(rows)}.safetensors"
            tokenizer, overrides = VARIANTS[name]
            inputs = read_tokenize([args.data, args.encoder, tokenizer], overrides)
            inputs.settings.embeddings, inputs.settings.output = args.embeddings, str(output)
            if args.max_epochs and "rqvae" in name:
                inputs.settings.max_epochs = args.max_epochs
            tokenize_stage(inputs)
            sids = SemanticIDs.load(output)
            q = sids.quality
            match = q.get("next_item_prefix_match", [])
            rows.append({
                "embeddings": embedding_label(args.embeddings),
                "tokenizer": name,
                "items": q["num_items"],
                "codes used per level": " / ".join(f"{lv['fraction_used']:.1%}" for lv in q["per_level"]),
                "perplexity per level": " / ".join(f"{lv['perplexity']:.0f}" for lv in q["per_level"]),
                "items with dedup > 0": f"{q['collision_rate']:.2%}",
                "max dedup digit": q["max_dedup_digit"],
                "recon. MSE": f"{q['reconstruction_error']:.3g}",
                "train s": sids.quantizer.get("train_seconds"),
                "next item shares 1 / 2 codes (chance)": " / ".join(f"{m['share']:.2%} ({m['chance']:.2%})" for m in match[:2]) or "n/a",
            })
    record(
        "Semantic-ID quality",
        rows,
        note="Per-level code usage, share of items needing a dedup digit > 0, reconstruction MSE "
        "(per element, on the unit-norm embeddings) and training time of each tokenizer (3 x 256); "
        "how often a user's next training item shares the previous item's first 1 / 2 codes.",
    )


if __name__ == "__main__":
    main()
