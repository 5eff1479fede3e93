"""Mercia: federated health-data research on the OMOP Common Data Model."""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # mercia.Client is imported on first use: it needs httpx (the web extra), the rest of Mercia does not.
    if name == "Client":
        from mercia.federation.client import Client

        return Client
    raise AttributeError(f"module 'mercia' has no attribute {name!r}")
