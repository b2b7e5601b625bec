"""The demo page in a real browser, behind the real front web server, in front of a real
TorchServe (the tiny model), all on loopback.

nginx runs natively with docker/web/nginx.conf, the file the `web` image uses, with its two
addresses pointed at free loopback ports; headless Chromium (Debian's, driven by Selenium and
Debian's chromedriver) types a review and clicks. Also: the proxy forwards the inference routes
and nothing else, refuses query strings, and keeps reviews out of its logs. Skipped with a
reason when nginx, chromium or chromium-driver is missing (`make tools` installs them).
The screenshot lands in pytest's tmp dir and, when TEST_ARTIFACTS names a directory, there.
"""
import getpass
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests

from harness.server import free_port
from harness.tools import module, tool

pytestmark = pytest.mark.serve

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "docker" / "web" / "nginx.conf"
NEGATIVE_REVIEW = "The movie was awful and boring, a terrible waste of a good story."
JSON = {"Content-Type": "application/json"}


class Nginx:
    """nginx with docker/web/nginx.conf under a private prefix: web/ links to the repo's."""

    def __init__(self, workdir: Path, upstream: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        (workdir / "run").mkdir(parents=True)
        (workdir / "web").symlink_to(REPO / "web")
        conf = CONF.read_text()
        for old, new in [("server torchserve:8080;", f"server {upstream};"),
                         ("listen 8080;", f"listen 127.0.0.1:{self.port};")]:
            assert conf.count(old) == 1, f"{CONF.name} lost its {old!r} line"
            conf = conf.replace(old, new)
        (workdir / "nginx.conf").write_text(conf)
        directives = "daemon off;"
        if os.geteuid() == 0:  # workers would drop to `nobody`, who cannot read the tmp dirs
            directives += f" user {getpass.getuser()};"
        self.log = workdir / "nginx.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [tool("nginx", "Debian package nginx; make tools"), "-p", f"{workdir}/", "-c", str(workdir / "nginx.conf"),
                 "-e", "stderr", "-g", directives],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                requests.get(self.url + "/", timeout=2)
                return
            except requests.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError(f"nginx did not answer: {self.log.read_text()}")

    def stop(self):
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def web(torchserve, tmp_path_factory):
    tool("nginx", "Debian package nginx; make tools")
    server = Nginx(tmp_path_factory.mktemp("nginx"), torchserve.inference.split("//", 1)[1])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    chromium = tool("chromium", "Debian package chromium; make tools")
    chromedriver = tool("chromedriver", "Debian package chromium-driver; make tools")
    webdriver = module("selenium.webdriver", "selenium, in the test extras")
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1000,900", "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    yield driver
    driver.quit()


