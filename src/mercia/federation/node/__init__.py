"""The node: a service beside one site's CDM that holds study packages until the site's custodian
approves their exact hash, runs them, and returns only released (disclosure-controlled) results.

    config.py       node.yaml
    state.py        the study queue and release records (SQLite, WAL)
    cdm_access.py   the worker's writable CDM handle and the readers' connections
    worker.py       runs approved studies in a thread; resumes after a restart
    feasibility.py  released counts of a cohort definition
    rounds.py       federated regression rounds on a study's rows (kept at the site)
    app.py          the HTTP API (FastAPI)
"""

from mercia.federation.node.config import NodeConfig, load_node_config
from mercia.federation.node.state import STATUSES, NodeStore, StudyRecord

__all__ = ["STATUSES", "NodeConfig", "NodeStore", "StudyRecord", "load_node_config"]
