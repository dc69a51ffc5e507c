"""The paper's claims decided from a scaling study's own results (issue 21).

Liu et al. 2025 make six claims a study can test (``../shared/PAPER.md``): SID-based GR saturates
with the recommender's size; the modality encoder's size and the codebook's size hardly matter;
LLM-as-RS keeps improving with size; LLM-as-RS is better on cold-start items; CF embeddings help
the LLM less as it grows. A study's ``claims`` block names the sweeps (and sizes) that bear on each
(:data:`CLAIMS` lists the roles), and :func:`decide_claims` turns the runs' ``result.json``
numbers into one row each: **supported**, **contradicted**, **not decided** (runs missing, or no
significant difference where one is needed), or **not testable here** (e.g. one pretrained LLM
size), with the numbers that decide it.

Two groups of runs (the seeds of a sweep at one size) differ when Welch's t-test gives
``p < ALPHA`` (0.05); with 3 seeds a side that needs a difference of several seed standard
deviations. A claim is decided only once every run it reads has finished (all seeds of every size
it compares); before that its row says how many have.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from genrec.errors import ConfigError

ALPHA = 0.05
"""Significance level of the two-sided Welch t-test between two groups of seeds."""

CLAIMS: dict[str, tuple[str, dict[str, str]]] = {
    "sid_saturation": ("SID-based GR saturates with the recommender's size (no gain past ~13M)",
                       {"ladder": "the TIGER size ladder sweep", "at": "the size past which no gain is claimed (13m)"}),
    "encoder_size": ("The modality encoder's size hardly matters (gamma1 ~ 0)",
                     {"smaller": "sweep with the smaller encoder's SIDs", "larger": "sweep with the larger encoder's SIDs"}),
    "codebook_size": ("The codebook's size hardly matters (gamma2 ~ 0)",
                      {"baseline": "sweep of the default codebook", "at": "its size compared", "larger": "sweeps of larger codebooks"}),
    "llm_scaling": ("LLM-as-RS keeps improving with the LLM's size", {"ladder": "the pretrained LLM ladder sweep"}),
    "cold_start": ("LLM-as-RS is better on cold-start items",
                   {"sid": "the TIGER sweep", "sid_at": "its size", "llm": "the LLM sweep", "llm_at": "its size"}),
    "cf_injection": ("CF embeddings help LLM-as-RS less as the LLM grows", {"plain": "the LLM sweep", "cf": "the same with CF embeddings"}),
}
"""Claim key -> (the claim, its roles: key -> what the study names there)."""

LISTS = {("codebook_size", "larger")}
"""Roles that take a list of sweeps."""


@dataclass(frozen=True)
class Group:
    """One sweep at one size: its finished seeds' values of a metric, and how many seeds it has."""

    sweep: str
    label: str
    values: tuple[float, ...]
    expected: int

    @property
    def complete(self) -> bool:
        return len(self.values) >= self.expected

    def text(self) -> str:
        """``name label 0.0718 ± 0.0008 (3/3)`` (no spread with one seed)."""
        if not self.values:
            return f"{self.sweep} {self.label}: no run yet (0/{self.expected})"
        spread = f" ± {np.std(self.values, ddof=1):.4f}" if len(self.values) > 1 else ""
        return f"{self.sweep} {self.label} {np.mean(self.values):.4f}{spread} ({len(self.values)}/{self.expected})"


