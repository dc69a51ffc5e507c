"""Pieces of the benchmark scripts whose numbers depend on them being right."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bench.lm_throughput import chunked_cross_entropy, flops_per_token
from genrec.models.presets import LMRecConfig, count_lm_parameters


def test_chunked_cross_entropy_equals_the_whole_loss_and_gradients():
    torch.manual_seed(0)
    hidden = torch.randn(100, 16, requires_grad=True)
    head = torch.nn.Linear(16, 50, bias=False)
    labels = torch.randint(0, 50, (100,))
    chunked = chunked_cross_entropy(hidden, head, labels, chunk=32)  # 32 + 32 + 32 + 4 positions
    chunked.backward()
    grads = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad = head.weight.grad = None
    whole = F.cross_entropy(hidden @ head.weight.t(), labels)
    whole.backward()
    torch.testing.assert_close(chunked, whole)
    torch.testing.assert_close(grads[0], hidden.grad)
    torch.testing.assert_close(grads[1], head.weight.grad)


def test_flops_per_token_is_palms_formula():
    config = LMRecConfig.from_name("1m")
    matmul = count_lm_parameters(config, embeddings=False) + config.hidden_size * config.vocab_size
    attention = 12 * config.num_layers * config.num_heads * (config.hidden_size // config.num_heads) * 256
    assert flops_per_token(config, 256) == 6 * matmul + attention


def test_record_appends_rows_at_the_end_of_their_section_and_merges_files(tmp_path):
    """Rows join the section's last table when the section ends with one of the same columns;
    after prose or another table they start a new table at the section's end (never inside an
    older table under prose written about it)."""
    from bench.record import append_table, merge

    path = tmp_path / "benchmarks.md"
    append_table("TIGER", "| a | b |\n|---|---|\n| 1 | 2 |", note="What the table is.", path=path)
    append_table("TIGER", "| a | b |\n|---|---|\n| 3 | 4 |", path=path)  # the section ends with this table: joined
    path.write_text(path.read_text() + "\nA note written about rows 1 and 3.\n\n## Other\n\n| x |\n|---|\n| 9 |\n")
    append_table("TIGER", "| a | b |\n|---|---|\n| 5 | 6 |", path=path)  # after prose: a new table
    append_table("TIGER", "| c |\n|---|\n| 7 |", path=path)  # other columns: a new table at the end
    text = path.read_text()
    tiger = text.split("## TIGER\n")[1].split("\n## ")[0]
    assert "| 1 | 2 |\n| 3 | 4 |\n\nA note written" in tiger and tiger.count("| a | b |") == 2
    assert tiger.index("A note written") < tiger.index("| a | b |\n|---|---|\n| 5 | 6 |") < tiger.index("| c |\n|---|\n| 7 |")
    assert "| x |\n|---|\n| 9 |" in text.split("## Other\n")[1]

    elsewhere = tmp_path / "gpu.md"
    append_table("Other", "| x |\n|---|\n| 10 |", path=elsewhere)
    merge(elsewhere, path=path)
    assert "| 9 |\n| 10 |" in path.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["benchmarks.md", "gpu.md"]  # no temporary files left


def _append_rows(path: str, start: int) -> None:
    from bench.record import append_table

    for i in range(start, start + 25):
        append_table("TIGER", f"| a | b |\n|---|---|\n| {i} | x |", path=Path(path))


def test_record_from_processes_side_by_side_keeps_every_row_once(tmp_path):
    # GPU holds run several benchmarks at once, each appending to the same docs/benchmarks.md
    import multiprocessing

    path = tmp_path / "b.md"
    context = multiprocessing.get_context("fork")
    procs = [context.Process(target=_append_rows, args=(str(path), 100 * k)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    rows = [line for line in path.read_text().splitlines() if line.endswith(" x |")]
    assert sorted(rows) == sorted(f"| {100 * k + i} | x |" for k in range(4) for i in range(25))


def test_lm_padding_counts_the_same_real_tokens_and_bucketing_pads_less():
    from bench.lm_padding import padding_efficiency

    small = ["--data.init_args.batch_size=32", "--model.init_args.prompt.max_tokens=512"]
    plain, items, tokens = (padding_efficiency("configs/data/synthetic.yaml", "configs/lm/tiny-scratch.yaml", bucket, small)
                            for bucket in ("off", "by items", "by tokens"))
    assert plain["real tokens"] == items["real tokens"] == tokens["real tokens"] and plain["batches"] == tokens["batches"]
    real = int(plain["real tokens"].replace(",", ""))
    assert 0 < real < int(plain["computed tokens"].replace(",", ""))
    share = [float(row["real / computed"]) for row in (plain, items, tokens)]
    assert share[0] < share[1] < share[2]  # buckets by prompt tokens (what train.py fit does for an LM) pad least


def test_tiger_benchmark_in_two_segments_adds_up_and_records_one_row(tmp_path, monkeypatch):
    import functools
    import json
    import sys
    from pathlib import Path

    import yaml

    from bench import tiger_train
    from bench.record import record
    from tests.test_configs import ROOT, TINY_DATA, tiny_sids

    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump(TINY_DATA))
    sids = tiny_sids(tmp_path)
    monkeypatch.chdir(tmp_path)  # the config's checkpoint folder is relative
    bench_file = tmp_path / "benchmarks.md"
    monkeypatch.setattr(tiger_train, "record", functools.partial(record, path=bench_file))
    common = ["tiger_train", "--data", str(data), "--model", str(ROOT / "configs/tiger/synthetic.yaml"), "--sids", sids,
              "--set", "trainer.accelerator=cpu", "--set", "data.init_args.batch_size=16", "--set", "trainer.check_val_every_n_epoch=1",
              "--set", "trainer.enable_progress_bar=false", "--set", "trainer.logger=false"]
    first, second = tmp_path / "seg1.json", tmp_path / "seg2.json"
    monkeypatch.setattr(sys, "argv", [*common, "--set", "trainer.max_epochs=1", "--fit-only", "--out", str(first)])
    tiger_train.main()
    state1 = json.loads(first.read_text())["state"]
    assert not bench_file.exists()  # a segment records no row
    assert state1["samples"] > 0 and state1["train_s"] > 0 and len(state1["points"]) == 1

    last = tmp_path / "checkpoints/synthetic/tiger/checkpoints/last.ckpt"
    monkeypatch.setattr(sys, "argv", [*common, "--set", "trainer.max_epochs=2", "--ckpt-path", str(last), "--prior", str(first), "--out", str(second),
                                      "--test-target", "0.0"])
    tiger_train.main()
    done = json.loads(second.read_text())
    tested = done["timeline"][-1]  # --test-target: test metrics at the validation, and the time they crossed it
    assert 0.0 <= tested["test/recall@10"] <= 1.0 and 0.0 <= tested["test/warm/recall@10"] <= 1.0
    assert tested["test/ndcg@10"] <= tested["test/recall@10"] and done["state"]["test_reached"] is not None
    assert "test/recall@10" not in done["timeline"][0]  # the first segment ran without it
    assert Path(done["run"]["checkpoint"]).is_file()  # the best-val checkpoint the test used (for bench.tiger_beams)
    state2 = done["state"]
    assert state2["samples"] == 2 * state1["samples"]  # the same epoch again: counts add up
    assert state2["train_s"] > state1["train_s"] and state2["wall_s"] > state1["wall_s"]
    assert [p["epoch"] for p in done["timeline"]] == [0, 1]
    steps = len(state1["losses"])
    assert steps > 0 and len(state2["losses"]) == 2 * steps and state2["losses"][:steps] == state1["losses"]
    assert done["row"]["epochs"] == 2
    assert bench_file.read_text().count("| tiny |") == 1


def test_ddp_run_records_one_row_with_global_counts_and_compares_with_one_device(tmp_path):
    """bench.tiger_train on two CPU processes (DDP over gloo, relaunched by Lightning as
    ``python -m bench.tiger_train``): counts summed over ranks, one row from rank 0, and
    bench.multi_gpu compares its loss curve with the one-process run at the same global batch."""
    import json
    import os
    import subprocess
    import sys

    import yaml

    from tests.test_configs import ROOT, TINY_DATA, tiny_sids

    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump(TINY_DATA))
    sids = tiny_sids(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GENREC_BENCH_FILE": str(tmp_path / "benchmarks.md"), "OMP_NUM_THREADS": "1"}
    common = [sys.executable, "-m", "bench.tiger_train", "--data", str(data), "--model", str(ROOT / "configs/tiger/synthetic.yaml"),
              "--sids", sids, "--set", "trainer.accelerator=cpu", "--set", "trainer.max_epochs=2", "--set", "trainer.check_val_every_n_epoch=2",
              "--set", "trainer.enable_progress_bar=false", "--set", "trainer.logger=false", "--set", "data.init_args.bucket_by_length=false"]
    runs = {1: tmp_path / "one.json", 2: tmp_path / "two.json"}
    for devices, out in runs.items():
        extra = ["--set", "trainer.devices=2", "--set", "trainer.strategy=ddp"] if devices == 2 else []
        subprocess.run([*common, "--set", f"data.init_args.batch_size={16 // devices}", *extra, "--out", str(out)],
                       cwd=tmp_path, env=env, check=True, timeout=600)
    one, two = (json.loads(path.read_text()) for path in runs.values())
    assert one["run"]["devices"] == 1 and two["run"]["devices"] == 2 and two["run"]["strategy"] == "DDPStrategy"
    # every training sample counted once per epoch on one process; DDP pads its shards to equal size
    train_samples = one["state"]["samples"] // 2
    assert train_samples <= two["state"]["samples"] // 2 <= train_samples + 1
    assert len(two["state"]["losses"]) == len(one["state"]["losses"])
    bench = (tmp_path / "benchmarks.md").read_text()
    assert bench.count("| 2 x 8 (DDPStrategy) |") == 1  # rank 0 only

    subprocess.run([sys.executable, "-m", "bench.multi_gpu", str(runs[1]), str(runs[2]), "--window", "2"],
                   cwd=tmp_path, env=env, check=True, timeout=120)
    section = (tmp_path / "benchmarks.md").read_text().split("## Multi-GPU training")[1]
    rows = [line for line in section.splitlines() if line.startswith("| tiny |")]
    assert len(rows) == 2 and "| reference |" in rows[0] and "| 2 x 8 | DDPStrategy |" in rows[1]


def test_tiger_beams_benchmark_records_one_row_per_width_and_wider_beams_find_more(tmp_path, monkeypatch):
    import functools
    import sys

    import yaml

    from bench import tiger_beams, tiger_train
    from bench.record import record
    from tests.test_configs import ROOT, TINY_DATA, tiny_sids

    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump(TINY_DATA))
    sids = tiny_sids(tmp_path)
    monkeypatch.chdir(tmp_path)
    bench_file = tmp_path / "benchmarks.md"
    for module in (tiger_train, tiger_beams):
        monkeypatch.setattr(module, "record", functools.partial(record, path=bench_file))
    flags = ["--data", str(data), "--model", str(ROOT / "configs/tiger/synthetic.yaml"), "--sids", sids,
             "--set", "trainer.accelerator=cpu", "--set", "trainer.enable_progress_bar=false", "--set", "trainer.logger=false"]
    monkeypatch.setattr(sys, "argv", ["tiger_train", *flags, "--set", "trainer.max_epochs=1", "--set", "data.init_args.batch_size=16",
                                      "--fit-only", "--out", str(tmp_path / "fit.json")])
    tiger_train.main()
    checkpoint = tmp_path / "checkpoints/synthetic/tiger/checkpoints/last.ckpt"
    monkeypatch.setattr(sys, "argv", ["tiger_beams", *flags, "--ckpt", str(checkpoint), "--beams", "10,40", "--exact-users", "16", "--exact-batch", "8"])
    tiger_beams.main()
    rows = [line.split(" | ") for line in bench_file.read_text().splitlines() if line.startswith("| tiny |")]
    assert [row[3] for row in rows] == ["10", "40"]
    found = [float(row[11]) for row in rows]  # share of the exhaustive top 10 in the beam's list
    assert 0.0 < found[0] <= found[1] <= 1.0


def test_lm_benchmark_records_one_row_and_keeps_the_training_measurement_if_the_test_fails(tmp_path, monkeypatch):
    import functools
    import json
    import sys

    import yaml
    from lightning.pytorch import Trainer

    from bench import lm_train
    from bench.record import record
    from tests.test_configs import ROOT, TINY_DATA

    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump(TINY_DATA))
    monkeypatch.chdir(tmp_path)
    bench_file = tmp_path / "benchmarks.md"
    monkeypatch.setattr(lm_train, "record", functools.partial(record, path=bench_file))
    out = tmp_path / "lm.json"
    argv = ["lm_train", "--data", str(data), "--model", str(ROOT / "configs/lm/tiny-scratch.yaml"),
            "--set", "trainer.accelerator=cpu", "--set", "trainer.max_epochs=1", "--set", "trainer.limit_train_batches=2",
            "--set", "trainer.limit_val_batches=0", "--set", "trainer.limit_test_batches=1", "--set", "data.init_args.batch_size=8",
            "--set", "data.init_args.eval_batch_size=4", "--set", "trainer.callbacks=[]", "--set", "trainer.enable_checkpointing=false",
            "--set", "trainer.enable_progress_bar=false", "--set", "trainer.logger=false", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt("stopped during the test pass")

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "test", stopped)
        with pytest.raises(KeyboardInterrupt):
            lm_train.main()
    fit = json.loads(out.read_text())
    assert "row" not in fit and not bench_file.exists()
    assert fit["state"]["samples"] == 16 and fit["state"]["tokens"] > 16 and fit["state"]["train_s"] > 0
    assert len(fit["state"]["losses"]) == 2

    lm_train.main()
    done = json.loads(out.read_text())
    assert done["state"]["samples"] == 16 and set(done["test"]) >= {"test/recall@10", "test/ndcg@10", "test/cold/recall@10"}
    assert done["row"]["test pass s (4 users, beam 20)"] and int(done["row"]["train tokens/s"].replace(",", "")) > 0
    assert bench_file.read_text().count("| tiny |") == 1
    assert done["row"]["train peak GiB"] == "n/a" and done["run"]["train peak GiB"] == 0  # no GPU here


def test_lm_fit_only_prints_training_throughput(tmp_path, monkeypatch, capsys):
    """``--fit-only`` (the liger on/off comparison): train, write --out, print tokens/s, no test;
    ``--profile-steps 1 1`` prints the second step's operators and its busy share."""
    import json
    import sys

    import yaml

    from bench import lm_train
    from tests.test_configs import ROOT, TINY_DATA

    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump(TINY_DATA))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "fit.json"
    monkeypatch.setattr(sys, "argv", [
        "lm_train", "--data", str(data), "--model", str(ROOT / "configs/lm/tiny-scratch.yaml"), "--fit-only", "--out", str(out),
        "--set", "trainer.accelerator=cpu", "--set", "trainer.max_steps=2", "--set", "trainer.limit_val_batches=0",
        "--set", "data.init_args.batch_size=8", "--set", "trainer.callbacks=[]", "--set", "trainer.enable_checkpointing=false",
        "--set", "trainer.enable_progress_bar=false", "--set", "trainer.logger=false", "--set", "model.init_args.liger=false",
        "--profile-steps", "1", "1"])
    lm_train.main()
    state = json.loads(out.read_text())["state"]
    printed = capsys.readouterr().out
    report = printed.split("[profile] training steps 1..1: ")[1].split("\n")[0]
    step_ms, busy_ms = float(report.split(" ms a step")[0]), float(report.split(", ")[1].split(" ms of it")[0])
    assert busy_ms > 0 and step_ms > 0 and "in operators" in report and "aten::mm" in printed.split("[profile]")[0]
    tokens_per_s = float(printed.split("[fit-only] ")[1].split(" train tokens/s")[0].replace(",", ""))
    assert tokens_per_s == pytest.approx(state["tokens"] / state["train_s"], rel=0.01) and "liger=False" in printed
    assert state["samples"] == 16 and not (tmp_path / "docs").exists()


