"""The derived figures and the markdown table of ``bench_7b.py``'s result (a JSON-ready dict)."""
from __future__ import annotations

PLAIN = "plain"
GOAL_VS_PLAIN, GOAL_REALISED, GOAL_PEAK = 0.90, 0.80, 1.25
TABLE_HEAD = ["| batch | system | pairs/s | ms/batch | vs plain | speedup vs full | FLOP-predicted | realised "
              "| peak GiB | peak / weights |", "|---|---|---|---|---|---|---|---|---|---|"]


def add_ratios(rows: list[dict], flops: dict, full: str, weights: int) -> None:
    """Per batch size: speedup over the ``full`` shape, measured and FLOP-predicted, the share of the
    prediction realised, pairs/s against the plain forward, and peak memory over the weights."""
    by_key = {(r["system"], r["batch_size"]): r for r in rows if r["status"] == "ok"}
    for row in rows:
        if row["status"] != "ok":
            continue
        full_row, plain_row = by_key.get((full, row["batch_size"])), by_key.get((PLAIN, row["batch_size"]))
        row["flop_predicted_speedup"] = flops[full] / flops[row["system"]]
        if full_row:
            row["speedup"] = full_row["seconds"] / row["seconds"]
            row["realised"] = row["speedup"] / row["flop_predicted_speedup"]
        if plain_row:
            row["vs_plain"] = row["pairs_per_s"] / plain_row["pairs_per_s"]
        if row["peak_bytes"] is not None:
            row["peak_over_weights"] = row["peak_bytes"] / weights


def targets(result: dict) -> dict:
    """The issue's three targets at the target batch size; judged on a GPU only."""
    batch, full = result["target_batch"], result["full"]
    rows = {r["system"]: r for r in result["rows"] if r["status"] == "ok" and r["batch_size"] == batch}
    realised = {s: rows[s].get("realised") for s in result["shapes"] if s in rows}
    peaks = {s: rows[s].get("peak_over_weights") for s in result["shapes"] if s in rows}
    judged = result["device"]["type"] == "cuda"
    vs_plain = rows.get(full, {}).get("vs_plain")
    return dict(judged=judged, batch_size=batch,
                full_vs_plain=dict(value=vs_plain, met=judged and (vs_plain or 0) >= GOAL_VS_PLAIN),
                realised_speedup=dict(values=realised, met=judged and bool(realised) and all(
                    (v or 0) >= GOAL_REALISED for v in realised.values())),
                peak_memory=dict(values=peaks, met=judged and bool(peaks) and all(
                    v is not None and v <= GOAL_PEAK for v in peaks.values())))