def welch(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided Welch t-test p-value of ``mean(a) != mean(b)``; ``None`` with fewer than 2 values
    a side; 1 or 0 when both sides have no spread (equal or different means)."""
    if len(a) < 2 or len(b) < 2:
        return None
    if np.var(a, ddof=1) == 0 and np.var(b, ddof=1) == 0:
        return 1.0 if np.mean(a) == np.mean(b) else 0.0
    from scipy.stats import ttest_ind

    return float(ttest_ind(a, b, equal_var=False).pvalue)


def compare(better: Group, than: Group) -> tuple[str, float | None]:
    """Whether ``better`` is significantly higher than ``than`` (``"higher"``), significantly lower
    (``"lower"``), neither (``"same"``), or cannot be tested (``"untested"``: fewer than 2 seeds a
    side), and the p-value (``None`` when untested)."""
    p = welch(better.values, than.values)
    if p is None:
        return "untested", None
    if p >= ALPHA:
        return "same", p
    return ("higher" if np.mean(better.values) > np.mean(than.values) else "lower"), p


def _p(p: float | None) -> str:
    return "p n/a" if p is None else f"p {p:.2g}"


def check_claims(claims: Mapping[str, Mapping[str, Any]], sweeps: Mapping[str, Sequence[str]]) -> None:
    """Refuse a ``claims`` block that names an unknown claim or role, misses a role, or names a
    sweep or size the study does not have, with one line naming the key.

    Args:
        sweeps: sweep name -> its size labels.
    """
    for key, roles in claims.items():
        if key not in CLAIMS:
            raise ConfigError(f"claims.{key}: not a claim this report decides (claims: {', '.join(CLAIMS)})")
        wanted = CLAIMS[key][1]
        unknown, missing = sorted(set(roles) - set(wanted)), sorted(set(wanted) - set(roles))
        if unknown or missing:
            raise ConfigError(f"claims.{key}: roles {sorted(wanted)} (unknown: {unknown}, missing: {missing})")
        for role, value in roles.items():
            if role.endswith("at"):
                continue
            names = value if (key, role) in LISTS else [value]
            if (key, role) in LISTS and not isinstance(value, list):
                raise ConfigError(f"claims.{key}.{role}: a list of sweeps, got {value!r}")
            bad = [n for n in names if n not in sweeps]
            if bad:
                raise ConfigError(f"claims.{key}.{role}: no sweep {bad[0]!r} in this study (sweeps: {', '.join(sweeps)})")
        for role, sweep_role in (("at", "ladder"), ("at", "baseline"), ("sid_at", "sid"), ("llm_at", "llm")):
            if role in roles and sweep_role in roles and roles[role] not in sweeps[roles[sweep_role]]:
                raise ConfigError(f"claims.{key}.{role}: sweep {roles[sweep_role]!r} has no size {roles[role]!r} "
                                  f"(sizes: {', '.join(sweeps[roles[sweep_role]])})")


def decide_claims(claims: Mapping[str, Mapping[str, Any]], values: Mapping[str, Mapping[str, list[float]]],
                  cold: Mapping[str, Mapping[str, list[float]]], labels: Mapping[str, Sequence[str]], seeds: int,
                  metric: str) -> list[dict[str, Any]]:
    """One row per claim of ``claims``, in :data:`CLAIMS` order.

    Args:
        values: sweep -> size label -> the finished seeds' test ``metric`` (the chosen lr's runs).
        cold: the same for the cold-start slice (``test/cold/<metric>``).
        labels: sweep -> its size labels, smallest first.
        seeds: the seeds each size runs.

    Returns:
        ``{"claim", "key", "status", "evidence"}`` dicts (``status``: supported, contradicted,
        not decided, not testable here).
    """

    def group(sweep: str, label: str, table: Mapping[str, Mapping[str, list[float]]] = values) -> Group:
        return Group(sweep, label, tuple(table.get(sweep, {}).get(label, [])), seeds)

    rows = []
    for key, (claim, _) in CLAIMS.items():
        if key not in claims:
            continue
        roles = claims[key]
        status, evidence = {"sid_saturation": _saturation, "encoder_size": _pair_no_gain, "codebook_size": _codebook,
                            "llm_scaling": _llm_scaling, "cold_start": _cold_start, "cf_injection": _cf_injection}[key](
            roles, group, labels, cold, metric)
        rows.append({"claim": claim, "key": key, "status": status, "evidence": evidence})
    return rows


def _runs_left(groups: Sequence[Group]) -> str:
    done, total = sum(len(g.values) for g in groups), sum(g.expected for g in groups)
    return f"{done} of {total} runs finished"


def _no_gain(base: Group, others: Sequence[Group], what: str) -> tuple[str, str]:
    """Supported unless one of ``others`` is significantly above ``base`` (then contradicted)."""
    parts = [base.text()] + [g.text() for g in others]
    if not all(g.complete for g in (base, *others)):
        return "not decided", f"{_runs_left((base, *others))}: " + "; ".join(parts)
    tests = [(g, *compare(g, base)) for g in others]
    if any(side == "untested" for _, side, _ in tests):
        return "not decided", "fewer than 2 seeds a side (no test): " + "; ".join(parts)
    above = [f"{g.sweep} {g.label} ({_p(p)})" for g, side, p in tests if side == "higher"]
    versus = ", ".join(f"{g.sweep} {g.label} {_p(p)}" for g, _, p in tests)
    if above:
        return "contradicted", f"a {what} significantly above {base.sweep} {base.label}: {', '.join(above)}. " + "; ".join(parts)
    return "supported", f"no {what} significantly above {base.sweep} {base.label} (Welch, {versus}). " + "; ".join(parts)


def _saturation(roles, group, labels, cold, metric) -> tuple[str, str]:
    ladder, at = roles["ladder"], roles["at"]
    sizes = list(labels[ladder])
    larger = [group(ladder, s) for s in sizes[sizes.index(at) + 1:]]
    if not larger:
        return "not decided", f"the ladder {ladder} has no size above {at}"
    smaller = "; ".join(group(ladder, s).text() for s in sizes[:sizes.index(at)])
    status, evidence = _no_gain(group(ladder, at), larger, "larger size")
    return status, evidence + (f"; below it: {smaller}" if smaller else "")


def _pair_no_gain(roles, group, labels, cold, metric) -> tuple[str, str]:
    smaller, larger = roles["smaller"], roles["larger"]
    common = [s for s in labels[smaller] if s in labels[larger]]
    if not common:
        return "not decided", f"{smaller} and {larger} share no size"
    return _no_gain(group(smaller, common[0]), [group(larger, common[0])], "larger encoder")


def _codebook(roles, group, labels, cold, metric) -> tuple[str, str]:
    at = roles["at"]
    others = [group(s, at) for s in roles["larger"] if at in labels[s]]
    return _no_gain(group(roles["baseline"], at), others, "larger codebook")


def _llm_scaling(roles, group, labels, cold, metric) -> tuple[str, str]:
    ladder = roles["ladder"]
    groups = [group(ladder, s) for s in labels[ladder]]
    parts = "; ".join(g.text() for g in groups)
    if len(groups) < 3:
        return "not testable here", f"{len(groups)} LLM size(s) in {ladder} (a trend needs 3 or more: the `models:` of the sweep take " \
                                    f"local folders or hub names of more pretrained sizes): {parts}"
    if not all(g.complete for g in groups):
        return "not decided", f"{_runs_left(groups)}: {parts}"
    side, p = compare(groups[-1], groups[0])
    if side == "untested":
        return "not decided", f"fewer than 2 seeds a side (no test): {parts}"
    means = [float(np.mean(g.values)) for g in groups]
    rising = all(b >= a for a, b in zip(means, means[1:], strict=False))
    if side == "higher" and rising:
        return "supported", f"every size at least the one below, the largest significantly above the smallest ({_p(p)}): {parts}"
    return "contradicted", (f"the largest {'significantly above' if side == 'higher' else 'not significantly above'} the smallest "
                            f"({_p(p)}), {'rising' if rising else 'not rising'} at every step: {parts}")


def _cold_start(roles, group, labels, cold, metric) -> tuple[str, str]:
    sid, llm = group(roles["sid"], roles["sid_at"], cold), group(roles["llm"], roles["llm_at"], cold)
    parts = f"cold {metric}: {llm.text()}; {sid.text()}"
    if not (sid.complete and llm.complete):
        return "not decided", f"{_runs_left((sid, llm))}: {parts}"
    side, p = compare(llm, sid)
    if side == "untested":
        return "not decided", f"fewer than 2 seeds a side (no test): {parts}"
    status = {"higher": "supported", "lower": "contradicted", "same": "not decided"}[side]
    return status, f"LLM {'significantly above' if side == 'higher' else 'significantly below' if side == 'lower' else 'not significantly different from'} " \
                   f"TIGER on cold items ({_p(p)}): {parts}"


def _cf_injection(roles, group, labels, cold, metric) -> tuple[str, str]:
    plain, cf = roles["plain"], roles["cf"]
    common = [s for s in labels[plain] if s in labels[cf]]
    pairs = [(group(cf, s), group(plain, s)) for s in common]
    gains = []
    for with_cf, without in pairs:
        if with_cf.values and without.values:
            side, p = compare(with_cf, without)
            gains.append(f"{with_cf.label}: CF {np.mean(with_cf.values) - np.mean(without.values):+.4f} ({side}, {_p(p)})")
    parts = "; ".join([*(g.text() for pair in pairs for g in pair), *gains])
    if len(common) < 2:
        return "not testable here", f"{len(common)} LLM size(s) with and without CF (the trend needs 2 or more): {parts or 'no run yet'}"
    if not all(g.complete for pair in pairs for g in pair):
        return "not decided", f"{_runs_left([g for pair in pairs for g in pair])}: {parts}"
    first = [a - b for a, b in zip(pairs[0][0].values, pairs[0][1].values, strict=False)]
    last = [a - b for a, b in zip(pairs[-1][0].values, pairs[-1][1].values, strict=False)]
    p = welch(first, last)
    if p is not None and p < ALPHA and np.mean(first) > np.mean(last):
        return "supported", f"the CF gain at the smallest size significantly above the largest's ({_p(p)}): {parts}"
    return "contradicted" if p is not None and p < ALPHA else "not decided", \
        f"the CF gain at the smallest size {'below' if p is not None and p < ALPHA else 'not significantly above'} the largest's ({_p(p)}): {parts}"


def claims_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The report's claims table (markdown lines)."""
    if not rows:
        return []
    lines = ["", f"## The paper's claims (decided from this study's runs; Welch's t-test between seeds, p < {ALPHA:g})", "",
             "| the paper's claim | status here | what decides it |", "|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['claim']} | **{row['status']}** | {row['evidence']} |")
    return lines


__all__ = ["ALPHA", "CLAIMS", "Group", "check_claims", "claims_table", "compare", "decide_claims", "welch"]
