"""The dashboard in a real headless Chromium, while a real federation runs.

A `fedtune-server serve` process, two `fedtune-client train` processes, and the page opened
through the sign-in form with a viewer token: the round advances on the page without a
reload (a marker set in the document before the rounds ran is still there), the three plots
are drawn on their canvases, and the browser reports no Content-Security-Policy violation.
A screenshot goes to the test's directory and, when FEDTUNE_SCREENSHOT_DIR is set, there too.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from client_sdk.credentials import load
from client_sdk.secagg import SecureRound
from lab.local_federation import (
    ClientProcess,
    ServerProcess,
    register,
    start_client,
    start_server,
    train_args,
)
from shared.spec import RoundsSpec, load_spec, parse_spec
from tests.e2e.test_federation_e2e import EXAMPLES
from tests.images import write_image_folder

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ORGS = ["hospital-north", "hospital-south"]
TOTAL_ROUNDS = 5
WINDOW = (1440, 1000)
# The mean series' colour in dashboard.js (#2563eb): present only where a series is drawn.
MEAN_RGB = (37, 99, 235)

_PIXELS_OF = """
const canvas = document.querySelector(arguments[0] + " canvas");
if (!canvas) return null;
const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
let painted = 0, series = 0;
for (let i = 0; i < data.length; i += 4) {
  if (data[i + 3] > 0) painted++;
  if (Math.abs(data[i] - arguments[1]) < 12 && Math.abs(data[i + 1] - arguments[2]) < 12
      && Math.abs(data[i + 2] - arguments[3]) < 12 && data[i + 3] > 200) series++;
}
const url = canvas.toDataURL("image/png");
return {painted: painted, series: series, width: canvas.width, url_length: url.length};
"""


def _browser(*extra: str) -> Any:
    """A headless Chromium driven through the system's ChromeDriver (skip when missing), with
    `extra` command-line switches."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        missing = " and ".join(
            n for n, p in (("chromium", chromium), ("chromedriver", chromedriver)) if p is None
        )
        pytest.skip(f"the dashboard browser test needs {missing} on PATH (apt: chromium, "
                    "chromium-driver)")  # fmt: skip
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                f"--window-size={WINDOW[0]},{WINDOW[1]}", "--hide-scrollbars",
                "--force-device-scale-factor=1", *extra):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)


@pytest.fixture
def driver() -> Iterator[Any]:
    browser = _browser()
    try:
        yield browser
    finally:
        browser.quit()


def _federation(server: ServerProcess, tmp_path: Path) -> tuple[str, list[list[str]]]:
    """A tiny CLIP federation of TOTAL_ROUNDS rounds; each organisation's train arguments."""
    spec = load_spec(EXAMPLES / "tiny-clip-bias.yaml")
    lt = spec.local_training.model_copy(update={"epochs": 1, "batch_size": 8, "max_steps": 3})
    rounds = RoundsSpec(total=TOTAL_ROUNDS, quorum=2, min_updates=2, deadline_s=600)
    spec = spec.model_copy(
        update={"name": "tiny-clip-bias-demo", "rounds": rounds, "local_training": lt}
    )
    admin = server.admin()
    info = admin.create_federation(spec)
    args = []
    for i, org in enumerate(ORGS):
        creds = tmp_path / org / "credentials.json"
        register(server, admin.create_enrollment_token(info.id).token, org, creds)
        data = write_image_folder(tmp_path / org / "data", spec.task.classes, 4, seed=i)
        args.append(train_args(server, creds, data, tmp_path / org / "work"))
    return info.id, args


def _viewer_token(server: ServerProcess) -> tuple[str, str]:
    """A new viewer token's (id, token)."""
    with server.http() as admin:
        r = admin.post("/v1/viewer-tokens", json={"name": "browser-test"})
    assert r.status_code == 201, r.text
    return r.json()["id"], r.json()["token"]


