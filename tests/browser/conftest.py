"""Debian's Chromium, driven by Playwright, against real servers on 127.0.0.1.

Nothing is downloaded: the browser is /usr/bin/chromium (`apt-get install -y chromium`). Where it
is missing the tests are skipped with that command as the reason, and the terminal summary says
which tests did not run.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from productflo.database import DatabaseUrl
from tests.conftest import ServerThread
from tests.system_programs import Requirement, missing_program

CHROMIUM = Path("/usr/bin/chromium")
INSTALL = "apt-get install -y chromium"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
TIMEOUT_MS = 20_000


def _missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if (missing := missing_program(CHROMIUM, INSTALL)) is not None:
        return missing
    if importlib.util.find_spec("playwright") is None:
        return (
            "the playwright package is missing: install it with `.venv/bin/pip install -e '.[dev]'`"
        )
    return None


REQUIREMENT = Requirement("browser", Path(__file__).resolve().parent, _missing())
if REQUIREMENT.missing is not None and importlib.util.find_spec("playwright") is None:
    collect_ignore_glob = ["test_*.py"]  # they import it: said in the summary below


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    REQUIREMENT.skip_missing(items)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    REQUIREMENT.summarize(terminalreporter)


@pytest.fixture
def browser(database_url: DatabaseUrl) -> Iterator[Any]:
    """One Chromium per test. Playwright's sync API keeps an event loop running on this thread
    while it lives, where asyncio.run (the database fixtures) cannot run: so it starts after the
    test's database and stops before it is dropped, and never outlives the test."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def new_context(browser: Any) -> Iterator[Any]:
    """`new_context(**options)`: a fresh browser profile (its own localStorage), closed after.
    An uncaught error in any of its pages fails the test."""
    contexts: list[Any] = []
    errors: list[str] = []

    def make(**options: Any) -> Any:
        options.setdefault("viewport", {"width": 1100, "height": 760})
        context = browser.new_context(**options)
        context.set_default_timeout(TIMEOUT_MS)
        context.on("page", lambda page: page.on("pageerror", lambda e: errors.append(str(e))))
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        context.close()
    assert not errors, f"the page threw: {errors}"


@pytest.fixture
def restart() -> Iterator[Any]:
    """`restart(server, while_down)`: stop a server, call `while_down()`, and start another on
    its database and its port, where the pages it served look for it again; the new one is
    stopped after the test."""
    started: list[ServerThread] = []

    def again(server: ServerThread, while_down: Callable[[], None]) -> ServerThread:
        server.stop()
        while_down()
        replacement = ServerThread(server.settings, server.database)
        replacement.server.config.port = server.port
        replacement.start()
        started.append(replacement)
        return replacement

    yield again
    for server in started:
        server.stop()


@pytest.fixture
def screenshot(request: pytest.FixtureRequest) -> Any:
    """`screenshot(page, state)` saves tests/browser/screenshots/<test>-<state>.png."""
    SCREENSHOTS.mkdir(exist_ok=True)

    def take(page: Any, state: str) -> None:
        page.screenshot(path=str(SCREENSHOTS / f"{request.node.name}-{state}.png"))

    return take
