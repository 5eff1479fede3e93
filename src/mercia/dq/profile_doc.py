"""docs/reference/data-quality-profiles.md, written from the profile's analysis list
(`python -m mercia.dq.profile_doc`)."""

from __future__ import annotations

from mercia.dq.profile import ANALYSES


def profile_markdown() -> str:
    lines = [
        "# Data-quality profiles",
        "",
        "Generated from `mercia.dq.profile.ANALYSES` by `python -m mercia.dq.profile_doc`; do not edit by hand.",
        "",
        "`mercia dq profile` runs these analyses of OHDSI's [Achilles](https://github.com/OHDSI/Achilles) under",
        "Achilles's analysis ids, with Achilles's strata, so its familiar numbers are where users look for them",
        "([how-to](../how-to/check-data-quality.md#profile-the-cdm)). Counts are in `achilles_results.parquet`",
        "(analysis_id, stratum_1..stratum_5, count_value); distributions in `achilles_results_dist.parquet`",
        "(count, min, max, mean, standard deviation, median, 10th, 25th, 75th and 90th percentiles; a percentile",
        "is the smallest value whose cumulative count reaches that fraction of the count, as in Achilles).",
        "A calendar month is written as `YYYYMM`. An analysis of a table the CDM lacks is listed as absent in",
        "`achilles_analyses.parquet`, with the table it lacks.",
        "",
        "Records outside observation (208, 410, 510, 610, 710, 810, 909, 1009, 1810) are the records whose start",
        "date (death: death date) lies in none of the person's observation periods. Death timing: 506 is the",
        "year of a person's first death minus the year of birth; 511-515 are the days from each death record to",
        "the person's last record of the domain (negative when the last record precedes death). Lengths (105, 211,",
        "907, 1007) are end date minus start date in days; 108 is the first observation period's length in",
        "whole 30-day steps (floor of days / 30).",
        "",
        f"Analyses in all: {len(ANALYSES)}.",
        "",
        "| analysis id | name | table | stratum_1 | stratum_2 | kind |",
        "|---|---|---|---|---|---|",
    ]
    for a in sorted(ANALYSES, key=lambda a: a.analysis_id):
        kind = "distribution" if a.distribution else "count"
        strata = [*a.strata, "–", "–"][:2]
        tables = ", ".join((a.table, *a.needs))
        lines.append(f"| {a.analysis_id} | {a.name} | {tables} | {strata[0]} | {strata[1]} | {kind} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(profile_markdown(), end="")
