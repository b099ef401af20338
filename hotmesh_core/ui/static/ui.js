// HotMesh dashboard: live refresh of the element #live, in plain JavaScript.
// The element names the URL to poll (data-live-url) and how often
// (data-interval, ms); its content is replaced by the same element of the
// page fetched. Polling stops while the tab is hidden or the "live" box is
// unticked, and for good once the page says it is done (no data-live-url).
(function () {
  "use strict";
  function start() {
    var live = document.getElementById("live");
    if (!live || !live.dataset.liveUrl) { return; }
    var toggle = document.getElementById("live-toggle");
    var interval = Math.max(parseInt(live.dataset.interval || "2000", 10), 500);
    var busy = false;
    function tick() {
      if (busy || document.hidden || (toggle && !toggle.checked)) { return; }
      busy = true;
      fetch(live.dataset.liveUrl, { headers: { "Accept": "text/html" }, credentials: "same-origin" })
        .then(function (response) { return response.ok ? response.text() : null; })
        .then(function (text) {
          if (text === null) { return; }
          var doc = new DOMParser().parseFromString(text, "text/html");
          var fresh = doc.getElementById("live");
          if (!fresh) { live.innerHTML = doc.body.innerHTML; return; }  // a fragment
          // Keep open <details> open across refreshes.
          var open = {};
          live.querySelectorAll("details[open]").forEach(function (d, i) { open[i] = true; });
          live.innerHTML = fresh.innerHTML;
          live.querySelectorAll("details").forEach(function (d, i) { if (open[i]) { d.open = true; } });
          if (!fresh.dataset.liveUrl) { window.clearInterval(timer); live.removeAttribute("data-live-url"); }
          document.dispatchEvent(new CustomEvent("hotmesh:refreshed"));
        })
        .catch(function () { /* the next tick tries again */ })
        .finally(function () { busy = false; });
    }
    var timer = window.setInterval(tick, interval);
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
