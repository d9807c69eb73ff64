"""The dashboard's HTML shells. No inline script or style (the CSP forbids both): data for
dashboard.js travels in `data-*` attributes, every value escaped."""

from __future__ import annotations

from html import escape
from urllib.parse import quote

from tally.sinks.accountstore import UserRecord

UPLOT = "1.6.32"  # static/uPlot.iife.min.js (MIT, static/uPlot.LICENSE)


def _attrs(data: dict[str, str]) -> str:
    return " ".join(f'data-{k}="{escape(v)}"' for k, v in data.items())


def _page(title: str, body: str, data: dict[str, str] | None = None, nav: str = "") -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)} · Tally</title>
<link rel="stylesheet" href="/static/uPlot.min.css"><link rel="stylesheet" href="/static/dashboard.css">
<script defer src="/static/uPlot.iife.min.js"></script><script defer src="/static/dashboard.js"></script>
</head><body {_attrs(data or {})}>
<header class="top"><a class="brand" href="/">Tally</a>{nav}</header>
<main>{body}</main></body></html>"""


def _nav(user: UserRecord | None, csrf: str) -> str:
    if user is None:
        return '<span class="muted">shared dashboard (read only)</span>'
    admin = user.role == "admin"
    links = '<a href="/">Sites</a>' + ('<a href="/adoption">Product adoption</a><a href="/operations">Operations</a>'
                                       if admin else "")
    return (f'<nav aria-label="main">{links}</nav><span class="who">{escape(user.email)} ({escape(user.role)})</span>'
            f'<form method="post" action="/logout" class="inline"><input type="hidden" name="csrf" value="{escape(csrf)}">'
            '<button type="submit">Sign out</button></form>')


def login(form_token: str, message: str = "") -> str:
    note = f'<p class="error" role="alert">{escape(message)}</p>' if message else ""
    body = f"""<section class="card narrow"><h1>Sign in</h1>{note}
<form method="post" action="/login">
<input type="hidden" name="csrf" value="{escape(form_token)}">
<label for="email">Email</label><input id="email" name="email" type="email" autocomplete="username" required autofocus>
<label for="password">Password</label><input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit">Sign in</button></form>
<p class="muted">Accounts are made with <code>tally user create EMAIL</code>.</p></section>"""
    return _page("Sign in", body, {"page": "login"})


def message(title: str, text: str) -> str:
    return _page(title, f'<section class="card narrow"><h1>{escape(title)}</h1><p>{escape(text)}</p>'
                        '<p><a href="/">Back</a></p></section>', {"page": "message"})


def sites(user: UserRecord, csrf: str, names: list[str]) -> str:
    items = "".join(f'<li><a href="/sites/{quote(n, safe="")}">{escape(n)}</a></li>' for n in names)
    empty = ('<p class="empty">No site has data yet. Add the tracker to a site, then its dashboard appears here '
             '(see <code>docs/tracker.md</code>).</p>')
    body = f'<section class="card"><h1>Sites</h1>{f"<ul class=sites>{items}</ul>" if names else empty}</section>'
    return _page("Sites", body, {"page": "sites", "csrf": csrf}, _nav(user, csrf))


def dashboard(site: str, *, user: UserRecord | None, csrf: str, sites: list[str], collector: str) -> str:
    options = "".join(f'<option value="{escape(s)}"{" selected" if s == site else ""}>{escape(s)}</option>'
                      for s in sites)
    panels = "".join(f"""<section class="card panel" id="panel-{pid}" aria-labelledby="h-{pid}">
<div class="panel-head"><h2 id="h-{pid}">{title}</h2><div class="tabs" role="tablist" aria-labelledby="h-{pid}">{"".join(
        f'<button type="button" role="tab" aria-controls="t-{pid}" data-dim="{dim}" data-metrics="{",".join(TAB_METRICS.get(dim, EVENT_COLUMNS))}"{_columns(dim)}>{label}</button>'
        for dim, label in tabs)}</div>
<button type="button" class="csv" data-panel="{pid}">CSV</button></div>
<table id="t-{pid}" role="tabpanel" aria-labelledby="h-{pid}"><thead><tr><th scope="col">{tabs[0][1]}</th><th scope="col" class="num">Visitors</th>
<th scope="col" class="num">Pageviews</th><th scope="col" class="num">Events</th></tr></thead><tbody></tbody></table>
</section>""" for pid, title, tabs in PANELS)
    body = f"""<div class="controls" role="group" aria-label="dashboard controls">
