"""Text-criteria mapping of `mercia trial import` against hand-made answers (issue 15, item 2).

Imports each test record under tests/data/trials/ (ClinicalTrials.gov API v2 JSON, written for the
tests and modelled on real trials' eligibility sections) against Mercia's bundled vocabulary, and prints
per record and in total: the share of items mapped correctly (type, status and, for mapped items,
concepts, value range, unit and window all as the answer file says), the share of the mappable items
mapped correctly, and the items applied that should not be (false mapped).

    python bench/bench_trial_mapping.py [--details]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from mercia.cdm import Cdm
from mercia.trials.mapping_eval import score_record
from mercia.vocab.athena import load_bundled_vocabulary

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "trials"


def main() -> None:
    details = "--details" in sys.argv
    records = sorted(p for p in DATA.glob("NCT*.json"))
    print(f"{'record':<14}{'items':>6}{'correct':>9}{'share':>8}{'mappable':>10}{'mapped ok':>11}{'false mapped':>14}")
    tot = [0, 0, 0, 0, 0]
    t0 = time.perf_counter()
    with Cdm.open() as cdm:
        load_bundled_vocabulary(cdm)
        for rec in records:
            s = score_record(rec, rec.with_name(rec.stem + ".answers.yaml"), cdm)
            row = [s.total, s.correct, s.expected_mapped, s.mapped_correct, s.false_mapped]
            tot = [a + b for a, b in zip(tot, row, strict=True)]
            print(f"{rec.stem:<14}{s.total:>6}{s.correct:>9}{s.correct / s.total:>8.0%}{s.expected_mapped:>10}"
                  f"{s.mapped_correct:>11}{s.false_mapped:>14}")
            if details:
                for i in s.items:
                    if not i.correct:
                        print(f"    wrong: {i.text!r}: {i.why}")
                for t in s.unmatched_draft_items:
                    print(f"    draft item with no answer: {t!r}")
    n, c, m, mc, fm = tot
    print(f"{'total':<14}{n:>6}{c:>9}{c / n:>8.0%}{m:>10}{mc:>11}{fm:>14}")
    print(f"mappable items mapped correctly: {mc}/{m} = {mc / m:.0%}; {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
