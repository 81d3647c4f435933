"""Bench helpers: result rows, the table, round overhead arithmetic, scope bytes."""

import math

import torch

from bench.bench_round import round_overheads
from bench.bench_transfer import scope_bytes
from bench.run_all import format_table
from bench.timing import row
from client.scope import build_for_scope
from server.transfer import decode_state, encode_state


def test_rows_have_the_public_keys_and_the_table_marks_misses():
    rows = [row("a", 1.234, "<= 2", True), row("b", math.nan, "<= 2", False)]
    assert set(rows[0]) == {"name", "ratio", "target", "meets"}
    table = format_table(rows)
    assert "pass" in table.splitlines()[2] and "MISS" in table.splitlines()[3]


def test_an_informational_row_has_no_verdict():
    info = row("flower", 0.5, "info", None)
    assert info["meets"] is None
    line = format_table([info]).splitlines()[2]
    assert "info" in line and "MISS" not in line and "pass" not in line


def test_round_overhead_subtracts_the_slowest_site():
    metrics = {"rounds": [{"seconds": 2.0, "train": {"a": {"seconds": 1.0},
               "b": {"seconds": 1.5}}, "evaluate": {"a": {"seconds": 0.2}}}]}  # fmt: skip
    assert round_overheads(metrics) == [2.0 - 1.5 - 0.2]


def test_lora_bytes_are_adapters_and_heads_only():
    model = build_for_scope("tiny", "lora-4", tasks=("cancer_risk",))
    params = dict(model.named_parameters())
    expected = sum(
        p.numel() * 4
        for n, p in params.items()
        if ".lora_" in n or n.startswith("heads.")
    )
    assert scope_bytes(model, "lora-4") == expected < scope_bytes(model, "all")


def test_bfloat16_transfer_restores_the_bits_exactly():
    state = {"w": torch.randn(64, 3).to(torch.bfloat16)}
    wire = encode_state(state, "bfloat16")
    assert wire["w"].dtype.name == "int16"
    back = decode_state(wire, {"w": "bfloat16"})
    assert torch.equal(back["w"].view(torch.int16), state["w"].view(torch.int16))
