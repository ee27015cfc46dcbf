// The cuebox widget's behaviour: connect to /ws/{receiver}, show each alert the server sends for
// its duration, with the look (design) the server resolved for it, report `started` and `done`,
// and reconnect forever. The server decides what is shown, how and when; this page only has to
// never show an id twice, never lose a `done`, and fit whatever an alert holds on the canvas.
'use strict';

(function () {
  const MEDIA_WAIT_MS = 3000; // an image or sound that takes longer is left out
  const SPEECH_WAIT_MS = 5500; // the node gives up on its engine after 5 s
  const SPEECH_OVER_MS = 10000; // speech may keep an alert up this long past its duration
  const SMALLEST_FIT = 0.45; // text shrinks to this share of the design's size, then is cut
  const EMOJI_FONTS = '"Apple Color Emoji", "Segoe UI Emoji", "Noto Color Emoji"';
  const REMEMBER = 200; // finished ids kept, to answer a resend whose `done` was lost
  const PING_EVERY_MS = 20000;
  const SILENT_MS = 45000; // no frame for this long: the connection is dead even if not closed
  const MIN_DELAY_MS = 1000;
  const MAX_DELAY_MS = 30000;
  const REFUSED_RETRY_MS = 30000; // a refused URL is tried again this often, quietly
  const TOKEN_REVOKED = 4001;

  const parts = location.pathname.split('/');
  const receiver = decodeURIComponent(parts[parts.length - 1] || '');
  const query = new URLSearchParams(location.search);
  const token = query.get('token') || '';
  // A preview (the dock's, or a browser tab): it shows what the receiver's widgets show, but is
  // no audience (it holds and releases nothing) and plays no sound.
  const preview = query.get('preview') === '1';
  const storageKey = 'cuebox:done:' + receiver;

  const stage = document.getElementById('stage');
  const card = document.getElementById('card');
  const el = {
    image: document.getElementById('image'),
    title: document.getElementById('title'),
    body: document.getElementById('body'),
  };
  const soundNotice = document.getElementById('sound-notice');

  // For tests and for a curious streamer's devtools.
  const status = {
    connected: false, shown: [], skipped: [], current: null, refused: null, design: null,
    sounds: [], onAir: !preview, spoken: [], preview: preview,
  };
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
      // A resend of what is on screen (or loading): our `started` was lost. Say it again once
      // it shows, don't restart.
      if (showing.started) send({ type: 'started', id: id });
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
    const speech = frame.speech && typeof frame.speech.url === 'string' &&
      frame.speech.url.indexOf('/speech/') === 0 ? frame.speech.url : null;
    show(alert, frame.design || {}, speech);
  }

  // The streamer skipped an alert: if it is on screen, it goes at once, with no `done` (the
  // server has completed it already). Remembered, so a late resend of it is not shown again.
  function onSkip(frame) {
    if (typeof frame.id !== 'string') return;
    status.skipped.push(frame.id);
    if (finished.indexOf(frame.id) === -1) remember(frame.id);
    if (showing && showing.id === frame.id) clear();
  }

  // Loads the alert's image and sound first, so its time on screen counts from when it really
  // shows; whatever fails or takes over MEDIA_WAIT_MS is left out, so one broken GIF never
  // holds the queue.
  function show(alert, design, speechUrl) {
    const media = alert.media || {};
    const imageUrl = pick(media.image, design.image);
    const soundUrl = pick(media.sound, design.sound);
    const mine = {
      id: alert.id, timer: 0, hideTimer: 0, capTimer: 0, audio: null, started: false,
      speech: null, speechDone: !speechUrl, out: null,
    };
    showing = mine;
    status.current = alert.id;
    // The speech is made by the node while the media loads; it never holds the start: the alert
    // shows once its media is in, and the speech follows the sound when it comes.
    const speaking = loadSound(speechUrl, SPEECH_WAIT_MS);
    Promise.all([loadImage(imageUrl), loadSound(soundUrl, MEDIA_WAIT_MS)]).then(([image, audio]) => {
      if (showing !== mine) return;
      fill(alert, design, image);
      mine.audio = audio;
      const duration = clamp(alert.duration_ms, 1000, 60000, 8000);
      const out = animation(design.animation_out, 'fade', 300);
      card.dataset.alertId = alert.id;
      card.hidden = false;
      fit();
      const enter = animation(design.animation_in, 'pop', 450);
      card.style.animation = 'cb-in-' + enter.name + ' ' + enter.ms + 'ms ease-out both';
      play(audio, design.volume);
      status.shown.push(alert.id);
      status.design = design;
      mine.started = true;
      mine.out = out;
      send({ type: 'started', id: alert.id });
      mine.timer = setTimeout(() => finish(alert.id), Math.max(0, duration - out.ms));
      mine.capTimer = setTimeout(() => {
        mine.speechDone = true;
        finish(alert.id);
      }, duration + SPEECH_OVER_MS - out.ms);
      speaking.then((speech) => speak(mine, speech));
    });
  }

  // The alert's speech, after its sound; `done` waits for it to end. Off air it is not played.
  function speak(mine, speech) {
    if (showing !== mine || mine.speechDone) return;
    const over = (played) => {
      status.spoken.push({ id: mine.id, played: played });
      mine.speechDone = true;
      if (mine.due) finish(mine.id);
    };
    if (!speech || !status.onAir) {
      over(false);
      return;
    }
    mine.speech = speech;
    const go = () => {
      if (showing !== mine) return;
      speech.onended = () => over(true);
      speech.onerror = () => over(false);
      play(speech, 1);
      if (speech.paused) over(false);
    };
    const sound = mine.audio;
    if (sound && !sound.paused && !sound.ended) {
      sound.addEventListener('ended', go, { once: true });
    } else {
      go();
    }
  }

  function finish(id) {
    if (!showing || showing.id !== id) return;
    showing.due = true;
    if (!showing.speechDone || showing.leaving) return; // the speech ends it, once
    showing.leaving = true;
    const out = showing.out;
    clearTimeout(showing.capTimer);
    card.style.animation = 'cb-out-' + out.name + ' ' + out.ms + 'ms ease-in both';
    showing.hideTimer = setTimeout(() => {
      if (!showing || showing.id !== id) return;
      clear();
      // A preview remembers nothing: it shares storage with the real widget in OBS.
      if (!preview) remember(id);
      send({ type: 'done', id: id });
    }, out.ms);
  }

  function clear() {
    if (showing) {
      clearTimeout(showing.timer);
      clearTimeout(showing.hideTimer);
      clearTimeout(showing.capTimer);
      for (const audio of [showing.audio, showing.speech]) {
        if (!audio) continue;
        try {
          audio.pause();
        } catch (e) {
          // nothing to stop
        }
      }
    }
    showing = null;
    status.current = null;
    card.style.animation = '';
    card.hidden = true;
    delete card.dataset.alertId;
  }

  // The design's look, set through the style object (which the page's CSP allows, unlike style
  // attributes), and the text through text nodes only: donor text is never parsed as HTML.
  function fill(alert, design, image) {
    card.className = 'alert layout-' + oneOf(design.layout,
      ['image_above', 'image_left', 'image_right', 'image_behind', 'text_only'], 'image_above') +
      ' shadow-' + oneOf(design.text_shadow, ['none', 'soft', 'strong', 'outline'], 'strong');
    card.dataset.design = design.design || 'built_in';
    card.dataset.variation = design.variation || '';
    const family = typeof design.font_family === 'string' && design.font_family
      ? design.font_family + ', ' + EMOJI_FONTS : '';
    card.style.fontFamily = family;
    card.style.fontWeight = String(clamp(design.font_weight, 100, 900, 800));
    card.style.color = design.text_color || '';
    card.style.setProperty('--hl', design.highlight_color || '#ffd35c');
    card.style.setProperty('--size', (clamp(design.font_size, 8, 200, 64) / 10.8) + 'vh');
    card.style.setProperty('--fit', '1');
    useCss(design.css);
    const values = placeholderValues(alert, design.locale);
    render(el.title, typeof design.title === 'string' ? design.title : '{from} {amount}', values);
    render(el.body, typeof design.body === 'string' ? design.body : '{message}', values);
    if (image) {
      el.image.src = image;
      el.image.hidden = false;
    } else {
      el.image.removeAttribute('src');
      el.image.hidden = true;
    }
  }

  function placeholderValues(alert, locale) {
    const amount = alert.amount;
    const data = alert.data && typeof alert.data === 'object' ? alert.data : {};
    return {
      from: nonEmpty(alert.from) || 'Anonymous',
      amount: formatAmount(amount, locale),
      currency: amount && typeof amount.currency === 'string' ? amount.currency : '',
      // Runs of line breaks collapse to one, so a message can't push itself off the canvas.
      message: (nonEmpty(alert.message) || '').replace(/\r\n?/g, '\n').replace(/\n\s*\n+/g, '\n')
        .trim(),
      kind: typeof alert.kind === 'string' ? alert.kind : '',
      data: function (field) {
        const v = Object.prototype.hasOwnProperty.call(data, field) ? data[field] : null;
        return v === null || typeof v === 'object' ? '' : String(v);
      },
    };
  }

  // A template: text, `{placeholder}`s (each filled in, in a highlighted span) and `{{`/`}}`
  // for braces. What it makes goes in as text nodes.
  function render(target, template, values) {
    target.textContent = '';
    target.classList.remove('clamped');
    target.style.webkitLineClamp = '';
    let text = '';
    let filled = 0;
    const flush = () => {
      if (text) target.appendChild(document.createTextNode(text));
      text = '';
    };
    for (let i = 0; i < template.length; i++) {
      const c = template[i];
      if ((c === '{' || c === '}') && template[i + 1] === c) {
        text += c;
        i++;
        continue;
      }
      const end = c === '{' ? template.indexOf('}', i) : -1;
      if (end === -1) {
        text += c;
        continue;
      }
      const name = template.slice(i + 1, end);
      const value = name.indexOf('data.') === 0 ? values.data(name.slice(5))
        : Object.prototype.hasOwnProperty.call(values, name) && name !== 'data' ? values[name] : '';
      flush();
      if (value && name === 'message') {
        // The message is the text itself, not a value filled into it: never highlighted.
        target.appendChild(document.createTextNode(value));
        filled++;
      } else if (value) {
        const span = document.createElement('span');
        span.className = 'hl';
        span.textContent = value;
        target.appendChild(span);
        filled++;
      }
      i = end;
    }
    flush();
    // A template of placeholders alone that all came out empty (a body of `{message}` with no
    // message) leaves no empty line.
    if (!filled && !target.textContent.trim()) target.textContent = '';
  }

  // Shrinks the text until the alert fits the canvas, down to SMALLEST_FIT; past that, cuts the
  // body (then the title) to the lines that fit, with an ellipsis.
  function fit() {
    const fits = () => card.scrollHeight <= stage.clientHeight && card.scrollWidth <= stage.clientWidth &&
      el.title.scrollHeight <= el.title.clientHeight + 1 && el.body.scrollHeight <= el.body.clientHeight + 1;
    let scale = 1;
    while (!fits() && scale > SMALLEST_FIT) {
      scale = Math.max(SMALLEST_FIT, scale * 0.85);
      card.style.setProperty('--fit', String(scale));
    }
    for (const part of [el.body, el.title]) {
      if (fits() || !part.textContent) continue;
      const line = parseFloat(getComputedStyle(part).lineHeight) || 20;
      const over = card.scrollHeight - stage.clientHeight;
      const lines = Math.max(1, Math.floor((part.clientHeight - Math.max(0, over)) / line));
      part.classList.add('clamped');
      part.style.webkitLineClamp = String(lines);
    }
  }

  // Custom CSS of the design, scoped to the stage rule by rule through the CSS object model (a
  // constructed stylesheet, which the CSP allows), so no rule reaches beyond the alert.
  let cssInUse = null;
  function useCss(css) {
    css = typeof css === 'string' ? css : '';
    if (css === cssInUse) return;
    cssInUse = css;
    if (!('adoptedStyleSheets' in document)) return;
    try {
      const sheet = new CSSStyleSheet();
      sheet.replaceSync(css);
      scope(sheet.cssRules);
      document.adoptedStyleSheets = [sheet];
    } catch (e) {
      console.warn('cuebox: the design\'s css could not be used', e);
      document.adoptedStyleSheets = [];
    }
  }

  function scope(rules) {
    for (let i = 0; i < rules.length; i++) {
      const rule = rules[i];
      if (rule.selectorText !== undefined) {
        rule.selectorText = rule.selectorText.split(',')
          .map((s) => '#stage ' + s.trim().replace(/^(html|body|:root)\b/, '')).join(', ');
      } else if (rule.cssRules && !(typeof CSSKeyframesRule !== 'undefined' &&
          rule instanceof CSSKeyframesRule)) {
        scope(rule.cssRules);
      }
    }
  }

  function formatAmount(amount, locale) {
    if (!amount || typeof amount.value !== 'string' || typeof amount.currency !== 'string') {
      return '';
    }
    try {
      // The receiver's locale, not the browser's: a Brazilian streamer on an English OBS still
      // sees "R$ 10,50". The value stays a decimal string where the browser formats one.
      return new Intl.NumberFormat(typeof locale === 'string' && locale ? locale : 'en-US',
        { style: 'currency', currency: amount.currency }).format(amount.value);
    } catch (e) {
      return amount.value + ' ' + amount.currency;
    }
  }

  function loadImage(url) {
    if (!url) return Promise.resolve(null);
    return within(new Promise((resolve) => {
      const probe = new Image();
      probe.onload = () => resolve(url);
      probe.onerror = () => resolve(null);
      probe.src = url;
    }), null);
  }

  function loadSound(url, wait) {
    if (!url) return Promise.resolve(null);
    return within(new Promise((resolve) => {
      let audio;
      try {
        audio = new Audio();
      } catch (e) {
        resolve(null);
        return;
      }
      audio.preload = 'auto';
      audio.oncanplaythrough = () => resolve(audio);
      audio.onerror = () => resolve(null);
      audio.src = url;
      audio.load();
    }), null, wait);
  }

  function within(promise, fallback, wait) {
    return Promise.race([promise, new Promise((resolve) =>
      setTimeout(() => resolve(fallback), wait || MEDIA_WAIT_MS))]);
  }

  // Inside OBS sound plays by itself; an ordinary tab refuses sound until a click, and says so.
  // Only a widget on air plays it: the same widget in a second, hidden scene stays silent, so no
  // alert is ever heard twice.
  function play(audio, volume) {
    if (!audio || !status.onAir) return;
    audio.oncanplaythrough = null;
    audio.volume = clamp(volume, 0, 1, 0.6);
    status.sounds.push(audio.src);
    try {
      const playing = audio.play();
      if (playing && playing.catch) {
        playing.catch((e) => {
          if (e && e.name === 'NotAllowedError') soundNotice.hidden = false;
        });
      }
    } catch (e) {
      // no sound this time
    }
  }

  soundNotice.addEventListener('click', () => {
    soundNotice.hidden = true;
    if (showing && showing.audio) play(showing.audio, showing.audio.volume);
  });

  function animation(a, name, ms) {
    const names = ['none', 'fade', 'slide_from_left', 'slide_from_right', 'slide_from_top',
      'slide_from_bottom', 'zoom', 'bounce', 'pop'];
    return a && typeof a === 'object'
      ? { name: oneOf(a.name, names, name), ms: clamp(a.duration_ms, 0, 5000, ms) }
      : { name: name, ms: ms };
  }

  function pick(own, designed) {
    if (isHttpUrl(own)) return own;
    return isHttpUrl(designed) || (typeof designed === 'string' && designed.indexOf('/widget-assets/') === 0)
      ? designed : null;
  }

  function oneOf(v, allowed, fallback) {
    return allowed.indexOf(v) !== -1 ? v : fallback;
  }

  // The dock's designs editor draws its preview with this page: a preview takes an alert and its
  // resolved look from the dock (same origin only) and shows it, as it would any alert.
  if (preview) {
    window.addEventListener('message', (event) => {
      const data = event.data;
      if (event.origin !== location.origin || !data || data.type !== 'cuebox:show') return;
      if (!data.alert || typeof data.alert.id !== 'string') return;
      if (showing) clear();
      show(data.alert, data.design || {}, null);
    });
  }

  // ---- on air, as OBS tells it ----

  // OBS's browser source says when its scene goes live on Program (active) and when it is shown
  // at all (visible). The page gets no event at load, so it starts on air and corrects itself at
  // the first event. Off air, it still shows what it is sent and says done, silently; and while
  // every widget of the receiver is off air, the server holds new alerts back.
  let obsActive = true;
  let obsVisible = true;
  function obsChanged() {
    const onAir = obsActive && obsVisible && !preview;
    if (onAir === status.onAir) return;
    status.onAir = onAir;
    if (!onAir && showing && showing.audio) {
      try {
        showing.audio.pause();
      } catch (e) {
        // nothing to stop
      }
    }
    send({ type: 'active', active: onAir });
  }
  window.addEventListener('obsSourceActiveChanged', (event) => {
    obsActive = !(event && event.detail && event.detail.active === false);
    obsChanged();
  });
  window.addEventListener('obsSourceVisibleChanged', (event) => {
    obsVisible = !(event && event.detail && event.detail.visible === false);
    obsChanged();
  });

  // ---- the connection ----

  function connect() {
    retryTimer = null;
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const url = scheme + '//' + location.host + '/ws/' + encodeURIComponent(receiver) +
      '?token=' + encodeURIComponent(token) + (preview ? '&preview=1' : '') +
      (!preview && !status.onAir ? '&active=0' : '');
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
        // Off air when it connected: the URL said so (`active=0`); this says it again, for a
        // node of a version before that.
        if (!status.onAir && !preview) send({ type: 'active', active: false });
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
