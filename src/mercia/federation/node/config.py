"""The node's configuration file (node.yaml): which CDM, where its state lives, the site's rules.

    site: leeds
    cdm: /data/leeds.duckdb            # or postgresql://...
    state_dir: state                   # relative paths are relative to this file
    policy: sacro                      # the site's minimum disclosure policy (or explicit settings)
    hub_public_key: hub.pub.pem        # only packages signed by this hub are accepted
    tokens: tokens.json                # hashed bearer tokens of the hub and the custodians
    auto_approve:
      feasibility: true                # answer count queries without asking the custodian
      studies: []                      # content hashes approved in advance
    feasibility_roles: [hub]           # who may ask for counts (hub, researcher)
    count_limits: {per_window: 60, window_seconds: 60, near_identical: 5}
    feasibility_privacy: {epsilon_per_query: 0.1, budget: 1.0}   # differential privacy of counts
                                   # (also concept_records_cap: 10, records per person in a concept's records)
    tls: {cert: node.crt, key: node.key}
    federated_rounds: true             # approving a package with a Cox analysis allows score rounds on it
    trials: trials                     # the site's trial files: clinicians' candidate look-ups (optional)
    clinician_networks: [127.0.0.1/32, ::1/128]   # where candidate look-ups may come from (the default)
    quality_at_start: false            # run the data-quality checks at start if no summary is stored
    hold_results: false                # true: each run's released results wait for the custodian's output
                                       # check (release or withhold) before the hub can collect them
    portal: {secure_cookie: true}      # the custodian's web portal under /portal (mercia.portal.node_pages)
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from mercia.disclosure import BUILTIN_POLICIES, DisclosurePolicy
from mercia.errors import ConfigError
from mercia.federation.config_file import StrictModel, Tls, read_config_mapping, validate_config
from mercia.federation.node.privacy_budget import FeasibilityPrivacy


class AutoApprove(StrictModel):
    feasibility: bool = Field(False, description="answer feasibility counts without the custodian")
    studies: list[str] = Field(default_factory=list, description="package content hashes approved in advance")


class CountLimits(StrictModel):
    per_window: int = Field(60, ge=1, description="count queries one principal may ask per window")
    window_seconds: float = Field(60.0, gt=0)
    near_identical: int = Field(5, ge=1, description="repeats of one query before the principal is locked out")


class NodePortal(StrictModel):
    """The custodian's portal (/portal): its accounts live in state_dir/portal.sqlite
    (`mercia node portal-user-add`)."""

    session_minutes: float = Field(480.0, gt=0, le=7 * 24 * 60, description="a session ends this long after sign-in")
    idle_minutes: float = Field(60.0, gt=0, le=7 * 24 * 60, description="a session unused this long ends")
    secure_cookie: bool = Field(True, description="mark the session cookie Secure (sent over HTTPS only)")
    max_failures: int = Field(5, ge=1, le=100, description="failed sign-ins that lock an account ...")
    lockout_minutes: float = Field(15.0, gt=0, le=24 * 60, description="... within this many minutes, for as long")
    max_client_failures: int = Field(30, ge=1, le=10_000, description="failed sign-ins from one client address, "
                                     "whatever the names, that block that address for lockout_minutes")


class NodeConfig(StrictModel):
    site: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    cdm: str = Field(min_length=1, description="a .duckdb path or a postgresql:// URL")
    cdm_schema: str | None = None
    vocab_schema: str | None = None
    results_schema: str | None = None
    state_dir: Path
    policy: Literal["opensafely", "sacro"] | DisclosurePolicy = "opensafely"
    hub_public_key: Path
    tokens: Path
    auto_approve: AutoApprove = AutoApprove()
    feasibility_roles: list[Literal["hub", "researcher"]] = Field(default_factory=lambda: ["hub"])
    count_limits: CountLimits = CountLimits()
    count_cache_seconds: float = Field(
        600.0, ge=0, description="serve a definition's released count again for this long (0: always recount)"
    )
    tls: Tls | None = None
    federated_rounds: bool = True
    feasibility_privacy: FeasibilityPrivacy = FeasibilityPrivacy()
    trials: Path | None = Field(None, description="a folder of the site's trial files (candidate look-ups)")
    quality_at_start: bool = Field(False, description=(
        "run the data-quality checks when the node starts and holds no released summary yet (else the "
        "custodian or an admin starts a run: POST /api/v1/quality/run)"))
    clinician_networks: list[str] = Field(
        default_factory=lambda: ["127.0.0.1/32", "::1/128"], max_length=100,
        description="client networks (CIDR) the clinician's candidate look-ups may come from")
    portal: NodePortal = NodePortal()
    # Off by default: the custodian's approval of a package's exact hash already decides what it may
    # release (its analyses' tables, each number through the site's disclosure policy), and a node
    # that held every run would stop each study until someone signed in, which a site opts into.
    hold_results: bool = Field(False, description=(
        "hold each run's released tables at the node until the custodian releases them (then the hub "
        "collects them) or withholds them with a reason (the hub shows the reason, never the tables): "
        "the output check of OpenSAFELY and SACRO; off, results leave when the approved run ends"))

    @field_validator("clinician_networks")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for n in v:
            try:
                ipaddress.ip_network(n, strict=False)
            except ValueError:
                raise ValueError(f"{n!r} is not a network: write an address or CIDR block, e.g. 127.0.0.1/32 "
                                 "or 10.1.0.0/16") from None
        return v

    @property
    def site_policy(self) -> DisclosurePolicy:
        return BUILTIN_POLICIES[self.policy] if isinstance(self.policy, str) else self.policy

    def hub_key_pem(self) -> str:
        try:
            return self.hub_public_key.read_text()
        except OSError as e:
            raise ConfigError(
                f"cannot read the hub's public key {str(self.hub_public_key)!r} ({e.strerror}); copy the "
                "hub's public key (mercia hub init prints where it is) and set hub_public_key in node.yaml"
            ) from None


def _resolve(base: Path, value: Any) -> Any:
    return str((base / value).resolve()) if value is not None and not Path(str(value)).is_absolute() else value


def load_node_config(path: str | Path, *, cdm: str | None = None) -> NodeConfig:
    """Read node.yaml; paths in it are relative to its folder. `cdm` overrides the file's target."""
    p = Path(path)
    data = read_config_mapping(p, "node config", expected_keys="site:, cdm:, state_dir:, ...")
    if cdm is not None:
        data["cdm"] = cdm
    base = p.resolve().parent
    for key in ("state_dir", "hub_public_key", "tokens", "trials"):
        if key in data:
            data[key] = _resolve(base, data[key])
    if isinstance(data.get("tls"), dict):
        data["tls"] = {k: _resolve(base, v) for k, v in data["tls"].items()}
    from mercia.cdm.engines import resolve_target

    if isinstance(data.get("cdm"), str):  # a database file or folder relative to node.yaml; a URL as it is
        data["cdm"] = resolve_target(data["cdm"], base)
    return validate_config(NodeConfig, data, p, "node config")
