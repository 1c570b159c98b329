"""Markdown table of a bench/run.py JSON report: python bench/table.py bench/results/latest.json"""

from __future__ import annotations

import json
import sys

SHORT = {"alignkit_plain": "plain step", "trl": "TRL", "swift": "ms-swift"}
NAMES = {"alignkit": "alignkit", "alignkit_plain": "alignkit, speed-ups off (plain PyTorch step)",
         "trl": "TRL 1.16 `DPOTrainer`", "swift": "ms-swift 4.6 `swift rlhf`"}


def main() -> None:
    report = json.loads(open(sys.argv[1]).read())
    results = report["results"]
    settings = list(results)
    frameworks = list(next(iter(results.values())))
    rounds = report["workload"].get("rounds", 1)
    print(f"| s/step, median of {rounds} interleaved rounds [min–max] (pairs/s), peak RSS GiB | "
          + " | ".join(settings) + " |")
    print("|---" * (len(settings) + 1) + "|")
    for fw in frameworks:
        cells = []
        for s in settings:
            r = results[s].get(fw)
            if not r:
                cells.append("—")
                continue
            low, high = r.get("s_per_step_spread", [r["s_per_step"]] * 2)
            cells.append(
                f"{r['s_per_step']:.2f} [{low:.2f}–{high:.2f}] ({r['pairs_per_s']:.2f}), {r['peak_rss_gib']:.2f}"
            )
        print(f"| {NAMES.get(fw, fw)} | " + " | ".join(cells) + " |")
    for peer in frameworks[1:]:
        cells = []
        for s in settings:
            ratio = report["ratios_pairs_per_s"][s].get(f"alignkit/{peer}")
            low, high = ratio["per_round_range"]
            cells.append(f"{ratio['ratio_of_medians']:.2f}× [{low:.2f}–{high:.2f}]")
        print(f"| alignkit ÷ {SHORT.get(peer, peer)} (pairs/s, ratio of medians [per-round range]) | "
              + " | ".join(cells) + " |")
    pre = [
        f"{results[s]['alignkit'].get('ref_precompute_s', 0):.0f} s, "
        f"{results[s]['alignkit'].get('pairs_per_s_incl_precompute', 0):.2f}"
        for s in settings
        if "alignkit" in results[s]
    ]
    print("| alignkit reference pass (once), pairs/s including it | " + " | ".join(pre) + " |")


if __name__ == "__main__":
    main()
