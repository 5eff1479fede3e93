"""The web portal: server-rendered pages for the people of a partnership, served by Mercia itself.

`web` holds what every page shares (templates, sessions, CSRF, error pages, static files), `accounts`
the local accounts (argon2id passwords, sessions, lockout), `hub_pages` the hub's pages, mounted by
`mercia.federation.hub.app.create_app` under /portal, and `node_pages` a node's custodian pages
(with `node_review`), mounted by `mercia.federation.node.app.create_app` under /portal.
"""

from mercia.portal.hub_pages import create_portal

__all__ = ["create_portal"]
