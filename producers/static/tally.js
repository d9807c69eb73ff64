/* Tally tracker: cookieless pageviews and custom events.
   <script defer data-site="example.com" src="https://collector/js/tally.js"></script>
   No cookies, no storage, no fingerprinting; silent under DNT or GPC. Sends the pathname,
   utm_* and data-query-params parameters, the referrer's origin. Opt-in modes:
   data-hash, data-manual, data-screen, data-engagement. See docs/tracker.md. */
(function (w, d) {
  "use strict";
  var s = d.currentScript, n = w.navigator, h = w.history, loc = w.location, last;
  if (!s) return;
  function has(name) { return s.hasAttribute("data-" + name); }
  var site = s.getAttribute("data-site") || loc.hostname;
  var api = s.getAttribute("data-api") || new URL(s.src).origin + "/api/v1/collect";
  var off = n.globalPrivacyControl === true || n.doNotTrack === "1" || w.doNotTrack === "1";
  var keep = "," + (s.getAttribute("data-query-params") || "").replace(/\s/g, "") + ",";
  var hash = has("hash");

  // Never the rest of the query, nor the fragment (the collector enforces this too). In
  // hash mode the route in the fragment is part of the path: /app/#/a?b=1 -> /app/a, as the
  // collector does for Plausible's h: 1 (minimise.hash_route); a fragment holding "=" is
  // parameters (sign-in tokens), not a route.
  function path() {
    var q = [], parts = loc.search.replace(/^\?/, "").split("&"), p = loc.pathname;
    var route = hash && loc.hash.replace(/^#!?\/?/, "").split(/[?#]/)[0];
    if (route && route.indexOf("=") < 0) p = p.replace(/\/$/, "") + "/" + route;
    for (var i = 0; i < parts.length; i++) {
      var name = parts[i].split("=")[0];
      try { name = decodeURIComponent(name); } catch (e) { continue; }
      if (parts[i] && (name.indexOf("utm_") === 0 || keep.indexOf("," + name + ",") >= 0)) q.push(parts[i]);
    }
    return p + (q.length ? "?" + q.join("&") : "");
  }

  function send(event, props, url, sd, e) {
    if (off) return;
    var ref = null, x = w.innerWidth;
    try { ref = d.referrer ? new URL(d.referrer).origin : null; } catch (e) { /* none */ }
    // data-screen: a width class, not the width (Plausible's visit:screen classes).
    if (has("screen")) props.screen = x < 576 ? "Mobile" : x < 992 ? "Tablet" : x < 1440 ? "Laptop" : "Desktop";
    var body = JSON.stringify({
      site: site, path: url || path(), referrer: ref && ref !== "null" ? ref : null,
      event: event, props: props, sd: sd, e: e  // undefined ones are left out
    });
    // sendBeacon survives page unloads; a text/plain body needs no CORS preflight.
    try { if (n.sendBeacon && n.sendBeacon(api, body)) return; } catch (e) { /* fall through */ }
    if (w.fetch) {
      fetch(api, { method: "POST", body: body, keepalive: true, credentials: "omit",
                   headers: { "Content-Type": "text/plain" } })["catch"](function () {});
    }
  }

  // data-engagement: when the page is hidden or left, or an SPA navigation replaces it,
  // Plausible's "engagement" event for it: its deepest scroll sd (%) and the visible time e
  // (ms) since the last one; sent when there is news (3 s more, or a deeper scroll).
  var engage = has("engagement"), sd = 0, sent = 0, ms = 0, t0 = d.hidden ? 0 : Date.now();
  function depth() {
    var x = Math.round((w.scrollY + w.innerHeight) / d.documentElement.scrollHeight * 100);
    if (x > sd) sd = Math.min(x, 100);
  }
  function flush() {
    var now = Date.now();
    if (t0) ms += now - t0;
    t0 = d.hidden ? 0 : now;
    if (last && (ms >= 3000 || sd > sent)) {
      send("engagement", {}, last, sd, ms);
      sent = sd;
      ms = 0;
    }
  }

  // One pageview per URL: pushState, replaceState, popstate (and hashchange in hash mode).
  function page() {
    var url = path();
    if (url === last) return;
    if (engage) {
      if (last) flush();
      sd = sent = ms = 0;
      depth();
    }
    last = url;
    send("pageview", {});
  }

  function wrap(name) {
    var orig = h[name];
    if (!orig) return;
    h[name] = function () {
      var r = orig.apply(this, arguments);
      page();
      return r;
    };
  }

  // tally('signup', {plan: 'pro'}); tally('pageview', {u: '/a'}) names the page itself;
  // tally('404') adds the path as a prop. Calls made before this script loaded wait in tally.q.
  var queued = (w.tally && w.tally.q) || [];
  w.tally = function (event, props) {
    var p = {}, url;
    for (var k in props) k === "u" ? url = props[k] : p[k] = props[k];
    if (event === "404") p.path = path();
    send(event, p, url);
  };
  // data-manual: no automatic pageviews; the page calls tally('pageview') itself.
  if (!has("manual")) {
    wrap("pushState");
    wrap("replaceState");
    w.addEventListener("popstate", page);
    if (hash) w.addEventListener("hashchange", page);
    page();
    // visibilitychange also fires when the page is closed or left (pagehide is not needed).
    if (engage) {
      d.addEventListener("visibilitychange", flush);
      w.addEventListener("scroll", depth);
    }
  }
  // Opt-in one-line notice (data-notice).
  if (has("notice") && d.body) {
    var p = d.createElement("p");
    p.textContent = s.getAttribute("data-notice") ||
      "Privacy-friendly analytics: no cookies, no IP addresses stored.";
    p.style.cssText = "font:12px sans-serif;text-align:center";
    d.body.appendChild(p);
  }
  for (var i = 0; i < queued.length; i++) w.tally.apply(w, queued[i]);
})(window, document);
