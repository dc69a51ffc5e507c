"""The paper's claims decided from a study's runs (genrec.claims): each status from its rule, only
once every run it reads has finished, a bad claims block refused in one line, and the report's table."""

from __future__ import annotations

import pytest

from genrec.claims import check_claims, compare, decide_claims, welch
from genrec.errors import ConfigError
from tests.test_scaling import fake_training  # noqa: F401, F811 - the fixture

LADDER = {"tiger": ["336k", "6.7m", "13m", "43m", "88m"]}


def decide(claims, values, cold=None, labels=None, seeds=3):
    rows = decide_claims(claims, values, cold or {}, labels or LADDER, seeds, "recall@10")
    return {row["key"]: (row["status"], row["evidence"]) for row in rows}


def test_welch_and_compare_need_two_seeds_a_side_and_a_real_difference():
    assert welch([0.06, 0.061], [0.05]) is None
    assert welch([0.06, 0.06], [0.06, 0.06]) == 1.0 and welch([0.06, 0.06], [0.05, 0.05]) == 0.0
    assert welch([0.070, 0.071, 0.072], [0.060, 0.061, 0.062]) < 0.01
    assert welch([0.070, 0.060, 0.065], [0.066, 0.064, 0.062]) > 0.5
    from genrec.claims import Group

    high, low = Group("a", "x", (0.070, 0.071, 0.072), 3), Group("b", "x", (0.060, 0.061, 0.062), 3)
    assert compare(high, low)[0] == "higher" and compare(low, high)[0] == "lower" and compare(high, high)[0] == "same"


def test_sid_saturation_is_supported_without_a_significant_gain_past_13m_and_contradicted_with_one():
    flat = {"tiger": {"336k": [0.060, 0.061, 0.062], "6.7m": [0.068, 0.069, 0.070], "13m": [0.071, 0.072, 0.073],
                      "43m": [0.072, 0.071, 0.073], "88m": [0.070, 0.073, 0.071]}}
    status, evidence = decide({"sid_saturation": {"ladder": "tiger", "at": "13m"}}, flat)["sid_saturation"]
    assert status == "supported" and "no larger size significantly above tiger 13m (Welch, tiger 43m p " in evidence
    assert "tiger 13m 0.0720 ± 0.0010 (3/3)" in evidence and "below it: tiger 336k 0.0610" in evidence
    rising = {"tiger": {**flat["tiger"], "88m": [0.080, 0.081, 0.082]}}
    status, evidence = decide({"sid_saturation": {"ladder": "tiger", "at": "13m"}}, rising)["sid_saturation"]
    assert status == "contradicted" and "a larger size significantly above tiger 13m: tiger 88m (p " in evidence
    partial = {"tiger": {**rising["tiger"], "88m": [0.080]}}  # 88m has one of its 3 seeds: nothing is decided yet
    status, evidence = decide({"sid_saturation": {"ladder": "tiger", "at": "13m"}}, partial)["sid_saturation"]
    assert status == "not decided" and evidence.startswith("7 of 9 runs finished")
    one_seed = {"tiger": {size: values[:1] for size, values in rising["tiger"].items()}}  # a study of one seed decides nothing
    status, evidence = decide({"sid_saturation": {"ladder": "tiger", "at": "13m"}}, one_seed, seeds=1)["sid_saturation"]
    assert status == "not decided" and evidence.startswith("fewer than 2 seeds a side (no test)")


def test_encoder_and_codebook_sizes_hardly_matter_unless_the_larger_is_significantly_better():
    labels = {"enc-small": ["13m"], "enc-large": ["13m"], "tiger": ["13m"], "cb-512": ["13m"], "cb-1024": ["13m"]}
    values = {"enc-small": {"13m": [0.070, 0.071, 0.072]}, "enc-large": {"13m": [0.071, 0.070, 0.073]},
              "tiger": {"13m": [0.071, 0.072, 0.073]}, "cb-512": {"13m": [0.072, 0.071, 0.070]}, "cb-1024": {"13m": [0.080, 0.081, 0.082]}}
    claims = {"encoder_size": {"smaller": "enc-small", "larger": "enc-large"},
              "codebook_size": {"baseline": "tiger", "at": "13m", "larger": ["cb-512", "cb-1024"]}}
    got = decide(claims, values, labels=labels)
    assert got["encoder_size"][0] == "supported"
    assert got["codebook_size"][0] == "contradicted" and "cb-1024 13m (p" in got["codebook_size"][1] and "cb-512 13m (p" not in got["codebook_size"][1]


