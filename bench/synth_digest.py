"""Digest of every table a synthetic site holds, row by row in the order written: to check that a change to
the generator's speed leaves its data unchanged.

Usage: .venv/bin/python bench/synth_digest.py OUT.json [--persons N] [--sites S] [--profile NAME] [--seed 42]
       [--faults name=rate,...] [--negative-controls K] [--acute-rate-multiplier X]
  --sites S: `generate_federation` (S sites, N persons in all); --profile NAME: one site of that profile
  (`generate_site`, then CHECKPOINT, as bench_synth.py writes it). Prints the digests and writes them to
  OUT.json; compare two such files with `--compare A.json B.json`.

Each table's digest is its row count and the sum of DuckDB's hash of (rowid, every column) over its rows:
a different value anywhere, or the same rows in another order, changes it. truth.json is digested too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path


def digest_db(path: Path) -> dict[str, list]:
    import duckdb

    con = duckdb.connect(str(path), read_only=True)
    try:
        names = [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' ORDER BY 1").fetchall()]
        out = {}
        for name in names:
            info = con.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'main' "
                "AND table_name = ? ORDER BY ordinal_position", [name]).fetchall()
            cols, types = [r[0] for r in info], [r[1] for r in info]
            args = ", ".join(["rowid"] + [f'"{c}"' for c in cols])
            n, h = con.execute(f'SELECT count(*), coalesce(sum(hash({args})::HUGEINT), 0)::VARCHAR FROM "{name}"').fetchone()
            out[name] = [n, h, list(zip(cols, types, strict=True))]
        return out
    finally:
        con.close()


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?")
    ap.add_argument("--persons", type=int, default=20_000)
    ap.add_argument("--sites", type=int)
    ap.add_argument("--profile")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--faults")
    ap.add_argument("--negative-controls", type=int, default=0)
    ap.add_argument("--acute-rate-multiplier", type=float, default=1.0)
    ap.add_argument("--compare", nargs=2)
    a = ap.parse_args(argv)
    if a.compare:
        x, y = (json.loads(Path(p).read_text()) for p in a.compare)
        same = True
        for site in sorted(set(x) | set(y)):
            for t in sorted(set(x.get(site, {})) | set(y.get(site, {}))):
                u, v = x.get(site, {}).get(t), y.get(site, {}).get(t)
                ok = u == v
                same &= ok
                print(f"{'same' if ok else 'DIFFERENT':>9}  {site:<12} {t:<24} {u[0] if u else None}")
        print("IDENTICAL" if same else "DIFFERENT")
        sys.exit(0 if same else 1)

    from mercia.cdm import Cdm
    from mercia.synth import DEFAULT_SITES, generate_federation, generate_site
    from mercia.synth.faults import parse_faults
    from mercia.synth.profiles import with_settings

    faults = parse_faults(a.faults)
    result: dict[str, dict] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if a.sites:
            paths = generate_federation(Path(tmp) / "out", persons=a.persons, sites=a.sites, seed=a.seed,
                                        faults=faults, negative_control_outcomes=a.negative_controls,
                                        acute_rate_multiplier=a.acute_rate_multiplier)
        else:
            profile = next(p for p in DEFAULT_SITES if p.name == (a.profile or "riverside"))
            profile = with_settings(profile, acute_rate_multiplier=a.acute_rate_multiplier,
                                    negative_control_outcomes=a.negative_controls)
            path = Path(tmp) / f"{profile.name}.duckdb"
            cdm = Cdm.open(path)
            try:
                truth = generate_site(cdm, persons=a.persons, seed=a.seed, profile=profile, faults=faults)
                cdm.execute("CHECKPOINT")
            finally:
                cdm.close()
            path.with_name(f"{profile.name}.truth.json").write_text(json.dumps(truth, indent=2) + "\n")
            paths = [path]
        seconds = time.perf_counter() - t0
        for p in paths:
            site = p.name.removesuffix(".duckdb")
            result[site] = digest_db(p)
            truth_text = p.with_name(f"{site}.truth.json").read_bytes()
            result[site]["truth.json"] = [len(truth_text), hashlib.sha256(truth_text).hexdigest(), []]
    for site, tables in result.items():
        for t, (n, h, _) in tables.items():
            print(f"{site:<12} {t:<24} {n:>11,} {h}")
    print(f"generated in {seconds:.1f} s")
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