def test_lm_decode_benchmark_checks_the_reference_and_records_quality(tmp_path, monkeypatch, capsys):
    """bench.lm_decode on a tiny from-scratch LM (users re-batched by prompt length): the float32
    check against the reference decoder passes, and the row has users/s, the test metrics, the
    cold exposure, the pruning share and the operators per step; a list that differs beyond a
    tie stops the run; by_prompt_length keeps every user once, shortest prompt first."""
    import functools
    import sys

    import yaml

    from bench import lm_decode
    from bench.record import record
    from genrec.decoding import BeamResult
    from tests.test_configs import ROOT, TINY_DATA

    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump(TINY_DATA))
    bench_file = tmp_path / "benchmarks.md"
    monkeypatch.setattr(lm_decode, "record", functools.partial(record, path=bench_file))
    monkeypatch.setattr(sys, "argv", [
        "lm_decode", "--data", str(data), "--model", str(ROOT / "configs/lm/tiny-scratch.yaml"), "--users", "10", "--batch", "4",
        "--beams", "12", "--compare-reference", "6", "--order", "length", "--profile", "--profile-batch", "-1", "--prompt-bucket", "512",
        "--set", "model.init_args.overrides={num_layers: 1, hidden_size: 32, num_heads: 2, num_kv_heads: 1, intermediate_size: 64}"])
    from genrec.models.lm_graphs import GraphDecoder

    buckets = []
    decode_all = lm_decode.decode_all
    monkeypatch.setattr(lm_decode, "decode_all", lambda module, *a, **k: buckets.append(module.decode_prompt_bucket) or decode_all(module, *a, **k))
    lm_decode.main()
    assert buckets and set(buckets) == {512} and GraphDecoder.PROMPT_BUCKET == 128  # the module's decoding.prompt_bucket, not the class's
    printed = capsys.readouterr().out  # --profile: the decoder's operators, then the eager ones by input shape
    assert "a quarter of the batch decoded eagerly (same padding), by operator and input shape:" in printed
    assert printed.count("Self CPU") >= 2 and "Input Shapes" in printed.split("by operator and input shape:")[1]
    # the last batch (2 of the 10 users at 4 a batch) decoded again after the timed pass, its operator
    # time against its wall time; before it, each batch of the timed pass: users, steps, seconds
    line = printed.split("per batch (users, steps, s, ms a step, engine and the graphs it captured in the batch): ")[1].split("\n")[0]
    timeline = [cell.split(", ") for cell in line.split("; ")]
    assert [int(u) for u, *_ in timeline] == [4, 4, 2] and all(int(n) > 0 and float(t) > 0 for _, n, t, *_ in timeline)
    assert all(cell[4].startswith("P ") for cell in timeline)  # the static decoder's prompt width
    assert all(cell[6] == "0 captures 0.00 s" for cell in timeline)  # on a CPU the steps run eagerly: no graphs
    summary = printed.split("[profile] 2 users, ")[1].split("\n")[0]
    wall, busy = float(summary.split(": ")[1].split(" s unprofiled")[0]), float(summary.split("), ")[1].split(" s in operators")[0])
    assert int(summary.split(" steps")[0]) > 0 and wall > 0 and busy > 0
    table = bench_file.read_text()
    header, _, row = (line.split(" | ") for line in table.strip().splitlines()[-3:])
    cells = dict(zip(header, row, strict=True))
    assert cells["users"] == "10 of 40" and cells["lists valid"] == "10/10" and float(cells["users/s"]) > 0
    assert cells["batch"] == "4 by prompt length"
    assert cells["reference check"].startswith("fp32: 6/6 identical, 0 tied, 0 different, same-item score gap")
    assert 0 <= float(cells["test R@10"]) <= 1 and "of full search" in cells["beam tokens fed"]
    # on a CPU: no graphs, so a graphs-only setting (--prompt-bucket) is not in the label
    assert "in the step body (eager)" in cells["aten ops/step"] and cells["decoder"] == "static (pruned), fused head, causal prefill"

    scores = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -3.0], [-1.0, -2.0, -3.0]])
    a = BeamResult(torch.tensor([[1, 2, 3], [1, 2, 3], [1, 2, 3]]), scores)
    b = BeamResult(torch.tensor([[1, 2, 3], [2, 1, 3], [1, 2, 4]]), scores - torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.5]]))
    assert lm_decode.agreement(a, b) == (1, 1, 1)  # identical, tied (a swap at equal scores), different (a missed item)
    assert lm_decode.common_item_gap(a, b) == 0.0  # item 4 is only in one list; the shared ones agree
    shifted = BeamResult(b.items, b.scores - torch.tensor([0.0, 0.25, 0.0])[:, None])
    assert lm_decode.common_item_gap(a, shifted) == 0.25

    class Lines:  # history_lines of a module whose item i's line has i + 1 tokens, all kept
        line_lengths = torch.zeros(1)

        @staticmethod
        def history_lines(history):
            return history.clamp(min=0), (history + 1) * (history >= 0), history >= 0

    from genrec.data.datamodule import SeqBatch
    loader = [SeqBatch(torch.tensor([0, 1]), torch.tensor([[5, 5], [1, -1]]), torch.tensor([2, 1]), torch.tensor([7, 8])),
              SeqBatch(torch.tensor([2]), torch.tensor([[3, 2, 0]]), torch.tensor([3]), torch.tensor([9]))]
    regrouped = lm_decode.by_prompt_length(Lines, loader, 2)  # prompt tokens: user 0: 12, user 1: 2, user 2: 7
    assert [b.users.tolist() for b in regrouped] == [[1, 2], [0]]
    assert regrouped[0].history.tolist() == [[1, -1, -1], [3, 2, 0]] and regrouped[1].targets.tolist() == [7]


