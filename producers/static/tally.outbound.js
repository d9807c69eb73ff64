/* Tally extension: outbound-link clicks, as Plausible names them.
   <script defer src="https://collector/js/tally.outbound.js"></script> beside tally.js.
   A click (or middle click) on a link to another host sends the custom event
   "Outbound Link: Click" with prop url (the collector keeps its origin and path only).
   Everything goes through tally(), so DNT and GPC silence it too. See docs/tracker.md. */
(function (w, d) {
  "use strict";
  // Before tally.js has run, calls wait in tally.q (tally.js sends them when it loads).
  w.tally = w.tally || function () { (w.tally.q = w.tally.q || []).push(arguments); };

  function click(e) {
    var a = e.target.closest && e.target.closest("a[href]");
    // e.tallyFile: tally.downloads.js (capture phase, so first) already counted it.
    if (!a || e.tallyFile || (e.type === "auxclick" && e.button !== 1)) return;
    if (/^https?:$/.test(a.protocol) && a.host !== w.location.host) {
      w.tally("Outbound Link: Click", { url: a.href });
    }
  }

  // sendBeacon outlives the page, so the navigation is never held up.
  d.addEventListener("click", click);
  d.addEventListener("auxclick", click);
})(window, document);