<label for="site">Site</label><select id="site">{options}</select>
<label for="period">Range</label><select id="period">
<option value="day">Today</option><option value="7d">Last 7 days</option><option value="30d">Last 30 days</option>
<option value="month">This month</option><option value="last_month">Last month</option>
<option value="12mo">Last 12 months</option><option value="custom">Custom range</option></select>
<span id="custom" hidden><label for="from">From</label><input id="from" type="date">
<label for="to">To</label><input id="to" type="date"><button type="button" id="apply">Apply</button></span>
<label class="check"><input id="compare" type="checkbox" checked> Compare with the previous period</label>
<span id="realtime" aria-live="polite" class="realtime"></span></div>
<div id="filters" class="chips" role="group" aria-label="filters"></div>
<p id="error" class="error" role="alert" hidden></p>
<section id="empty" class="card" hidden><h2>No data for {escape(site)} in this range</h2>
<p>Add the tracker to every page of the site, then visits appear here within seconds:</p>
<pre id="snippet"></pre><button type="button" id="copy">Copy snippet</button></section>
<section class="card"><div id="stats" class="stats"></div><div class="chart-head">
<label for="metric">Chart</label><select id="metric"><option value="visitors">Unique visitors</option>
<option value="pageviews">Pageviews</option><option value="events">Events</option><option value="visits">Visits</option>
<option value="bounce_rate">Bounce rate</option><option value="visit_duration">Visit duration</option></select>
<label for="interval">by</label><select id="interval"><option value="">auto</option><option value="time:hour">hour</option>
<option value="time:day">day</option><option value="time:month">month</option></select></div>
<div id="chart" role="img" aria-label="visitors over time"></div></section>
<div class="grid">{panels}</div>"""
    data = {"page": "dashboard", "site": site, "csrf": csrf, "collector": collector}
    return _page(site, body, data, _nav(user, csrf))


# (panel id, title, [(dimension, tab label)]): what the Stats API offers today.
PANELS = [
    ("pages", "Top pages", [("event:page", "Page"), ("visit:entry_page", "Entry page"), ("visit:exit_page", "Exit page")]),
    ("sources", "Top sources", [("visit:source", "Source"), ("visit:referrer", "Referrer"),
                                ("visit:utm_source", "UTM source"), ("visit:utm_medium", "UTM medium"),
                                ("visit:utm_campaign", "UTM campaign"), ("visit:utm_content", "UTM content"),
                                ("visit:utm_term", "UTM term")]),
    ("devices", "Devices", [("visit:browser", "Browser"), ("visit:os", "Operating system"),
                            ("visit:device", "Device"), ("visit:screen", "Screen size")]),
    ("countries", "Countries", [("visit:country", "Country")]),
    ("events", "Events", [("event:name", "Event")]),
    ("goals", "Goals", [("event:goal", "Goal")]),
]
EVENT_COLUMNS = ("visitors", "pageviews", "events")  # a panel's three figures, unless its tab says
# Entry and exit pages are figures of visits (the Stats API reads `sessions` for them).
TAB_METRICS = {"visit:entry_page": ("visitors", "visits", "bounce_rate"),
               "visit:exit_page": ("visitors", "visits", "visit_duration"),
               "event:goal": ("visitors", "events", "conversion_rate")}
# Column headings where a tab's figures mean something else (a goal's, as Plausible names them).
TAB_COLUMNS = {"event:goal": ("Uniques", "Total", "Conversion rate")}


def _columns(dim: str) -> str:
    return f' data-columns="{escape(",".join(TAB_COLUMNS[dim]))}"' if dim in TAB_COLUMNS else ""


def adoption(user: UserRecord, csrf: str) -> str:
    body = """<section class="card"><h1>Product adoption</h1>
<div class="controls"><label for="afrom">From</label><input id="afrom" type="date">
<label for="ato">To</label><input id="ato" type="date">
<label for="tenant">Tenant</label><input id="tenant" type="text" placeholder="all tenants">
<button type="button" id="aapply">Show</button></div>
<p id="error" class="error" role="alert" hidden></p>
<table id="adoption"><thead><tr><th scope="col">Family</th><th scope="col">What it means</th>
<th scope="col" class="num">Events</th><th scope="col" class="num">Active workspaces</th>
<th scope="col">Last event</th></tr></thead><tbody></tbody></table></section>"""
    return _page("Product adoption", body, {"page": "adoption", "csrf": csrf}, _nav(user, csrf))


def operations(user: UserRecord, csrf: str) -> str:
    body = """<section class="card"><h1>Operations</h1><p class="muted">What <code>tally status</code> shows,
refreshed every 5 seconds. <span id="checked"></span></p>
<p id="error" class="error" role="alert" hidden></p>
<h2>Components</h2><table id="components"><thead><tr><th scope="col">Component</th><th scope="col">PID</th>
<th scope="col">Ready</th><th scope="col">Where</th><th scope="col">Health</th></tr></thead><tbody></tbody></table>
<h2>Consumer groups</h2><table id="groups"><thead><tr><th scope="col">Group</th><th scope="col">State</th>
<th scope="col">Members: partitions owned</th><th scope="col">Topic</th><th scope="col" class="num">Lag</th>
<th scope="col" class="num">Worst partition</th></tr></thead><tbody></tbody></table>
<h2>Drops by reason, per day</h2><p class="muted">Beacons dropped on purpose (bots, consent, limits), last 14 days (UTC).</p>
<table id="drops"><thead></thead><tbody></tbody></table>
<h2>Bad rows by reason, per day</h2><p class="muted">Records that failed a check, last 14 days (UTC).</p>
<table id="badrows"><thead></thead><tbody></tbody></table>
<h2>Visitor salts</h2><dl id="salts" class="facts"></dl>
<h2>Latest <code>tally reconcile</code></h2><dl id="reconcile" class="facts"></dl></section>"""
    return _page("Operations", body, {"page": "operations", "csrf": csrf}, _nav(user, csrf))
