"""The portal in a real browser (Debian's Chromium driven by Playwright) against a hub on 127.0.0.1.

Flows: sign in (by keyboard only), search a concept, open it, an admin adds a user who then signs in;
the refusals a browser sees (a researcher on an admin page, an expired session). Every page is checked
with axe-core (WCAG 2.0/2.1 A and AA rules) and must have no serious or critical violation; axe-core's
script comes from the axe-playwright-python package (a PyPI package that bundles axe.min.js), injected
from its file, never from the network. No page loads anything from another origin. Screenshots of
each page go to the artefacts folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from federation_support import HubServer
from test_portal import PASSWORD, accounts, add_user, start_hub

pytestmark = pytest.mark.browser

T2D = 201826


def axe_script() -> Path:
    try:
        import axe_playwright_python
    except ImportError:
        pytest.fail("axe-playwright-python is not installed (pip install axe-playwright-python): it bundles axe-core")
    path = Path(axe_playwright_python.__file__).parent / "axe.min.js"
    assert path.is_file(), path
    return path


def check_a11y(page: Any, name: str) -> None:
    """axe-core on the page as it is now: no serious or critical violation (WCAG 2.x A and AA)."""
    page.add_script_tag(path=str(axe_script()))
    result = page.evaluate("""async () => {
        const r = await axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']}});
        return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                       nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)}));
    }""")
    bad = [v for v in result if v["impact"] in ("serious", "critical")]
    assert bad == [], f"{name}: {bad}"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    root = tmp_path_factory.mktemp("portal-browser")
    server = start_hub(root)
    with server:
        with server.client(server.admin_token) as admin:
            admin.add_node("east", "http://127.0.0.1:9", "t-east")
            admin.add_node("west", "http://127.0.0.1:9", "t-west")
            admin.add_project("proj", ["east", "west"])
        add_user(server, "root", "admin", ["*"])
        add_user(server, "rita", "researcher", ["proj"])
        yield server


@pytest.fixture
def context(chromium: Any, hub: HubServer) -> Iterator[Any]:
    # bypass_csp: the test injects axe-core; test_the_policy_blocks_inline_scripts checks the policy itself
    ctx = chromium.new_context(viewport={"width": 1280, "height": 900}, base_url=hub.url, bypass_csp=True)
    ctx.requests = []  # type: ignore[attr-defined]
    ctx.errors = []  # type: ignore[attr-defined]
    ctx.on("request", lambda r: ctx.requests.append(r.url))
    ctx.on("console", lambda m: ctx.errors.append(m.text) if m.type == "error" else None)
    yield ctx
    assert [u for u in ctx.requests if not u.startswith(hub.url)] == []  # nothing from elsewhere
    ctx.close()


def sign_in(page: Any, name: str, artifacts: Path | None = None, shot: str = "portal-sign-in") -> None:
    """By keyboard only: the sign-in form's fields in tab order, Enter to send (the hub's and a node's
    portal share the form); with `artifacts`, its screenshot `shot`.png and the axe check."""
    page.goto("/portal/")
    assert page.url.endswith("/portal/sign-in")
    page.keyboard.press("Tab")  # the skip link comes first
    assert page.evaluate("document.activeElement.className") == "skip-link"
    page.focus("#name")
    page.keyboard.type(name)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "password"
    page.keyboard.type(PASSWORD)
    if artifacts is not None:
        page.screenshot(path=str(artifacts / f"{shot}.png"), full_page=True)
        check_a11y(page, shot)
    page.keyboard.press("Enter")
    page.wait_for_url("**/portal/")


def test_sign_in_search_and_open_a_concept(context: Any, artifacts_dir: Path) -> None:
    page = context.new_page()
    sign_in(page, "rita", artifacts_dir)
    assert page.get_by_text("Signed in as").is_visible()
    page.screenshot(path=str(artifacts_dir / "portal-home.png"), full_page=True)
    check_a11y(page, "home")
    # researchers see no admin links
    assert page.get_by_role("link", name="Users").count() == 0
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Concepts").click()
    page.get_by_label("Name, synonym or code").fill("diabetes")
    page.get_by_label("Domain").select_option("Condition")
    page.get_by_label("Standard concepts only").check()
    page.get_by_label("Name, synonym or code").press("Enter")
    page.wait_for_url("**/portal/concepts?text=diabetes*")
    results = page.get_by_role("table")
    assert "best match first" in results.locator("caption").inner_text()
    page.screenshot(path=str(artifacts_dir / "portal-concept-search.png"), full_page=True)
    check_a11y(page, "concept search")
    page.get_by_role("link", name="Type 2 diabetes mellitus", exact=True).click()
    page.wait_for_url(f"**/portal/concepts/{T2D}")
    assert page.get_by_role("heading", level=1).inner_text() == "Type 2 diabetes mellitus"
    for caption in ("Maps to", "Ancestors"):
        assert page.locator("caption", has_text=caption).count() >= 1
    assert page.get_by_role("button", name="Ask the sites").is_visible()
    page.screenshot(path=str(artifacts_dir / "portal-concept.png"), full_page=True)
    check_a11y(page, "concept")
    # narrow window: nothing wider than the page
    page.set_viewport_size({"width": 400, "height": 900})
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    page.screenshot(path=str(artifacts_dir / "portal-concept-narrow.png"), full_page=True)
    check_a11y(page, "concept, narrow")  # a table that scrolls inside its region can be reached by keyboard
    assert context.errors == []


def test_an_admin_adds_a_user_who_signs_in(context: Any, hub: HubServer, artifacts_dir: Path) -> None:
    page = context.new_page()
    sign_in(page, "root")
    page.get_by_role("link", name="Users").first.click()
    page.wait_for_url("**/portal/admin/users")
    page.get_by_label("Name", exact=True).fill("walter")
    page.get_by_label("Role").select_option("researcher")
    page.get_by_role("group", name="Projects").get_by_label("proj", exact=True).check()
    page.get_by_label("First password").fill(PASSWORD)
    page.get_by_role("button", name="Add user").click()
    page.wait_for_load_state()
    assert page.get_by_role("status").inner_text() == "Added walter (researcher)."
    assert page.get_by_role("link", name="walter").is_visible()
    page.screenshot(path=str(artifacts_dir / "portal-admin-users.png"), full_page=True)
    check_a11y(page, "users")
    user = accounts(hub).user("walter")
    assert user is not None and user.role == "researcher" and user.projects == ("proj",)
    page.get_by_role("link", name="walter").click()
    page.screenshot(path=str(artifacts_dir / "portal-admin-user.png"), full_page=True)
    check_a11y(page, "user")
    for path, name in (("/portal/admin/projects", "projects"), ("/portal/admin/tokens", "tokens")):
        page.goto(path)
        page.screenshot(path=str(artifacts_dir / f"portal-admin-{name}.png"), full_page=True)
        check_a11y(page, name)
    page.get_by_label("Name", exact=True).fill("ci-bot")
    page.get_by_role("button", name="Create token").click()
    page.wait_for_load_state()
    assert page.locator("#new-token-value").inner_text().startswith("mct_")
    page.screenshot(path=str(artifacts_dir / "portal-admin-token-created.png"), full_page=True)
    check_a11y(page, "token created")
    # walter signs in, in another browser
    other = context.browser.new_context(base_url=hub.url)
    try:
        p2 = other.new_page()
        sign_in(p2, "walter")
        assert "walter" in p2.locator(".who").inner_text()
    finally:
        other.close()


def test_refusals_in_the_browser(context: Any, hub: HubServer, artifacts_dir: Path) -> None:
    page = context.new_page()
    sign_in(page, "rita")
    r = page.goto("/portal/admin/users")
    assert r.status == 403
    assert page.get_by_role("heading", level=1).inner_text() == "Not allowed"
    page.screenshot(path=str(artifacts_dir / "portal-403.png"), full_page=True)
    check_a11y(page, "403")
    accounts(hub).expire_sessions_of("rita")
    page.goto("/portal/concepts")
    assert "/portal/sign-in?next=" in page.url
    assert page.get_by_role("status").inner_text() == "Your session has ended: sign in again."
    page.screenshot(path=str(artifacts_dir / "portal-expired.png"), full_page=True)
    page.fill("#name", "rita")
    page.fill("#password", PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/portal/concepts")


def test_the_policy_blocks_inline_scripts(chromium: Any, hub: HubServer) -> None:
    """The Content Security Policy: only the portal's own script files run."""
    ctx = chromium.new_context(base_url=hub.url)
    try:
        page = ctx.new_page()
        page.goto("/portal/sign-in")
        with pytest.raises(Exception, match="Content Security Policy"):
            page.add_script_tag(content="window.injected = 1")
        assert page.evaluate("window.injected") is None
    finally:
        ctx.close()