def test_llm_scaling_needs_three_sizes_and_cold_start_compares_the_cold_slice():
    one = decide({"llm_scaling": {"ladder": "lm"}}, {"lm": {"135m": [0.05, 0.051, 0.052]}}, labels={"lm": ["135m"]})
    assert one["llm_scaling"][0] == "not testable here" and "1 LLM size(s) in lm" in one["llm_scaling"][1]
    labels = {"lm": ["135m", "360m", "1.7b"]}
    rising = {"lm": {"135m": [0.050, 0.051, 0.052], "360m": [0.055, 0.056, 0.057], "1.7b": [0.060, 0.061, 0.062]}}
    assert decide({"llm_scaling": {"ladder": "lm"}}, rising, labels=labels)["llm_scaling"][0] == "supported"
    flat = {"lm": {"135m": [0.050, 0.051, 0.052], "360m": [0.049, 0.052, 0.050], "1.7b": [0.051, 0.050, 0.052]}}
    assert decide({"llm_scaling": {"ladder": "lm"}}, flat, labels=labels)["llm_scaling"][0] == "contradicted"
    labels = {"tiger": ["13m"], "lm": ["135m"]}
    overall = {"tiger": {"13m": [0.07] * 3}, "lm": {"135m": [0.05] * 3}}  # overall numbers do not decide it
    claim = {"cold_start": {"sid": "tiger", "sid_at": "13m", "llm": "lm", "llm_at": "135m"}}
    cold = {"tiger": {"13m": [0.014, 0.013, 0.015]}, "lm": {"135m": [0.030, 0.031, 0.029]}}
    assert decide(claim, overall, cold, labels)["cold_start"][0] == "supported"
    cold["lm"]["135m"] = [0.002, 0.001, 0.003]
    status, evidence = decide(claim, overall, cold, labels)["cold_start"]
    assert status == "contradicted" and "cold recall@10: lm 135m 0.0020" in evidence
    cold["lm"]["135m"] = [0.002]
    assert decide(claim, overall, cold, labels)["cold_start"][0] == "not decided"


def test_cf_injection_needs_two_llm_sizes():
    labels = {"lm": ["135m"], "lm-cf": ["135m"]}
    values = {"lm": {"135m": [0.050, 0.051, 0.052]}, "lm-cf": {"135m": [0.053, 0.054, 0.055]}}
    status, evidence = decide({"cf_injection": {"plain": "lm", "cf": "lm-cf"}}, values, labels=labels)["cf_injection"]
    assert status == "not testable here" and "135m: CF +0.0030 (higher, p" in evidence


def test_a_bad_claims_block_is_refused_in_one_line_naming_the_key():
    sweeps = {"tiger": ["336k", "13m"], "lm": ["135m"]}
    check_claims({"sid_saturation": {"ladder": "tiger", "at": "13m"}}, sweeps)
    with pytest.raises(ConfigError, match=r"claims.saturation: not a claim this report decides"):
        check_claims({"saturation": {}}, sweeps)
    with pytest.raises(ConfigError, match=r"claims.sid_saturation: roles \['at', 'ladder'\] \(unknown: \[\], missing: \['at'\]\)"):
        check_claims({"sid_saturation": {"ladder": "tiger"}}, sweeps)
    with pytest.raises(ConfigError, match=r"claims.sid_saturation.ladder: no sweep 'tigre' in this study"):
        check_claims({"sid_saturation": {"ladder": "tigre", "at": "13m"}}, sweeps)
    with pytest.raises(ConfigError, match=r"claims.sid_saturation.at: sweep 'tiger' has no size '88m'"):
        check_claims({"sid_saturation": {"ladder": "tiger", "at": "88m"}}, sweeps)
    with pytest.raises(ConfigError, match=r"claims.codebook_size.larger: a list of sweeps"):
        check_claims({"codebook_size": {"baseline": "tiger", "at": "13m", "larger": "lm"}}, sweeps)


def test_the_report_decides_its_claims_from_the_runs(tmp_path, fake_training):  # noqa: F811 - the imported fixture
    """Through the scaling command: the fake ladder rises with size (TRUTH), so saturation past
    13m is contradicted once every seed has run, and not decided before."""
    from genrec.artifacts import read_json
    from genrec.scaling import ScalingConfig, run_scaling
    from tests.test_scaling import _config

    base = _config(tmp_path)
    config = ScalingConfig(**{**base.__dict__, "claims": {"sid_saturation": {"ladder": "tiger", "at": "13m"},
                                                           "llm_scaling": {"ladder": "lm"}}})
    report = run_scaling(config, shard=(0, 2)).read_text()
    assert "| SID-based GR saturates with the recommender's size (no gain past ~13M) | **not decided** |" in report
    report = run_scaling(config, shard=(1, 2)).read_text()
    assert "| SID-based GR saturates with the recommender's size (no gain past ~13M) | **contradicted** |" in report
    assert "| LLM-as-RS keeps improving with the LLM's size | **not testable here** | 2 LLM size(s) in lm" in report
    rows = read_json(tmp_path / "runs" / "study" / "scaling.json")["claims"]
    assert [r["key"] for r in rows] == ["sid_saturation", "llm_scaling"] and rows[0]["status"] == "contradicted"
