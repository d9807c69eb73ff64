"""Bot classification judged on a labelled set of real user agents (tests/data, see
extract_ua_sets.py): recall on bots >= 95%, false positives on browsers <= 0.1%."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tally.streams.bots import EXCLUDED_PATTERNS, classify_ua

DATA = Path(__file__).parent / "data"
BROWSERS = (DATA / "ua_browsers.txt").read_text().splitlines()
BOTS = (DATA / "ua_bots.txt").read_text().splitlines()


def test_recall_on_bots_is_at_least_95_percent():
    missed = [ua for ua in BOTS if not classify_ua(ua).bot]
    assert len(BOTS) > 3000
    assert 1 - len(missed) / len(BOTS) >= 0.95, missed[:20]


def test_false_positives_on_browsers_at_most_0_1_percent():
    wrong = [(ua, classify_ua(ua).rule) for ua in BROWSERS if classify_ua(ua).bot]
    assert len(BROWSERS) > 12000
    assert len(wrong) / len(BROWSERS) <= 0.001, wrong


@pytest.mark.parametrize("ua", [
    "Mozilla/5.0 (Linux; Android 13; Cubot X30) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/122.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 6.0; M BOT 551 Build/MRA58K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/54.0.2840.85 Mobile Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 [FBAN/FBIOS;FBAV/470.0.0.40.95;FBBV/620000000;FBDV/iPhone14,5;FBMD/iPhone;FBSN/iOS;FBSV/17.5;FBSS/3;FBID/phone;FBLC/en_US;FBOP/5]",
    "Mozilla/5.0 (Linux; Android 12; HTC Desire 22 pro Build/SKQ1.220201.001; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/105.0.5195.136 Mobile Safari/537.36 Instagram 267.0.0.18.93 Android (31/12; 480dpi; 1080x2132; HTC; HTC Desire 22 pro; htc_botdugls; qcom; de_DE; 440638617)",
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/25.0 Chrome/121.0.0.0 Mobile Safari/537.36",
])
def test_real_browsers_pass(ua):
    assert classify_ua(ua).bot is False


@pytest.mark.parametrize("ua,reason", [
    ("", "empty_user_agent"),
    ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/126.0.0.0 Safari/537.36", "headless"),
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "bot"),
    ("python-requests/2.32.3", "bot"),
    ("curl/8.5.0", "bot"),
    ("facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)", "bot"),
    ("Mozilla/5.0 (compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)", "bot"),
])
def test_bots_are_named(ua, reason):
    v = classify_ua(ua)
    assert v.bot and v.reason == reason


def test_excluded_patterns_still_exist_upstream():
    import crawleruseragents

    patterns = {d["pattern"] for d in crawleruseragents.CRAWLER_USER_AGENTS_DATA}
    assert patterns >= EXCLUDED_PATTERNS  # drop an exclusion once upstream fixes the pattern


def test_classify_ua_command_answers_in_order():
    lines = ["curl/8.5.0", BROWSERS[0], ""]
    out = subprocess.run([sys.executable, "-m", "tally.ops", "classify-ua"], input="\n".join(lines) + "\n",
                         capture_output=True, text=True, check=True).stdout.splitlines()
    rows = [json.loads(x) for x in out]
    assert [r["ua"] for r in rows] == lines
    assert [r["bot"] for r in rows] == [True, False, True]
    assert [r["reason"] for r in rows] == ["bot", None, "empty_user_agent"]
