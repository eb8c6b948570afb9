"""The monitoring page in real Chromium against a server on a real port: sign in, see a clean and
then an alarming drift window, the estimate beside the reviewed accuracy and the guarantee's
state, a shadow release compared with the served version, and a device's window by site; the API refuses other roles; a screenshot is kept for the record."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import numpy as np

from datamoat.data import SPLITS, load_dataset
from datamoat.evaluate.drift import DriftConfig
from datamoat.registry.register import profile_version
from datamoat.serve import ServeConfig, create_app

from .serve_util import auth
from .test_review_browser import _chromium, _Uvicorn, pytestmark  # noqa: F401  (the skip rule too)


def test_monitor_page_shows_drift_estimate_and_guarantee_in_chromium(reg, artifacts, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    prof = profile_version(artifacts.ws, reg.r, reg.v1, actor="test", config=DriftConfig(permutations=200))
    reg.r.set_policy(reg.v1, {"threshold": 0.3, "target_accuracy": 0.9, "method": "poc"}, actor="test")
    monitor = reg.r.create_token("monitor", "grafana", actor="test")
    reg.r.start_release(reg.v2, "production", "shadow", actor="test")  # compared on the page
    ds = load_dataset(artifacts.ws, prof["dataset_id"])
    x = np.asarray(ds.x[ds.split == SPLITS["test"]])[:100]  # (100, 1, 8, 8)
    cfg = ServeConfig(poll_interval_s=0.05, heartbeat_s=0.5, ort_threads=1, drift_window=50)
    app = create_app(reg.r, cfg)
    with _Uvicorn(app) as srv:
        with httpx.Client(base_url=srv.url, headers=auth(reg.tokens["predict"])) as c:
            assert c.get("/v1/monitor").status_code == 403  # a predict token does not read it
            for batch in (x[:50], (x[50:] * 0.4 + 40).astype(np.uint8)):
                assert c.post("/v1/predict", json={"inputs": batch.tolist()}).status_code == 200
        import concurrent.futures

        concurrent.futures.wait(list(app.state.serve.monitor.pending), timeout=60)
        assert app.state.serve.shadow.idle.wait(30)
        clean = reg.r.drift_windows(version=reg.v1)[-1]  # as a device's heartbeat would report it
        reg.r.record_window("device:cam-7", "edge:harbour", reg.v1, clean)
        browser = _chromium()
        try:
            browser.get(f"{srv.url}/monitor")
            browser.find_element(By.ID, "token").send_keys(monitor)
            browser.find_element(By.CSS_SELECTOR, "#signin-form button").click()
            wait = WebDriverWait(browser, 15)
            wait.until(lambda b: b.find_elements(By.ID, "drift-state"))
            assert browser.find_element(By.ID, "served").text == reg.v1
            assert browser.find_element(By.ID, "drift-state").text.startswith("ALARM")
            assert len(browser.find_elements(By.CSS_SELECTOR, "#windows tr")) == 3  # header + 2 windows
            assert browser.find_element(By.ID, "chart").is_displayed()
            assert browser.find_element(By.ID, "estimate").text.endswith(")")  # the value and its interval
            assert browser.find_element(By.ID, "reviewed").text.startswith("-")  # nothing audited yet
            assert browser.find_element(By.ID, "guarantee").text.startswith("holding")
            shadow = browser.find_elements(By.CSS_SELECTOR, "#releases tr")[1].text  # header, then the shadow
            assert shadow.startswith(f"shadow {reg.v2} off the path 100 ") and "no labels yet" in shadow
            device = browser.find_elements(By.CSS_SELECTOR, "#devices tr")[1].text
            assert device.startswith(f"harbour cam-7 {reg.v1}") and " ok " in f" {device} "
            shot = Path(os.environ.get("DM_MONITOR_SCREENSHOT", tmp_path / "monitor.png"))
            browser.set_window_size(1000, 1500)  # the whole report, releases included
            browser.save_screenshot(str(shot))
            assert shot.stat().st_size > 10_000
            errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
            assert not errors, errors  # the CSP blocked nothing the page needs
        finally:
            browser.quit()
