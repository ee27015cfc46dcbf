// The cuebox dock: the streamer's controls over one receiver, for an OBS custom browser dock.
//
// It talks to the control API with the dashboard token from its own URL, and reads the receiver
// again whenever the live feed (/ws/{receiver}/feed) says something happened, after every action,
// and on ↻. The feed reconnects on its own, asking for what it missed. Donor text goes in through
// textContent only: it is never parsed as HTML. `window.cueboxDock` exposes what the page shows,
// for tests and for debugging.
(() => {
  'use strict';

  const CONFIRM_MS = 3000; // clearing takes a second click within this
  const PAGE = 50; // waiting alerts listed
  const HISTORY = 20; // alerts of history listed
  const SETTLE_MS = 150; // events this close together are read once
  const RETRY_MS = [500, 1000, 2000, 5000]; // the feed's reconnects, then every 5 s

  const receiver = decodeURIComponent(location.pathname.split('/')[2] || '');
  const token = new URLSearchParams(location.search).get('token') || '';
  const base = '/receivers/' + encodeURIComponent(receiver);
  const el = (id) => document.getElementById(id);
  const state = {
    receiver: receiver,
    paused: null,
    widgets: null,
    queued: null,
    current: null,
    waiting: [],
    held: [],
    history: [],
    error: null,
    reads: 0,
    live: false,
    events: 0,
    lastEvent: null,
    progress: null, // 0 to 1 while the alert on screen is started, else null
  };
  // What the progress bar shows: the alert on screen's start on the server's clock, its
  // duration, and how far the server's clock is ahead of this page's.
  let showing = null;
  window.cueboxDock = state;

  if (document.body.dataset.refused) {
    el('receiver').textContent = receiver;
    showError('This dock URL\'s token does not control "' + receiver + '": get a new one with ' +
      '`cuebox dock-url ' + receiver + '`.');
    return;
  }

  async function call(method, path, sent) {
    const headers = { Authorization: 'Bearer ' + token };
    if (sent !== undefined) headers['Content-Type'] = 'application/json';
    const res = await fetch(base + path, {
      method: method,
      headers: headers,
      cache: 'no-store',
      body: sent === undefined ? undefined : JSON.stringify(sent),
    });
    let body = null;
    try {
      body = await res.json();
    } catch (e) {
      // not JSON: said below by the status
    }
    if (!res.ok) {
      const message = body && body.error && body.error.message;
      const error = new Error(message || ('the node answered ' + res.status));
      error.status = res.status;
      error.field = body && body.error && body.error.field;
      throw error;
    }
    return body;
  }

  function describe(alert) {
    const parts = [];
    if (alert.kind && alert.kind !== 'donation') parts.push('[' + alert.kind + ']');
    parts.push(alert.from || 'Someone');
    if (alert.amount) parts.push(alert.amount.value + ' ' + alert.amount.currency);
    if (alert.message) parts.push('— ' + alert.message);
    return parts.join(' ');
  }

  // A list item for an alert: its text, then (as buttons, `data-action` and `data-id`) what can
  // be done with it.
  function item(alert, actions, status) {
    const li = document.createElement('li');
    li.dataset.alertId = alert.id;
    if (actions.length) {
      const box = document.createElement('span');
      box.className = 'actions';
      actions.forEach(([action, label]) => {
        const button = document.createElement('button');
        button.type = 'button';
        button.textContent = label;
        button.dataset.action = action;
        button.dataset.id = alert.id;
        box.append(button);
      });
      li.append(box);
    }
    if (status) {
      const badge = document.createElement('span');
      badge.className = 'status status-' + status;
      badge.textContent = status;
      li.append(badge);
    }
    li.append(document.createTextNode(describe(alert)));
    if (alert.priority === 'high') li.classList.add('high');
    return li;
  }

  function render(status, page, history) {
    state.paused = status.paused;
    state.widgets = status.widgets;
    state.queued = status.queued;
    state.current = status.in_flight ? status.in_flight.id : null;
    state.waiting = page.alerts.map((a) => a.id);
    state.held = page.held.map((a) => a.id);
    state.history = history.history.map((e) => ({ id: e.id, status: e.status }));
    state.error = null;
    state.reads += 1;

    document.body.dataset.paused = String(status.paused);
    document.body.dataset.widgets = String(status.widgets);
    el('receiver').textContent = receiver;
    const onAir = typeof status.widgets_on_air === 'number' ? status.widgets_on_air : status.widgets;
    state.onAir = onAir;
    el('widgets').textContent = (status.paused ? 'Paused · ' : '') +
      (status.widgets === 1 ? '1 widget connected' : status.widgets + ' widgets connected') +
      (status.widgets > 0 ? ' (' + onAir + ' on air, ' + (status.widgets - onAir) + ' off air)' : '');
    // One line per widget, by its state: the store counts each node's widgets on and off air
    // and its previews, not which OBS each one is in.
    const lines = [];
    for (let i = 0; i < onAir; i += 1) lines.push(['on-air', 'Widget: connected, on air']);
    for (let i = 0; i < status.widgets - onAir; i += 1) {
      lines.push(['off-air', 'Widget: connected, off air (its OBS scene is not live)']);
    }
    for (let i = 0; i < (status.previews || 0); i += 1) {
      lines.push(['preview', 'Preview: shows alerts, silent, holds nothing']);
    }
    el('widget-list').replaceChildren(...lines.map(([kind, text]) => {
      const li = document.createElement('li');
      li.dataset.state = kind;
      li.textContent = text;
      return li;
    }));
    const warning = el('warning');
    if (status.widgets === 0 && (status.queued > 0 || status.in_flight)) {
      warning.textContent = 'No widget is connected: ' + status.queued + ' alert' +
        (status.queued === 1 ? '' : 's') + ' waiting. Is the browser source in OBS on?';
      warning.hidden = false;
    } else if (onAir === 0 && status.queued > 0 && !status.in_flight) {
      warning.textContent = 'Every widget is off air (its OBS scene is not live): ' +
        status.queued + ' alert' + (status.queued === 1 ? '' : 's') +
        ' waiting until a scene with the alert box goes live.';
      warning.hidden = false;
    } else {
      warning.hidden = true;
    }
    el('pause').textContent = status.paused ? 'Resume' : 'Pause';
    el('pause').dataset.action = status.paused ? 'resume' : 'pause';
    el('skip').disabled = !status.in_flight;
    el('now').textContent = status.in_flight ? describe(status.in_flight) : 'Nothing';
    showing = status.in_flight && status.showing && status.showing.started_at
      ? {
        startedAt: status.showing.started_at,
        duration: status.in_flight.duration_ms,
        skew: status.now - Date.now(),
      }
      : null;
    tick();
    el('queued').textContent = String(status.queued);
    el('queue').replaceChildren(...page.alerts.map((alert) => item(alert, [])));
    el('held-section').hidden = page.held.length === 0;
    el('held-count').textContent = String(page.held.length);
    el('held').replaceChildren(...page.held.map((alert) =>
      item(alert, [['approve', 'Approve'], ['deny', 'Deny']])));
    el('history').replaceChildren(...history.history.map((entry) =>
      item(entry.alert || { id: entry.id }, entry.alert ? [['replay', 'Replay']] : [],
        entry.status)));
    el('error').hidden = true;
    el('updated').textContent = 'Read at ' + new Date().toLocaleTimeString();
  }

  // Moves the progress bar of the alert on screen; runs on a timer while one shows.
  function tick() {
    const bar = el('progress');
    if (!showing) {
      state.progress = null;
      bar.hidden = true;
      return;
    }
    const elapsed = Date.now() + showing.skew - showing.startedAt;
    const done = Math.max(0, Math.min(1, elapsed / Math.max(1, showing.duration)));
    state.progress = done;
    bar.hidden = false;
    bar.setAttribute('aria-valuenow', String(Math.round(done * 100)));
    el('progress-bar').style.width = (done * 100).toFixed(1) + '%';
  }
  setInterval(tick, 250);

  function showError(message) {
    state.error = message;
    const error = el('error');
    error.textContent = message;
    error.hidden = false;
  }

  async function refresh() {
    try {
      const [status, page, history] = await Promise.all([
        call('GET', ''),
        call('GET', '/queue?limit=' + PAGE),
        call('GET', '/history?limit=' + HISTORY),
      ]);
      render(status, page, history);
    } catch (e) {
      showError(e.message);
    }
  }

  async function act(button) {
    const action = button.dataset.action;
    if (action === 'clear' && !button.classList.contains('confirming')) {
      // OBS's docks may not show confirm(): a second click within a moment confirms.
      button.classList.add('confirming');
      button.textContent = 'Click again to clear';
      setTimeout(() => {
        button.classList.remove('confirming');
        button.textContent = 'Clear queue';
      }, CONFIRM_MS);
      return;
    }
    const id = encodeURIComponent(button.dataset.id || '');
    const requests = {
      approve: ['POST', '/approve/' + id],
      deny: ['POST', '/deny/' + id],
      replay: ['POST', '/replay/' + id],
      pause: ['POST', '/pause'],
      resume: ['POST', '/resume'],
      skip: ['POST', '/skip' + (state.current ? '?id=' + encodeURIComponent(state.current) : '')],
      clear: ['DELETE', '/queue'],
      test: ['POST', '/test'],
    };
    const buttons = document.querySelectorAll('button');
    buttons.forEach((b) => { b.disabled = true; });
    let failed = null;
    try {
      if (requests[action]) await call(requests[action][0], requests[action][1]);
    } catch (e) {
      failed = e.message;
    }
    if (action === 'clear') {
      button.classList.remove('confirming');
      button.textContent = 'Clear queue';
    }
    buttons.forEach((b) => { b.disabled = false; });
    await refresh();
    if (failed) showError(failed);
  }

  // One listener for every button, those of list items made later included.
  document.addEventListener('click', (event) => {
    const button = event.target.closest('button');
    if (button && !button.disabled) act(button);
  });

  // The live feed: any event means the receiver changed, so it is read again (once for a burst).
  let settling = null;
  function soon() {
    if (settling) return;
    settling = setTimeout(() => {
      settling = null;
      refresh();
    }, SETTLE_MS);
  }

  let retries = 0;
  function listen() {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    let url = scheme + '//' + location.host + '/ws/' + encodeURIComponent(receiver) + '/feed?token=' +
      encodeURIComponent(token);
    if (state.lastEvent !== null) url += '&since=' + state.lastEvent;
    const socket = new WebSocket(url);
    socket.onopen = () => {
      retries = 0;
      state.live = true;
      document.body.dataset.live = 'true';
      // Whatever happened while it was away is read now (a reset or missed events say so too).
      soon();
    };
    socket.onmessage = (message) => {
      let frame = null;
      try {
        frame = JSON.parse(message.data);
      } catch (e) {
        return;
      }
      if (frame.type === 'event') {
        state.events += 1;
        state.lastEvent = frame.id;
        soon();
      } else if (frame.type === 'reset') {
        soon();
      }
    };
    socket.onclose = () => {
      state.live = false;
      document.body.dataset.live = 'false';
      const wait = RETRY_MS[Math.min(retries, RETRY_MS.length - 1)];
      retries += 1;
      setTimeout(listen, wait);
    };
  }

  // ---- the designs editor ----
  //
  // The designs are edited as the JSON that PUT takes; Preview asks the node to resolve them for
  // a sample alert and shows the result in a preview of the real widget (which the dashboard
  // token opens), so what is seen is what the stream will show. Save puts them with the version
  // read, so an edit made elsewhere meanwhile is not overwritten unawares.
  const editor = {
    version: null, previews: 0, saved: 0, tests: 0, status: '', error: null,
  };
  state.designs = editor;

  function designStatus(text, bad) {
    editor.status = text;
    editor.error = bad ? text : null;
    el('design-status').textContent = text;
    el('design-status').classList.toggle('bad', !!bad);
  }

  async function loadDesigns() {
    const kept = await call('GET', '/designs');
    editor.version = kept.version;
    const doc = { designs: kept.designs || {} };
    for (const key of ['locale', 'alert_gap_ms', 'tts']) {
      if (kept[key] !== undefined) doc[key] = kept[key];
    }
    el('designs-json').value = JSON.stringify(doc, null, 2);
    designStatus('Version ' + kept.version + '.', false);
  }

  function edited() {
    try {
      return JSON.parse(el('designs-json').value || '{}');
    } catch (e) {
      designStatus('Not valid JSON: ' + e.message, true);
      return null;
    }
  }

  function sample() {
    const alert = {
      kind: el('sample-kind').value,
      from: el('sample-from').value || undefined,
      message: el('sample-message').value || undefined,
    };
    const value = el('sample-amount').value.trim();
    if (value) alert.amount = { value: value, currency: el('sample-currency').value.trim() };
    return alert;
  }

  async function designAction(what) {
    const doc = edited();
    if (!doc) return;
    try {
      if (what === 'preview') {
        const shown = await call('POST', '/designs/preview', { designs: doc, alert: sample() });
        el('design-frame').contentWindow.postMessage(
          { type: 'cuebox:show', alert: shown.alert, design: shown.design }, location.origin);
        editor.previews += 1;
        designStatus('Preview: ' + shown.design.design +
          (shown.design.variation ? ', variation ' + shown.design.variation : '') + '.', false);
      } else if (what === 'save') {
        doc.version = editor.version;
        const kept = await call('PUT', '/designs', doc);
        editor.version = kept.version;
        editor.saved += 1;
        designStatus('Saved as version ' + kept.version + ': widgets show the next alert with it.',
          false);
      } else if (what === 'test') {
        await call('POST', '/test', sample());
        editor.tests += 1;
        designStatus('Test alert queued.', false);
        soon();
      }
    } catch (e) {
      designStatus((e.field ? e.field + ': ' : '') + e.message +
        (e.status === 409 ? ' (reload the designs, then apply the change again)' : ''), true);
    }
  }

  el('design-preview').addEventListener('click', () => designAction('preview'));
  el('design-save').addEventListener('click', () => designAction('save'));
  el('design-test').addEventListener('click', () => designAction('test'));
  el('designs-section').addEventListener('toggle', () => {
    if (!el('designs-section').open) return;
    if (!el('design-frame').src) {
      el('design-frame').src = '/widget/' + encodeURIComponent(receiver) + '?token=' +
        encodeURIComponent(token) + '&preview=1';
    }
    loadDesigns().catch((e) => designStatus('Could not read the designs: ' + e.message, true));
  });

  refresh();
  listen();
})();