def test_lm_decode_benchmark_records_one_row_per_decode_scale(tmp_path, monkeypatch):
    """``--decode-scales 1,0.5``: the same users decoded twice, the LoRA adapters at each scale
    (``lora.decode_scale`` set on the module while it decodes), one row each, labelled."""
    import functools
    import sys

    import yaml

    from bench import lm_decode
    from bench.record import record
    from tests.test_configs import ROOT, TINY_DATA

    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump(TINY_DATA))
    bench_file = tmp_path / "benchmarks.md"
    monkeypatch.setattr(lm_decode, "record", functools.partial(record, path=bench_file))
    seen = []
    decode_all = lm_decode.decode_all

    def spy(module, batches, *args, **kwargs):
        seen.append((module.lora.decode_scale, sum(len(b) for b in batches)))
        return decode_all(module, batches, *args, **kwargs)

    monkeypatch.setattr(lm_decode, "decode_all", spy)
    monkeypatch.setattr(sys, "argv", [
        "lm_decode", "--data", str(data), "--model", str(ROOT / "configs/lm/tiny-scratch.yaml"), "--users", "6", "--batch", "3",
        "--beams", "10", "--decode-scales", "1,0.5",
        "--set", "model.init_args.overrides={num_layers: 1, hidden_size: 32, num_heads: 2, num_kv_heads: 1, intermediate_size: 64}",
        "--set", "model.init_args.lora={enabled: true, r: 4}"])
    lm_decode.main()
    assert seen[-2:] == [(1.0, 6), (0.5, 6)] and all(x == (1.0, 3) for x in seen[:-2])  # warm-up batches, then every user at each scale
    rows = [line for line in bench_file.read_text().splitlines() if line.startswith("| tiny")]
    assert len(rows) == 2 and "adapters x" not in rows[0] and ", adapters x0.5 |" in rows[1]
    assert all("M), random weights" in row for row in rows)  # a preset without --ckpt: its row says so
    argv = list(sys.argv)
    seen.clear()
    monkeypatch.setattr(sys, "argv", [*argv[:-6], "--decode-scales", "1", "--warmup", "all", *argv[-4:]])
    lm_decode.main()  # --warmup all: one untimed pass over every user, then the timed one; the row says so
    assert seen == [(1.0, 6), (1.0, 3), (1.0, 6)]  # the warm pass, the operator count's first batch, the timed pass
    assert "(steady state)" in bench_file.read_text().splitlines()[-1]
    with pytest.raises(SystemExit, match="--warmup takes a positive number or 'all', got 'half'"):
        monkeypatch.setattr(sys, "argv", [*argv, "--warmup", "half"])
        lm_decode.main()
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit, match="--decode-scales takes numbers"):
        monkeypatch.setattr(sys, "argv", [*sys.argv[:-4], "--decode-scales", "1,half"])
        lm_decode.main()
    with pytest.raises(SystemExit, match="--capture-after takes a positive multiple of 1, got 0"):
        monkeypatch.setattr(sys, "argv", [*sys.argv[:-2], "--capture-after", "0"])
        lm_decode.main()
    with pytest.raises(SystemExit, match="--prompt-bucket takes a positive multiple of 8, got 12"):
        monkeypatch.setattr(sys, "argv", [*sys.argv[:-2], "--prompt-bucket", "12"])
        lm_decode.main()
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 20)  # --adapter: model.init_args.adapter, its one line
    with pytest.raises(SystemExit, match=r"^error: .*broken.safetensors: not a readable adapter file"):
        monkeypatch.setattr(sys, "argv", [*argv, "--adapter", str(tmp_path / "broken.safetensors")])
        lm_decode.main()
    # the config's decoding.fused_head decodes unless a flag says otherwise; a flag (--attention) sets the module's
    # decoding.cudnn_attention, and neither touches the class defaults; the row says what decoded
    from genrec.models.lm_graphs import GraphDecoder

    built = []
    monkeypatch.setattr(lm_decode, "decode_all",
                        lambda module, *a, **k: built.append((module.decode_fused_head, module.decode_cudnn_attention)) or decode_all(module, *a, **k))
    monkeypatch.setattr(sys, "argv", [*argv, "--set", "model.init_args.decoding={fused_head: false}", "--attention", "efficient"])
    lm_decode.main()
    assert built and set(built) == {(False, False)} and GraphDecoder.FUSED_HEAD and GraphDecoder.CUDNN_ATTENTION
    assert "fused head" not in bench_file.read_text().splitlines()[-1] and "fused head" in rows[0]


