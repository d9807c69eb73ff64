// Tally's dashboard: every number comes from the Stats API (/api/...), with the session's
// CSRF token or a shared link's token. No third-party request, no inline script (CSP).
"use strict";
(() => {
  const body = document.body;
  const page = body.dataset.page;
  const csrf = body.dataset.csrf || "";
  const share = location.pathname.startsWith("/share/") ? decodeURIComponent(location.pathname.slice(7)) : null;
  const $ = (id) => document.getElementById(id);
  const fmt = new Intl.NumberFormat("en");

  async function api(path, payload) {
    const headers = {"Content-Type": "application/json"};
    if (share) headers["X-Tally-Share"] = share; else headers["X-CSRF-Token"] = csrf;
    const resp = await fetch(path, {method: payload ? "POST" : "GET", headers, credentials: "same-origin",
                                    body: payload ? JSON.stringify(payload) : undefined});
    const data = await resp.json().catch(() => ({}));
    if (resp.status === 401 && !share) { location.href = "/login"; }
    if (!resp.ok) throw new Error(data.error || `HTTP ${resp.status}`);
    return data;
  }

  function showError(err) {
    const box = $("error");
    if (!box) return;
    box.hidden = !err;
    box.textContent = err ? String(err.message || err) : "";
  }

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function isoDay(d) { return d.toISOString().slice(0, 10); }

  // ---- the site dashboard -------------------------------------------------------------
  function dashboard() {
    const site = body.dataset.site;
    const url = new URL(location.href);
    const state = {
      period: url.searchParams.get("period") || "30d",
      from: url.searchParams.get("from") || "",
      to: url.searchParams.get("to") || "",
      compare: url.searchParams.get("compare") !== "0",
      metric: url.searchParams.get("metric") || "visitors",
      interval: url.searchParams.get("interval") || "",
      filters: url.searchParams.getAll("f").map((f) => { const i = f.indexOf("|"); return [f.slice(0, i), f.slice(i + 1)]; }),
      tabs: {},
    };
    let chart = null;

    function saveState() {
      const u = new URL(location.href);
      const p = u.searchParams;
      for (const k of ["period", "from", "to", "compare", "metric", "interval", "f"]) p.delete(k);
      p.set("period", state.period);
      if (state.period === "custom") { p.set("from", state.from); p.set("to", state.to); }
      if (!state.compare) p.set("compare", "0");
      if (state.metric !== "visitors") p.set("metric", state.metric);
      if (state.interval) p.set("interval", state.interval);
      for (const [d, v] of state.filters) p.append("f", `${d}|${v}`);
      history.replaceState(null, "", u);
    }

    function dateRange() {
      if (state.period === "custom" && state.from && state.to) return [state.from, state.to];
      if (state.period === "last_month") {
        const now = new Date();
        const first = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - 1, 1));
        const last = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 0));
        return [isoDay(first), isoDay(last)];
      }
      return state.period === "custom" ? "30d" : state.period;
    }

    const EVENT_METRICS = ["visitors", "pageviews", "events"];
    const VISIT_METRICS = ["visits", "bounce_rate", "visit_duration"];

    function query(extra) {
      const q = {site_id: site, metrics: EVENT_METRICS, date_range: dateRange(),
                 filters: state.filters.map(([d, v]) => ["is", d, [v]]), ...extra};
      return api("/api/v2/query", q);
    }

    // Visit metrics have no page or event name: the API refuses them with an event:* filter.
    function visitsOk() { return !state.filters.some(([d]) => d.startsWith("event:")); }

    const LABELS = {visitors: "Unique visitors", pageviews: "Total pageviews", events: "Total events", visits: "Visits",
                    bounce_rate: "Bounce rate", visit_duration: "Visit duration", views_per_visit: "Views per visit"};
    const COLUMNS = {visitors: "Visitors", pageviews: "Pageviews", events: "Events", visits: "Visits",
                     bounce_rate: "Bounce rate", visit_duration: "Visit duration", views_per_visit: "Views per visit"};

    function shown(metric, v) {
      if (metric === "bounce_rate" || metric === "conversion_rate") return `${v}%`;
      if (metric === "visit_duration") return v >= 60 ? `${Math.floor(v / 60)}m ${String(v % 60).padStart(2, "0")}s` : `${v}s`;
      if (metric === "views_per_visit") return v.toFixed(2);
      return fmt.format(v);
    }

    function changeText(metric, change) {
      if (change === null) return "new";
      const arrow = change > 0 ? "↑" : change < 0 ? "↓" : "";
      return `${arrow}${Math.abs(change)}${metric === "bounce_rate" ? " points" : "%"} vs previous period`;
    }

    function statCard(box, key, row, i) {
      const div = document.createElement("button");  // as in Plausible: a stat picks the chart's metric
      div.type = "button";
      div.className = "stat";
      div.dataset.metric = key;
      div.setAttribute("aria-pressed", String(key === state.metric));
      const name = document.createElement("div"); name.className = "label"; name.textContent = LABELS[key];
      const value = document.createElement("div"); value.className = "value";
      div.append(name, value);
      box.appendChild(div);
      if (i < 0) {  // not available with this filter
        value.textContent = "—";
        div.disabled = true;
        div.title = "Visits have no single page or event: remove the page or event filter";
        return;
      }
      div.dataset.value = String(row.metrics[i]);
      value.textContent = shown(key, row.metrics[i]);
      div.addEventListener("click", () => {
        state.metric = key; $("metric").value = key; saveState();
        box.querySelectorAll(".stat").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.metric === key)));
        timeseries().catch(showError);
      });
      if (state.compare && row.comparison) {
        const change = row.comparison.change[i];
        const c = document.createElement("div");
        c.className = "change " + (change > 0 ? "up" : change < 0 ? "down" : "");
        c.textContent = changeText(key, change);
        div.appendChild(c);
      }
    }

    async function topStats() {
      const include = state.compare ? {comparisons: {mode: "previous_period"}} : {};
      const metrics = visitsOk() ? [...EVENT_METRICS, ...VISIT_METRICS] : EVENT_METRICS;
      const data = await query({metrics, include});
      const row = data.results[0] || {metrics: metrics.map(() => 0)};
      const box = $("stats");
      box.replaceChildren();
      [...EVENT_METRICS, ...VISIT_METRICS].forEach((key) => statCard(box, key, row, metrics.indexOf(key)));
      const empty = row.metrics[2] === 0 && state.filters.length === 0;
      $("empty").hidden = !empty;
      if (empty) {
        $("snippet").textContent = `<script defer data-site="${site}" src="${body.dataset.collector}/js/tally.js"></script>`;
      }
      return row;
    }

    async function timeseries() {
      const dims = state.interval ? [state.interval] : ["time"];
      const include = {time_labels: true, ...(state.compare ? {comparisons: {mode: "previous_period"}} : {})};
      const metric = VISIT_METRICS.includes(state.metric) && !visitsOk() ? "visitors" : state.metric;
      const data = await query({metrics: [metric], dimensions: dims, include, order_by: [[dims[0], "asc"]]});
      const idx = 0;
      const byLabel = new Map(data.results.map((r) => [r.dimensions[0], r]));
      const labels = data.meta.time_labels || data.results.map((r) => r.dimensions[0]);
      const xs = labels.map((l) => Date.parse(l.length === 10 ? l + "T00:00:00Z" : l.replace(" ", "T") + (l.endsWith("Z") ? "" : "Z")) / 1000);
      const ys = labels.map((l) => (byLabel.get(l) ? byLabel.get(l).metrics[idx] : 0));
      const prev = labels.map((l) => { const r = byLabel.get(l); return r && r.comparison ? r.comparison.metrics[idx] : 0; });
      const el = $("chart");
      el.dataset.points = JSON.stringify(ys);
      const accent = getComputedStyle(body).getPropertyValue("--accent").trim() || "#4848c8";  // the theme's
      const series = [{}, {label: metric, stroke: accent, width: 2, fill: accent + "14"}];
      const values = [xs, ys];
      if (state.compare) { series.push({label: "previous period", stroke: "rgba(128,128,128,0.45)", width: 1, dash: [4, 4]}); values.push(prev); }
      if (chart) chart.destroy();
      chart = new uPlot({width: Math.max(320, el.clientWidth || 800), height: 240, series,
                         axes: [{stroke: "currentColor"}, {stroke: "currentColor"}],
                         scales: {x: {time: true}}, legend: {show: true},
                         tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC")}, values, el);  // the API's days are UTC
    }

    async function panel(section) {
      const pid = section.id.slice("panel-".length);
      const tabs = [...section.querySelectorAll("[data-dim]")];
      const dim = state.tabs[pid] || tabs[0].dataset.dim;
      const tab = tabs.find((t) => t.dataset.dim === dim);
      const metrics = tab.dataset.metrics.split(",");
      tabs.forEach((t) => { t.setAttribute("aria-selected", String(t.dataset.dim === dim)); t.tabIndex = t.dataset.dim === dim ? 0 : -1; });
      const heads = section.querySelectorAll("th");
      heads[0].textContent = tab.textContent;
      const columns = tab.dataset.columns ? tab.dataset.columns.split(",") : metrics.map((m) => COLUMNS[m]);
      columns.forEach((c, i) => { heads[i + 1].textContent = c; });
      const tbody = section.querySelector("tbody");
      let data;
      try {
        data = await query({metrics, dimensions: [dim], order_by: [[metrics[0], "desc"]], pagination: {limit: 10}});
      } catch (err) {  // e.g. entry pages with a page filter: this panel says why, the others still show
        tbody.replaceChildren();
        section.dataset.rows = "[]";
        section.dataset.error = String(err.message || err);
        section.dataset.dim = dim;
        const tr = document.createElement("tr");
        cell(tr, section.dataset.error, "muted").colSpan = 4;
        tbody.appendChild(tr);
        return;
      }
      delete section.dataset.error;
      tbody.replaceChildren();
      section.dataset.rows = JSON.stringify(data.results.map((r) => [r.dimensions[0], ...r.metrics]));
      section.dataset.metrics = metrics.join(",");
      section.dataset.dim = dim;  // last: tests wait for it
      if (!data.results.length) {
        const tr = document.createElement("tr");
        cell(tr, dim === "event:goal" ? "No conversions (goals are added with tally goals add)" : "No data yet", "muted").colSpan = 4;
        tbody.appendChild(tr);
      }
      for (const r of data.results) {
        const tr = document.createElement("tr");
        const name = cell(tr, "");
        const button = document.createElement("button");
        const value = r.dimensions[0];
        button.type = "button"; button.className = "row-filter"; button.textContent = label(dim, value);
        button.dataset.value = value;
        button.title = `Filter by ${value}`;
        button.addEventListener("click", () => addFilter(dim, value));
        name.appendChild(button);
        r.metrics.forEach((m, i) => cell(tr, shown(metrics[i], m), "num"));
        tbody.appendChild(tr);
      }
    }

    const regions = typeof Intl.DisplayNames === "function" ? new Intl.DisplayNames(["en"], {type: "region"}) : null;

    // A country's name from its ISO code (the browser's own table); other values as they are.
    function label(dim, value) {
      if (dim !== "visit:country" || !regions || !/^[A-Z]{2}$/.test(value)) return value;
      try { return `${regions.of(value)} (${value})`; } catch (err) { return value; }
    }

    function csv(section) {
      const rows = JSON.parse(section.dataset.rows || "[]");
      const quote = (v) => `"${String(v).replaceAll('"', '""')}"`;
      const text = [[section.dataset.dim, ...(section.dataset.metrics || "visitors,pageviews,events").split(",")], ...rows].map((r) => r.map(quote).join(",")).join("\n");
      const a = document.createElement("a");
      a.href = URL.createObjectURL(new Blob([text + "\n"], {type: "text/csv"}));
      a.download = `${site}-${section.id.slice(6)}.csv`;
      a.click();
      setTimeout(() => URL.revokeObjectURL(a.href), 1000);
    }

    function renderFilters() {
      const box = $("filters");
      box.replaceChildren();
      for (const [d, v] of state.filters) {
        const chip = document.createElement("button");
        chip.type = "button"; chip.className = "chip";
        chip.textContent = `${d.split(":")[1].replace("_", " ")} is ${label(d, v)} ✕`;
        chip.setAttribute("aria-label", `Remove filter ${d} is ${v}`);
        chip.addEventListener("click", () => { state.filters = state.filters.filter((f) => !(f[0] === d && f[1] === v)); refresh(); });
        box.appendChild(chip);
      }
    }

    function addFilter(dim, value) {
      state.filters = state.filters.filter((f) => f[0] !== dim).concat([[dim, value]]);
      refresh();
    }

    async function realtime() {
      try {
        const n = await api(`/api/v1/stats/realtime/visitors?site_id=${encodeURIComponent(site)}`);
        $("realtime").textContent = `● ${fmt.format(n)} current visitor${n === 1 ? "" : "s"}`;
      } catch (err) { $("realtime").textContent = ""; }
    }

    async function refresh() {
      saveState();
      renderFilters();
      showError(null);
      body.dataset.loaded = "0";
      try {
        await Promise.all([topStats(), timeseries(), ...[...document.querySelectorAll(".panel")].map(panel)]);
        body.dataset.loaded = "1";
      } catch (err) { showError(err); body.dataset.loaded = "error"; }
    }

    $("period").value = state.period;
    $("custom").hidden = state.period !== "custom";
    $("from").value = state.from; $("to").value = state.to;
    $("compare").checked = state.compare;
    $("metric").value = state.metric;
    $("interval").value = state.interval;
    $("site").addEventListener("change", (e) => {
      location.href = share ? location.href : `/sites/${encodeURIComponent(e.target.value)}${location.search}`;
    });
    $("period").addEventListener("change", (e) => {
      state.period = e.target.value;
      $("custom").hidden = state.period !== "custom";
      if (state.period !== "custom") refresh();
    });
    $("apply").addEventListener("click", () => { state.from = $("from").value; state.to = $("to").value; refresh(); });
    $("compare").addEventListener("change", (e) => { state.compare = e.target.checked; refresh(); });
    $("metric").addEventListener("change", (e) => { state.metric = e.target.value; saveState(); timeseries().catch(showError); });
    $("interval").addEventListener("change", (e) => { state.interval = e.target.value; saveState(); timeseries().catch(showError); });
    $("copy").addEventListener("click", () => navigator.clipboard.writeText($("snippet").textContent));
    for (const section of document.querySelectorAll(".panel")) {
      const pid = section.id.slice(6);
      const tabs = [...section.querySelectorAll("[data-dim]")];
      for (const tab of tabs) {
        tab.addEventListener("click", () => { state.tabs[pid] = tab.dataset.dim; panel(section).catch(showError); });
        // The WAI-ARIA tabs pattern: one tab stop per list, arrows (and Home/End) move and select.
        tab.addEventListener("keydown", (e) => {
          const i = tabs.indexOf(tab);
          const to = {ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1}[e.key];
          if (to === undefined) return;
          e.preventDefault();
          const next = tabs[(to + tabs.length) % tabs.length];
          next.focus();
          next.click();
        });
      }
      section.querySelector(".csv").addEventListener("click", () => csv(section));
    }
    refresh();
    realtime();
    setInterval(realtime, 30000);
    matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => timeseries().catch(showError));  // the theme's colours
  }

  // ---- product adoption (seed 003) ----------------------------------------------------------
  function adoption() {
    const to = new Date();
    const from = new Date(to.getTime() - 29 * 86400000);
    $("afrom").value = isoDay(from); $("ato").value = isoDay(to);
    async function load() {
      showError(null);
      body.dataset.loaded = "0";
      const p = new URLSearchParams({from: $("afrom").value, to: $("ato").value});
      if ($("tenant").value.trim()) p.set("tenant", $("tenant").value.trim());
      try {
        const data = await api(`/api/tally/v1/adoption?${p}`);
        const tbody = $("adoption").querySelector("tbody");
        tbody.replaceChildren();
        const rows = [...data.families, {family: "all", label: "Any of the five families", events: data.events,
                                         active_workspaces: data.active_workspaces, last_event_at: data.last_event_at}];
        for (const f of rows) {
          const tr = document.createElement("tr");
          tr.dataset.family = f.family;
          if (f.family === "all") tr.className = "total";
          cell(tr, f.family); cell(tr, f.label);
          cell(tr, fmt.format(f.events), "num"); cell(tr, fmt.format(f.active_workspaces), "num");
          cell(tr, f.events === 0 ? "no signal yet" : (f.last_event_at || ""), f.events === 0 ? "muted zero" : "");
          tbody.appendChild(tr);
        }
        body.dataset.empty = String(data.empty);
        body.dataset.loaded = "1";
      } catch (err) { showError(err); body.dataset.loaded = "error"; }
    }
    $("aapply").addEventListener("click", load);
    load();
  }

  // ---- operations (admins) -------------------------------------------------------------------
  function operations() {
    async function load() {
      try {
        const data = await api("/web/v1/operations");
        showError(data.error ? new Error(data.error) : null);
        $("checked").textContent = `Checked at ${data.checked_at}.`;
        const comps = $("components").querySelector("tbody");
        comps.replaceChildren();
        for (const c of data.components) {
          const tr = document.createElement("tr");
          cell(tr, c.component); cell(tr, c.pid === null ? "not running" : String(c.pid));
          cell(tr, c.ready ? "ready" : "not ready", c.ready ? "ok" : "bad"); cell(tr, c.where || "");
          const h = c.health || {};
          const stalled = h.state && h.state !== "ok";
          cell(tr, c.health ? [h.state, ...Object.entries(h).filter(([k]) => !["state", "updated", "alive"].includes(k))
            .map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`)].join(", ") : "", stalled ? "bad" : "");
          comps.appendChild(tr);
        }
        const groups = $("groups").querySelector("tbody");
        groups.replaceChildren();
        for (const g of data.groups) {
          for (const lag of (g.lag.length ? g.lag : [{topic: "", total: 0, worst_partition: -1, worst_lag: 0}])) {
            const tr = document.createElement("tr");
            const owners = g.members.map((m) => `${m.client_id}: ${(m.partitions[lag.topic] || []).join(" ") || "none"}`);
            cell(tr, g.group); cell(tr, g.state); cell(tr, owners.join("; ") || "no members"); cell(tr, lag.topic);
            cell(tr, fmt.format(lag.total), "num");
            cell(tr, lag.worst_partition < 0 ? "" : `p${lag.worst_partition}: ${fmt.format(lag.worst_lag)}`, "num");
            groups.appendChild(tr);
          }
        }
        reasons($("drops"), data.drops, data.reasons_error);
        reasons($("badrows"), data.bad_rows, data.reasons_error);
        salts(data.components);
        reconcile(data.reconcile);
        body.dataset.loaded = "1";
      } catch (err) { showError(err); }
    }

    // [day, reason, count] rows as a table: a row per day, a column per reason.
    function reasons(table, rows, error) {
      const days = [...new Set((rows || []).map((r) => r[0]))];
      const names = [...new Set((rows || []).map((r) => r[1]))].sort();
      const count = new Map((rows || []).map((r) => [`${r[0]}|${r[1]}`, r[2]]));
      const head = document.createElement("tr");
      for (const h of ["Day", ...names]) {
        const th = document.createElement("th"); th.scope = "col"; th.textContent = h;
        if (h !== "Day") th.className = "num";
        head.appendChild(th);
      }
      table.tHead.replaceChildren(head);
      const tbody = table.tBodies[0];
      tbody.replaceChildren();
      table.dataset.rows = JSON.stringify(rows || []);
      if (!days.length) {
        const tr = document.createElement("tr");
        cell(tr, error || "None in the last 14 days.", error ? "bad" : "muted");
        tbody.appendChild(tr);
      }
      for (const d of days) {
        const tr = document.createElement("tr");
        cell(tr, d);
        for (const n of names) cell(tr, fmt.format(count.get(`${d}|${n}`) || 0), "num");
        tbody.appendChild(tr);
      }
    }

    function facts(dl, items) {
      dl.replaceChildren();
      for (const [term, value, cls] of items) {
        const dt = document.createElement("dt"); dt.textContent = term;
        const dd = document.createElement("dd"); dd.textContent = value; if (cls) dd.className = cls;
        dl.append(dt, dd);
      }
    }

    // What the stream workers report of the salts topic: periods only, never a salt.
    function salts(components) {
      const report = components.map((c) => (c.health || {}).salts).find((x) => x);
      const dl = $("salts");
      if (!report) { facts(dl, [["Status", "no worker has reported its salts yet", "muted"]]); dl.dataset.state = "unknown"; return; }
      const present = report.periods.includes(report.current);
      facts(dl, [["Current period", `${report.current}: ${present ? "salt present" : "no salt yet (made at the period's first beacon)"}`, present ? "ok" : "muted"],
                 ["Expired periods", report.expired.length ? `still live: ${report.expired.join(", ")}` : "gone", report.expired.length ? "bad" : "ok"],
                 ["Live periods", report.periods.join(", ") || "none"]]);
      dl.dataset.state = present && !report.expired.length ? "ok" : "attention";
    }

    function reconcile(r) {
      const dl = $("reconcile");
      if (!r) { facts(dl, [["Status", "never run here: run tally reconcile", "muted"]]); dl.dataset.drift = ""; return; }
      const drift = r.drift.length + r.rollup_drift.length;
      facts(dl, [["Run at", r.checked_at], ["Window", `${r.from} .. ${r.to}`],
                 ["Aggregates", `${r.days} site-days checked, ${r.drift.length} with drift`, r.drift.length ? "bad" : "ok"],
                 ["Breakdown rollups", `${r.rollup_days} site-days checked, ${r.rollup_drift.length} with drift`, r.rollup_drift.length ? "bad" : "ok"],
                 ...r.drift.map((d) => [`${d.site} ${d.day}`, `pageviews ${d.raw_pageviews} raw vs ${d.agg_pageviews} aggregated, visitors ${d.raw_visitors} vs ${d.agg_visitors}`, "bad"]),
                 ...r.rollup_drift.map((d) => [`${d.site} ${d.day}`, `${d.differing} of ${d.values} rollup values differ`, "bad"])]);
      dl.dataset.drift = String(drift);
    }
    load();
    setInterval(load, 5000);
  }

  const pages = {dashboard, adoption, operations};
  if (pages[page]) pages[page]();
})();
