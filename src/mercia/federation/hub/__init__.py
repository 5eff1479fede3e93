"""The hub: registered nodes, projects and users; studies sent to sites, followed, and pooled.

    config.py       hub.yaml, and `init_hub` (signing key, admin token)
    registry.py     nodes, projects, studies, per-site progress and results (SQLite, WAL)
    node_link.py    the hub's HTTP calls to one node, errors sorted into retry / refused
    dispatcher.py   submits, polls and collects with back-off; closes and pools finished studies
    pool.py         meta-analysis of every released model term
    federated.py    exact federated regression over HTTP rounds; feasibility across sites
    report.py       the pooled HTML report
    app.py          the HTTP API (FastAPI)
"""

from mercia.federation.hub.config import HubConfig, init_hub, load_hub_config
from mercia.federation.hub.registry import HubStore

__all__ = ["HubConfig", "HubStore", "init_hub", "load_hub_config"]
