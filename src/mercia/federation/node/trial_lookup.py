"""A site's trial look-ups for its clinicians: candidates for a trial, the trials a person may join.

Row-level answers (person_source_value, age, index date), so they stay inside the site:

- at the node's HTTP API only to the `clinician` role (a node-only role: the hub issues and accepts
  none), only from the client networks node.yaml's `clinician_networks` allows (default the node's own
  host, 127.0.0.1 and ::1), checked on the connection's peer address, and never for a request that
  carries proxy headers (Forwarded, X-Forwarded-For, X-Real-IP, Via): a look-up comes straight from
  the site's network or not at all. The hub has no such route and forwards nothing to one.
- on the node's machine, `mercia trial candidates|match --config node.yaml` reads the CDM directly.

Every look-up, allowed or refused, is in the node's audit log: who, which trial (or how many trials),
how many persons were returned, never the persons themselves.
"""

from __future__ import annotations

import getpass
import ipaddress
import re
from pathlib import Path

from mercia.cdm import Cdm
from mercia.errors import ConfigError, MerciaError
from mercia.federation.audit import AuditLog
from mercia.federation.node.config import NodeConfig
from mercia.trials.candidates import (
    CandidateList,
    TrialMatch,
    UnknownPersonError,
    find_candidates,
    match_person,
)
from mercia.trials.source import TrialEligibility, load_trial

TRIAL_SUFFIXES = (".yaml", ".yml", ".json")
TRIAL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip", "via")


class UnknownTrialError(MerciaError):
    """No trial of that name in the site's trials folder (404 at the node)."""

    status_code = 404


def trials_folder(config: NodeConfig) -> Path:
    if config.trials is None:
        raise ConfigError("trials: node.yaml names no trials folder; add `trials: DIR` (a folder of the site's "
                          "trial files, .yaml or .json) to look trials up by name")
    if not config.trials.is_dir():
        raise ConfigError(f"trials: {str(config.trials)!r} in node.yaml is not a folder; make it, or point "
                          "trials: at the folder of the site's trial files")
    return config.trials


def trial_files(config: NodeConfig) -> dict[str, Path]:
    """The trials folder's files by name (the file name without its suffix), sorted by name."""
    folder = trials_folder(config)
    found = {p.stem: p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in TRIAL_SUFFIXES}
    return dict(sorted(found.items()))


def trial_by_name(config: NodeConfig, name: str) -> TrialEligibility:
    files = trial_files(config)
    if not re.match(TRIAL_NAME_PATTERN, name) or name not in files:
        raise UnknownTrialError(f"trial: no trial named {name!r} in the site's trials folder; trials there: "
                                f"{', '.join(files) or 'none'}")
    return load_trial(files[name])


def resolve_trial(config: NodeConfig, trial: str) -> TrialEligibility:
    """A trial file given by path, or by name in the trials folder (the CLI's TRIAL argument)."""
    p = Path(trial)
    if p.is_file():
        return load_trial(p)
    if config.trials is None:
        raise ConfigError(f"trial: {trial!r} is not a file, and node.yaml names no trials folder to look it up "
                          "in; give a trial file, or add `trials: DIR` to node.yaml")
    return trial_by_name(config, trial)


def all_trials(config: NodeConfig) -> list[TrialEligibility]:
    files = trial_files(config)
    if not files:
        raise ConfigError(f"trials: the trials folder {str(config.trials)!r} holds no trial files (.yaml, .json)")
    return [load_trial(p) for p in files.values()]


# ---- where a look-up may come from ----------------------------------------------------------------
def peer_allowed(host: str | None, networks: list[str]) -> bool:
    """Whether the connection's peer address is inside one of `networks` (an IPv4 address mapped into
    IPv6, ::ffff:a.b.c.d, counts as a.b.c.d)."""
    if not host:
        return False
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False  # not an address (a Unix socket, a test client's name): not the site's network
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in ipaddress.ip_network(n, strict=False) for n in networks)


def proxied(header_names: list[str]) -> bool:
    return any(h.lower() in PROXY_HEADERS for h in header_names)


# ---- audit --------------------------------------------------------------------------------------------
def audit_candidates(audit: AuditLog, actor: str, trial: str, persons: int, via: str) -> None:
    audit.append("trial.candidates", actor, trial=trial, persons=persons, via=via)


def audit_match(audit: AuditLog, actor: str, trials_searched: int, trials_listed: int | None, via: str) -> None:
    """`trials_listed` None: no such person (the look-up is recorded all the same, the person never)."""
    audit.append("trial.match", actor, trials_searched=trials_searched, trials_listed=trials_listed,
                 person_found=trials_listed is not None, via=via)


def matched(cdm: Cdm, person_source_value: str, trials: list[TrialEligibility], audit: AuditLog, actor: str,
            via: str) -> list[TrialMatch]:
    """match_person, audited whether the person is found or not."""
    try:
        matches = match_person(cdm, person_source_value, trials)
    except UnknownPersonError:
        audit_match(audit, actor, len(trials), None, via)
        raise
    audit_match(audit, actor, len(trials), len({m.trial for m in matches}), via)
    return matches


def audit_refused(audit: AuditLog, actor: str, reason: str) -> None:
    audit.append("trial.refused", actor, reason=reason)


# ---- the local commands (on the node's machine, no HTTP) ---------------------------------------------
def _actor() -> str:
    try:
        return f"clinician:{getpass.getuser()}"
    except Exception:  # no user name in this environment (containers)
        return "clinician:local"


def _open_cdm(config: NodeConfig) -> Cdm:
    return Cdm.open(config.cdm, cdm_schema=config.cdm_schema, vocab_schema=config.vocab_schema,
                    results_schema=config.results_schema, create=False, read_only=True)


def _audit_log(config: NodeConfig) -> AuditLog:
    config.state_dir.mkdir(parents=True, exist_ok=True)
    return AuditLog(config.state_dir / "audit.jsonl")


def local_candidates(config: NodeConfig, trial: str) -> CandidateList:
    """`mercia trial candidates`: read the site's CDM directly; audited as the local user."""
    t = resolve_trial(config, trial)
    with _open_cdm(config) as cdm:
        found = find_candidates(cdm, t)
    audit_candidates(_audit_log(config), _actor(), t.ref, len(found.candidates), via="cli")
    return found


def local_match(config: NodeConfig, person_source_value: str) -> tuple[int, list[TrialMatch]]:
    """`mercia trial match`: (trials searched, the matches); audited without the person."""
    trials = all_trials(config)
    with _open_cdm(config) as cdm:
        return len(trials), matched(cdm, person_source_value, trials, _audit_log(config), _actor(), via="cli")
