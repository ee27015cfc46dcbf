// The ready page of toasts: GET /toasts?topics=...&token=...&title=FIELD&body=FIELD&image=FIELD
// shows each broadcast message as a toast. Title, body and image come from the message's data
// fields the query names (default `title`, `body`, `image`). Text is set as text, with
// dir=auto so right-to-left titles read right; an image shows only from an http(s) URL.
(function () {
  "use strict";
  var q = new URLSearchParams(location.search);
  var fields = { title: q.get("title") || "title", body: q.get("body") || "body",
    image: q.get("image") || "image" };
  var showFor = Math.min(60000, Math.max(1000, Number(q.get("duration_ms")) || 8000));
  var most = 5;
  var list = document.getElementById("toasts");
  var state = window.cueboxToasts = { shown: [], resets: 0, connected: 0 };

  function text(v) {
    if (v === null || v === undefined) return "";
    return typeof v === "string" ? v : (typeof v === "object" ? "" : String(v));
  }

  function imageUrl(v) {
    if (typeof v !== "string") return null;
    try {
      var u = new URL(v);
      return u.protocol === "http:" || u.protocol === "https:" ? u.href : null;
    } catch (e) { return null; }
  }

  function show(message) {
    var data = message.data || {};
    var li = document.createElement("li");
    li.className = "toast";
    li.dataset.id = message.id;
    var src = imageUrl(data[fields.image]);
    if (src) {
      var img = document.createElement("img");
      img.alt = "";
      img.src = src;
      img.onerror = function () { img.remove(); };
      li.appendChild(img);
    }
    var box = document.createElement("div");
    box.className = "text";
    [["title", data[fields.title]], ["body", data[fields.body]]].forEach(function (part) {
      var t = text(part[1]);
      if (!t) return;
      var p = document.createElement("div");
      p.className = part[0];
      p.dir = "auto";
      p.textContent = t;
      box.appendChild(p);
    });
    li.appendChild(box);
    list.appendChild(li);
    while (list.children.length > most) list.removeChild(list.firstChild);
    state.shown.push({ id: message.id, topic: message.topic });
    setTimeout(function () {
      li.classList.add("leaving");
      setTimeout(function () { li.remove(); }, 320);
    }, showFor);
  }

  var topics = (q.get("topics") || "").split(",").filter(Boolean);
  window.cuebox.subscribe(location.origin, { topics: topics, token: q.get("token") || undefined,
    onReset: function () { state.resets += 1; },
    onOpen: function () { state.connected += 1; } }, show);
})();
