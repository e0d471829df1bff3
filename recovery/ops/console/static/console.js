// Refresh the overview's numbers and charts every few seconds without reloading the page.
(function () {
  "use strict";
  var box = document.getElementById("overview");
  if (!box || !window.fetch) { return; }
  var url = box.getAttribute("data-refresh");
  function refresh() {
    fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (data) { if (data && data.html) { box.innerHTML = data.html; } })
      .catch(function () { /* keep the last frame; the next tick tries again */ });
  }
  window.setInterval(refresh, 5000);
}());