def _wait(what: str, check: Any, timeout: float, clients: list[ClientProcess]) -> Any:
    """Poll `check()` until it returns something truthy; fail with the clients' output."""
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        found = check()
        if found:
            return found
        time.sleep(0.25)
    logs = "\n".join(c.output()[-2000:] for c in clients)
    pytest.fail(f"timed out waiting for {what}\n{logs}")


def test_the_dashboard_follows_a_live_federation(
    server: ServerProcess, driver: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    fid, args = _federation(server, tmp_path)
    page = f"{server.url}/dashboard/federations/{fid}"

    driver.get(page)  # signed out: the sign-in page, which returns to this page after
    assert "/dashboard/login" in driver.current_url
    viewer_id, viewer_token = _viewer_token(server)
    _sign_in(driver, viewer_token)
    _wait("the federation page", lambda: driver.current_url == page, 30, [])
    _wait("the first live update", lambda: "updated" in _text(driver, "live-indicator"), 30, [])
    assert _text(driver, "round-number") == "1" and _text(driver, "fed-status") == "running"
    assert driver.get_cookie("fedtune_dashboard")["httpOnly"] is True
    driver.execute_script("window.fedtuneMarker = 'set before the rounds ran';")

    clients = [
        start_client(org, a, tmp_path / org / "client.log")
        for org, a in zip(ORGS, args, strict=True)
    ]
    try:
        seen = {int(_text(driver, "round-number"))}

        def completed() -> bool:  # the status first: a poll may land between the two reads
            done = _text(driver, "fed-status") == "completed"
            seen.add(int(_text(driver, "round-number")))
            return done

        _wait("the federation to complete on the page", completed, 400, clients)
        codes = [c.wait(timeout=120) for c in clients]
    finally:
        for c in clients:
            if c.proc.poll() is None:
                c.proc.kill()
                c.proc.wait()

    assert codes == [0, 0], "\n".join(c.output()[-3000:] for c in clients)
    assert driver.execute_script("return window.fedtuneMarker") == "set before the rounds ran"
    assert driver.current_url == page
    assert min(seen) == 1 and max(seen) == TOTAL_ROUNDS and len(seen) >= 2, seen
    _wait("the history table", lambda: len(_rows(driver, "history")) == TOTAL_ROUNDS, 10, [])
    assert [len(r.find_elements(By.TAG_NAME, "td")) for r in _rows(driver, "history")] == [9] * 5
    organisations = [r.find_element(By.TAG_NAME, "td").text for r in _rows(driver, "organisations")]
    assert organisations == ORGS
    for chart in ("#chart-accuracy", "#chart-loss", "#chart-bytes"):
        pixels = driver.execute_script(_PIXELS_OF, chart, *MEAN_RGB)
        assert pixels is not None, f"{chart} has no canvas"
        assert pixels["painted"] > 1000 and pixels["series"] > 50, (chart, pixels)
    violations = [
        e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]
    ]
    assert violations == []

    _screenshot(driver, tmp_path)

    with server.http() as admin:  # revoked while the page is open: it goes to sign-in, says why
        assert admin.delete(f"/v1/viewer-tokens/{viewer_id}").status_code == 200
    _wait("the sign-in page", lambda: "/dashboard/login" in driver.current_url, 30, [])
    assert "no longer accepted" in driver.find_element(By.CSS_SELECTOR, ".error").text
    _sign_in(driver, server.admin_token)  # the admin token opens it too
    _wait("the federation page", lambda: driver.current_url == page, 30, [])
    assert "admin" in _text(driver, "who")
    driver.find_element(By.CSS_SELECTOR, "header nav a").click()  # the federations list
    _wait("the list's live update", lambda: "updated" in _text(driver, "live-indicator"), 30, [])
    (row,) = _rows(driver, "federations")
    assert row.text.split()[:4] == ["tiny-clip-bias-demo", fid, "completed", "5"]
    driver.find_element(By.CSS_SELECTOR, "header form button").click()
    _wait("the sign-in page", lambda: "/dashboard/login" in driver.current_url, 30, [])
    driver.get(page)
    assert "/dashboard/login" in driver.current_url  # signed out: the cookie is gone


