"""The playground page (service/playground.py, service/playground/): served at /, /ui and /docs with a
Content-Security-Policy of its own origin, referencing no other host; and, in headless Chromium
against a real `bentoml serve` with token authentication on (slow: `make browser-test`, which
installs Debian's chromium and chromium-driver), a digit drawn stroke by stroke, the live latency
strip, the VAE's latent interpolation, a model page with its training curve and the curl and
tritonclient calls of what the page did (the tritonclient script run against the server), a shape
uploaded for its class activation map, text streamed character by character, 4xx messages shown,
and not one request to another host."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
from PIL import Image
from starlette.responses import PlainTextResponse
from starlette.testclient import TestClient

from service.auth import TokenAuth
from service.playground import CSP, FILES, Playground
from service.settings import Settings

from ..conftest import start_server, stop_server, wait_ready

CHROMIUM = os.environ.get("EE559_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("EE559_CHROMEDRIVER", "/usr/bin/chromedriver")
TOKEN = "playground-test-token"
# Any URL naming a host: in the page's files, only this server's own routes may be requested.
URL = re.compile(r"""(?:https?:|wss?:)?//[A-Za-z0-9.-]+""")


def test_page_files_name_no_other_host():
    """Every file of the page: no absolute URL at all (requests are relative to this origin), no
    inline script or style, every script a file of the page."""
    files = sorted(FILES.iterdir())
    assert {f.suffix for f in files} >= {".html", ".js", ".css"}
    for f in files:
        if f.suffix == ".png":
            continue
        text = f.read_text()
        assert not URL.search(text.replace("://${", "")), f"{f.name} names a host: {URL.search(text)}"
        if f.suffix == ".html":
            assert not re.search(r"<script(?![^>]*\bsrc=\"/ui/)", text), "inline script"
            assert "style=" not in text and "<style" not in text, "inline style"
            assert re.findall(r'(?:src|href)="([^"]+)"', text) and all(
                u.startswith(("/ui/", "#")) for u in re.findall(r'(?:src|href)="([^"]+)"', text)
            )


def test_page_is_public_and_everything_else_keeps_its_token():
    """In front of the token check (as service.py adds it): the page and its files need no token,
    every other route still does."""

    async def api(scope, receive, send):
        await PlainTextResponse("api")(scope, receive, send)

    app = Playground(TokenAuth(api, Settings(api_token=TOKEN)))
    client = TestClient(app)
    for path in ("/", "/ui", "/docs", "/ui/playground.js", "/ui/playground.css"):
        r = client.get(path)
        assert r.status_code == 200, path
        assert r.headers["content-security-policy"] == CSP and r.headers["x-content-type-options"] == "nosniff"
    assert client.get("/ui/playground.js").headers["content-type"].startswith("text/javascript")
    assert client.head("/").content == b""
    assert client.get("/models").status_code == 401
    assert client.post("/").status_code == 401  # only GET and HEAD of the page's own paths
    assert client.get("/ui/../service/auth.py").status_code == 401  # not a file of the page: passed on
    assert client.get("/models", headers={"Authorization": f"Bearer {TOKEN}"}).text == "api"


def test_served_page_replaces_bentomls_and_loads_only_this_origin(server):
    """The real server's / and /docs are the playground, with its policy; BentoML's page (Google Tag
    Manager, badges) is gone."""
    for path in ("/", "/ui", "/docs"):
        r = requests.get(server + path, timeout=10)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert r.headers["content-security-policy"] == CSP
        assert "default-src 'self'" in CSP and "http" not in CSP
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "googletagmanager" not in r.text and not URL.search(r.text)
        for asset in re.findall(r'(?:src|href)="(/ui/[^"]+)"', r.text):
            a = requests.get(server + asset, timeout=10)
            assert a.status_code == 200 and a.headers["x-content-type-options"] == "nosniff"
            if not asset.endswith(".png"):
                assert not URL.search(a.text.replace("://${", "")), asset
    script = requests.get(server + "/ui/playground.js", timeout=10).text
    for module in re.findall(r'from "\./([a-z]+\.js)"', script):  # the page's own modules
        assert requests.get(f"{server}/ui/{module}", timeout=10).status_code == 200


# -- in a real browser ------------------------------------------------------------------------------
def _browser_missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (requirements-dev.txt)"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            return f"{path} is missing: `make browser-test` installs Debian's chromium and chromium-driver"
    return None


