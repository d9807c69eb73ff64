/* Tally extension: file downloads, as Plausible names them.
   <script defer src="https://collector/js/tally.downloads.js"></script> beside tally.js.
   A click (or middle click) on a link whose path ends in one of the file types sends the
   custom event "File Download" with prop url (the collector keeps its origin and path
   only). data-file-types="pdf,zip" on this tag replaces the default list. Everything
   goes through tally(), so DNT and GPC silence it too. See docs/tracker.md. */
(function (w, d) {
  "use strict";
  var s = d.currentScript;
  var types = ((s && s.getAttribute("data-file-types")) ||
    "pdf,xlsx,docx,txt,rtf,csv,exe,key,pps,ppt,pptx,7z,pkg,rar,gz,zip,avi,mov,mp4,mpeg,wmv,midi,mp3,wav,wma,dmg")
    .replace(/[\s.]/g, "").toLowerCase().split(",");
  // Before tally.js has run, calls wait in tally.q (tally.js sends them when it loads).
  w.tally = w.tally || function () { (w.tally.q = w.tally.q || []).push(arguments); };

  function click(e) {
    var a = e.target.closest && e.target.closest("a[href]");
    if (!a || (e.type === "auxclick" && e.button !== 1) || !/^https?:$/.test(a.protocol)) return;
    var ext = a.pathname.split("/").pop().split(".");
    if (ext.length > 1 && types.indexOf(ext.pop().toLowerCase()) >= 0) {
      e.tallyFile = 1; // tally.outbound.js then skips it: one event per click
      w.tally("File Download", { url: a.href });
    }
  }

  // Capture phase: runs before tally.outbound.js's listener, whatever the script order.
  d.addEventListener("click", click, true);
  d.addEventListener("auxclick", click, true);
})(window, document);
