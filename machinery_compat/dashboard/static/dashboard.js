// machinery-compat dashboard: live updates over server-sent events (no build step, no CDN).
// The server sends the live part of the page, rendered; this swaps it in.
(function () {
  "use strict";
  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (form.dataset && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      ev.preventDefault();
    }
  });
  var live = document.getElementById("live");
  if (!live || !window.EventSource) { return; }
  var updated = document.getElementById("updated");
  var last = null;
  var source = new EventSource(live.dataset.stream);
  source.addEventListener("overview", function (ev) {
    if (ev.data !== last) {  // unchanged: leave the page alone (a click may be under way)
      live.innerHTML = ev.data;
      last = ev.data;
    }
    if (updated) { updated.textContent = new Date().toLocaleString(); }
    document.body.classList.remove("stale");
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  });
  source.onerror = function () { document.body.classList.add("stale"); };
})();
