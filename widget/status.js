// The donor's page for one alert (GET /alerts/{id}/status?receiver=R&sig=S): where it is in
// line and about when it shows, kept current. It reads status.json, counts the wait down each
// second in between, and reads again every few seconds until the alert has ended. Every text
// is set with textContent: nothing from the server is ever read as HTML.
(function () {
  "use strict";
  var READ_EVERY_MS = 3000;
  var $ = function (id) { return document.getElementById(id); };
  var HEADLINES = {
    queued: "Your alert is in line",
    held: "Your alert waits for the streamer's approval",
    in_flight: "Your alert is on screen now",
    done: "Your alert was shown",
    expired: "Your alert was shown",
    skipped: "The streamer skipped your alert",
    cleared: "The streamer cleared the queue",
    filtered: "Your alert was not shown",
    denied: "The streamer did not approve your alert"
  };
  var WAITING = {
    resume: "The streamer has paused alerts; yours shows once they resume.",
    widget: "The streamer's alert box is not on air right now; yours shows once it is.",
    approval: "The streamer approves alerts before they show."
  };
  var ended = { done: 1, expired: 1, skipped: 1, cleared: 1, filtered: 1, denied: 1 };
  var state = null, readAt = 0, timer = null;

  function clock(ms) {
    var s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return s + " s";
    var m = Math.floor(s / 60), r = s % 60;
    if (m < 60) return m + " min " + (r < 10 ? "0" : "") + r + " s";
    return Math.floor(m / 60) + " h " + (m % 60) + " min";
  }

  function render() {
    var s = state;
    document.body.dataset.status = s.status;
    $("for").textContent = "Alert for " + s.receiver;
    $("headline").textContent = HEADLINES[s.status] || s.status;
    $("status").textContent = s.status.replace("_", " ");
    $("position").textContent = s.position == null ? "–"
      : s.position === 0 ? "next" : s.position + " ahead";
    var eta = "";
    if (s.status === "queued" && s.eta_ms != null) {
      var left = s.eta_ms - (Date.now() - readAt);
      eta = left > 0 ? "in about " + clock(left) : "any moment now";
    } else if (s.status === "in_flight") {
      eta = "now";
    } else if (s.shown_at) {
      eta = new Date(s.shown_at).toLocaleTimeString();
    }
    $("eta").textContent = eta;
    $("note").textContent = (s.waiting_for && WAITING[s.waiting_for]) || "";
  }

  function read() {
    fetch(location.pathname + ".json" + location.search, { cache: "no-store" })
      .then(function (res) {
        return res.json().then(function (body) { return { ok: res.ok, body: body }; });
      })
      .then(function (r) {
        if (!r.ok) {
          $("headline").textContent = r.body && r.body.error ? r.body.error.message : "Not found";
          $("eta").textContent = "";
          document.body.dataset.error = (r.body && r.body.error && r.body.error.code) || "error";
          return;
        }
        delete document.body.dataset.error;
        state = r.body; readAt = Date.now();
        render();
        if (!ended[state.status]) setTimeout(read, READ_EVERY_MS);
      })
      .catch(function () { setTimeout(read, READ_EVERY_MS); });
  }

  if (document.body.dataset.refused) {
    $("headline").textContent = "This link is not valid: ask for a new one.";
    return;
  }
  timer = setInterval(function () { if (state) render(); }, 1000);
  read();
})();
