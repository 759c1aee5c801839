"""The benchmark's Markdown report: medians over rounds, ratios to the floor, the targets.

`build_report` turns the raw figures of scripts/bench.py into rows of
target | scenario | figure | vs floor | target met?, plus a header (machine, settings) and a
note on the upstream and the client behind every figure.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from harness import median

LEASE_SECONDS = 5
"""TOLLGATE_QUOTA_LEASE of the `leased` target."""
LABELS = {"floor": "floor: nginx → upstream", "off": "Tollgate, metering off", "on": "Tollgate, full metering",
          "leased": f"Tollgate, full metering, {LEASE_SECONDS} s quota leases", "litellm": "LiteLLM proxy",
          "store": "PostgreSQL store", "run": "(the run)"}
ORDER = ("floor", "off", "on", "leased", "litellm", "store", "run")
METERED = ("on", "leased")
"""The targets with full metering, to which the metering targets apply."""
SCENARIO_LABELS = {"nonstream64": "non-stream, 64 conn", "nonstream1": "non-stream, 1 conn (added latency)",
                   "stream": "stream of 100 events, 1 conn", "scaling": "scaling: 1 / 2 / 4 workers, 64 conn",
                   "capacity": "concurrent open streams", "growth": "growth"}
ERROR_SHARE = 0.001
"""More failed requests than this share makes a figure unreliable: its target is not met."""


@dataclass
class Row:
    target: str
    scenario: str
    figure: str
    vs_floor: str
    met: str


def cell(text: str, limit: int = 220) -> str:
    """`text` as one Markdown table cell: one line, pipes escaped, long texts cut."""
    flat = " ".join(str(text).split())
    if len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    return flat.replace("|", "\\|")


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _ratio(share: float) -> str:
    """A ratio to the floor as "0.35× (35%)", with more digits for small ones."""
    if share >= 0.1:
        return f"{share:.2f}× ({100 * share:.0f}%)"
    return f"{share:.3f}× ({100 * share:.1f}%)"


def _rows_of(size: int) -> str:
    if size == 0:
        return "empty"
    if size % 1_000_000 == 0:
        return f"{size // 1_000_000}M"
    if size % 1000 == 0:
        return f"{size // 1000}k"
    return f"{size:,}"


def _wrk_median(rounds: list[dict]) -> dict:
    return {"rps": median([r["rps"] for r in rounds]), "p50": median([r["p50_ms"] for r in rounds]),
            "p99": median([r["p99_ms"] for r in rounds]), "errors": sum(r["errors"] for r in rounds),
            "requests": sum(r["requests"] for r in rounds)}


def _errors_note(m: dict) -> str:
    return f" · {m['errors']:,} errors" if m["errors"] else ""


def _too_many_errors(m: dict) -> bool:
    return m["errors"] > ERROR_SHARE * max(1, m["requests"] + m["errors"])


def _wrk_rows(scenario: str, raw: dict, settings: object) -> list[Row]:
    medians = {key: _wrk_median(rounds) for key, rounds in raw.items() if rounds}
    floor = medians.get("floor")
    rows = []
    for key in ORDER:
        m = medians.get(key)
        if m is None:
            continue
        figure = f"{m['rps']:,.0f} req/s · p50 {m['p50']:.2f} ms · p99 {m['p99']:.2f} ms{_errors_note(m)}"
        vs, met = "—", "—"
        if floor and key != "floor":
            if scenario == "nonstream64":
                vs = _ratio(m["rps"] / floor["rps"])
            else:
                vs = f"{m['p50'] - floor['p50']:+.2f} ms p50 · {m['p99'] - floor['p99']:+.2f} ms p99"
        if floor and scenario == "nonstream64" and key in METERED:
            share = m["rps"] / floor["rps"]
            met = f"≥ 30% of floor: {_yes(share >= 0.30 and not _too_many_errors(m))}"
            peer = medians.get("litellm")
            if peer and peer["rps"] > 0:
                times = m["rps"] / peer["rps"]
                met += f"; ≥ 50× LiteLLM: {_yes(times >= 50)} ({times:.0f}×)"
            else:
                met += "; ≥ 50× LiteLLM: not measured (--peers litellm)"
        if floor and scenario == "nonstream1" and key in ("off",) + METERED:
            ok = m["p50"] - floor["p50"] < 0.5 and m["p99"] - floor["p99"] < 2.0 and not _too_many_errors(m)
            met = f"p50 < +0.5 ms, p99 < +2 ms: {_yes(ok)}"
        rows.append(Row(LABELS[key], SCENARIO_LABELS[scenario], figure, vs, met))
    return rows


def _stream_rows(raw: dict) -> list[Row]:
    medians = {}
    for key, rounds in raw.items():
        if rounds:
            medians[key] = {name: median([r[name] for r in rounds]) for name in
                            ("ttfe_p50_ms", "ttfe_p99_ms", "ttle_p50_ms", "ttle_p99_ms", "rps")}
            medians[key]["failures"] = sum(r["failures"] for r in rounds)
    floor = medians.get("floor")
    rows = []
    for key in ORDER:
        m = medians.get(key)
        if m is None:
            continue
        figure = (f"first event p50 {m['ttfe_p50_ms']:.2f} / p99 {m['ttfe_p99_ms']:.2f} ms · last p50 "
                  f"{m['ttle_p50_ms']:.2f} / p99 {m['ttle_p99_ms']:.2f} ms · {m['rps']:,.0f} streams/s"
                  + (f" · {m['failures']} failures" if m["failures"] else ""))
        vs, met = "—", "—"
        if floor and key != "floor":
            added_first = m["ttfe_p50_ms"] - floor["ttfe_p50_ms"]
            vs = (f"first {added_first:+.2f} ms (p99 {m['ttfe_p99_ms'] - floor['ttfe_p99_ms']:+.2f}) · last "
                  f"{m['ttle_p50_ms'] - floor['ttle_p50_ms']:+.2f} ms (p99 "
                  f"{m['ttle_p99_ms'] - floor['ttle_p99_ms']:+.2f})")
            if key in ("off",) + METERED:
                met = f"first event within 1 ms of floor (p50): {_yes(added_first < 1.0 and not m['failures'])}"
        rows.append(Row(LABELS[key], SCENARIO_LABELS["stream"], figure, vs, met))
    return rows


def _capacity_best(steps: list[dict]) -> tuple[dict | None, dict | None]:
    """(largest step held, first step not held)."""
    held = [s for s in steps if s["held"]]
    failed = next((s for s in steps if not s["held"]), None)
    return (held[-1] if held else None), failed


def _capacity_rows(raw: dict, settings: object) -> list[Row]:
    best = {key: _capacity_best(steps) for key, steps in raw.items() if steps}
    floor_best = best.get("floor", (None, None))[0]
    goal_streams = 10_000
    rows = []
    for key in ORDER:
        if key not in best:
            continue
        held, failed = best[key]
        if held:
            figure = f"{held['streams']:,} streams held"
            if held.get("worker_rss_kib") is not None:
                figure += f" · worker RSS {held['worker_rss_kib'] / 1024:.0f} MiB"
            probe = held.get("probe") or {}
            if probe.get("requests"):
                figure += f" · non-stream p99 {probe['p99_ms']:.1f} ms meanwhile"
        else:
            figure = "no step held"
        if failed:
            client = failed.get("client") or {}
            figure += (f" (at {failed['streams']:,}: {client.get('failures', '?')} failures, "
                       f"{client.get('stalled', '?')} stalled)")
        vs = f"floor held {floor_best['streams']:,}" if floor_best and key != "floor" else "—"
        met = "—"
        if key in ("off", "on"):
            largest = max(getattr(settings, "steps", [goal_streams]))
            ok = bool(held) and held["streams"] >= goal_streams and (held.get("worker_rss_kib") or 0) < 512 * 1024 \
                and (held.get("probe") or {}).get("p99_ms", 1e9) < 100 and held.get("probe_ok", False)
            met = f"10,000 streams, RSS < 512 MiB, p99 < 100 ms: {_yes(ok)}"
            if largest < goal_streams:
                met = f"not tested (largest step {largest:,}; the goal is at {goal_streams:,})"
        rows.append(Row(LABELS[key], SCENARIO_LABELS["capacity"], figure, vs, met))
    return rows


def _scaling_rows(raw: dict) -> list[Row]:
    floor_runs = raw.get("floor") or []
    floor_rps = median([r["rps"] for r in floor_runs]) if floor_runs else None
    rows = []
    if floor_rps:
        rows.append(Row(LABELS["floor"], SCENARIO_LABELS["scaling"], f"{floor_rps:,.0f} req/s (no workers)", "—",
                        "—"))
    for key in ("off", "on"):
        figures, ratios = [], []
        for workers in (1, 2, 4):
            runs = raw.get(f"{key}@{workers}") or []
            if not runs:
                continue
            rps = median([r["rps"] for r in runs])
            errors = sum(r["errors"] for r in runs)
            figures.append(f"{workers}w {rps:,.0f}" + (f" ({errors} errors)" if errors else ""))
            if floor_rps:
                ratios.append(f"{workers}w {_ratio(rps / floor_rps)}")
        if figures:
            rows.append(Row(LABELS[key], SCENARIO_LABELS["scaling"], " · ".join(figures) + " req/s",
                            " · ".join(ratios) or "—", "—"))
    return rows


def _growth_rows(raw: dict) -> list[Row]:
    sizes = sorted(int(size) for size in raw)
    if not sizes:
        return []
    rows = []
    for call in ("admit", "settle"):
        p50 = {s: median([r[f"{call}_ms"]["p50"] for r in raw[str(s)]]) for s in sizes}
        p99 = {s: median([r[f"{call}_ms"]["p99"] for r in raw[str(s)]]) for s in sizes}
        figure = " · ".join(f"{_rows_of(s)} p50 {p50[s]:.3f} / p99 {p99[s]:.3f} ms" for s in sizes)
        smallest, largest = sizes[0], sizes[-1]
        growth = (p50[largest] - p50[smallest]) / p50[smallest] if p50[smallest] else float("nan")
        vs = f"{_rows_of(largest)} vs {_rows_of(smallest)}: {100 * growth:+.0f}% p50"
        met = f"within 20% of empty: {_yes(growth <= 0.20)}"
        if largest < 10_000_000:
            met = f"not tested at 10M rows (largest {_rows_of(largest)}); {met}"
        name = "admit_batch_fast (reservation)" if call == "admit" else "settle_batch (settlement)"
        rows.append(Row(LABELS["store"], f"{SCENARIO_LABELS['growth']}: {name}", figure, vs, met))
    return rows


def _note_rows(scenario: str, notes: dict, existing: list[Row]) -> list[Row]:
    """Rows for targets that have a note (n/a, failed) instead of, or beside, their figures.

    Notes of one target for several worker counts (scaling: "on@1", "on@2") that say the same
    thing become one row.
    """
    grouped: dict[str, dict[str, list[str]]] = {}
    for key, text in notes.items():
        base, _, workers = key.partition("@")
        grouped.setdefault(base, {}).setdefault(text, []).append(workers)
    shown = {row.target for row in existing}
    rows = []
    for base in sorted(grouped, key=lambda b: ORDER.index(b) if b in ORDER else len(ORDER)):
        label = LABELS.get(base, base)
        for text, workers in grouped[base].items():
            counts = [w for w in workers if w]
            if label in shown and not counts and not text.startswith("failed"):
                continue
            suffix = f" ({', '.join(counts)} worker{'s' if counts != ['1'] else ''})" if counts and len(
                grouped[base]) > 1 else ""
            rows.append(Row(label + suffix, SCENARIO_LABELS.get(scenario, scenario), text, "—", "—"))
    return rows


METHOD = {
    "nonstream64": "upstream: nginx returning a canned chat.completion JSON (bench/upstream.conf); client: wrk, "
                   "2 threads, 64 connections, POST of a small chat body (bench/wrk.lua).",
    "nonstream1": "same upstream and body; wrk with 1 thread and 1 connection; 'vs floor' is the latency added.",
    "stream": "upstream: nginx sending 100 pre-rendered content events (plus role, finish and usage chunks) at "
              "once, no pacing; client: bench/streams.py probe, sequential requests on one keep-alive "
              "connection; first event = first `data:` line, last = end of the body.",
    "scaling": "canned JSON upstream, wrk at 64 connections; Tollgate started with 1, 2 and 4 worker processes.",
    "capacity": "upstream: nginx → bench/sse_upstream.py, one event a second per stream; client: bench/streams.py "
                "hold (asyncio, raw sockets); a step holds when every stream opens, none fails and none misses "
                "more than 2 events; meanwhile wrk sends non-stream requests (4 connections, one request every "
                "50 ms each) to the same target for the p99; RSS = sum of the worker processes' VmRSS, peak "
                "during the hold. Tollgate runs 2 workers of one event loop each. Stepping stops at the first "
                "step that is not held.",
    "growth": "a private PostgreSQL 15 cluster with the schema of sql/, 1,000 users, the ledger filled with "
              "INSERT … SELECT generate_series with time-ordered request ids as the workers make them (indexes "
              "rebuilt after the load); each figure: psql \\timing round trips of the functions the workers "
              "call, tollgate.admit_batch_fast(...) then tollgate.settle_batch(...), each with one fresh request id, "
              "over TCP 127.0.0.1, synchronous_commit off (fsync on); sizes interleaved in every round.",
}


def build_report(settings: object, raw: dict, notes: dict, extra: dict, machine: dict,
                 metering_na: str | None) -> tuple[str, list[dict]]:
    """(Markdown report, rows as dicts for results.json)."""
    rows: list[Row] = []
    for scenario in getattr(settings, "scenarios", []):
        data = raw.get(scenario, {})
        if scenario in ("nonstream64", "nonstream1"):
            found = _wrk_rows(scenario, data, settings)
        elif scenario == "stream":
            found = _stream_rows(data)
        elif scenario == "capacity":
            found = _capacity_rows(data, settings)
        elif scenario == "scaling":
            found = _scaling_rows(data)
        else:
            found = _growth_rows(data)
        rows += found + _note_rows(scenario, notes.get(scenario, {}), found)

    lines = ["# Tollgate benchmarks", "",
             f"{machine.get('date')} · commit {machine.get('commit') or '?'} · binary built "
             f"{machine.get('binary_built') or '?'} · {machine.get('cores')} cores ({machine.get('cpu') or '?'}), "
             "everything on one machine over loopback", "",
             f"Rounds: {getattr(settings, 'rounds', '?')} (figures are medians over rounds; targets interleaved "
             f"within each round) · wrk runs of {getattr(settings, 'duration', '?'):g} s"
             + (" · **--quick smoke run: short runs and small sizes, not comparable with full runs**"
                if getattr(settings, "quick", False) else ""), ""]
    if metering_na:
        lines += [f"Full metering: {metering_na}.", ""]
    lines += ["| target | scenario | figure | vs floor | target met? |", "|---|---|---|---|---|"]
    lines += [f"| {cell(r.target)} | {cell(r.scenario)} | {cell(r.figure)} | {cell(r.vs_floor)} | {cell(r.met)} |"
              for r in rows]
    lines += ["", "How each figure was made:", ""]
    lines += [f"- **{SCENARIO_LABELS[s]}**: {METHOD[s]}" for s in getattr(settings, "scenarios", []) if s in METHOD]
    if not metering_na:
        lines.append("- **Tollgate, full metering**: scripts/stack.py's `Stack(database=True)`, i.e. its private "
                     "PostgreSQL (a test cluster: fsync, synchronous_commit and full_page_writes off), a user with a "
                     "quota it cannot exhaust and a key; every request is authenticated, reserved, settled and "
                     "written to the ledger. Metering off and the floor get the same request bytes. Both Tollgate "
                     "targets run one worker process with an event loop per core (outside the scaling and capacity "
                     "scenarios), whose loops share one metering queue.")
    if "litellm" in getattr(settings, "peers", []):
        lines.append("- **LiteLLM proxy**: PyPI `litellm[proxy]` in .run/bench/litellm-venv, 2 workers, bench/"
                     "litellm.yaml (no message or spend logging, no retries, no database), a master key per run; its "
                     "process group is stopped (SIGSTOP) between its own turns, once quiet or after 10 s, so that "
                     "what it still does in the background does not slow the targets measured meanwhile.")
    if not metering_na:
        lines.append(f"- **{LABELS['leased']}**: the same, with TOLLGATE_QUOTA_LEASE={LEASE_SECONDS}: after the first "
                     "admission the worker takes a quota lease and admits from it without a database round trip, "
                     "renewing it in the background; requests still in flight after 20 ms get a reservation row; "
                     "every request is settled and written to the ledger.")
    written = extra.get("nonstream64", {}).get("ledger_rows_written") or {}
    for key, rows_written in written.items():
        lines.append(f"- {LABELS.get(key, key)} wrote {rows_written:,} ledger rows during the 64-connection runs "
                     "(checked, so its figures come from metered requests).")
    return "\n".join(lines) + "\n", [asdict(r) for r in rows]
