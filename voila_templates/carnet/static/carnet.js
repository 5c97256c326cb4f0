// Carnet's Viewer page (voila_templates/carnet): progress text, skeleton removal and tabs.
// Loaded as a file (no inline handlers) right after Voila's helper functions, which it wraps.
(function () {
  "use strict";

  // Voila calls voila_process(i, n) before each cell runs: say it in the person's words.
  window.voila_process = function (index, count) {
    var text = document.getElementById("loading_text");
    if (text) {
      text.textContent = "Loading your dashboard\u2026 " + index + " of " + count + " sections";
    }
  };

  // Voila's display_cells removes #loading and shows the cells once the theme is in; mark the page ready
  // then (tests and styles use it), whichever of Voila's two paths calls it.
  var displayCells = window.display_cells;
  window.display_cells = function () {
    displayCells.apply(this, arguments);
    if (!document.getElementById("loading")) {
      document.body.classList.add("carnet-ready");
      // Charts drawn while their tab was hidden lay themselves out again.
      window.dispatchEvent(new Event("resize"));
      settle();
    }
  };
  window.voila_finish = window.display_cells;

  // "Render finished", for machines (the scheduler's PDF printer, scheduler/viewer_pdf.py): <body
  // data-carnet-render="done"> once every cell has run, the skeleton is gone, every output the browser draws
  // itself (widgets, plotly; Voila leaves them as placeholders) is drawn, and the page has stopped changing
  // for QUIET_MS; "error" as soon as a cell failed or an output could not be drawn. carnet-ready (above) only
  // says the cells are shown: widgets arrive over the kernel's websocket after it.
  var QUIET_MS = 300;
  var cellsDone = false;
  var quiet = null;

  function failed() {
    // The template's error block, or the pre Voila's renderer puts in an output it could not draw.
    return document.querySelector(
      '.carnet-cell-error, .jp-OutputArea-output > pre[data-mime-type="application/vnd.jupyter.stderr"]'
    );
  }

  function pending() {
    if (document.querySelector('script[type="application/vnd.voila.cell-output+json"]')) {
      return true;
    }
    // A widget's output is an empty panel until its view is attached; a plotly output has no SVG until drawn.
    var outputs = document.querySelectorAll(
      "#rendered_cells .jp-OutputArea-output.lm-Panel, #rendered_cells .jp-RenderedPlotly"
    );
    for (var i = 0; i < outputs.length; i++) {
      var plotly = outputs[i].classList.contains("jp-RenderedPlotly");
      if (plotly ? !outputs[i].querySelector(".main-svg") : !outputs[i].firstElementChild) {
        return true;
      }
    }
    return false;
  }

  function mark(state) {
    renderWatch.disconnect();
    document.body.setAttribute("data-carnet-render", state);
  }

  function settle() {
    if (!cellsDone || document.getElementById("loading") || document.body.hasAttribute("data-carnet-render")) {
      return;
    }
    window.clearTimeout(quiet);
    if (failed()) {
      mark("error");
    } else if (!pending()) {
      // Any change before the timer fires starts the wait again (the observer below calls settle). A static
      // page (no Voila front end, carnet-boot.js) has nothing more coming: no wait.
      var wait = document.getElementById("carnet-static-page") ? 0 : QUIET_MS;
      quiet = window.setTimeout(function () {
        if (!pending()) {
          mark(failed() ? "error" : "done");
        }
      }, wait);
    }
  }

  var renderWatch = new MutationObserver(settle);
  renderWatch.observe(document.documentElement, {
    subtree: true,
    childList: true,
    attributes: true,
    characterData: true,
  });

  function tabsOf(list) {
    return Array.prototype.slice.call(list.querySelectorAll('[role="tab"]'));
  }

  function select(tab, focus) {
    var list = tab.closest('[role="tablist"]');
    var chosen = tab.getAttribute("data-carnet-tab");
    tabsOf(list).forEach(function (other) {
      var selected = other === tab;
      other.setAttribute("aria-selected", selected ? "true" : "false");
      other.setAttribute("tabindex", selected ? "0" : "-1");
    });
    // Other tabs stay rendered (widgets keep their state), only out of sight.
    document.querySelectorAll('[role="tabpanel"][data-carnet-tab]').forEach(function (panel) {
      var shown = panel.getAttribute("data-carnet-tab") === chosen;
      panel.classList.toggle("carnet-tab-hidden", !shown);
      if (shown) {
        panel.removeAttribute("aria-hidden");
      } else {
        panel.setAttribute("aria-hidden", "true");
      }
    });
    if (focus) {
      tab.focus();
    }
    window.dispatchEvent(new Event("resize"));
  }

  function onKey(event) {
    var tabs = tabsOf(event.currentTarget);
    var at = tabs.indexOf(document.activeElement);
    if (at < 0) {
      return;
    }
    var next = {
      ArrowRight: (at + 1) % tabs.length,
      ArrowLeft: (at - 1 + tabs.length) % tabs.length,
      Home: 0,
      End: tabs.length - 1,
    }[event.key];
    if (next !== undefined) {
      event.preventDefault();
      select(tabs[next], true);
    }
  }

  // Filter values in the URL (carnet.filters.bind in the notebook): the kernel marks each bound widget with
  // a class "carnet-url-v-" + encodeURIComponent(name + "=" + value); the address follows those marks, so a
  // copied link opens the app with the same filters. Other query arguments are kept.
  var URL_CLASS = "carnet-url-v-";

  function syncUrl() {
    var params = new URLSearchParams(window.location.search);
    var seen = {};
    document.querySelectorAll('[class*="' + URL_CLASS + '"]').forEach(function (element) {
      element.classList.forEach(function (name) {
        if (name.indexOf(URL_CLASS) !== 0) {
          return;
        }
        var pair;
        try {
          pair = decodeURIComponent(name.slice(URL_CLASS.length));
        } catch (error) {
          return;
        }
        var at = pair.indexOf("=");
        if (at > 0 && !seen[pair.slice(0, at)]) {
          seen[pair.slice(0, at)] = true;
          if (pair.slice(at + 1)) {
            params.set(pair.slice(0, at), pair.slice(at + 1));
          } else {
            params.delete(pair.slice(0, at));
          }
        }
      });
    });
    var query = params.toString();
    var wanted = window.location.pathname + (query ? "?" + query : "") + window.location.hash;
    if (wanted !== window.location.pathname + window.location.search + window.location.hash) {
      window.history.replaceState(window.history.state, "", wanted);
    }
  }

  new MutationObserver(function (changes) {
    var relevant = changes.some(function (change) {
      return change.type === "childList" || String(change.target.className).indexOf(URL_CLASS) >= 0;
    });
    if (relevant) {
      syncUrl();
    }
  }).observe(document.documentElement, {
    subtree: true,
    childList: true,
    attributes: true,
    attributeFilter: ["class"],
  });

  document.addEventListener("DOMContentLoaded", function () {
    // carnet-boot.js's listener ran first (it is loaded first): the whole page, so every cell, is here.
    cellsDone = true;
    settle();
    document.querySelectorAll('[role="tablist"].carnet-tabs').forEach(function (list) {
      list.addEventListener("keydown", onKey);
      tabsOf(list).forEach(function (tab) {
        tab.addEventListener("click", function () {
          select(tab, false);
        });
      });
    });
  });

  // A snapshot page (carnet/extension/snapshots.py): the latest page of this app for the same data and
  // filters, shown at once while this person's own page is rendered; it reloads into that page once the
  // Viewer has it. Its widgets show the recorded values and do not react until then.
  var SNAPSHOT_POLLS = 120;
  function snapshotConfig() {
    var element = document.getElementById("jupyter-config-data");
    try {
      return (element && JSON.parse(element.textContent).carnetSnapshot) || null;
    } catch (error) {
      return null;
    }
  }
  document.addEventListener("DOMContentLoaded", function () {
    var snapshot = snapshotConfig();
    if (!snapshot) {
      return;
    }
    document.body.classList.add("carnet-snapshot");
    var note = document.createElement("div");
    note.className = "carnet-snapshot-note";
    note.setAttribute("role", "status");
    note.textContent = "Showing the latest results \u00b7 interactive in a moment";
    document.body.insertBefore(note, document.body.firstChild);
    var polls = 0;
    // The Hub's sign-in accepts a script's request (not a navigation) only with the XSRF token, as Jupyter's
    // own front end sends it.
    var xsrf = (document.cookie.match(/(?:^|;\s*)_xsrf=([^;]*)/) || [])[1] || "";
    function ask() {
      polls += 1;
      fetch(snapshot.live, {
        credentials: "same-origin",
        cache: "no-store",
        headers: { "X-XSRFToken": decodeURIComponent(xsrf) },
      })
        .then(function (response) {
          return response.ok ? response.json() : { ready: false, gone: true };
        })
        .then(
          function (answer) {
            if (answer.ready) {
              window.location.reload();
            } else if (!answer.gone && polls < SNAPSHOT_POLLS) {
              window.setTimeout(ask, 1000);
            } else {
              note.textContent = "Showing the latest results \u00b7 reload the page to use the filters";
            }
          },
          function () {
            if (polls < SNAPSHOT_POLLS) {
              window.setTimeout(ask, 2000);
            }
          }
        );
    }
    window.setTimeout(ask, 1000);
  });
})();
