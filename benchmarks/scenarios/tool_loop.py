"""(d) The 20-turn ``store: false`` tool loop, from ``benchmarks.conversation``.

That module owns the scenario and its three contenders (oaiws ``Conversation``, a pool that
resends the whole transcript, the official SDK over HTTP resending it too); this one runs it
on an emulator of its own, which charges ``input_cost_per_kb`` for the context it reads (a
real model's work grows with its input; the other scenarios run without that cost), and
checks the targets.
"""

from __future__ import annotations

from typing import Any

from benchmarks.scenarios.common import Check, Settings

MINE = "oaiws_conversation"
# Two turns of the same kind (a question, or a tool's output) differ only in a few digits.
SAME_KIND_SLACK_BYTES = 32


def run(emulator: Any, settings: Settings) -> dict[str, Any]:
    from benchmarks import conversation  # noqa: PLC0415 - the scenario's owner

    figures: dict[str, Any] = conversation.run(
        emulator, settings.turns, repeats=settings.tool_loop_repeats
    )
    figures["input_cost_per_kb"] = settings.input_cost_per_kb
    return figures


def _flat(sizes: list[int]) -> tuple[bool, int]:
    """Whether the bytes of each turn stay those of its new items: every turn from the third
    on sends no more than the first later turn of the same kind (turn 0 has no
    ``previous_response_id`` yet), so nothing of the transcript is resent."""
    worst = 0
    for turn in range(3, len(sizes)):
        reference = sizes[1] if turn % 2 else sizes[2]
        worst = max(worst, sizes[turn] - reference)
    return worst <= SAME_KIND_SLACK_BYTES, worst


def checks(figures: dict[str, Any]) -> list[Check]:
    rows = figures["contenders"]
    mine = rows[MINE]
    sizes = mine["bytes_per_turn"]
    found = []
    if len(sizes) >= 4:
        holds, growth = _flat(sizes)
        found.append(
            Check(
                "d",
                "oaiws bytes per turn = its new items (no growth with the transcript)",
                f"{min(sizes)}-{max(sizes)} B/turn (growth {growth:+d} B); full context: "
                + ", ".join(
                    f"{name} last turn {rows[name]['bytes_per_turn'][-1]:,} B"
                    for name in rows
                    if name != MINE
                ),
                holds,
            )
        )
    for name, row in rows.items():
        if name == MINE:
            continue
        found.append(
            Check(
                "d",
                f"oaiws time per turn below {name}",
                f"{mine['mean_ms_per_turn']:.2f} vs {row['mean_ms_per_turn']:.2f} ms",
                mine["mean_ms_per_turn"] < row["mean_ms_per_turn"],
            )
        )
    return found


def table(figures: dict[str, Any]) -> str:
    from benchmarks import conversation  # noqa: PLC0415

    head = (
        f"{figures['turns']}-turn store=false tool loop, input cost "
        f"{figures['input_cost_per_kb'] * 1000:g} ms/KB, median of {figures['repeats']} runs"
    )
    rows = figures["contenders"]
    summary = [
        f"  {'contender':<24}{'bytes sent':>12}{'B/turn':>10}{'ms/turn':>10}{'x oaiws time':>14}",
    ]
    for name, row in rows.items():
        time_x = figures["ratios"].get(name, {}).get("time", 1.0)
        summary.append(
            f"  {name:<24}{row['total_bytes']:>12,}{row['total_bytes'] / figures['turns']:>10,.0f}"
            f"{row['mean_ms_per_turn']:>10.2f}{time_x:>13.2f}x"
        )
    return "\n".join([head, conversation.format_table(figures), "", *summary])
