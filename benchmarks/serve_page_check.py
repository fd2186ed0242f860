"""Check `charrnn serve`'s page in a real headless Chromium (Playwright), and save a screenshot.

    python benchmarks/serve_page_check.py -c checkpoints/demo [-o docs/serve-page.png]
        [--chromium /usr/bin/chromium]

Starts the server, opens /, types a prime, picks a temperature, presses Generate and waits for
the streamed text and its closing "characters in" line; then scores a text and waits for its
figures and coloured characters. Fails (exit 1) on a missing piece or any error in the page's
console. Needs `pip install playwright` and a Chromium (the system's is used: no download).
"""

from __future__ import annotations

import argparse
import signal
import sys

from playwright.sync_api import sync_playwright
from serve_load import start_server  # the sibling benchmark: this directory is on sys.path

PRIME = "def "
SCORED = 'def quote(s):\n    """Return a shell-escaped version of the string *s*."""\n    return s\n'


def check(url: str, chromium: str, screenshot: str) -> list[str]:
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport={"width": 900, "height": 760})
        page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.goto(url)
        page.wait_for_function("document.getElementById('model').textContent.includes('parameters')")
        page.fill("#prime", PRIME)
        page.fill("#temperature", "0.6")
        page.dispatch_event("#temperature", "input")
        page.fill("#length", "300")
        page.fill("#seed", "1")
        page.click("#generate")
        page.wait_for_function("document.getElementById('sample-status').textContent.includes(' in ')")
        output = page.text_content("#output")
        if not output.startswith(PRIME) or len(output) != len(PRIME) + 300:
            problems.append(f"generated text: {output!r}")
        page.fill("#score-text", SCORED)
        page.click("#score-form button")
        page.wait_for_function("document.getElementById('figures').textContent.includes('bits/char')")
        coloured = page.eval_on_selector_all("#scored span[class*='s']", "spans => spans.length")
        if coloured < len(SCORED) - 2:
            problems.append(f"only {coloured} of {len(SCORED)} characters coloured")
        print("model:", page.text_content("#model"))
        print("status:", page.text_content("#sample-status"), "at", page.text_content("#temperature-value"))
        print("figures:", page.text_content("#figures"))
        page.screenshot(path=screenshot, full_page=True)
        browser.close()
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--checkpoint", required=True)
    parser.add_argument("-o", "--output", default="docs/serve-page.png")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    proc, url = start_server(args.checkpoint, clients=4, threads=1)
    try:
        problems = check(url, args.chromium, args.output)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    for problem in problems:
        print("PROBLEM:", problem, file=sys.stderr)
    print(f"wrote {args.output}" + ("" if problems else "; the page works"))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