def _f(value, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def markdown(result: dict) -> str:
    """The whole report: setting, self-check, the timing tables, targets, compression step, SDPA kernels."""
    sections = [_header(result), _check(result.get("check")), _grid(result), _targets(result.get("targets")),
                _dl19(result.get("dl19")), _compression(result.get("compression")), _sdpa(result.get("sdpa"))]
    return "\n\n".join(s for s in sections if s) + "\n"


def _header(result: dict) -> str:
    dev = result["device"]
    lines = [f"# bench_7b: `{result['config']}` config on {dev['name']}"]
    if dev["type"] != "cuda":
        lines += ["", "**Smoke run on a CPU: it checks that the script works end to end. Not a performance figure.**"]
    lines += ["", f"torch {result['versions']['torch']}, transformers {result['versions']['transformers']}, "
                  f"{result['dtype']}, max_length {result['max_length']}, weights "
                  f"{result['weights_bytes'] / 2**30:.2f} GiB ({result['parameters'] / 1e9:.3f} B parameters), "
                  f"model built in {result['build_s']:.0f} s; {result['warmup']} warm-up + {result['iters']} timed "
                  f"calls of {result['batches']} batch(es) each, median; whole run {result.get('wall_s', 0):.0f} s."]
    return "\n".join(lines)


def _check(check) -> str:
    if not check:
        return ""
    return (f"## Self-check (before timing)\n\n{'PASSED' if check['passed'] else '**FAILED**'} on {check['pairs']} "
            f"mixed-length pairs, tolerance {check['tolerance']:.2g} (max |score| {check['max_abs_score']:.3g}): "
            f"layer loop at the full shape vs plain forward {check['layer_loop_vs_plain']:.3g}; L16,24,32 vs its "
            f"single exits {check['multi_exit_vs_single_exits']:.3g}; padded batch vs one pair at a time "
            f"{check['batched_vs_alone']:.3g}; finite at every shape: {check['finite_at_every_shape']}.")


def _grid(result: dict) -> str:
    waste = "; ".join(f"batch {b}: {w['mean_real_tokens']:.0f} tokens/pair, {w['waste']:.1%} padding"
                      for b, w in result.get("padding", {}).items())
    order = [PLAIN] + result["shapes"]
    rows = sorted(result["rows"], key=lambda r: (r["batch_size"], order.index(r["system"])))
    return "\n".join([f"## Synthetic pairs filling max_length ({waste})", ""] + TABLE_HEAD + [_row(r) for r in rows])


def _row(row: dict) -> str:
    if row["status"] != "ok":
        return f"| {row['batch_size']} | {row['system']} | {row['status']} |  |  |  |  |  |  |  |"
    peak = None if row["peak_bytes"] is None else row["peak_bytes"] / 2**30
    ms_per_batch = 1000 * row["seconds"] * row["batch_size"] / row["pairs"]
    return (f"| {row['batch_size']} | {row['system']} | {row['pairs_per_s']:.1f} | {ms_per_batch:.1f} | "
            f"{_f(row.get('vs_plain'))} | {_f(row.get('speedup'))} | {row['flop_predicted_speedup']:.2f} | "
            f"{_f(row.get('realised'), '.0%')} | {_f(peak)} | {_f(row.get('peak_over_weights'))} |")


def _targets(t) -> str:
    if not t:
        return ""
    verdict = (lambda ok: "met" if ok else "**not met**") if t["judged"] else (lambda ok: "not judged (no GPU)")
    realised = ", ".join(f"{s} {_f(v, '.0%')}" for s, v in t["realised_speedup"]["values"].items()) or "no rows"
    peaks = ", ".join(f"{s} {_f(v)}" for s, v in t["peak_memory"]["values"].items()) or "no rows"
    return "\n".join([
        f"## Targets at batch {t['batch_size']}", "",
        f"- full shape vs plain forward, pairs/s: {_f(t['full_vs_plain']['value'])} (goal >= {GOAL_VS_PLAIN:.2f}): "
        f"{verdict(t['full_vs_plain']['met'])}",
        f"- share of the FLOP-predicted speedup realised: {realised} (goal >= {GOAL_REALISED:.0%} each): "
        f"{verdict(t['realised_speedup']['met'])}",
        f"- peak memory / weights: {peaks} (goal <= {GOAL_PEAK}): {verdict(t['peak_memory']['met'])}"])


def _dl19(dl) -> str:
    if not dl:
        return ""
    return "\n".join([f"## Real-length DL19 pairs ({dl['pairs']} BM25 pairs, batch {dl['batch_size']}, "
                      f"{dl['padding']['mean_real_tokens']:.0f} tokens/pair, {dl['padding']['waste']:.1%} padding)",
                      ""] + TABLE_HEAD + [_row(r) for r in dl["rows"]])


def _compression(comp) -> str:
    if not comp:
        return ""
    ms = ", ".join(f"{name} {value:.2f}" for name, value in comp["ms"].items())
    return (f"## Compression step (batch {comp['batch_size']}, {comp['tokens']} tokens)\n\nms: {ms}; the two steps "
            f"together cost {comp['share_of_block']:.1%} of one block.")


def _sdpa(rows) -> str:
    if rows is None:
        return ""
    lines = ["## SDPA kernels (one batch per path)", "",
             "| path | query | key | mask passed | is_causal | enable_gqa | calls | kernel run | other kernels |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        others = "; ".join(f"{name}: {verdict}" for name, verdict in row["backends"].items())
        lines.append(f"| {row['path']} | {row['query']} | {row['key']} | {row['mask']} | {row['is_causal']} | "
                     f"{row['enable_gqa']} | {row['calls']} | {row['kernel']} | {others} |")
    if not rows:
        lines.append("| no SDPA call was seen: the backbone does not run its attention through "
                     "torch.nn.functional.scaled_dot_product_attention |  |  |  |  |  |  |  |  |")
    return "\n".join(lines)
