#!/usr/bin/env python3
"""Summarises the rounds of scripts/chaos.sh: one row per fault x mode.

Usage: chaos_summary.py ROUNDS_TSV OUT_DIR ELAPSED_SECS QUICK ROUNDS
Writes OUT_DIR/summary.md and OUT_DIR/summary.json, prints the table, and
exits 1 if any round failed (an invariant broke outside the documented
exposures, the bench failed or timed out, or a process died outside a fault).
"""
import json
import os
import sys

VIOLATIONS = ["oversold", "duplicates", "double_booked", "undersold", "lost",
              "unfair", "unstable", "changed", "unanswered"]
EXPOSURES = ["lua_unflushed_lost", "lua_changed", "queue_lost"]


def main():
    tsv, out, elapsed, quick, rounds_per = sys.argv[1:6]
    rows = {}
    failures = []
    for line in open(tsv):
        f = line.rstrip("\n").split("\t")
        if len(f) < 9:
            continue
        fault, mode, rnd, rc, secs, delay, unexpected, path, what = f[:9]
        key = (fault, mode)
        r = rows.setdefault(key, {
            "fault": fault, "mode": mode, "rounds": 0, "passed": 0,
            "claims": 0, "grants": 0, "unanswered_users": 0, "http_5xx": 0,
            "transport": 0, "retries": 0, "cancelled": 0, "final_checked": 0,
            "violations": {v: 0 for v in VIOLATIONS},
            "exposure": {k: 0 for k in EXPOSURES},
            "max_round_secs": 0.0, "failed_rounds": [],
        })
        r["rounds"] += 1
        r["max_round_secs"] = max(r["max_round_secs"], float(secs))
        res = None
        if os.path.exists(path):
            try:
                res = json.load(open(path))["results"][0]
            except (ValueError, KeyError, IndexError):
                res = None
        why = []
        if rc != "0":
            why.append("bench exit %s%s" % (rc, " (timeout)" if rc in ("124", "137") else ""))
        if res is None:
            why.append("no bench result")
        if unexpected != "0":
            why.append("a process died outside the fault / injection failed")
        if res is not None:
            r["claims"] += res.get("requests", 0)
            r["grants"] += res.get("grants", 0)
            r["unanswered_users"] += res.get("errors", 0)
            r["cancelled"] += res.get("cancelled", 0)
            r["final_checked"] += res.get("final_checked", 0)
            ec = res.get("error_counts", {})
            for k in ("http_5xx", "transport", "retries"):
                r[k] += ec.get(k, 0)
            for k in VIOLATIONS:
                n = res.get("violations", {}).get(k, 0)
                r["violations"][k] += n
                if n:
                    why.append("%s=%d" % (k, n))
            for k in r["exposure"]:
                r["exposure"][k] += res.get("exposure", {}).get(k, 0)
        if why:
            r["failed_rounds"].append({"round": int(rnd), "why": sorted(set(why)),
                                       "fault_at": delay, "fault": what})
            failures.append("%s/%s round %s: %s" % (fault, mode, rnd, ", ".join(sorted(set(why)))))
        else:
            r["passed"] += 1

    head = ["fault", "mode", "rounds", "passed", "claims", "grants", "cancelled",
            "checked", "5xx", "transport", "retries", "unanswered"] + \
           [v for v in VIOLATIONS if v != "unanswered"] + \
           ["lua lost (exposure)", "lua changed (exposure)", "queue lost (exposure)",
            "max round s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows.values():
        v = r["violations"]
        cells = [r["fault"], r["mode"], r["rounds"], r["passed"], r["claims"], r["grants"],
                 r["cancelled"], r["final_checked"], r["http_5xx"], r["transport"],
                 r["retries"], v["unanswered"]] + \
                [v[k] for k in VIOLATIONS if k != "unanswered"] + \
                [r["exposure"][k] for k in EXPOSURES] + [r["max_round_secs"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    total = sum(r["rounds"] for r in rows.values())
    passed = sum(r["passed"] for r in rows.values())
    md = ["# Chaos run", "",
          "%s: %d rounds (%s per fault x mode), %d passed, %s s." % (
              "quick" if quick == "1" else "full", total, rounds_per, passed, elapsed), "",
          "Claims: requests answered; cancelled: users who cancelled their grant "
          "(reconcile rounds); checked: final answers read back after the drain; "
          "5xx/transport/retries: error answers during faults (expected, counted); "
          "violation columns must be 0 (changed: a final answer contradicted by the "
          "user's state after the drain); exposure columns are the documented losses "
          "when Redis loses its state (docs/ARCHITECTURE.md, Exposure).",
          ""] + lines
    if failures:
        md += ["", "## Failed rounds", ""] + ["- " + f for f in failures]
    text = "\n".join(md) + "\n"
    open(os.path.join(out, "summary.md"), "w").write(text)
    json.dump({"quick": quick == "1", "elapsed_secs": int(elapsed), "rounds": total,
               "passed": passed, "rows": list(rows.values()), "failures": failures},
              open(os.path.join(out, "summary.json"), "w"), indent=2)
    print(text)
    sys.exit(1 if failures or total == 0 else 0)


if __name__ == "__main__":
    main()
