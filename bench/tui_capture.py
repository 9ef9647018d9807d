"""The dashboard's picture, headless: `overnight tui` on HOME for a few seconds, then its front screen and System tab
as text (no terminal or tmux needed: Textual renders into memory, with the real NVML and psutil telemetry).

    python bench/tui_capture.py HOME OUT_DIR [--size 100x30]
"""
from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tui.app import OvernightApp  # noqa: E402


def screen_text(app: OvernightApp) -> str:
    update = app.screen._compositor.render_full_update()
    return "\n".join("".join(strip.text for strip in line) for line in update.strips)


async def capture(home: Path, out: Path, size: tuple[int, int]) -> list[Path]:
    app = OvernightApp(home)
    saved = []
    async with app.run_test(size=size) as pilot:
        for name, key, wait in (("tui_front.txt", None, 4.0), ("tui_system.txt", "4", 3.0)):
            if key:
                await pilot.press(key)
            await pilot.pause(wait)
            (out / name).write_text(screen_text(app) + "\n", encoding="utf-8")
            saved.append(out / name)
    return saved


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("home", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--size", default="100x30")
    args = p.parse_args()
    w, h = (int(x) for x in args.size.split("x"))
    args.out.mkdir(parents=True, exist_ok=True)
    for path in asyncio.run(capture(args.home, args.out, (w, h))):
        print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