def test_the_secure_aggregation_card_follows_the_protocol(
    server: ServerProcess, driver: Any, tmp_path: Path
) -> None:
    """A secure federation's page shows its protocol beside the round, and redraws it from
    the live JSON: the key advertisements of two organisations (the SDK's protocol steps,
    in-process) move the card from advertise 0 / 2 to share 0 / 2 without a reload."""
    spec = load_spec(EXAMPLES / "tiny-clip-bias.yaml").model_copy(
        update={"rounds": RoundsSpec(total=1, quorum=2, min_updates=2, deadline_s=600)}
    )
    spec = parse_spec({**spec.model_dump(), "secure_aggregation": {"neighbours": None}})
    admin = server.admin()
    info = admin.create_federation(spec)
    rounds = []
    for org in ORGS:
        creds = tmp_path / org / "credentials.json"
        register(server, admin.create_enrollment_token(info.id).token, org, creds)
        c = load(creds)
        sdk = server.client(c.api_key)
        rounds.append(SecureRound(sdk, info.spec, info.id, c.client_id, tmp_path / org / "work"))
    page = f"{server.url}/dashboard/federations/{info.id}"
    driver.get(page)
    _sign_in(driver, server.admin_token)
    _wait("the federation page", lambda: driver.current_url == page, 30, [])
    _wait("the first live update", lambda: "updated" in _text(driver, "live-indicator"), 30, [])
    card = ("secure-phase", "secure-answered", "secure-expected", "secure-attempt")
    assert [_text(driver, i) for i in card] == ["advertise", "0", "2", "1"]
    driver.execute_script("window.fedtuneMarker = 'set before the keys';")

    for r in rounds:
        r.advertise(1, 1)

    def sharing() -> bool:
        return [_text(driver, i) for i in card] == ["share", "0", "2", "1"]

    _wait("the share phase on the page", sharing, 30, [])
    assert driver.execute_script("return window.fedtuneMarker") == "set before the keys"
    assert _text(driver, "secure-left") not in ("", "–")
    violations = [
        e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]
    ]
    assert violations == []


def test_the_dashboard_works_over_https(tls: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """Served over TLS (the test CA's certificate, trusted by its public key pin only), the
    page is a secure context, loads its script and chart library from the same origin, keeps
    the sign-in cookie Secure and HttpOnly, updates itself, and breaks no CSP rule."""
    cert = x509.load_pem_x509_certificate(tls[0].read_bytes())  # the chain's first: the leaf
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    pin = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    server = start_server(tmp_path / "server", tls=tls)
    driver = _browser(f"--ignore-certificate-errors-spki-list={pin}")
    try:
        info = server.admin().create_federation(load_spec(EXAMPLES / "tiny-clip-bias.yaml"))
        page = f"{server.url}/dashboard/federations/{info.id}"
        assert page.startswith("https://")
        driver.get(page)
        _sign_in(driver, server.admin_token)
        _wait("the federation page", lambda: driver.current_url == page, 30, [])
        _wait("a live update", lambda: "updated" in _text(driver, "live-indicator"), 30, [])

        cookie = driver.get_cookie("fedtune_dashboard")
        assert cookie["secure"] is True and cookie["httpOnly"] is True
        assert driver.execute_script("return window.isSecureContext") is True
        assert driver.execute_script("return typeof uPlot") == "function"
        assert _text(driver, "round-number") == "1"
        errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
    finally:
        driver.quit()
        server.stop()


def _sign_in(driver: Any, token: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "sign-in").click()


def _text(driver: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    text: str = driver.find_element(By.ID, element_id).text
    return text


def _rows(driver: Any, table_id: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    rows: list[Any] = driver.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr")
    return rows


def _screenshot(driver: Any, tmp_path: Path) -> None:
    shot = tmp_path / "dashboard.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    target = os.environ.get("FEDTUNE_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, Path(target) / "dashboard.png")
