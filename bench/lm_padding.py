"""How much of an LM-recommender training batch is padding, with and without length bucketing.

    python -m bench.lm_padding --data configs/data/amazon-beauty.yaml --model configs/lm/smollm2-lora.yaml

Builds one epoch of training batches exactly as ``train.py fit`` would (prompts left-padded to
the longest in the batch, targets + EOS) without buckets, in buckets by history items and by prompt
tokens (``bucket_by_length``; ``train.py fit`` buckets an LM by tokens), and counts real
tokens against the tokens the model computes on. No model runs (only the tokenizer), so the
numbers do not depend on the device; padding costs the same share of a GPU's time when the
step is bound by compute.
"""

from __future__ import annotations

import argparse

from bench.record import record, set_flags
from genrec.stages.fit import GenRecCLI


def padding_efficiency(data: str, model: str, bucket: str, overrides: list[str]) -> dict[str, object]:
    """One epoch's real vs computed (padded) tokens of the training batches; ``bucket``: ``off``,
    ``by items`` (history lengths in items) or ``by tokens`` (in prompt tokens, as ``train.py fit``
    buckets an LM's batches since 2026-12-04: ``SequenceDataModule.item_cost``)."""
    cli = GenRecCLI(
        args=["--config", data, "--config", model, "--trainer.logger=false", "--trainer.accelerator=cpu",
              f"--data.init_args.bucket_by_length={str(bucket != 'off').lower()}", *overrides],
        run=False,
    )
    dm, module = cli.datamodule, cli.model
    dm.setup("fit")
    module.attach(dm.data.catalog, train_counts=dm.data.train_item_counts())
    if bucket == "by tokens":  # as LMRecModule.setup gives it (train.py fit)
        module.give_item_costs(dm)
    real = computed = batches = longest = 0
    for batch in dm.train_dataloader():
        inputs = module.lm_inputs(batch)
        real += int(inputs.attention_mask.sum())
        computed += inputs.input_ids.numel()
        longest = max(longest, inputs.input_ids.shape[1])
        batches += 1
    return {
        "data": dm.name,
        "bucket_by_length": bucket,
        "batch": dm.batch_size,
        "batches": batches,
        "longest row (tokens)": longest,
        "real tokens": f"{real:,}",
        "computed tokens": f"{computed:,}",
        "real / computed": f"{real / computed:.3f}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--set", action="append", default=[], help="extra CLI override key=value")
    args = parser.parse_args()
    overrides = set_flags(args.set)
    rows = [padding_efficiency(args.data, args.model, bucket, overrides) for bucket in ("off", "by items", "by tokens")]
    record(
        "LM recommender batch padding",
        rows,
        note="One epoch of training batches built as `train.py fit` builds them (left-padded prompts + targets); "
        "'real / computed' is the share of the tokens a step computes on that are not padding. No model runs.",
    )


if __name__ == "__main__":
    main()
