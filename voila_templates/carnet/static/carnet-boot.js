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

  // A static page's kernel has done its work (every output is in the page) and nothing will connect to it:
  // it is shut down now, as Voila's front end does on beforeunload (only its owner may:
  // OwnedKernelShutdownHandler), rather than holding a place under the Viewer's kernel caps until the idle
  // culler finds it. A snapshot page's id is its replay session (snapshots.py), which its reload still needs.
  function endStaticPagesKernel() {
    var element = document.getElementById("jupyter-config-data");
    var config;
    try {
      config = JSON.parse(element.textContent);
    } catch (error) {
      return;
    }
    if (!config.kernelId || config.carnetSnapshot || !navigator.sendBeacon) {
      return;
    }
    var form = new FormData();
    form.append("_xsrf", (document.cookie.match(/\b_xsrf=([^;]*)\b/) || [])[1] || "");
    navigator.sendBeacon(config.baseUrl + "voila/api/shutdown/" + config.kernelId, form);
  }

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
    if (document.getElementById("carnet-static-page")) {
      // No output needs Voila's front end, so the template left it out: nothing will load a theme (the page's
      // own CSS has it) and nothing else is coming, so the cells are shown now.
      window.themeLoaded = true;
      endStaticPagesKernel();
    }
    window.voila_finish();
  });
})();
