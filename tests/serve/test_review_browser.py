"""The review page in real Chromium (headless, driven by Selenium) against a
server on a real port: sign in by typing the token, review three items by
keyboard only, then check the stored decisions."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from datamoat.feedback import Quarantine
from datamoat.serve import ServeConfig, create_app

from .serve_util import auth

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(DRIVER).exists()),
    reason="/review in real Chromium: apt-get install chromium chromium-driver",
)


class _Uvicorn:
    """An app under uvicorn, with its lifespan, on a free loopback port in a thread."""

    def __init__(self, app):
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)

    def __enter__(self) -> _Uvicorn:
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1000,900"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(DRIVER), options=opts)


def test_review_three_items_by_keyboard_in_chromium(reg, artifacts):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    classes = [str(c) for c in reg.r.version(reg.v1)["info"]["classes"]]
    reg.r.set_policy(reg.v1, {"per_class": dict.fromkeys(classes)}, actor="test")  # every answer needs review
    app = create_app(reg.r, ServeConfig(poll_interval_s=0.05, heartbeat_s=0.5, ort_threads=1))
    with _Uvicorn(app) as srv:
        preds = []
        for i in range(3):  # one request each: the queue serves them oldest first
            r = httpx.post(
                f"{srv.url}/v1/predict",
                json={"inputs": artifacts.x[i].tolist()},
                headers=auth(reg.tokens["predict"]),
                timeout=10,
            )
            preds.append(r.json()["predictions"][0])
        pids = [p["prediction_id"] for p in preds]
        want = [
            preds[0]["top_k"][1]["label"],  # "2", Enter: the second of the top-3
            classes[(classes.index(preds[1]["label"]) + 1) % len(classes)],  # ArrowDown, Enter: the next class
            preds[2]["label"],  # Enter: the model's answer as it stands
        ]

        driver = _chromium()
        try:
            driver.get(f"{srv.url}/review")
            wait = WebDriverWait(driver, 15)
            body = driver.find_element(By.TAG_NAME, "body")

            def showing(pid: str) -> None:
                wait.until(lambda d: body.get_attribute("data-item") == pid)

            def text(element_id: str) -> str:
                return driver.find_element(By.ID, element_id).text

            driver.find_element(By.ID, "token").send_keys(reg.tokens["review"] + Keys.ENTER)
            showing(pids[0])
            assert text("queue-length") == "3" and reg.v1 in text("version")
            assert [li.get_attribute("data-label") for li in driver.find_elements(By.CSS_SELECTOR, "#top3 li")] == [
                t["label"] for t in preds[0]["top_k"][:3]
            ]
            assert driver.execute_script("return document.getElementById('image').naturalWidth") == 8
            # Drawn with sharp pixels, as the API says for an 8x8 input (the page's CSS sets no default).
            rendering = "return getComputedStyle(document.getElementById('image')).imageRendering"
            assert driver.execute_script(rendering) == "pixelated"
            stored = "return [sessionStorage.getItem('datamoat.review.token'), localStorage.length]"
            assert driver.execute_script(stored) == [reg.tokens["review"], 0]

            keys = ActionChains(driver)
            keys.send_keys("2").perform()
            assert text("selected") == want[0]
            keys.reset_actions()
            keys.send_keys(Keys.ENTER).perform()
            showing(pids[1])
            assert text("queue-length") == "2"
            for key in (Keys.ARROW_DOWN, Keys.ENTER):
                ActionChains(driver).send_keys(key).perform()
            showing(pids[2])
            ActionChains(driver).send_keys(Keys.ENTER).perform()
            showing("")
            assert text("queue-length") == "0" and "empty" in text("empty")
            severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert severe == []
        finally:
            driver.quit()

    decided = {r["prediction_id"]: r for r in app.state.serve.review.items()}
    assert [(decided[p]["status"], decided[p]["decided_label"], decided[p]["decided_by"]) for p in pids] == [
        ("decided", w, "review-bot") for w in want
    ]
    items = {i["prediction_id"]: i for i in Quarantine(reg.r).items()}
    assert [(items[p]["label"], items[p]["source"], items[p]["actor"], items[p]["has_pixels"]) for p in pids] == [
        (w, "review", "review-bot", True) for w in want
    ]