def submit(browser, url: str, review: str, *, set_value: bool = False):
    """Open the page, enter the review and click Analyse; wait until the page is done."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    browser.get(url + "/")
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.TAG_NAME, "body")
                                     .get_attribute("data-state") == "ready")
    box = browser.find_element(By.ID, "review")
    if set_value:  # past the textarea's maxlength, as a script could
        browser.execute_script("arguments[0].value = arguments[1]", box, review)
    else:
        box.send_keys(review)
    browser.find_element(By.ID, "analyse").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.TAG_NAME, "body")
                                     .get_attribute("data-state") in ("done", "error"))
    return browser.find_element(By.TAG_NAME, "body").get_attribute("data-state")


def save_screenshot(browser, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    browser.save_screenshot(str(path))
    if os.environ.get("TEST_ARTIFACTS"):
        target = Path(os.environ["TEST_ARTIFACTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / name)
    return path


def test_the_page_shows_label_probabilities_and_highlighted_words(web, browser, torchserve,
                                                                  tmp_path):
    from selenium.webdriver.common.by import By
    served = requests.post(torchserve.inference + "/predictions/bert_sentiment",
                           json={"text": NEGATIVE_REVIEW}, timeout=30).json()

    assert submit(browser, web.url, NEGATIVE_REVIEW) == "done"
    save_screenshot(browser, tmp_path, "demo-page.png")
    assert browser.find_element(By.ID, "error").is_displayed() is False
    # the label and the probability bars are the server's
    assert browser.find_element(By.ID, "label").text.lower() == served["label"]
    rows = browser.find_elements(By.CSS_SELECTOR, "#bars .bar-row")
    shown = {row.find_element(By.CLASS_NAME, "bar-name").text:
             row.find_element(By.CLASS_NAME, "bar-value").text for row in rows}
    assert shown == {label: f"{100 * p:.1f} %" for label, p in served["probabilities"].items()}
    widths = [row.find_element(By.CLASS_NAME, "fill").size["width"] for row in rows]
    assert widths[0] != widths[1]
    # the review comes back whole, its words coloured by their attribution
    assert browser.find_element(By.ID, "highlighted").text == NEGATIVE_REVIEW
    marks = browser.find_elements(By.CSS_SELECTOR, "#highlighted mark")
    assert marks, "no highlighted word: " + browser.find_element(By.ID, "why-note").text
    for mark in marks:
        assert mark.text and mark.text in NEGATIVE_REVIEW
        assert {"towards-positive", "towards-negative"} & set(mark.get_attribute("class").split())
    assert browser.find_element(By.ID, "why-note").is_displayed() is False


def test_the_example_button_fills_and_analyses(web, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    browser.get(web.url + "/")
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.TAG_NAME, "body")
                                     .get_attribute("data-state") == "ready")
    browser.find_element(By.ID, "example").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.TAG_NAME, "body")
                                     .get_attribute("data-state") == "done")
    assert browser.find_element(By.ID, "review").get_attribute("value").strip()
    assert browser.find_element(By.ID, "label").text.lower() in ("negative", "positive")


def test_errors_are_shown_to_the_user(web, browser, tmp_path_factory, tmp_path):
    from selenium.webdriver.common.by import By
    # the handler's 413, passed through the proxy
    assert submit(browser, web.url, "a" * 20_001, set_value=True) == "error"
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed() and error.text.startswith("413:"), error.text
    assert "20000" in error.text
    assert browser.find_element(By.ID, "result").is_displayed() is False
    # model server down: both routes answer the proxy's 503, the page says to retry
    down = Nginx(tmp_path_factory.mktemp("nginx-down"), f"127.0.0.1:{free_port()}")
    try:
        assert submit(browser, down.url, NEGATIVE_REVIEW) == "error"
        error = browser.find_element(By.ID, "error")
        assert error.text.startswith("503:") and "Try again in 5 s." in error.text, error.text
        save_screenshot(browser, tmp_path, "demo-page-error.png")
    finally:
        down.stop()


def test_the_proxy_forwards_only_the_inference_routes(web, torchserve):
    page = requests.get(web.url + "/", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    for route in ("predictions", "explanations"):
        response = requests.post(f"{web.url}/{route}/bert_sentiment", json={"text": "great"},
                                 timeout=30)
        assert response.status_code == 200, response.text
        assert response.json()["label"] in ("negative", "positive")
    assert requests.get(web.url + "/ping", timeout=10).json()["status"] == "Healthy"

    def workers():  # not memoryUsage: TorchServe refreshes it on its own every minute
        return [(w["id"], w["startTime"], w["status"]) for w in torchserve.describe()["workers"]]

    before = workers()
    refused = [
        ("GET", "/models"), ("GET", "/models/bert_sentiment"), ("GET", "/metrics"),
        ("PUT", "/models/bert_sentiment?min_worker=3&synchronous=true"),
        ("DELETE", "/models/bert_sentiment"), ("POST", "/models?url=x.mar"),
        ("GET", "/api-description"), ("OPTIONS", "/"), ("POST", "/invocations"),
        ("POST", "/models/bert_sentiment/invoke"), ("POST", "/bert_sentiment/predict"),
        ("POST", "/predictions/another_model"), ("POST", "/predictions/bert_sentiment/1.0"),
        ("POST", "/predictions/%2e%2e/models"), ("POST", "/explanations/../models"),
        ("GET", "/predictions/bert_sentiment"), ("GET", "/nginx.conf"), ("GET", "/run/nginx.pid"),
    ]
    for method, path in refused:
        response = requests.request(method, web.url + path, data=b"great", timeout=10)
        assert response.status_code in (403, 404, 405), (method, path, response.status_code)
    assert workers() == before

    for path in ("/predictions/bert_sentiment", "/explanations/bert_sentiment"):
        for query in ("?text=great", "?model_name=bert_sentiment", "?x"):
            response = requests.post(web.url + path + query, data=b"great",
                                     headers={"Content-Type": "text/plain"}, timeout=10)
            assert response.status_code == 400, (path, query)
            assert "query" in response.json()["error"]
    response = requests.post(web.url + "/predictions/bert_sentiment", data=b"a" * 2_100_000,
                             headers={"Content-Type": "text/plain"}, timeout=30)
    assert response.status_code == 413 and response.json()["code"] == 413


def test_no_review_text_in_the_proxy_logs(web):
    marker = f"zqxmarker{uuid.uuid4().hex}"
    for method, path in [("POST", "/predictions/bert_sentiment"),
                         ("POST", "/explanations/bert_sentiment"), ("GET", "/"),
                         ("GET", "/index.html"), ("POST", "/index.html"), ("GET", "/ping"),
                         ("GET", "/nowhere")]:
        response = requests.request(method, f"{web.url}{path}?text={marker}", data=b"great",
                                    headers={"Content-Type": "text/plain"}, timeout=10)
        assert response.status_code < 500
    requests.post(f"{web.url}/predictions/bert_sentiment?text={marker}",
                  data=b"a" * 2_100_000, timeout=30)  # refused for its size first
    requests.post(f"{web.url}/predictions/bert_sentiment", data=marker.encode(),
                  headers={"Content-Type": "text/plain"}, timeout=30)
    time.sleep(0.5)
    log = web.log.read_bytes()
    assert b'"POST /predictions/bert_sentiment" 200' in log  # the access log is written
    assert marker.encode() not in log