def test_lm_ancestry_counts_the_columns_the_live_beams_still_attend(tmp_path, monkeypatch, capsys):
    """bench.lm_ancestry on a tiny LM: at the first step every live beam's own column is its only
    ancestor; later the union of the live beams' ancestors lies between one column a step and all
    written columns, and the decoder's own step is put back afterwards."""
    import sys

    import yaml

    from bench import lm_ancestry
    from genrec.models.lm_graphs import GraphDecoder
    from tests.test_configs import ROOT, TINY_DATA

    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump(TINY_DATA))
    step = GraphDecoder.step
    monkeypatch.setattr(sys, "argv", [
        "lm_ancestry", "--data", str(data), "--model", str(ROOT / "configs/lm/tiny-scratch.yaml"), "--users", "6", "--batch", "3",
        "--beams", "10", "--set", "model.init_args.overrides={num_layers: 1, hidden_size: 32, num_heads: 2, num_kv_heads: 1, intermediate_size: 64}"])
    lm_ancestry.main()
    assert GraphDecoder.step is step
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    table = [(int(t), int(written), float(mean), int(largest), float(live)) for t, written, mean, largest, _, live in rows]
    assert table and table[0][0] == 1
    for t, written, mean, largest, live in table:
        assert written == 10 * t and t <= mean <= largest <= written and 1 <= live <= 10
        if t == 1:
            assert mean == largest == live  # each live beam sees its own column only


