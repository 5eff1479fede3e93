"""The hub's configuration file (hub.yaml), written by `mercia hub init`.

    state_dir: state                 # registry (SQLite), audit log, pooled reports
    tokens: tokens.json              # hashed bearer tokens of researchers and admins
    signing_key: hub_signing.pem     # Ed25519; nodes trust its public key
    tls: {cert: hub.crt, key: hub.key}   # optional: serve HTTPS
    retry: {base_seconds: 0.5, max_seconds: 30}   # back-off towards a node that does not answer
    poll_seconds: 1.0                # how often the dispatcher asks nodes about open studies
    node_timeout_seconds: 30
    signature_valid_days: 7          # a node refuses a package whose hub signature is older
    portal:                          # the web portal under /portal (mercia.portal)
      vocabulary: vocab.duckdb       # a vocabulary to search (a DuckDB file or postgresql:// URL)
      session_minutes: 480           # a signed-in session ends this long after sign-in
      secure_cookie: true            # the session cookie only over HTTPS (and http://127.0.0.1)
      oidc:                          # optional: sign in with an OpenID Connect provider (portal/oidc.py)
        issuer: https://login.example.org/realms/partnership
        client_id: mercia-hub
        client_secret_file: oidc_secret.txt   # or client_secret_env: MERCIA_OIDC_SECRET; never in this file
        redirect_uri: https://hub.example.org/portal/sign-in/oidc/callback
        user_claim: preferred_username       # the claim holding the portal user's name
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import yaml
from pydantic import Field, field_validator, model_validator

from mercia.errors import ConfigError
from mercia.federation.config_file import StrictModel, Tls, read_config_mapping, validate_config


class Retry(StrictModel):
    base_seconds: float = Field(0.5, gt=0, description="first wait after a failed call")
    max_seconds: float = Field(30.0, gt=0, description="the longest wait between calls to one node")


class Oidc(StrictModel):
    """OpenID Connect sign-in for the portal (mercia.portal.oidc). The client secret is read from an
    environment variable or a file, never written in hub.yaml; a public client (PKCE only) has neither."""

    issuer: str = Field(description="the provider's issuer URL (https; http only on 127.0.0.1 or localhost)")
    client_id: str = Field(min_length=1, max_length=500, description="this hub's client id at the provider")
    client_secret_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                          description="the environment variable holding the client secret")
    client_secret_file: Path | None = Field(None, description="a file holding the client secret")
    redirect_uri: str = Field(description="this portal's callback as registered at the provider: "
                                          "https://HOST/portal/sign-in/oidc/callback")
    user_claim: str = Field("preferred_username", pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]{0,99}$",
                            description="the ID token claim holding the portal user's name")
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile", "email"], max_length=20)
    post_logout_redirect_uri: str | None = Field(
        None, description="where the provider's sign-out sends the browser back to, as registered at the "
                          "provider; default: the portal's sign-in page beside redirect_uri "
                          "(https://HOST/portal/sign-in)")
    label: str = Field("Sign in with single sign-on", max_length=100, description="the sign-in button's text")
    timeout_seconds: float = Field(10.0, gt=0, le=120, description="the longest wait for the provider")

    @field_validator("issuer", "redirect_uri", "post_logout_redirect_uri")
    @classmethod
    def _https(cls, v: str | None) -> str | None:
        if v is None:
            return v
        u = urlsplit(v)
        local = u.hostname in ("127.0.0.1", "localhost", "::1")
        if (u.scheme != "https" and not (u.scheme == "http" and local)) or not u.hostname or u.query or u.fragment:
            raise ValueError(f"{v!r}: use an https:// URL without query or fragment (http:// only on 127.0.0.1 "
                             "or localhost)")
        return v

    @model_validator(mode="after")
    def _one_secret(self) -> Oidc:
        if self.client_secret_env and self.client_secret_file:
            raise ValueError("give client_secret_env or client_secret_file, not both")
        if "openid" not in self.scopes:
            raise ValueError("scopes: include openid")
        return self


class Portal(StrictModel):
    vocabulary: str | None = Field(None, description="the vocabulary the portal searches: a DuckDB file or a "
                                                     "postgresql:// URL holding CONCEPT and its tables")
    vocabulary_schema: str | None = Field(None, description="the schema of the vocabulary tables")
    session_minutes: float = Field(480.0, gt=0, le=7 * 24 * 60, description="a session ends this long after sign-in")
    idle_minutes: float = Field(60.0, gt=0, le=7 * 24 * 60, description="a session unused this long ends")
    secure_cookie: bool = Field(True, description="mark the session cookie Secure (sent over HTTPS only)")
    max_failures: int = Field(5, ge=1, le=100, description="failed sign-ins that lock an account ...")
    lockout_minutes: float = Field(15.0, gt=0, le=24 * 60, description="... within this many minutes, for as long")
    max_client_failures: int = Field(30, ge=1, le=10_000, description="failed sign-ins from one client address, "
                                     "whatever the names, that block that address for lockout_minutes")
    oidc: Oidc | None = Field(None, description="OpenID Connect sign-in (optional)")


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
    portal: Portal = Portal()


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
    portal = data.get("portal")
    if isinstance(portal, dict) and isinstance(portal.get("vocabulary"), str):
        from mercia.cdm.engines import resolve_target

        data["portal"] = {**portal, "vocabulary": resolve_target(portal["vocabulary"], base)}
    portal = data.get("portal")
    oidc = portal.get("oidc") if isinstance(portal, dict) else None
    if isinstance(oidc, dict) and isinstance(oidc.get("client_secret_file"), str) \
            and not Path(oidc["client_secret_file"]).is_absolute():
        data["portal"] = {**portal, "oidc": {**oidc, "client_secret_file": str(base / oidc["client_secret_file"])}}
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
