"""The hub's configuration file (hub.yaml), written by `mercia hub init`.

    state_dir: state                 # registry (SQLite), audit log, pooled reports
    tokens: tokens.json              # hashed bearer tokens of researchers and admins
    signing_key: hub_signing.pem     # Ed25519; nodes trust its public key
    tls: {cert: hub.crt, key: hub.key}   # optional: serve HTTPS
    retry: {base_seconds: 0.5, max_seconds: 30}   # back-off towards a node that does not answer
    poll_seconds: 1.0                # how often the dispatcher asks nodes about open studies
    node_timeout_seconds: 30
    signature_valid_days: 7          # a node refuses a package whose hub signature is older
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import Field

from mercia.errors import ConfigError
from mercia.federation.config_file import StrictModel, Tls, read_config_mapping, validate_config


class Retry(StrictModel):
    base_seconds: float = Field(0.5, gt=0, description="first wait after a failed call")
    max_seconds: float = Field(30.0, gt=0, description="the longest wait between calls to one node")


class HubConfig(StrictModel):
    state_dir: Path
    tokens: Path
    signing_key: Path
    tls: Tls | None = None
    retry: Retry = Retry()
    poll_seconds: float = Field(1.0, gt=0)
    node_timeout_seconds: float = Field(30.0, gt=0)
    signature_valid_days: float = Field(
        7.0, gt=0, le=366, description="days a node accepts a package after the hub signed it")


def load_hub_config(path: str | Path) -> HubConfig:
    p = Path(path)
    data = read_config_mapping(p, "hub config", expected_keys="state_dir:, tokens:, signing_key:",
                               missing_hint="create one with mercia hub init")
    base = p.resolve().parent
    for key in ("state_dir", "tokens", "signing_key"):
        if isinstance(data.get(key), str) and not Path(data[key]).is_absolute():
            data[key] = str(base / data[key])
    if isinstance(data.get("tls"), dict):
        data["tls"] = {k: str(base / v) if isinstance(v, str) and not Path(v).is_absolute() else v
                       for k, v in data["tls"].items()}
    return validate_config(HubConfig, data, p, "hub config")


def init_hub(folder: str | Path) -> tuple[Path, str, str]:
    """A new hub in `folder`: hub.yaml, a signing key, and an admin token.

    Returns (config path, the public key PEM for the nodes, the admin token, shown once)."""
    from mercia.federation.auth import TokenStore, generate_signing_key

    f = Path(folder)
    config = f / "hub.yaml"
    if config.exists():
        raise ConfigError(f"{config} exists: this folder already holds a hub")
    f.mkdir(parents=True, exist_ok=True)
    public = generate_signing_key(f / "hub_signing.pem")
    (f / "hub_public.pem").write_text(public)
    config.write_text(yaml.safe_dump({"state_dir": "state", "tokens": "tokens.json",
                                      "signing_key": "hub_signing.pem"}))
    token = TokenStore(f / "tokens.json").issue("admin", "admin", ["*"])
    return config, public, token