@pytest.fixture(scope="module")
def token_server(exported, runs: Path):
    """A real `bentoml serve` that wants a token for everything but the page and the probes."""
    url, proc = start_server({"EE559_API_TOKEN": TOKEN, "EE559_MAX_NEW_TOKENS": "2000"}, log=runs / "playground.log")
    try:
        wait_ready(url, proc)
        yield url
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def browser():
    reason = _browser_missing()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",  # as root in a container
        "--disable-dev-shm-usage",
        "--window-size=1280,1100",
        "--disable-background-networking",  # the browser's own calls home are not the page's
        "--disable-component-update",
        "--no-first-run",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    """Where the screenshots go: EE559_SCREENSHOTS (`make browser-test`: docs/images), else a tmp dir."""
    folder = Path(os.environ.get("EE559_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _wait(driver, condition, timeout: float = 20, what: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: condition(d), message=what)


def _text(driver, element_id: str) -> str:
    return driver.execute_script(f"return document.getElementById('{element_id}')?.textContent ?? ''")


def _draw(driver, element_id: str, strokes: list[list[tuple[float, float]]]) -> list[str]:
    """Draws each stroke (points in [0, 1] of the canvas) with the mouse; the label after each."""
    from selenium.webdriver.common.action_chains import ActionChains

    pad = driver.find_element("id", element_id)
    w, h = pad.size["width"], pad.size["height"]
    labels = []
    for stroke in strokes:
        chain = ActionChains(driver, duration=10)
        x, y = stroke[0]
        chain.move_to_element_with_offset(pad, int((x - 0.5) * w), int((y - 0.5) * h)).click_and_hold()
        for (x0, y0), (x1, y1) in itertools.pairwise(stroke):
            for _ in range(7):  # many small moves: the bars update as it draws
                chain.move_by_offset(int((x1 - x0) * w / 7), int((y1 - y0) * h / 7))
        chain.release().perform()
        time.sleep(0.5)
        labels.append(_text(driver, "classify-label"))
    return labels


def _shape_png(server: str, tmp: Path) -> tuple[Path, str]:
    """A held-out shape from the ResNet's card (the model never saw it) as a PNG file, and its label."""
    card = requests.get(f"{server}/models/resnet", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).json()
    pixels = np.asarray(card["examples"]["inputs"][0], dtype=np.float32)  # (3, 32, 32)
    path = tmp / "shape.png"
    image = Image.fromarray((pixels.transpose(1, 2, 0) * 255).round().astype(np.uint8))
    image.resize((128, 128), Image.Resampling.NEAREST).save(path)
    return path, card["labels"][card["examples"]["targets"][0]]


_LATENCY = re.compile(r"p50 (\d+(?:\.\d+)?) ms p99 (\d+(?:\.\d+)?) ms")
_CURVE_LOADED = "const i = document.getElementById('model-loss-curve'); return !!i && i.complete && i.naturalWidth > 0"
_SNIPPETS = """return {curl: [...document.querySelectorAll('#view-model pre.curl:not(.python)')].map((p) => p.textContent),
    python: [...document.querySelectorAll('#view-model pre.python')].map((p) => p.textContent)};"""


def _run_tritonclient(script: str, tmp: Path) -> dict[str, list]:
    """The page's tritonclient script, run as a user would (the token from the environment): its
    outputs by name."""
    assert "httpclient.InferenceServerClient(" in script and "set_data_from_numpy(x)" in script
    assert 'headers={"Authorization": "Bearer " + os.environ["EE559_API_TOKEN"]}' in script and TOKEN not in script
    path = tmp / "snippet.py"
    path.write_text(script)
    run = subprocess.run(
        [sys.executable, str(path)],
        env={**os.environ, "EE559_API_TOKEN": TOKEN},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout)


def _requested_urls(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] in ("Network.requestWillBeSent", "Network.webSocketCreated"):
            urls.append(message["params"].get("request", message["params"]).get("url", ""))
    return urls


@pytest.mark.slow
def test_playground_in_a_real_browser(browser, token_server, shots: Path, tmp_path: Path):
    driver, url = browser, token_server
    urls: list[str] = []
    driver.get(url + "/")
    # With authentication on and no token yet: the server's 401 message, shown as it is.
    _wait(driver, lambda d: "401" in _text(d, "error"), what="the 401 message")
    assert "missing or wrong bearer token" in _text(driver, "error")
    token = driver.find_element("id", "token")
    token.send_keys(TOKEN)
    driver.execute_script("arguments[0].dispatchEvent(new Event('change'))", token)
    _wait(driver, lambda d: "Classify" in _text(d, "tabs") and _text(d, "status-ready") == "ready", what="the tabs")
    assert not driver.find_element("id", "error").is_displayed()

    # Classify: a 7 drawn in two strokes, the label shown after each stroke (top-k bars live).
    driver.find_element("id", "tab-classify").click()  # the token stays in the page: no reload
    driver.find_element("css selector", "#classify-model option[value='lenet']").click()
    labels = _draw(driver, "classify-pad", [[(0.25, 0.2), (0.75, 0.2)], [(0.75, 0.2), (0.55, 0.55), (0.42, 0.85)]])
    assert all(labels), labels
    _wait(driver, lambda d: _text(d, "classify-label") == "7", timeout=10, what=f"label 7, shown {labels}")
    assert len(driver.find_elements("css selector", "#classify-bars .bar")) == 5
    assert "curl -s -X POST " + url + "/classify" in _text(driver, "view-classify")
    driver.save_screenshot(str(shots / "playground-classify.png"))
    urls += _requested_urls(driver)

    # The status strip: latency quantiles and request rate from /metrics, after that traffic.
    _wait(driver, lambda d: _LATENCY.fullmatch(_text(d, "status-latency")), timeout=15, what="p50/p99 in the strip")
    rate = re.fullmatch(r"(\d+\.\d+) req/s", _text(driver, "status-rate"))
    assert rate and float(rate[1]) > 0, _text(driver, "status-rate")
    latency = _LATENCY.fullmatch(_text(driver, "status-latency"))
    assert latency and 0 < float(latency[1]) <= float(latency[2]) < 1000, _text(driver, "status-latency")

    # Generate: the VAE's walk between the latent codes of two seeds, a row of distinct images.
    driver.find_element("id", "tab-generate").click()
    driver.find_element("css selector", "#generate-model option[value='vae']").click()
    steps = driver.find_element("id", "interpolate-steps")
    steps.clear()
    steps.send_keys("6")
    driver.find_element("id", "interpolate-run").click()
    _wait(driver, lambda d: d.execute_script("return document.getElementById('interpolate-row').dataset.drawn") == "6")
    cells = driver.execute_script(
        """const c = document.getElementById('interpolate-row'), s = c.height, ctx = c.getContext('2d');
        return Array.from({length: Math.round(c.width / s)}, (_, i) => Array.from(ctx.getImageData(i * s, 0, s, s).data.filter((_, k) => k % 4 === 0)));"""
    )
    cells = np.asarray(cells, dtype=np.float64)
    assert len(cells) == 6 and all(cell.std() > 10 for cell in cells), "a blank image in the row"
    gaps = [np.abs(a - b).mean() for a, b in itertools.pairwise(cells)]
    assert min(gaps) > 0 and max(gaps) < np.abs(cells[0] - cells[-1]).mean(), gaps  # a walk, step by step
    driver.save_screenshot(str(shots / "playground-interpolate.png"))
    urls += _requested_urls(driver)

    # The model pages: the training curve the export carried, and the calls the page made, as curl
    # and as a tritonclient script that runs here and gives what the page was answered.
    driver.execute_script("window.location.hash = '#/models/lenet'")  # not a reload: the token stays
    _wait(driver, lambda d: d.execute_script(_CURVE_LOADED), what="the loss curve image")
    assert driver.execute_script("return document.getElementById('model-loss-curve').src").startswith("blob:")
    snippets = driver.execute_script(_SNIPPETS)
    assert any(f"curl -s -X POST {url}/classify" in c for c in snippets["curl"]), snippets["curl"]
    outputs = _run_tritonclient(snippets["python"][0], tmp_path)
    assert int(np.argmax(outputs["logits"][0])) == 7  # the label the page showed for the drawn 7
    driver.execute_script("document.getElementById('model-loss-curve').scrollIntoView()")
    driver.save_screenshot(str(shots / "playground-card.png"))
    driver.execute_script("window.location.hash = '#/models/vae_decoder'")
    _wait(driver, lambda d: d.execute_script(_CURVE_LOADED), what="the VAE's loss curve image")
    snippets = driver.execute_script(_SNIPPETS)
    walk = {"from_seed": 3, "to_seed": 7, "steps": 6}
    assert any(
        json.dumps({"model": "vae", "interpolate": walk}, separators=(",", ":")) in c for c in snippets["curl"]
    ), snippets["curl"]
    outputs = _run_tritonclient(snippets["python"][0], tmp_path)
    answer = requests.post(
        f"{url}/generate", json={"model": "vae", "interpolate": walk}, headers={"Authorization": f"Bearer {TOKEN}"}
    ).json()
    np.testing.assert_allclose(np.asarray(outputs["image"])[:, 0], answer["images"], atol=2e-3)
    urls += _requested_urls(driver)

    # Explain: a held-out shape uploaded; its class activation map drawn over it, hot and cold.
    shape, label = _shape_png(url, tmp_path)
    driver.find_element("id", "tab-explain").click()  # the token stays in the page: no reload
    driver.find_element("id", "explain-upload").send_keys(str(shape))
    _wait(driver, lambda d: d.execute_script("return document.getElementById('explain-overlay').dataset.drawn"))
    assert _text(driver, "explain-label").startswith(label)
    hot, cold = driver.execute_script(
        """const c = document.getElementById('explain-overlay');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let hot = 0, cold = 0;
        for (let i = 0; i < d.length; i += 4) { if (d[i] > d[i + 2] + 60) hot++; if (d[i + 2] > d[i] + 60) cold++; }
        return [hot, cold];"""
    )
    assert hot > 500 and cold > 500, (hot, cold)  # of 224 x 224: the heat map's both ends are there
    assert f"-F 'image=@{shape.name}'" in _text(driver, "view-explain")
    driver.save_screenshot(str(shots / "playground-explain.png"))
    urls += _requested_urls(driver)

    # Text: streamed; every character its own DOM update, over many separate reads of the stream.
    driver.find_element("id", "tab-generate_text").click()  # the token stays in the page: no reload
    _wait(driver, lambda d: d.find_element("id", "text-prompt").get_property("value"), what="the card's prompt")
    driver.find_element("css selector", "#generate_text-model option[value='gpt']").click()
    _wait(driver, lambda d: d.find_element("id", "text-prompt").get_property("value"))
    limit = driver.find_element("id", "text-max-tokens")
    limit.clear()
    limit.send_keys("1500")
    driver.execute_script(
        """window.arrivals = [];
        new MutationObserver((records) => { window.arrivals.push(records.length); })
          .observe(document.getElementById('text-generated'), {childList: true});"""
    )
    driver.find_element("id", "text-start").click()
    _wait(driver, lambda d: "characters" in _text(d, "text-summary"), timeout=60, what="the generation's end")
    arrivals = driver.execute_script("return window.arrivals")
    tokens = int(_text(driver, "text-summary").split()[0])
    generated = driver.execute_script("return document.getElementById('text-generated').childNodes.length")
    assert tokens == 1500 and generated == tokens and sum(arrivals) == tokens  # one text node per character
    assert len(arrivals) >= 10, arrivals  # rendered as they came, not all at once at the end
    assert driver.execute_script("return document.getElementById('text-generated').children.length") == 0  # no HTML
    driver.save_screenshot(str(shots / "playground-text.png"))

    # A 400: characters the model never saw; the server's message shown to the user.
    prompt = driver.find_element("id", "text-prompt")
    prompt.clear()
    prompt.send_keys("snow \u2603")
    driver.find_element("id", "text-start").click()
    _wait(driver, lambda d: _text(d, "error").startswith("400: "), what="the 400 message")
    assert "'prompt' holds characters the model never saw" in _text(driver, "error")
    driver.save_screenshot(str(shots / "playground-error.png"))
    urls += _requested_urls(driver)

    origin = urlsplit(url)
    assert urls, "no request captured"
    urls = [u.removeprefix("blob:") for u in urls]  # blob: URLs the page made, named by its own origin
    foreign = [u for u in urls if urlsplit(u).netloc != origin.netloc or urlsplit(u).scheme != origin.scheme]
    assert not foreign, f"requests to another origin: {foreign}"
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and e["source"] != "network"]
    assert not severe, severe  # no script error, no Content-Security-Policy violation
