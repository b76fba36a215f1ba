"""Zero-shot recall probes: the generators' bytes parse back to what they claim, and the scorer gives an
induction oracle near-perfect marks, random logits chance, and a constant guess exactly its share."""

from __future__ import annotations

import keyword
import re

import pytest
import torch

from archbench.recipes.probes import (
    CHANCE_DIGIT,
    CHANCE_LETTER,
    assignment_recall,
    copy,
    passkey,
    recall_probes,
    score,
    span_hits,
)

GENERATORS = [assignment_recall, passkey, copy]
LENGTHS = [44, 64, 128, 257]


# ---- reference logits functions ----------------------------------------------------------------------------------


def _induction_next(seq: list[int]) -> list[int]:
    """For every position t, the byte that followed the latest earlier occurrence of the longest suffix of
    seq[: t + 1] (0 where no byte repeats)."""
    x = torch.tensor(seq)
    T = len(seq)
    eq = x[:, None] == x[None, :]
    match = torch.zeros(T, T, dtype=torch.long)  # match[t, s]: common suffix length of seq[: t + 1] and seq[: s + 1]
    match[0] = eq[0].long()
    for t in range(1, T):
        prev = torch.cat([torch.zeros(1, dtype=torch.long), match[t - 1, :-1]])
        match[t] = torch.where(eq[t], prev + 1, torch.zeros_like(prev))
    out = []
    for t in range(T):
        m = match[t, :t]  # earlier positions s < t, so seq[s + 1] exists
        if t == 0 or int(m.max()) == 0:
            out.append(0)
            continue
        s = int(torch.nonzero(m == m.max()).max())  # latest of the longest
        out.append(seq[s + 1])
    return out


def induction_oracle(normalise: bool):
    """An ideal induction head: logits peak on the byte that followed the longest earlier match of the context.
    With ``normalise`` it reads ``' == '`` as ``' = '`` (the comparison as the binding it checks), which turns
    assert lines into verbatim repeats of the definitions: an ideal key-value lookup."""

    def fn(ids: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*ids.shape, 256)
        for b, row in enumerate(ids.tolist()):
            keep = list(range(len(row)))
            if normalise:
                keep = [j for j in keep if not (0 < j < len(row) - 1 and row[j - 1 : j + 2] == list(b"==") + [32])]
            nxt = _induction_next([row[j] for j in keep])
            k = 0
            for t in range(len(row)):
                while k + 1 < len(keep) and keep[k + 1] <= t:
                    k += 1
                logits[b, t, nxt[k]] = 1.0
        return logits

    return fn


def random_logits(seed: int, digits_only: bool = False):
    g = torch.Generator().manual_seed(seed)

    def fn(ids: torch.Tensor) -> torch.Tensor:
        logits = torch.randn(*ids.shape, 256, generator=g)
        if digits_only:
            mask = torch.full((256,), -1e9)
            mask[ord("0") : ord("9") + 1] = 0.0
            logits = logits + mask
        return logits

    return fn


def constant(byte: int):
    def fn(ids: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*ids.shape, 256)
        logits[..., byte] = 1.0
        return logits

    return fn


# ---- generators --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gen", GENERATORS)
def test_deterministic_per_seed_and_different_across_seeds(gen):
    a, b, c = gen(8, 128, 3), gen(8, 128, 3), gen(8, 128, 4)
    assert a == b
    assert [e.text for e in a] != [e.text for e in c]


@pytest.mark.parametrize("gen", GENERATORS)
@pytest.mark.parametrize("seq_len", LENGTHS)
def test_texts_fill_seq_len_exactly(gen, seq_len):
    examples = gen(6, seq_len, 0)
    assert len(examples) == 6
    assert {len(e.text) for e in examples} == {seq_len}


def _line_of(text: bytes, a: int) -> tuple[int, bytes]:
    start = text.rfind(b"\n", 0, a) + 1
    return start, text[start : text.index(b"\n", a)]


