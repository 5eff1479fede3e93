"""Pooling at the hub: every released model estimate, meta-analysed across the sites that released it.

Only released tables are read (what the nodes sent). For each 'model' table (a Cox model, say) and
each of its terms, the sites with a finite coefficient and a positive standard error are pooled by
fixed-effect and DerSimonian-Laird meta-analysis; a site whose term was suppressed or whose model
was blocked is left out of that term, and the notes say so.
"""

from __future__ import annotations

import math
from typing import Any

from mercia.federation.pooling import PoolingError, meta_analyse


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def site_estimates(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, tuple[float, float]]]]:
    """{table: {term: {site: (coef, se)}}} from each site's released tables."""
    out: dict[str, dict[str, dict[str, tuple[float, float]]]] = {}
    for site, payload in sorted(results.items()):
        for table in payload.get("tables", []):
            if table.get("kind") != "model" or table.get("status") == "blocked":
                continue
            cols = table.get("columns", [])
            if not {"term", "coef", "se"} <= set(cols):
                continue
            i_term, i_coef, i_se = cols.index("term"), cols.index("coef"), cols.index("se")
            for row in table.get("rows", []):
                coef, se = _finite(row[i_coef]), _finite(row[i_se])
                if coef is None or se is None or se <= 0:
                    continue
                out.setdefault(table["name"], {}).setdefault(str(row[i_term]), {})[site] = (coef, se)
    return out


def pool_results(results: dict[str, dict[str, Any]], *, alpha: float = 0.05) -> dict[str, Any]:
    """Meta-analyses of every released model term; JSON-ready."""
    pooled: dict[str, Any] = {"sites": sorted(results), "tables": {}, "notes": []}
    for table, terms in site_estimates(results).items():
        for term, by_site in terms.items():
            names = sorted(by_site)
            missing = sorted(set(results) - set(names))
            if missing:
                pooled["notes"].append(f"{table}.{term}: not released by {', '.join(missing)} (left out)")
            try:
                meta = meta_analyse([by_site[s][0] for s in names], [by_site[s][1] for s in names], sites=names,
                                    alpha=alpha, ratio=True)
            except PoolingError as e:
                pooled["notes"].append(f"{table}.{term}: {e}")
                continue
            pooled["tables"].setdefault(table, {})[term] = meta.to_dict()
    return pooled