def test_lm_decode_noise_scores_the_targets_alike_three_ways_in_float32(tmp_path, monkeypatch, capsys):
    """bench.lm_decode_noise: in float32 the plain forward pass, the reference decoder's steps
    and the static decoder's steps give each target the same summed log-prob (the table's fp32
    rows read 0); the bf16 rows and the pairwise gaps are printed."""
    import sys

    import yaml

    from bench import lm_decode_noise
    from tests.test_configs import ROOT, TINY_DATA

    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump(TINY_DATA))
    monkeypatch.setattr(sys, "argv", [
        "lm_decode_noise", "--data", str(data), "--model", str(ROOT / "configs/lm/tiny-scratch.yaml"), "--users", "3",
        "--set", "model.init_args.overrides={num_layers: 1, hidden_size: 32, num_heads: 2, num_kv_heads: 1, intermediate_size: 64}"])
    lm_decode_noise.main()
    lines = capsys.readouterr().out.splitlines()
    fp32 = [line for line in lines if line.startswith("fp32 ")]
    assert len(fp32) == 3 and all(float(line.rsplit("max |.| ", 1)[1]) < 1e-3 for line in fp32)
    assert len([line for line in lines if line.startswith("bf16 ")]) == 6
    assert lines[0].startswith("3 users, target score (fp32, plain) mean -")


