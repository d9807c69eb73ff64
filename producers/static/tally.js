/* Tally tracker: cookieless pageviews and custom events.
   <script defer data-site="example.com" src="https://collector/js/tally.js"></script>
   No cookies, no storage, no fingerprinting; silent under DNT or GPC. Sends the pathname,
   utm_* and data-query-params parameters, the referrer's origin. See docs/tracker.md. */
(function (w, d) {
  "use strict";
  var s = d.currentScript, n = w.navigator, h = w.history, loc = w.location, last;
  if (!s) return;
  var site = s.getAttribute("data-site") || loc.hostname;
  var api = s.getAttribute("data-api") || new URL(s.src).origin + "/api/v1/collect";
  var off = n.globalPrivacyControl === true || n.doNotTrack === "1" || w.doNotTrack === "1";
  var keep = "," + (s.getAttribute("data-query-params") || "").replace(/\s/g, "") + ",";

  // Never the rest of the query, nor the fragment (the collector enforces this too).
  function path() {
    var q = [], parts = loc.search.replace(/^\?/, "").split("&");
    for (var i = 0; i < parts.length; i++) {
      var name = parts[i].split("=")[0];
      try { name = decodeURIComponent(name); } catch (e) { continue; }
      if (parts[i] && (name.indexOf("utm_") === 0 || keep.indexOf("," + name + ",") >= 0)) q.push(parts[i]);
    }
    return loc.pathname + (q.length ? "?" + q.join("&") : "");
  }

  function send(event, props) {
    if (off) return;
    var ref = null;
    try { ref = d.referrer ? new URL(d.referrer).origin : null; } catch (e) { /* none */ }
    var body = JSON.stringify({
      site: site, path: path(), referrer: ref && ref !== "null" ? ref : null,
      event: event, props: props || {}
    });
    // sendBeacon survives page unloads; a text/plain body needs no CORS preflight.
    try { if (n.sendBeacon && n.sendBeacon(api, body)) return; } catch (e) { /* fall through */ }
    if (w.fetch) {
      fetch(api, { method: "POST", body: body, keepalive: true, credentials: "omit",
                   headers: { "Content-Type": "text/plain" } })["catch"](function () {});
    }
  }

  // One pageview per URL: pushState, replaceState and popstate all land here.
  function page() {
    var url = path();
    if (url === last) return;
    last = url;
    send("pageview");
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

  // tally('signup', {plan: 'pro'}); calls made before this script loaded wait in tally.q.
  var queued = (w.tally && w.tally.q) || [];
  w.tally = function (event, props) { send(event, props); };
  wrap("pushState");
  wrap("replaceState");
  w.addEventListener("popstate", page);
  page();
  // Opt-in one-line notice (data-notice).
  if (s.hasAttribute("data-notice") && d.body) {
    var p = d.createElement("p");
    p.textContent = s.getAttribute("data-notice") ||
      "Privacy-friendly analytics: no cookies, no IP addresses stored.";
    p.style.cssText = "font:12px sans-serif;text-align:center";
    d.body.appendChild(p);
  }
  for (var i = 0; i < queued.length; i++) w.tally.apply(w, queued[i]);
})(window, document);
