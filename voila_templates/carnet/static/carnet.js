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
    }
  };
  window.voila_finish = window.display_cells;

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

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll('[role="tablist"].carnet-tabs').forEach(function (list) {
      list.addEventListener("keydown", onKey);
      tabsOf(list).forEach(function (tab) {
        tab.addEventListener("click", function () {
          select(tab, false);
        });
      });
    });
  });
})();