@pytest.mark.parametrize(("hold", "data"), [("beauty", "beauty"), ("toys", "toys"), ("beauty-axes", "beauty"), ("beauty-cpu", "beauty"),
                                            ("toys-cpu", "toys")])
def test_gpu_hold_scaling_shards_are_their_studys_runs(hold, data):
    """bench/hold/scaling-<hold>.yaml (what a GPU hold, or a session on the CPU, trains) parses as a
    scaling study of the same name, data and archive as configs/scaling/amazon-<data>.yaml, and each
    of its sweeps is the study's sweep of that name (model, presets, lrs, axis, the SID settings it
    makes on the GPU machine), so its runs land in that study's folders and archive: a typo there
    would cost a GPU hold, or two hours of a CPU."""
    import yaml

    from genrec.scaling import ScalingConfig
    from tests.test_configs import ROOT

    text = (ROOT / f"bench/hold/scaling-{hold}.yaml").read_text()
    study = yaml.safe_load((ROOT / f"configs/scaling/amazon-{data}.yaml").read_text())
    on_cpu = hold.endswith("-cpu")  # nothing carried: the study's SIDs at the tokenize command's path, on this machine
    if on_cpu:
        assert "\naccelerator: cpu\n" in text and f"--config bench/hold/scaling-{hold}.yaml" in text  # the command it documents
        sids = yaml.safe_load(text).get("sids")
        if sids:  # made by the tokenize command it documents, at that command's path
            name = Path(sids).name.removesuffix(".safetensors")
            assert sids == f"checkpoints/amazon-{data}/sids/{name}.safetensors" and f"--tokenize.name {name}\n" in text
        else:  # the study's own SID stages, on the CPU
            theirs = study.get("overrides", {}).get("tokenize", [])
            assert yaml.safe_load(text).get("overrides", {}).get("tokenize", [])[:len(theirs)] == theirs
    else:
        assert f"scaling-{hold}.yaml" in (ROOT / "bench/hold/prepare.sh").read_text()  # carried
    hold_cfg = yaml.safe_load(text.replace("SIDS/", "/carried/sids/"))  # run.sh's substitution
    shard = ScalingConfig(**hold_cfg)
    assert (shard.name, shard.data, shard.archive) == (study["name"], study["data"], study["archive"])
    for name, sweep in shard.sweeps.items():
        theirs = study["sweeps"][name]
        assert sweep.model == theirs["model"] and (ROOT / sweep.model).is_file()
        assert set(sweep.presets) <= set(theirs["presets"]) and set(sweep.lrs) <= set(theirs.get("lrs", []))
        assert sweep.axis == theirs.get("axis") and sweep.lr_seeds == theirs.get("lr_seeds")
        assert sweep.encoder == theirs.get("encoder") and sweep.tokenizer_parameters == theirs.get("tokenizer_parameters")
        if sweep.sids and not on_cpu:  # made by prepare.sh and carried
            assert sweep.sids.startswith("/carried/sids/") and Path(sweep.sids).name in (ROOT / "bench/hold/prepare.sh").read_text()
        else:
            assert sweep.tokenize_overrides == theirs.get("tokenize_overrides", [])
    assert shard.runs()


