/* Tally tracker: cookieless pageviews and custom events.
   <script defer data-site="example.com" src="https://collector/js/tally.js"></script>
   No cookies, no storage, no fingerprinting; honours DNT and GPC. */
(function (w, d) {
  "use strict";
  var s = d.currentScript, n = w.navigator, h = w.history, loc = w.location, last;
  if (!s) return;
  var site = s.getAttribute("data-site") || loc.hostname;
  var api = s.getAttribute("data-api") || new URL(s.src).origin + "/api/v1/collect";
  var off = n.globalPrivacyControl === true || n.doNotTrack === "1" || w.doNotTrack === "1";

  function send(event, props) {
    if (off) return;
    var body = JSON.stringify({
      site: site, path: loc.pathname + loc.search, referrer: d.referrer || null,
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
    var url = loc.pathname + loc.search;
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
  for (var i = 0; i < queued.length; i++) w.tally.apply(w, queued[i]);
})(window, document);
