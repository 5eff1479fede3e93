"""The web portal: server-rendered pages for the people of a partnership, served by Mercia itself.

`web` holds what every page shares (templates, sessions, CSRF, error pages, static files), `accounts`
the local accounts (argon2id passwords, sessions, lockout), `hub_pages` the hub's pages, mounted by
`mercia.federation.hub.app.create_app` under /portal. A node's custodian pages would be another module
beside `hub_pages`, built on the same `web` and `accounts`.
"""

from mercia.portal.hub_pages import create_portal

__all__ = ["create_portal"]
