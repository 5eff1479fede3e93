"""The hub's word for who asked: a signed statement that it authenticated researcher R for this question.

A node keeps a privacy budget per researcher. When the hub asks on a researcher's behalf, the node must
know which researcher, and a bare `requested_by` field would let anyone holding the hub's token name a
fresh researcher for every question (and so get a fresh budget each time). So the hub signs, with the
Ed25519 key the node already trusts for packages, a statement binding the researcher's name, the
project, the definition asked about and an expiry; the node charges that researcher only when the
signature verifies, and refuses a `requested_by` without one. The signed message has its own prefix, so
it can never be taken for a package signature (which signs a bare content hash). A concept count is
attested the same way, its question (`concept_question`) standing for the definition, and so is a
trial feasibility question (`trial_question`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from mercia.errors import ConfigError

PREFIX = b"mercia feasibility attestation v1\n"
LIFETIME_SECONDS = 300  # long enough for the hub's fan-out and a slow node, short enough not to hoard


def definition_digest(definition: Any) -> str:
    """sha256 of the definition as sent (canonical JSON of the request's data)."""
    text = json.dumps(definition, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def concept_question(concept_id: int, descendants: bool, records: bool = False) -> dict[str, Any]:
    """What the hub attests for a concept count: the question, in a form no cohort definition takes. Asking
    for records too is another question (it costs more), attested as such; without them the statement is
    the one it always was."""
    question: dict[str, Any] = {"concept_id": int(concept_id), "descendants": bool(descendants)}
    if records:
        question["records"] = True
    return {"concept_count": question}


def trial_question(definition: Any, history_months: int) -> dict[str, Any]:
    """What the hub attests for a trial feasibility question: the definition and its history window."""
    return {"trial_feasibility": {"definition": definition, "history_months": int(history_months)}}


def _message(requested_by: str, project: str, digest: str, expires: int) -> bytes:
    body = {"requested_by": requested_by, "project": project, "definition": digest, "expires": expires}
    return PREFIX + json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")


def attest(private_pem_path: str | Path, requested_by: str, project: str, definition: Any,
           *, now: float | None = None) -> dict[str, Any]:
    """The hub's attestation (`{"expires", "signature"}`) that it authenticated `requested_by`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = serialization.load_pem_private_key(Path(private_pem_path).read_bytes(), password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{private_pem_path} is not an Ed25519 key")
    expires = int((time.time() if now is None else now) + LIFETIME_SECONDS)
    sig = key.sign(_message(requested_by, project, definition_digest(definition), expires))
    return {"expires": expires, "signature": base64.b64encode(sig).decode("ascii")}


def verify(public_pem: str, attestation: Any, requested_by: str, project: str, definition: Any,
           *, now: float | None = None) -> bool:
    """True only for the trusted hub's unexpired signature over exactly these researcher, project and
    definition."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    if not isinstance(attestation, dict):
        return False
    expires, signature = attestation.get("expires"), attestation.get("signature")
    if not isinstance(expires, int) or isinstance(expires, bool) or not isinstance(signature, str):
        return False
    t = time.time() if now is None else now
    if not t <= expires <= t + 2 * LIFETIME_SECONDS:  # expired, or made to last longer than a hub makes it
        return False
    try:
        key = serialization.load_pem_public_key(public_pem.encode("ascii"))
    except (ValueError, TypeError, UnicodeEncodeError) as e:
        raise ConfigError(f"the trusted hub key is not a PEM public key ({e})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ConfigError("the trusted hub key is not an Ed25519 public key")
    try:
        key.verify(base64.b64decode(signature, validate=True),
                   _message(requested_by, project, definition_digest(definition), expires))
    except (ValueError, TypeError, binascii.Error, InvalidSignature):
        return False
    return True
