// Voila's page helpers (voila/templates/base/voila_setup.macro.html.j2) as a file, so that the app page has no
// inline script and its Content-Security-Policy can refuse every inline script (carnet/extension/viewer_csp.py).
// Loaded before carnet.js, which wraps voila_process and display_cells.
(function () {
  "use strict";

  window.voila_heartbeat = function () {
    console.log("Ok, voila is still executing...");
  };

  window.update_loading_text = function (index, count, text) {
    var el = document.getElementById("loading_text");
    if (el) {
      el.textContent = text || "Executing " + index + " of " + count;
    }
  };

  // Voila's JS calls voila_finish once the theme is in; the page calls it once the last cell is there.
  window.display_cells = function () {
    if (!window.themeLoaded) {
      window.cellLoaded = true;
      return;
    }
    var loading = document.getElementById("loading");
    if (loading) {
      loading.parentNode.removeChild(loading);
    }
    var cells = document.getElementById("rendered_cells");
    if (cells) {
      cells.style.display = "";
    }
  };
  window.voila_process = window.update_loading_text;
  window.voila_finish = function () {
    window.display_cells();
  };

  // Progress: each cell arrives as an element with cell-index / data-carnet-count (the template used to call
  // voila_process from an inline script per cell).
  var seen = 0;
  function progress(root) {
    var cells = root.querySelectorAll ? root.querySelectorAll("[cell-index][data-carnet-count]") : [];
    for (var i = 0; i < cells.length; i++) {
      var index = parseInt(cells[i].getAttribute("cell-index"), 10);
      if (index > seen) {
        seen = index;
        window.voila_process(index, parseInt(cells[i].getAttribute("data-carnet-count"), 10));
      }
    }
  }
  var observer = new MutationObserver(function () {
    progress(document);
  });
  observer.observe(document.documentElement, { childList: true, subtree: true });

  // The whole page has arrived (Voila streams it while the cells run): the cells are done.
  document.addEventListener("DOMContentLoaded", function () {
    observer.disconnect();
    progress(document);
    window.voila_finish();
  });
})();
