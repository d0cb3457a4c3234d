"""weir's status page (`GET /ui`) in a real headless Chromium: one JSON object on stdout.

argv: the page's URL (e.g. http://127.0.0.1:19951/ui), the queue to look at
(e.g. provider:slow, plugin:breaker) and, optionally, how many seconds to wait
(default 15).

Waits until the queue's card shows FULL with a non-zero oldest wait (or the time
is up), then prints {"full", "oldest_ms", "full_since", "text", "console_errors",
"banner"}: console_errors are the browser console's SEVERE entries (uncaught JS
errors, failed loads), banner is the page's error banner ("" when /status
answers). Exits 0 whatever the page shows; 1 only when the browser or its driver
fails. Needs Debian's chromium and chromium-driver (/usr/bin/chromedriver).
"""
import json
import sys
import time

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

url, queue = sys.argv[1], sys.argv[2]
wait_s = float(sys.argv[3]) if len(sys.argv) > 3 else 15.0

opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
          "--window-size=1280,1000", "--no-first-run", "--disable-extensions"):
    opts.add_argument(a)
opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})

# The card's state, read in one script so it is one consistent snapshot.
READ = """
var c = document.querySelector('[data-queue="' + arguments[0] + '"]');
var b = document.getElementById('error');
var banner = b && document.body.classList.contains('has-error') ? b.textContent : '';
if (!c) return {found: false, banner: banner};
var w = c.querySelector('.oldest-wait'), s = c.querySelector('.full-since');
return {found: true, full: c.getAttribute('data-full') === 'true',
        oldest_ms: Number(c.getAttribute('data-oldest-ms')) || 0,
        oldest_text: w ? w.textContent : '', full_since: s ? s.textContent : '',
        text: c.innerText, banner: banner};
"""

try:
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
except WebDriverException as e:
    print(f"ui_check: cannot start chromium/chromedriver: {e}", file=sys.stderr)
    sys.exit(1)

try:
    driver.set_page_load_timeout(20)
    driver.get(url)
    deadline = time.monotonic() + wait_s
    state = {}
    while True:
        state = driver.execute_script(READ, queue) or {}
        if state.get("full") and state.get("oldest_ms", 0) > 0:
            break
        if time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    logs = driver.get_log("browser")
except WebDriverException as e:
    print(f"ui_check: browser failed: {e}", file=sys.stderr)
    driver.quit()
    sys.exit(1)
driver.quit()

out = {
    "full": bool(state.get("full", False)),
    "oldest_ms": state.get("oldest_ms", 0),
    "full_since": state.get("full_since", ""),
    "text": state.get("text", ""),
    "console_errors": [e.get("message", "") for e in logs if e.get("level") == "SEVERE"],
    "banner": state.get("banner", ""),
}
print(json.dumps(out))
