// The cuebox widget's behaviour: connect to /ws/{receiver}, show each alert the server sends for
// its duration, report `started` and `done`, and reconnect forever. The server decides what is
// shown and when; this page only has to never show an id twice and never lose a `done`.
'use strict';

(function () {
  const FADE_MS = 250;
  const REMEMBER = 200; // finished ids kept, to answer a resend whose `done` was lost
  const PING_EVERY_MS = 20000;
  const SILENT_MS = 45000; // no frame for this long: the connection is dead even if not closed
  const MIN_DELAY_MS = 1000;
  const MAX_DELAY_MS = 30000;
  const REFUSED_RETRY_MS = 30000; // a refused URL is tried again this often, quietly
  const TOKEN_REVOKED = 4001;

  const parts = location.pathname.split('/');
  const receiver = decodeURIComponent(parts[parts.length - 1] || '');
  const token = new URLSearchParams(location.search).get('token') || '';
  const storageKey = 'cuebox:done:' + receiver;

  const card = document.getElementById('card');
  const el = {
    image: document.getElementById('image'),
    kind: document.getElementById('kind'),
    from: document.getElementById('from'),
    amount: document.getElementById('amount'),
    message: document.getElementById('message'),
  };

  // For tests and for a curious streamer's devtools.
  const status = { connected: false, shown: [], skipped: [], current: null, refused: null };
  window.cuebox = status;

  // Refused: this page is on stream, so it shows nothing and says why only in the console
  // (OBS: right-click the source, Interact, or the browser source's log), then tries again.
  function warnRefused(why) {
    status.refused = why;
    console.warn(why === 'receiver'
      ? 'cuebox: the receiver in this widget URL is not a valid receiver id.'
      : 'cuebox: this widget URL\'s token does not open receiver "' + receiver + '": the URL ' +
        'was made by another cuebox, before its secret changed, or before the streamer ' +
        'rotated the token. Get a new one with ' +
        '`cuebox widget-url ' + receiver + '`.', 'Nothing is shown; trying again every ' +
      REFUSED_RETRY_MS / 1000 + ' s.');
  }
  if (document.body.dataset.refused) {
    warnRefused(document.body.dataset.refused);
    setTimeout(() => location.reload(), REFUSED_RETRY_MS);
    return;
  }

  let socket = null;
  let delay = MIN_DELAY_MS;
  let retryTimer = null;
  let lastHeard = 0;
  let showing = null; // { id, timer, hideTimer, audio }
  const finished = loadFinished();

  // ---- remembering finished alerts, across reloads where storage allows ----

  function loadFinished() {
    try {
      const saved = JSON.parse(localStorage.getItem(storageKey) || '[]');
      return Array.isArray(saved) ? saved.filter((x) => typeof x === 'string').slice(-REMEMBER) : [];
    } catch (e) {
      return [];
    }
  }

  function remember(id) {
    finished.push(id);
    while (finished.length > REMEMBER) finished.shift();
    try {
      localStorage.setItem(storageKey, JSON.stringify(finished));
    } catch (e) {
      // Storage may be off (private mode, some OBS builds): memory still covers this page's life.
    }
  }

  // ---- showing ----

  function onAlert(frame) {
    const alert = frame.alert;
    if (!alert || typeof alert.id !== 'string') {
      console.warn('cuebox: alert frame without an id', frame);
      return;
    }
    const id = alert.id;
    if (showing && showing.id === id) {
      // A resend of what is on screen: our `started` was lost. Say it again, don't restart.
      send({ type: 'started', id: id });
      return;
    }
    if (finished.indexOf(id) !== -1) {
      // Shown already; our `done` was lost.
      send({ type: 'done', id: id });
      return;
    }
    // A different alert while one shows: the server moved on (expired, or another widget
    // finished it). It is the authority, so follow it.
    if (showing) clear();
    show(alert);
  }

  // The streamer skipped an alert: if it is on screen, it goes at once, with no `done` (the
  // server has completed it already). Remembered, so a late resend of it is not shown again.
  function onSkip(frame) {
    if (typeof frame.id !== 'string') return;
    status.skipped.push(frame.id);
    if (finished.indexOf(frame.id) === -1) remember(frame.id);
    if (showing && showing.id === frame.id) clear();
  }

  function show(alert) {
    fill(alert);
    const duration = clamp(alert.duration_ms, 1000, 60000, 8000);
    showing = { id: alert.id, timer: 0, hideTimer: 0, audio: playSound(alert.media) };
    status.current = alert.id;
    status.shown.push(alert.id);
    card.dataset.alertId = alert.id;
    card.hidden = false;
    void card.offsetWidth; // let the fade-in start from the hidden state
    card.classList.add('visible');
    send({ type: 'started', id: alert.id });
    showing.timer = setTimeout(() => finish(alert.id), Math.max(0, duration - FADE_MS));
  }

  function finish(id) {
    if (!showing || showing.id !== id) return;
    card.classList.remove('visible');
    showing.hideTimer = setTimeout(() => {
      if (!showing || showing.id !== id) return;
      clear();
      remember(id);
      send({ type: 'done', id: id });
    }, FADE_MS);
  }

  function clear() {
    if (showing) {
      clearTimeout(showing.timer);
      clearTimeout(showing.hideTimer);
      if (showing.audio) {
        try {
          showing.audio.pause();
        } catch (e) {
          // nothing to stop
        }
      }
    }
    showing = null;
    status.current = null;
    card.classList.remove('visible');
    card.hidden = true;
    delete card.dataset.alertId;
  }

  // Donor text goes in through textContent only: it is never parsed as HTML.
  function fill(alert) {
    el.kind.textContent = typeof alert.kind === 'string' ? alert.kind : '';
    el.from.textContent = nonEmpty(alert.from) || 'Anonymous';
    el.amount.textContent = formatAmount(alert.amount);
    el.message.textContent = nonEmpty(alert.message) || '';
    const image = alert.media && alert.media.image;
    if (isHttpUrl(image)) {
      el.image.src = image;
      el.image.hidden = false;
    } else {
      el.image.removeAttribute('src');
      el.image.hidden = true;
    }
  }

  function formatAmount(amount) {
    if (!amount || typeof amount.value !== 'string' || typeof amount.currency !== 'string') {
      return '';
    }
    try {
      // The value stays a decimal string: Intl formats it without a trip through a float
      // where the browser supports that, and converts it otherwise.
      return new Intl.NumberFormat(undefined, { style: 'currency', currency: amount.currency })
        .format(amount.value);
    } catch (e) {
      return amount.value + ' ' + amount.currency;
    }
  }

  function playSound(media) {
    const sound = media && media.sound;
    if (!isHttpUrl(sound)) return null;
    try {
      const audio = new Audio(sound);
      const playing = audio.play();
      if (playing && playing.catch) playing.catch(() => {});
      return audio;
    } catch (e) {
      return null;
    }
  }

  // ---- the connection ----

  function connect() {
    retryTimer = null;
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const url = scheme + '//' + location.host + '/ws/' + encodeURIComponent(receiver) +
      '?token=' + encodeURIComponent(token);
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      reconnectLater();
      return;
    }
    socket = ws;
    lastHeard = Date.now();
    let opened = false;
    ws.onopen = () => {
      opened = true;
    };
    ws.onmessage = (event) => {
      if (ws !== socket) return;
      lastHeard = Date.now();
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch (e) {
        console.warn('cuebox: a frame that is not JSON', event.data);
        return;
      }
      try {
        onFrame(frame);
      } catch (e) {
        console.error('cuebox: could not handle a frame', e, frame);
      }
    };
    ws.onclose = (event) => {
      if (ws !== socket) return;
      dropped();
      if (event.code === TOKEN_REVOKED) {
        // The streamer rotated the widget token: this URL opens nothing any more. The stage
        // clears and the page goes quiet, as for any refused URL, until OBS gets the new one.
        clear();
        warnRefused('token');
        retryTimer = setTimeout(connect, REFUSED_RETRY_MS);
        return;
      }
      if (!opened) {
        askWhyRefused();
        return;
      }
      reconnectLater();
    };
    ws.onerror = () => {
      // A close event follows; reconnecting happens there.
    };
  }

  function onFrame(frame) {
    switch (frame && frame.type) {
      case 'hello':
        delay = MIN_DELAY_MS;
        status.refused = null;
        setConnected(true);
        break;
      case 'alert':
        onAlert(frame);
        break;
      case 'skip':
        onSkip(frame);
        break;
      case 'error':
        console.warn('cuebox: server error', frame.code, frame.message);
        break;
      default:
        // pong, and frame types of later protocol versions
        break;
    }
  }

  function send(frame) {
    if (socket && socket.readyState === WebSocket.OPEN) {
      try {
        socket.send(JSON.stringify(frame));
      } catch (e) {
        // The socket is going; the server resends on reconnect and onAlert answers then.
      }
    }
  }

  function dropped() {
    socket = null;
    setConnected(false);
  }

  // A socket refused before it opened: the browser does not say why, but this page's own URL
  // does. 401 means the token no longer opens the receiver (the node was set up again with
  // another secret): clear the stage and try slowly. Anything else is an ordinary outage.
  function askWhyRefused() {
    fetch(location.href, { cache: 'no-store' }).then((res) => {
      if (res.status !== 401 || retryTimer) {
        reconnectLater();
        return;
      }
      clear();
      warnRefused('token');
      retryTimer = setTimeout(connect, REFUSED_RETRY_MS);
    }, () => reconnectLater());
  }

  // Exponential backoff with jitter, so a restarted node is not met by every widget at once.
  function reconnectLater() {
    if (retryTimer) return;
    const wait = delay * (0.5 + Math.random() * 0.5);
    delay = Math.min(delay * 2, MAX_DELAY_MS);
    retryTimer = setTimeout(connect, wait);
  }

  function setConnected(connected) {
    status.connected = connected;
    document.body.dataset.connected = connected ? 'true' : 'false';
  }

  // A half-open connection (Wi-Fi gone without a FIN) never closes by itself: ping, and give up
  // on a socket that has been silent too long.
  setInterval(() => {
    if (!socket) return;
    if (Date.now() - lastHeard > SILENT_MS) {
      const dead = socket;
      dropped();
      try {
        dead.close();
      } catch (e) {
        // already closed
      }
      reconnectLater();
      return;
    }
    send({ type: 'ping' });
  }, PING_EVERY_MS);

  // ---- small helpers ----

  function clamp(n, lo, hi, fallback) {
    return typeof n === 'number' && isFinite(n) ? Math.min(hi, Math.max(lo, n)) : fallback;
  }

  function nonEmpty(s) {
    return typeof s === 'string' && s.trim() !== '' ? s : null;
  }

  function isHttpUrl(s) {
    return typeof s === 'string' && /^https?:\/\//i.test(s);
  }

  connect();
})();
