// cuebox's broadcast client, with no dependencies: `cuebox.subscribe(url, {topics, token},
// onMessage)`. `url` is the cuebox node (https://alerts.example.com); `topics` a list of topics
// or `prefix:*` patterns; `token` a subscribe token (`cuebox topic-token`), not needed for
// public topics. `onMessage` gets each message: {topic, offset, id, event, data, at}.
//
// It keeps the connection: a heartbeat every 20 s, and a reconnect after a drop or 45 s of
// silence, waiting 1 s, then twice as long each time up to 30 s, each wait jittered (so pages
// do not all come back at once). It recovers by offset: it reconnects with the last offset of
// each topic it got, and the server sends what it missed first, with no gap and no repeat.
// When that is more than the server kept, `options.onReset(topic)` is called and it goes on live.
// `options.onOpen()` is called each time it connects, `options.onError(frame)` on a refused
// subscribe.
//
// Answers {close(), subscribe(topic), unsubscribe(topic)}.
(function (root) {
  "use strict";
  var MIN_WAIT = 1000, MAX_WAIT = 30000, PING_EVERY = 20000, SILENCE = 45000;

  function subscribe(url, options, onMessage) {
    options = options || {};
    var topics = (options.topics || []).slice();
    var last = {};
    var socket = null, closed = false, wait = MIN_WAIT, pinger = null, heard = 0, retry = null;

    function address() {
      var base = String(url).replace(/\/+$/, "").replace(/^http/, "ws");
      var query = ["topics=" + encodeURIComponent(topics.join(","))];
      if (options.token) query.push("token=" + encodeURIComponent(options.token));
      var since = Object.keys(last).map(function (t) { return t + ":" + last[t]; });
      if (since.length) query.push("since=" + encodeURIComponent(since.join(",")));
      return base + "/ws/topics?" + query.join("&");
    }

    function send(frame) {
      if (socket && socket.readyState === 1) socket.send(JSON.stringify(frame));
    }

    function again() {
      if (closed || retry) return;
      // Full jitter: anywhere up to the current wait, but at least the minimum.
      var delay = Math.max(MIN_WAIT, Math.random() * wait);
      wait = Math.min(MAX_WAIT, wait * 2);
      retry = setTimeout(function () { retry = null; connect(); }, delay);
    }

    function connect() {
      if (closed) return;
      var s = new WebSocket(address());
      socket = s;
      heard = Date.now();
      s.onopen = function () {
        wait = MIN_WAIT;
        heard = Date.now();
        if (options.onOpen) options.onOpen();
      };
      s.onmessage = function (event) {
        heard = Date.now();
        var frame;
        try { frame = JSON.parse(event.data); } catch (e) { return; }
        if (frame.type === "message") {
          if (last[frame.topic] !== undefined && frame.offset <= last[frame.topic]) return;
          last[frame.topic] = frame.offset;
          onMessage({ topic: frame.topic, offset: frame.offset, id: frame.id,
            event: frame.event, data: frame.data, at: frame.at });
        } else if (frame.type === "reset") {
          delete last[frame.topic];
          if (options.onReset) options.onReset(frame.topic);
        } else if (frame.type === "error" && options.onError) {
          options.onError(frame);
        }
      };
      s.onclose = function () {
        if (socket === s) socket = null;
        again();
      };
      s.onerror = function () { try { s.close(); } catch (e) { /* closing anyway */ } };
    }

    pinger = setInterval(function () {
      if (!socket) return;
      if (Date.now() - heard > SILENCE) { try { socket.close(); } catch (e) { /* gone */ } return; }
      send({ type: "ping" });
    }, PING_EVERY);
    connect();

    return {
      close: function () {
        closed = true;
        clearInterval(pinger);
        if (retry) clearTimeout(retry);
        if (socket) socket.close();
      },
      subscribe: function (topic) {
        if (topics.indexOf(topic) === -1) topics.push(topic);
        send({ type: "subscribe", topic: topic });
      },
      unsubscribe: function (topic) {
        topics = topics.filter(function (t) { return t !== topic; });
        send({ type: "unsubscribe", topic: topic });
      }
    };
  }

  root.cuebox = root.cuebox || {};
  root.cuebox.subscribe = subscribe;
})(typeof window !== "undefined" ? window : this);
