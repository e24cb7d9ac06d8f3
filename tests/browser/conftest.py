"""The browser tests' shared fixtures: per test module, one ComfyUI server with the real frontend
(``comfy_page.real_frontend_server``) and one headless chromium on it, with the frontend's load
time (``ready_s``) and the console errors it logged while starting (``startup_errors``)."""
import pytest

from tests.browser import comfy_page, webdriver


@pytest.fixture(scope="module")
def server():
    return comfy_page.real_frontend_server()


@pytest.fixture(scope="module")
def browser(server):
    with webdriver.Chromium(width=1600, height=1000) as b:
        b.ready_s = comfy_page.open_comfy(b, server)
        b.startup_errors = comfy_page.errors(b)
        yield b
