"""The review page in a real headless Chromium (Debian's, driven by Selenium and its chromedriver)
against a real `zstagger serve`: 20 items decided by the keyboard, undo, blur, the key-press to
next-image time, API-key scopes, the page's Content-Security-Policy, and decisions that
survive a server restart."""

import json
import shutil
import statistics
import time

import httpx
import pytest
from harness import ApiServer, wait_for

from zstagger import Taxonomy
from zstagger.review import ReviewQueue, Selection, default_bands
from zstagger.service.auth import hash_key
from zstagger.store import open_store
from zstagger.synthetic import labelled_image
from zstagger.tagger import Tagger

CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"
REVIEWER, TAGGER_ONLY, OLD_KEY = "zst_reviewer-ann", "zst_tag-only", "zst_unscoped"
POLICY = {"name": "pagepolicy", "mode": "multi", "default_threshold": 0.45, "negatives": ["clutter"],
          "labels": [{"name": "weapon", "threshold": 0.55, "action": "block"}, {"name": "drugs", "action": "block"}]}


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("review-page")
    (root / "tax").mkdir()
    (root / "tax" / "pagepolicy.json").write_text(json.dumps(POLICY))
    (root / "images").mkdir()
    paths = []
    for i in range(24):
        path = root / "images" / f"{i:02d}.png"
        labelled_image([i % 3], seed=900 + i, size=(160, 120)).save(path)
        paths.append(str(path))
    store = f"sqlite:///{root / 'store.db'}"
    taxonomy = Taxonomy.parse(POLICY, source="test")
    with Tagger(str(tiny_model_dir), device="cpu", precision="fp32", image_cache=False) as tagger:
        lines = [r.to_json() for r in tagger.tag(paths, taxonomy)]
    queue = ReviewQueue(open_store(store))
    assert queue.enqueue(lines, Selection(default_bands(taxonomy), audit_rate=1.0))["added"] == 24
    queue.store.close()
    (root / "keys").write_text(f"{hash_key(REVIEWER)} name=ann scopes=review\n{hash_key(TAGGER_ONLY)} name=bot scopes=tag\n"
                               f"{hash_key(OLD_KEY)}\n")
    env = {"ZSTAGGER_MODEL": str(tiny_model_dir), "ZSTAGGER_PRECISION": "fp32", "ZSTAGGER_STORE": store,
           "ZSTAGGER_TAXONOMY_PATH": str(root / "tax"), "ZSTAGGER_API_KEYS_FILE": str(root / "keys")}
    return root, env


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def shown_item(driver):
    return driver.execute_script("return document.getElementById('image').dataset.item || ''")


def press(driver, key):
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(key).perform()


def stats(server, key=REVIEWER):
    return httpx.get(server.url + "/v1/review/stats", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()


def test_twenty_items_by_keyboard_undo_scopes_and_a_restart(setup, browser, tmp_path):
    root, env = setup
    server = ApiServer(env, tmp_path).wait_ready()
    try:
        page = httpx.get(server.url + "/review", timeout=10)
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
        assert "set-cookie" not in page.headers and "<script>" not in page.text  # no inline code, no cookies
        assert "http" not in page.text.replace(server.url, "")  # nothing loaded from elsewhere

        # scopes: the page's data needs `review`; a tag-only key and an old key without scopes are refused it
        for key in (TAGGER_ONLY, OLD_KEY):
            refused = httpx.get(server.url + "/v1/review/next", headers={"Authorization": f"Bearer {key}"}, timeout=10)
            assert refused.status_code == 403 and "lacks the review scope" in refused.json()["error"]["message"]
        assert httpx.get(server.url + "/v1/review/items/1/image", timeout=10).status_code == 401
        old = httpx.get(server.url + "/v1/taxonomies", headers={"Authorization": f"Bearer {OLD_KEY}"}, timeout=10)
        assert old.status_code == 200  # a key without scopes keeps working as before
        assert httpx.get(server.url + "/v1/taxonomies", headers={"Authorization": f"Bearer {REVIEWER}"},
                         timeout=10).status_code == 403  # and a review-only key cannot tag
        # the heat map the page opens with `h`: the item's label, sparse windows (quick enough to open per item)
        heat = httpx.get(server.url + "/v1/review/items/1/heatmap", headers={"Authorization": f"Bearer {REVIEWER}"}, timeout=60)
        assert heat.status_code == 200, heat.text
        assert heat.json()["windows"] == 5 and len(heat.json()["grid"]) == 4 and heat.json()["label"] in ("weapon", "drugs")

        browser.get(server.url + "/review")
        browser.find_element("id", "key").send_keys(REVIEWER + "\n")
        wait_for(lambda: shown_item(browser), 30, "the first item to show")
        assert "blurred" in browser.find_element("id", "image").get_attribute("class")  # block-level labels: blurred
        press(browser, "b")
        assert "blurred" not in browser.find_element("id", "image").get_attribute("class")
        assert browser.find_elements("css selector", "#trail tbody tr")  # the decision trail is on the page

        seen = []
        for _ in range(20):
            before = shown_item(browser)
            seen.append(int(before))
            press(browser, "a")
            wait_for(lambda: shown_item(browser) not in ("", before), 20, "the next item to show", interval=0.005)
        assert len(set(seen)) == 20  # 20 different items, one key press each
        wait_for(lambda: stats(server)["decided"] == 20, 20, "20 decisions to be stored")
        record = browser.execute_script("return window.zstaggerReview")
        assert not record["errors"], record["errors"]
        timings = record["timings"]
        assert len(timings) >= 20
        print(f"\nkey press to next image: median {statistics.median(timings):.1f} ms, max {max(timings):.1f} ms "
              f"over {len(timings)} decisions")

        last = seen[-1]
        press(browser, "u")  # undo: the last decided item is back
        wait_for(lambda: shown_item(browser) == str(last), 20, "the undone item to show again")
        wait_for(lambda: stats(server)["decided"] == 19, 10, "the undo to be stored")
        press(browser, "r")  # decided again, the other way
        wait_for(lambda: stats(server)["decided"] == 20, 10, "the new decision")
        decided = stats(server)
        assert decided["reviewers"]["ann"]["decisions"] == 20 and decided["actions"] == {"accept": 19, "reject": 1}
    finally:
        server.stop()
    assert "Traceback" not in server.log_path.read_text()

    again = ApiServer(env, tmp_path).wait_ready()  # a restart: every decision is still there
    try:
        after = stats(again)
        assert after["decided"] == 20 and after["reviewers"]["ann"]["decisions"] == 20 and after["pending"] == 4
    finally:
        again.stop()