@pytest.mark.parametrize("seq_len", LENGTHS)
def test_assignment_spans_hold_the_defined_values(seq_len):
    examples = assignment_recall(16, seq_len, 1)
    orders = set()
    for ex in examples:
        text = ex.text.lstrip(b"\n")
        pad = len(ex.text) - len(text)
        lines = text.decode().splitlines()
        pairs = len(lines) // 2
        assert pairs * 30 + pad == seq_len and pad < 30  # the largest count of 30-byte pairs that fits
        defs = [re.fullmatch(r"([a-z]{3}) = ([1-9]\d{3})", line).groups() for line in lines[:pairs]]
        keys = [k for k, _ in defs]
        assert len(set(keys)) == pairs and not any(keyword.iskeyword(k) for k in keys)
        assert len({v for _, v in defs}) == pairs
        value = dict(defs)
        asked = []
        assert len(ex.spans) == pairs
        for a, b in ex.spans:
            start, line = _line_of(ex.text, a)
            key, val = re.fullmatch(rb"assert ([a-z]{3}) == (\d{4})", line).groups()
            assert (a, b) == (start + len(b"assert abc == "), start + len(b"assert abc == ") + 4)
            assert ex.text[a:b] == val == value[key.decode()].encode()
            asked.append(key.decode())
        assert sorted(asked) == sorted(keys)
        orders.add(tuple(keys.index(k) for k in asked))
    if seq_len >= 90:  # three or more pairs: the query order is shuffled, not always the definition order
        assert len(orders) > 1


@pytest.mark.parametrize("seq_len", LENGTHS)
def test_passkey_spans_hold_the_key_at_the_recorded_depth(seq_len):
    examples = passkey(9, seq_len, 2, depths=(0.0, 0.5, 1.0))
    assert [e.depth for e in examples] == [0.0, 0.5, 1.0] * 3
    for ex in examples:
        lines = ex.text.decode().splitlines()
        assert re.fullmatch(r"assert pass_key == \d{5}", lines[-1])
        at = [i for i, line in enumerate(lines) if line.startswith("pass_key = ")]
        assert len(at) == 1
        key = re.fullmatch(r"pass_key = ([1-9]\d{4})", lines[at[0]]).group(1)
        assert all(line.startswith("#") or line == "" for i, line in enumerate(lines[:-1]) if i != at[0])
        ((a, b),) = ex.spans
        assert ex.text[a:b] == key.encode() and b == len(ex.text) - 1
        filler_lines = len(lines) - 2
        assert abs(at[0] - ex.depth * filler_lines) <= 0.5  # nearest line boundary
    for d in range(3):  # the filler is fixed: examples of one depth differ only in their digits
        assert len({re.sub(rb"\d", b"#", ex.text) for ex in examples[d::3]}) == 1
    if seq_len >= 128:
        assert examples[0].text.startswith(b"pass_key = ")
        assert examples[2].text.splitlines()[-2].startswith(b"pass_key = ")
        assert not examples[1].text.startswith(b"pass_key") and not examples[1].text.splitlines()[-2].startswith(
            b"pass_key"
        )


@pytest.mark.parametrize("seq_len", LENGTHS)
def test_copy_spans_hold_the_second_copy(seq_len):
    for ex in copy(8, seq_len, 5):
        s1, s2 = re.fullmatch(rb"\n*s = '([a-z]+)'\nassert s == '([a-z]+)'\n", ex.text).groups()
        assert s1 == s2
        assert 2 * len(s1) + 22 <= seq_len < 2 * len(s1) + 24  # as long as fits
        ((a, b),) = ex.spans
        assert ex.text[a:b] == s2 and ex.text[a - 1 : a] == b"'" and ex.text[b : b + 1] == b"'"


@pytest.mark.parametrize(
    "gen, minimum",
    [(assignment_recall, 30), (passkey, 42), (copy, 24)],
)
def test_too_small_seq_len_says_the_minimum(gen, minimum):
    assert len(gen(1, minimum, 0)[0].text) == minimum
    with pytest.raises(ValueError, match=rf"seq_len >= {minimum}\b"):
        gen(1, minimum - 1, 0)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="n must be"):
        copy(0, 64, 0)
    with pytest.raises(ValueError, match="depths"):
        passkey(3, 64, 0, depths=(0.0, 1.5))
    with pytest.raises(ValueError, match="span"):
        score(constant(48), [(b"abc", [(0, 2)])])
    with pytest.raises(ValueError, match=r"\[B, T, vocab\]"):
        score(lambda ids: torch.zeros(ids.shape[0], 256), copy(2, 64, 0))


