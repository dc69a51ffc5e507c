"""How much of the LM recommender's title trie is forced: the decoder-design numbers of issue 20.

    python -m bench.title_trie --data configs/data/amazon-beauty.yaml --model configs/lm/smollm2-lora.yaml

Builds the title trie exactly as ``train.py fit`` would (the model's tokenizer, ``max_title_tokens``,
disambiguated titles + EOS) and measures, per item, its length in tokens and its *unique depth*:
the shortest prefix no other title shares (:meth:`genrec.prefix_trie.PrefixTrie.unique_depth`).
From there on a beam has one choice per step, so the rest of the title (its *forced suffix*)
could be scored in one forward pass instead of one decoding step per token. The decoder runs
``max_depth`` steps per batch today; the unique depths bound how many of them need a choice. No
model runs (only the tokenizer), so the numbers do not depend on the device.
"""

from __future__ import annotations

import argparse

import torch

from bench.record import record, set_flags
from genrec.stages.fit import GenRecCLI


def _quantiles(x: torch.Tensor) -> str:
    q = torch.quantile(x.double(), torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64)).tolist()
    return f"{x.double().mean():.1f} / {q[0]:.0f} / {q[1]:.0f} / {q[2]:.0f} / {int(x.max())}"


def title_trie_stats(data: str, model: str, overrides: list[str]) -> dict[str, object]:
    """The trie's size and its items' lengths, unique depths and forced-suffix share."""
    cli = GenRecCLI(args=["--config", data, "--config", model, "--trainer.logger=false", "--trainer.accelerator=cpu", *overrides], run=False)
    dm, module = cli.datamodule, cli.model
    dm.setup("fit")
    module.attach(dm.data.catalog, train_counts=dm.data.train_item_counts())
    trie = module.trie()
    lengths, unique = trie.item_lengths, trie.unique_depth()
    forced = (lengths - unique).sum() / lengths.sum()
    return {
        "data": dm.name,
        "items": f"{trie.num_items:,}",
        "trie nodes": f"{trie.num_nodes:,}",
        "max depth (steps)": trie.max_depth,
        "title tokens + EOS: mean / p50 / p90 / p99 / max": _quantiles(lengths),
        "unique depth: mean / p50 / p90 / p99 / max": _quantiles(unique),
        "forced share of title tokens": f"{float(forced):.3f}",
        "items unique within 8 tokens": f"{float((unique <= 8).double().mean()):.3f}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, action="append", help="data config (repeatable)")
    parser.add_argument("--model", required=True)
    parser.add_argument("--set", action="append", default=[], help="extra CLI override key=value")
    args = parser.parse_args()
    rows = [title_trie_stats(data, args.model, set_flags(args.set)) for data in args.data]
    record(
        "LM title trie: forced suffixes",
        rows,
        note="Per item: its title's tokens + EOS and its unique depth (the shortest prefix no other title shares); "
        "'forced share' is the share of all title tokens after each item's unique depth, where beam search has "
        "one choice per step. No model runs.",
    )


if __name__ == "__main__":
    main()
