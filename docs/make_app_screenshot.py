"""Write docs/app.png: the web app after a real edit of a toy-world example, seen by headless Chromium.

The settings are left where the app starts them, at the model's own `edit_settings.json` (the bundled toy
editor's: 4 steps, 64 px, text guidance 3, image guidance 2, Euler ancestral); only the seed is fixed.

    .venv/bin/python docs/make_app_screenshot.py            # model 'auto': the toy editor where bundled
    .venv/bin/python docs/make_app_screenshot.py --model tiny

Needs Debian's chromium (`apt-get install chromium`) and the playwright package (never `playwright install`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="auto", help="as `ip2p serve --model` (default: %(default)s)")
    parser.add_argument("--example", type=int, default=0, help="which example scene to edit (default: 0)")
    parser.add_argument("--seed", type=int, default=0, help="fixed seed of the edit (default: %(default)s)")
    parser.add_argument(
        "-o",
        "--output",
        default=str(Path(__file__).with_name("app.png")),
        help="PNG to write (default: %(default)s)",
    )
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from ip2p.app import FIXED_SEED, ServeConfig, build_app, launch
    from ip2p.demo import resolve_demo_model
    from ip2p.pipeline import EditPipeline

    name, note = resolve_demo_model(args.model)
    demo = build_app(EditPipeline.from_pretrained(name), note=note)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = launch(demo, ServeConfig(port=port), block=False, quiet=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=FLAGS)
            page = browser.new_page(viewport={"width": 1200, "height": 1010})
            page.set_default_timeout(300_000)
            page.goto(url)
            page.locator("#examples tbody tr").nth(args.example).click()
            page.locator("#before img").wait_for()
            page.locator("#seed-mode").get_by_text(FIXED_SEED).click()
            page.locator("#seed input").fill(str(args.seed))
            page.locator("#edit-btn").click()
            page.locator("#after img[src*='step01']").wait_for()
            page.wait_for_function("() => document.querySelector('#after img').naturalWidth > 0")
            page.evaluate("window.scrollTo(0, 0)")  # picking an example scrolled the page down
            page.wait_for_timeout(500)
            page.screenshot(path=args.output)
            browser.close()
    finally:
        demo.close()
    print(f"wrote {args.output} (model: {name})")


if __name__ == "__main__":
    main()