# ---- scoring -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gen", GENERATORS)
def test_induction_oracle_recalls_everything(gen):
    r = score(induction_oracle(normalise=True), gen(24, 128, 0), batch_size=8)
    assert r["acc"] >= 0.95 and r["first_acc"] >= 0.95 and r["exact"] >= 0.9


def test_verbatim_induction_solves_copy_and_passkey_but_not_the_key_lookup():
    """Without reading '==' as '=', the latest earlier '= ' is some other key's: assignment recall's first digit
    needs the key, as the module docstring says."""
    oracle = induction_oracle(normalise=False)
    assert score(oracle, copy(16, 128, 0))["acc"] >= 0.95
    assert score(oracle, passkey(16, 128, 0))["acc"] >= 0.95
    assert score(oracle, assignment_recall(32, 128, 0))["first_acc"] < 0.5


@pytest.mark.parametrize("gen", GENERATORS)
def test_random_logits_score_near_chance(gen):
    r = score(random_logits(0), gen(32, 128, 0))
    assert r["acc"] < 0.05 and r["exact"] == 0.0


def test_random_digit_guess_scores_a_tenth():
    r = score(random_logits(1, digits_only=True), assignment_recall(64, 128, 0))
    assert abs(r["acc"] - CHANCE_DIGIT) < 0.04


def test_always_zero_scores_exactly_the_share_of_zero_digits():
    examples = assignment_recall(40, 160, 7) + passkey(30, 100, 7)
    answers = [ex.text[a:b] for ex in examples for a, b in ex.spans]
    zeros = sum(s.count(b"0") for s in answers) / sum(len(s) for s in answers)
    assert 0 < zeros < 1
    r = score(constant(ord("0")), examples, batch_size=7)  # two lengths, ragged batches
    assert r["acc"] == pytest.approx(zeros, abs=1e-12)
    assert r["first_acc"] == 0.0 and r["exact"] == 0.0  # values never start with 0
    assert r["n"] == len(answers)


def test_batching_does_not_change_the_result():
    examples = copy(10, 64, 0) + assignment_recall(10, 90, 0)
    fn = induction_oracle(normalise=False)
    one, many = span_hits(fn, examples, batch_size=1), span_hits(fn, examples, batch_size=16)
    assert all(torch.equal(x, y) for a, b in zip(one, many) for x, y in zip(a, b))
    assert score(fn, examples, batch_size=3) == score(fn, examples, batch_size=64)


def test_off_by_one_is_caught():
    """A model that puts its peak on the byte at the same position (not the next one) must not score well."""

    def echo(ids: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(ids, 256).float()

    assert score(echo, copy(16, 128, 0))["acc"] < 0.2


# ---- all probes --------------------------------------------------------------------------------------------------


def test_recall_probes_returns_every_key_in_range():
    calls = []

    def oracle(ids):
        calls.append(ids.shape)
        return induction_oracle(normalise=True)(ids)

    r = recall_probes(oracle, 128, n=16, seed=0, batch_size=8)
    rates = [f"probe_{p}_{m}" for p in ("mqar", "passkey", "copy") for m in ("acc", "first_acc", "exact")]
    rates += [f"probe_passkey_acc_depth_{d}" for d in ("0.0", "0.5", "1.0")] + [
        "probe_chance_digit",
        "probe_chance_letter",
    ]
    assert set(r) == set(rates) | {"probe_seq_len", "probe_n", "probe_mqar_pairs", "probe_copy_chars"}
    assert all(0.0 <= r[k] <= 1.0 for k in rates)
    assert r["probe_mqar_acc"] >= 0.95 and r["probe_passkey_acc_depth_0.5"] >= 0.95
    assert (r["probe_chance_digit"], r["probe_chance_letter"]) == (CHANCE_DIGIT, CHANCE_LETTER)
    assert (r["probe_seq_len"], r["probe_n"], r["probe_mqar_pairs"], r["probe_copy_chars"]) == (128, 16, 4, 53)
    assert len(calls) == 6 and all(tuple(s) == (8, 128) for s in calls)  # one pass per batch, nothing re-run

    chance = recall_probes(random_logits(0), 64, n=6)
    assert all(0.0 <= chance[k] <= 0.3 for k in rates if "chance" not in k)
    with pytest.raises(ValueError, match="n >= the number of passkey depths"):
        recall_probes(random_logits(0), 64, n=2)