def test_profiling_counts_each_kernel_once_and_sorts_kernels_by_kind() -> None:
    """An operator row repeats its kernels' device time as its own; the busy time and the kinds
    count only the kernel rows, and each kernel name goes to its kind (the H200 decoder's names)."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from bench.profiling import busy_seconds, kernel_kind, kernel_kinds, kinds_report

    def event(key: str, device: DeviceType, cpu_us: float, cuda_us: float, count: int = 1) -> SimpleNamespace:
        return SimpleNamespace(key=key, device_type=device, self_cpu_time_total=cpu_us, self_device_time_total=cuda_us,
                               count=count, is_user_annotation=False)

    events = [
        event("aten::mm", DeviceType.CPU, 50.0, 3000.0, 2),  # its kernel's 3 ms again, as the profiler reports it
        event("nvjet_sm90_tst_192x128_64x5_1x2_h_bz_coopB_TNT", DeviceType.CUDA, 0.0, 3000.0, 2),
        event("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16", DeviceType.CUDA, 0.0, 2000.0, 4),
        event("fmha_cutlassF_bf16_aligned_64x64_rf_sm80", DeviceType.CUDA, 0.0, 500.0),
        event("triton_poi_fused_add_index_mul_0", DeviceType.CUDA, 0.0, 1000.0, 10),
        event("void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl>", DeviceType.CUDA, 0.0, 1500.0, 30),
        event("void at::native::index_elementwise_kernel<128, 4>", DeviceType.CUDA, 0.0, 400.0, 8),
        event("void at::native::(anonymous namespace)::CatArrayBatchedCopy<float>", DeviceType.CUDA, 0.0, 300.0, 6),
        event("void at::native::reduce_kernel<512, 1>", DeviceType.CUDA, 0.0, 200.0, 2),
        event("void at_cuda_detail::cub::DeviceRadixSortOnesweepKernel", DeviceType.CUDA, 0.0, 100.0),
        event("Memset (Device)", DeviceType.CUDA, 0.0, 50.0),
    ]
    assert busy_seconds(events, cuda=True) == pytest.approx(9.05e-3)  # not 12.05 ms: aten::mm's copy is not added
    assert busy_seconds(events, cuda=False) == pytest.approx(50e-6)
    assert kernel_kind("triton_red_fused_sdpa_like_norm_1") == "fused (Triton)"  # Triton first, whatever it fuses
    kinds = {kind: (seconds, n) for kind, seconds, n in kernel_kinds(events)}
    assert kinds["matrix products"] == (pytest.approx(3e-3), 2)
    assert kinds["attention"] == (pytest.approx(2.5e-3), 5)
    assert kinds["elementwise (aten)"] == (pytest.approx(1.5e-3), 30)
    assert kinds["index / gather / scatter"][1] == 8 and kinds["copy / cat"][1] == 6 and kinds["fused (Triton)"][1] == 10
    assert kinds["reductions (sum, max, top-k, sort, norms)"] == (pytest.approx(3e-4), 3) and kinds["other"][1] == 1
    assert [k for k, _, _ in kernel_kinds(events)][:2] == ["matrix products", "attention"]
    report = kinds_report(events, per=2, unit="step").splitlines()
    assert report[0] == "  matrix products: 1.5 ms a step (33%), 1 kernels" and len(report) == len(kinds)
    assert kinds_report(events[:1]) == ""  # operators only (a CPU profile): no kernel kinds


def test_lm_decode_host_operator_count_leaves_the_compiled_layer_halves_compiled(tmp_path, monkeypatch):
    """bench.lm_decode counts the operators a step dispatches (host_ops_per_step) between its
    warm-up and its timed pass. Counted under a TorchDispatchMode as it is, a compiled function
    is never compiled again afterwards; the count now stands torch.compile down while it runs,
    so the timed pass still runs the compiled layer halves (one compiled region a layer half in
    the prefill and in every eager step). Dynamo's backend is 'eager' here: what is checked is
    whether Dynamo's compiled code runs, not what Inductor makes of it."""
    import functools

    import yaml
    from torch.profiler import ProfilerActivity, profile

    from bench import lm_decode
    from genrec.stages.fit import GenRecCLI
    from tests.test_configs import ROOT, TINY_DATA

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    torch._dynamo.reset()
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump(TINY_DATA))
    cli = GenRecCLI(args=["--config", str(data), "--config", str(ROOT / "configs/lm/tiny-scratch.yaml"), "--trainer.logger=false",
                          "--data.init_args.eval_batch_size=4",
                          "--model.init_args.overrides={num_layers: 1, hidden_size: 32, num_heads: 2, num_kv_heads: 1, intermediate_size: 64}"],
                    run=False)
    module, dm = cli.model, cli.datamodule
    dm.setup("test")
    module.attach(dm.data.catalog, train_counts=dm.data.train_item_counts())
    module.eval()
    module.decode_compile = True
    first, second = lm_decode.take_users(iter(dm.test_dataloader()), 8)
    cpu = torch.device("cpu")
    try:
        lm_decode.decode_all(module, [first], cpu, 12, "fp32")  # the warm-up: compiles the halves
        outside, inside, steps = lm_decode.host_ops_per_step(module, first, cpu, 12, "fp32")
        assert outside > 0 and inside > 0 and steps > 0
        module.decode_counts = {}
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            lm_decode.decode_all(module, [second], cpu, 12, "fp32")
        regions = sum(e.count for e in prof.key_averages() if e.key.startswith("Torch-Compiled Region"))
        # every step runs both halves of the one layer, the prefill once more; the head's normaliser too
        assert regions >= 2 * (module.decode_counts["steps"] + 1), regions
    finally:
        torch._dynamo.reset()


