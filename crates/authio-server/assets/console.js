// Progressive enhancement for the console: every page works without this file.
// - [data-live] regions re-fetch their server-rendered fragment every second until it says
//   it is final (a move's phases, a dedicated-database request's state).
// - [data-autosubmit] switches save as soon as they are flipped (the Save button hides).
(function () {
  "use strict";
  document.documentElement.classList.add("js");
  function poll(el) {
    var url = el.getAttribute("data-live");
    function tick() {
      fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (html !== null) { el.innerHTML = html; }
          if (!el.querySelector("[data-final]")) { setTimeout(tick, 1000); }
        })
        .catch(function () { setTimeout(tick, 3000); });
    }
    if (!el.querySelector("[data-final]")) { setTimeout(tick, 1000); }
  }
  document.querySelectorAll("[data-live]").forEach(poll);
  document.querySelectorAll("[data-autosubmit]").forEach(function (input) {
    input.addEventListener("change", function () {
      if (input.form.requestSubmit) { input.form.requestSubmit(); } else { input.form.submit(); }
    });
  });
})();