def test_lm_decode_timeline_counts_each_batchs_own_graph_captures():
    """decode_all's per-batch timeline: the graphs captured during each batch and their seconds
    (the engine's totals differenced), all of a new engine's when the decoder rebuilt it."""
    from types import SimpleNamespace

    from bench import lm_decode
    from genrec.data.datamodule import SeqBatch

    captured = iter([(2, 0.5), (0, 0.0), (3, 0.25)])  # new graphs and seconds per batch; an engine rebuilt before batch 3

    class Module:
        decode_counts: dict = {}
        _graph_decoder = None

        def recommend(self, batch, beam_width, reference):
            graphs, seconds = next(captured)
            engine = self._graph_decoder
            if engine is None or len(self.decode_counts) == 2:  # batch 1, and batch 3: a new engine
                engine = self._graph_decoder = SimpleNamespace(graph_cache={}, capture_seconds=0.0, prompt_width=64)
            for _ in range(graphs):
                engine.graph_cache[len(engine.graph_cache)] = None
            engine.capture_seconds += seconds
            self.decode_counts = {**self.decode_counts, len(self.decode_counts): 1, "steps": self.decode_counts.get("steps", 0) + 4}
            return SimpleNamespace(items=torch.zeros(len(batch), 2, dtype=torch.long), scores=torch.zeros(len(batch), 2))

    module = Module()
    module.decode_counts = {}
    batch = SeqBatch(torch.tensor([0, 1]), torch.tensor([[1], [2]]), torch.tensor([1, 1]), torch.tensor([3, 4]))
    timeline: list = []
    lm_decode.decode_all(module, [batch] * 3, torch.device("cpu"), 2, "fp32", timeline=timeline)
    cells = [engine.split(", ")[2] for *_, engine in timeline]
    assert cells == ["2 captures 0.50 s", "0 captures 0.00 s", "3 captures 0.25 s"]
    assert [steps for _, steps, *_ in timeline] == [4, 4, 4]


def test_lm_step_times_eager_and_compiled_training_steps_on_the_same_batches(tmp_path, monkeypatch):
    """bench.lm_step: each variant trains the same steps from the same seed through
    ``trainer.fit``, so the last losses agree; the compiled variants record one graph and no
    break (``layers``: one compilation for both decoder layers), the eager one none; a warm-up
    longer than the epoch stops with one line."""
    import functools
    import sys

    import yaml

    from bench import lm_step
    from bench.record import record
    from tests.test_configs import ROOT, TINY_DATA

    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump(TINY_DATA))
    bench_file = tmp_path / "benchmarks.md"
    monkeypatch.setattr(lm_step, "record", functools.partial(record, path=bench_file))
    argv = ["lm_step", "--data", str(data), "--model", str(ROOT / "configs/lm/tiny-scratch.yaml"), "--warmup", "1", "--steps", "2",
            "--backend", "eager", "--variant", "eager", "--variant", "layers", "--variant", "whole", "--set", "trainer.accelerator=cpu",
            "--set", "data.init_args.batch_size=8",
            "--set", "model.init_args.overrides={num_layers: 2, hidden_size: 32, num_heads: 2, num_kv_heads: 1, intermediate_size: 64}"]
    monkeypatch.setattr(sys, "argv", argv)
    lm_step.main()
    lines = [line.split(" | ") for line in bench_file.read_text().strip().splitlines() if line.startswith("| ")]
    header, rows = lines[0], [dict(zip(lines[0], row, strict=True)) for row in lines[1:] if row[0] == "| tiny"]
    assert "first step s (compile included)" in header
    assert [row["variant"] for row in rows] == ["eager", "layers (eager)", "whole (eager)"]
    assert [row["graphs / breaks"] for row in rows] == ["0 / 0", "1 / 0", "1 / 0"]
    assert all(row["timed steps"] == "2" and float(row["samples/s"]) > 0 and int(row["real tokens/s"].replace(",", "")) > 0 for row in rows)
    assert len({row["last loss"] for row in rows}) == 1  # the same batches, weights and arithmetic
    monkeypatch.setattr(sys, "argv", [*argv[:5], "--warmup", "50", "--steps", "1", "--set", "trainer.accelerator=cpu", "--set", "trainer.max_epochs=1",
                                      "--set", "data.init_args.batch_size=64", *argv[-2:]])
    with pytest.raises(SystemExit, match="training ended before step 50"):
        lm_step.main()
    monkeypatch.setattr(sys, "argv", [*argv, "--backend", "inductr"])
    with pytest.raises(SystemExit, match="--backend 'inductr' is not a torch.compile backend here"):
        lm_step.main()
