// The bridge console: a dependency-free page over the bridge's JSON API.
//
// Everything the API returns (names, bodies, headers, errors) is untrusted: the DOM is
// built with createElement and textContent only, never from HTML strings, and links are
// only ever hash routes built with encodeURIComponent.
'use strict';

(() => {
  const TOKEN_KEY = 'bridge.console.token';
  const REFRESH_MS = 2000;
  // The API lives beside the console: /console/ -> /, /prefix/console/ -> /prefix.
  const BASE = location.pathname.replace(/\/console(\/.*)?$/, '');

  const state = {
    token: null,
    who: null,     // the whoami answer
    gen: 0,        // bumped on every route change; stale refreshes compare against it
    timer: 0,
    rates: new Map(), // subscription name -> {total, at} for the push rate
  };

  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;
  // seg encodes one path segment of an API URL. ':' is legal in a segment (RFC 3986) and
  // every message id holds one: it stays literal, so the router sees the id as it is.
  const seg = (s) => enc(s).replace(/%3A/gi, ':');

  // ---- DOM helpers -------------------------------------------------------------------

  // el builds an element: props are class, text, testid, on<event>, boolean properties
  // (checked, disabled, hidden) and plain attributes; children are nodes or strings.
  function el(tag, props, ...kids) {
    const n = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') n.className = v;
      else if (k === 'text') n.textContent = String(v);
      else if (k === 'testid') n.dataset.testid = v;
      else if (k.startsWith('on')) n.addEventListener(k.slice(2), v);
      else if (typeof v === 'boolean') n[k] = v;
      else n.setAttribute(k, String(v));
    }
    for (const c of kids.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      n.append(c instanceof Node ? c : String(c));
    }
    return n;
  }

  const link = (hash, text, props) => el('a', { href: hash, ...props }, text);
  const subLink = (name) => link('#/subscriptions/' + enc(name), name);
  const msgLink = (id) => link('#/messages/' + enc(id), id, { class: 'mono' });

  function badge(text, tone, testid) {
    return el('span', { class: 'badge ' + (tone || 'muted'), testid }, text);
  }

  function fmtNum(n) {
    return typeof n === 'number' ? n.toLocaleString('en-US') : '—';
  }

  function fmtTime(iso) {
    if (!iso) return '—';
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    const sameDay = d.toDateString() === new Date().toDateString();
    const time = d.toLocaleTimeString([], { hour12: false });
    const ms = String(d.getMilliseconds()).padStart(3, '0');
    return sameDay ? `${time}.${ms}` : `${d.toLocaleDateString()} ${time}`;
  }

  const timeCell = (iso) => el('td', { title: iso || '', class: 'nowrap' }, fmtTime(iso));

  function statusTone(code) {
    if (!code) return 'muted';
    if (code >= 200 && code < 300) return 'ok';
    if (code === 429 || (code >= 300 && code < 400)) return 'warn';
    return 'bad';
  }

  const statusBadge = (code) => badge(code ? String(code) : 'none', statusTone(code));

  const OUTCOME_TONE = { ack: 'ok', retry: 'warn', dead_letter: 'bad', filtered: 'muted', deferred: 'info', failed: 'bad' };
  const STATE_TONE = {
    delivered: 'ok', pending: 'info', retrying: 'warn', dead_lettered: 'bad', filtered: 'muted', expired: 'muted', failed: 'bad',
  };
  const CIRCUIT_TONE = { closed: 'ok', half_open: 'warn', open: 'bad' };

  // The stats give the circuit as a state string with circuit_since / circuit_until
  // beside it; an object {state, until} is accepted too.
  function circuitBadge(c, st) {
    const state = typeof c === 'string' ? c : (c && c.state);
    if (!state) return el('span', { class: 'muted' }, '—');
    const b = badge(state.replace('_', '-'), CIRCUIT_TONE[state] || 'muted');
    const until = (c && c.until) || (st && st.circuit_until);
    if (until) b.title = 'until ' + until;
    return b;
  }

  function stateBadge(sub) {
    if (sub.paused) {
      return el('span', { class: 'state' }, badge('paused', 'warn'),
        sub.paused_reason ? el('span', { class: 'reason' }, sub.paused_reason) : null);
    }
    return badge('active', 'ok');
  }

  function table(head, rows, props) {
    return el('table', props || {},
      el('thead', {}, el('tr', {}, head.map((h) => el('th', typeof h === 'string' ? { text: h } : h)))),
      el('tbody', {}, rows));
  }

  function emptyRow(cols, text) {
    return el('tr', { class: 'empty' }, el('td', { colspan: cols, text }));
  }

  // section returns a container whose content set() replaces only when the data it was
  // built from changed, so a refresh neither flickers nor loses focus or a selection.
  function section(props) {
    const node = el('div', props);
    let key = null;
    return {
      node,
      set(data, build) {
        const k = JSON.stringify(data);
        if (k === key) return;
        key = k;
        node.replaceChildren(...[build(data)].flat().filter((c) => c !== null && c !== undefined && c !== false));
      },
      reset() { key = null; },
    };
  }

  // ---- notices -----------------------------------------------------------------------

  let noticeSource = '';

  function notify(text, tone, source) {
    $('notice-text').textContent = text;
    $('notice').className = 'notice ' + (tone || 'error');
    $('notice').hidden = false;
    noticeSource = source || '';
  }

  function clearNotice(source) {
    if (source === undefined || noticeSource === source) {
      $('notice').hidden = true;
      noticeSource = '';
    }
  }

  const failed = (err, source) => notify(err && err.message ? err.message : String(err), 'error', source);

  // ---- API ---------------------------------------------------------------------------

  class APIError extends Error {
    constructor(status, message, code) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  // api sends one request and returns the decoded JSON answer. A 401 signs out; any other
  // failure throws an APIError carrying the problem's detail.
  async function api(method, path, opts) {
    const o = opts || {};
    const headers = { Accept: 'application/json' };
    let body;
    if (o.raw !== undefined) {
      body = o.raw;
      headers['Content-Type'] = o.contentType || 'application/octet-stream';
    } else if (o.json !== undefined) {
      body = JSON.stringify(o.json);
      headers['Content-Type'] = 'application/json';
    }
    if (state.token) headers.Authorization = 'Bearer ' + state.token;
    let res;
    try {
      res = await fetch(BASE + path, { method, headers, body, credentials: 'omit', cache: 'no-store' });
    } catch (e) {
      throw new APIError(0, 'The bridge did not answer: ' + e.message, 'network');
    }
    const text = await res.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch (_) { data = null; }
    }
    if (!res.ok) {
      const detail = (data && (data.detail || data.title)) || `${res.status} ${res.statusText}`;
      const err = new APIError(res.status, detail, data && data.code);
      if (res.status === 401 && !o.noSignOut) signOut('Signed out: ' + detail);
      throw err;
    }
    return data;
  }

  // ---- sign-in -----------------------------------------------------------------------

  function can(what) {
    return !!(state.who && state.who.can && state.who.can[what]);
  }

  function showSignIn(message) {
    stopRefresh();
    $('view').hidden = true;
    $('view').replaceChildren();
    $('search-form').hidden = true;
    $('who').hidden = true;
    $('signin').hidden = false;
    $('signin-message').textContent = message || '';
    $('signin-message').hidden = !message;
    $('token-input').value = '';
    $('token-input').focus();
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    state.who = null;
    clearNotice();
    showSignIn(message);
  }

  // signIn validates the current token (or none) with /v1/whoami, then shows the app.
  async function signIn() {
    let who;
    try {
      who = await api('GET', '/v1/whoami', { noSignOut: true });
    } catch (e) {
      if (e.status === 401) {
        sessionStorage.removeItem(TOKEN_KEY);
        const had = !!state.token;
        state.token = null;
        showSignIn(had ? 'The token was not accepted: ' + e.message : '');
      } else {
        showSignIn('Cannot reach the API: ' + e.message);
      }
      return;
    }
    state.who = who || {};
    if (state.who.auth === false) state.token = null;
    $('signin').hidden = true;
    $('view').hidden = false;
    $('search-form').hidden = !can('read');
    $('who').hidden = false;
    $('who-name').textContent = state.who.auth === false ? 'open API (no token needed)' : 'signed in as ' + (state.who.name || '?');
    $('sign-out').hidden = state.who.auth === false;
    route();
  }

  // takeFragmentToken moves a #token=... from the URL into session storage, so it is
  // neither kept in history nor sent anywhere.
  function takeFragmentToken() {
    const frag = location.hash.replace(/^#/, '');
    if (!/^token=/.test(frag) && !/&token=/.test(frag)) return;
    const tok = new URLSearchParams(frag).get('token');
    if (tok) sessionStorage.setItem(TOKEN_KEY, tok);
    history.replaceState(null, '', location.pathname + location.search);
  }

  // ---- routing and refresh -----------------------------------------------------------

  function stopRefresh() {
    state.gen++;
    clearTimeout(state.timer);
  }

  // live runs refresh now and every REFRESH_MS until the route changes. Refreshes never
  // overlap: the next is scheduled when one ends, and now() during a refresh queues one
  // more right after it.
  function live(refresh) {
    stopRefresh();
    const gen = state.gen;
    let running = false;
    let again = false;
    const tick = async () => {
      if (gen !== state.gen) return;
      if (running) {
        again = true;
        return;
      }
      clearTimeout(state.timer);
      running = true;
      if (!document.hidden) {
        try {
          await refresh(() => gen !== state.gen);
          if (gen === state.gen) clearNotice('refresh');
        } catch (e) {
          if (gen === state.gen && e.status !== 401) failed(e, 'refresh');
        }
      }
      running = false;
      if (gen !== state.gen) return;
      if (again) {
        again = false;
        tick();
        return;
      }
      state.timer = setTimeout(tick, REFRESH_MS);
    };
    tick();
    return { now: tick };
  }

  function route() {
    if (!state.who) return;
    const h = location.hash.replace(/^#\/?/, '');
    const [kind, ...rest] = h.split('/');
    const arg = rest.join('/');
    clearNotice();
    window.scrollTo(0, 0);
    try {
      if (kind === 'subscriptions' && arg) return subscriptionPage(decodeURIComponent(arg));
      if (kind === 'messages' && arg) return messagePage(decodeURIComponent(arg));
    } catch (e) {
      if (e instanceof URIError) return failed('That address is not a valid route.');
      throw e;
    }
    overviewPage();
  }

  function updatedStamp() {
    const s = el('span', { class: 'updated muted', testid: 'last-updated', id: 'last-updated' }, 'loading…');
    return {
      node: s,
      touch() { s.textContent = 'updated ' + new Date().toLocaleTimeString([], { hour12: false }); },
    };
  }

  // ---- overview ----------------------------------------------------------------------

  function pushRate(s) {
    const st = s.stats || {};
    const total = (st.delivered || 0) + (st.retried || 0) + (st.dead_lettered || 0);
    const now = performance.now();
    const prev = state.rates.get(s.name);
    state.rates.set(s.name, { total, at: now, rate: prev ? prev.rate : null });
    if (!prev || now - prev.at < 500) return prev ? prev.rate : null;
    const rate = Math.max(0, (total - prev.total) / ((now - prev.at) / 1000));
    state.rates.get(s.name).rate = rate;
    return rate;
  }

  function fmtRate(r) {
    if (r === null || r === undefined) return '—';
    if (r === 0) return '0/s';
    return (r < 10 ? r.toFixed(1) : Math.round(r).toLocaleString('en-US')) + '/s';
  }

  function overviewPage() {
    const view = $('view');
    const stamp = updatedStamp();
    const body = section({ class: 'table-wrap' });
    view.replaceChildren(
      el('div', { class: 'page-head' }, el('h1', {}, 'Subscriptions'), stamp.node),
      body.node);
    live(async (stale) => {
      const data = await api('GET', '/v1/subscriptions?stats=true');
      if (stale()) return;
      const subs = (data && data.subscriptions) || [];
      const rows = subs.map((s) => ({ s, rate: pushRate(s) }));
      body.set(rows, overviewTable);
      stamp.touch();
    });
  }

  function overviewTable(rows) {
    if (!rows.length) {
      return el('p', { class: 'empty-state', testid: 'no-subscriptions' }, 'No subscriptions yet. Create one with PUT /v1/subscriptions/{name}.');
    }
    const withCircuit = rows.some((r) => r.s.stats && r.s.stats.circuit);
    const head = ['Name', 'Subject', 'Transport', 'State',
      { text: 'Lag', class: 'num' }, { text: 'Pending', class: 'num' }, { text: 'Retrying', class: 'num' },
      { text: 'DLQ', class: 'num' }, { text: 'Push rate', class: 'num' }];
    if (withCircuit) head.push('Circuit');
    head.push('Last status', 'Last error');
    return table(head, rows.map(({ s, rate }) => {
      const st = s.stats || {};
      const cells = [
        el('td', { 'data-col': 'name', class: 'strong' }, subLink(s.name)),
        el('td', { 'data-col': 'subject', class: 'mono' }, s.subject, s.pattern ? badge('pattern', 'muted') : null),
        el('td', { 'data-col': 'transport' }, s.transport),
        el('td', { 'data-col': 'state' }, stateBadge(s)),
        el('td', { 'data-col': 'lag', class: 'num' }, fmtNum(st.lag)),
        el('td', { 'data-col': 'pending', class: 'num' }, fmtNum(st.pending)),
        el('td', { 'data-col': 'retrying', class: 'num' + (st.retrying ? ' warn-text' : '') }, fmtNum(st.retrying)),
        el('td', { 'data-col': 'dlq', class: 'num' + (st.dlq_size ? ' bad-text' : '') }, fmtNum(st.dlq_size)),
        el('td', { 'data-col': 'rate', class: 'num' }, fmtRate(rate)),
      ];
      if (withCircuit) cells.push(el('td', { 'data-col': 'circuit' }, circuitBadge(st.circuit, st)));
      cells.push(
        el('td', { 'data-col': 'last-status' }, statusBadge(st.last_status)),
        el('td', { 'data-col': 'last-error', class: 'error-cell', title: st.last_error || '' }, st.last_error || ''));
      return el('tr', { testid: 'sub-row-' + s.name }, cells);
    }), { class: 'grid', testid: 'subscriptions' });
  }

  // ---- subscription page -------------------------------------------------------------

  const HIDDEN_CONFIG = new Set(['stats', 'secret', 'previous_secret', 'previous_secret_until']);

  function configList(sub) {
    const dl = el('dl', { class: 'kv', testid: 'config' });
    for (const [k, v] of Object.entries(sub)) {
      if (HIDDEN_CONFIG.has(k)) continue;
      let shown;
      if (v === null || v === undefined || v === '') shown = el('span', { class: 'muted' }, '—');
      else if (typeof v === 'object') shown = el('code', {}, JSON.stringify(v));
      else shown = el('code', {}, String(v));
      dl.append(el('dt', {}, k), el('dd', { 'data-key': k }, shown));
    }
    return dl;
  }

  function statTiles(sub) {
    const st = sub.stats || {};
    const tile = (key, label, value, tone) =>
      el('div', { class: 'tile' + (tone ? ' ' + tone : ''), testid: 'stat-' + key },
        el('div', { class: 'tile-label' }, label), el('div', { class: 'tile-value' }, value));
    const tiles = [
      tile('lag', 'Lag', fmtNum(st.lag)),
      tile('pending', 'Pending', fmtNum(st.pending)),
      tile('in_flight', 'In flight', fmtNum(st.in_flight)),
      tile('retrying', 'Retrying', fmtNum(st.retrying), st.retrying ? 'warn' : ''),
      tile('dlq_size', 'Dead letters', fmtNum(st.dlq_size), st.dlq_size ? 'bad' : ''),
      tile('rate', 'Push rate', fmtRate(sub.rate)),
      tile('delivered', 'Delivered', fmtNum(st.delivered)),
      tile('retried', 'Retried', fmtNum(st.retried)),
      tile('dead_lettered', 'Dead-lettered', fmtNum(st.dead_lettered)),
      tile('lost', 'Lost', fmtNum(st.lost), st.lost ? 'bad' : ''),
      tile('expired', 'Expired', fmtNum(st.expired)),
    ];
    if (typeof st.stream_length === 'number') tiles.push(tile('stream_length', 'Stream length', fmtNum(st.stream_length)));
    if (st.deferred) tiles.push(tile('deferred', 'Deferred', fmtNum(st.deferred)));
    if (typeof st.attempt_log === 'number') tiles.push(tile('attempt_log', 'Attempts kept', fmtNum(st.attempt_log)));
    tiles.push(tile('last_status', 'Last status', statusBadge(st.last_status)));
    tiles.push(tile('last_push_at', 'Last push', fmtTime(st.last_push_at)));
    if (st.circuit) tiles.push(tile('circuit', 'Circuit', circuitBadge(st.circuit, st)));
    const out = [el('div', { class: 'tiles' }, tiles)];
    if (st.last_error) out.push(el('p', { class: 'last-error', testid: 'stat-last_error' }, el('strong', {}, 'Last error: '), st.last_error));
    return out;
  }

  function attemptsTable(attempts, withMessage) {
    const head = ['At', withMessage ? 'Message' : null, { text: 'Delivery', class: 'num' }, 'Status',
      { text: 'Latency', class: 'num' }, 'Outcome', 'Error', 'Process'].filter(Boolean);
    const rows = attempts.length ? attempts.map((a) => el('tr', { testid: 'attempt-row', 'data-outcome': a.outcome },
      timeCell(a.at),
      withMessage ? el('td', {}, msgLink(a.message_id || '')) : null,
      el('td', { class: 'num' }, fmtNum(a.delivery)),
      el('td', {}, statusBadge(a.status)),
      el('td', { class: 'num nowrap' }, typeof a.latency_ms === 'number' ? a.latency_ms.toFixed(1) + ' ms' : '—'),
      el('td', {}, badge(a.outcome || '?', OUTCOME_TONE[a.outcome])),
      el('td', { class: 'error-cell', title: a.error || '' }, a.error || ''),
      el('td', { class: 'muted mono' }, a.process || ''),
    )) : emptyRow(head.length, 'No attempts recorded.');
    return table(head, rows, { class: 'grid', testid: 'attempts' });
  }

  function bodyPreview(d, max) {
    if (typeof d.body === 'string') {
      const t = d.body.length > max ? d.body.slice(0, max) + '…' : d.body;
      return el('span', { class: 'mono' }, t);
    }
    if (typeof d.body_base64 === 'string') return el('span', { class: 'muted' }, `binary, ${fmtNum(d.body_size)} bytes`);
    return el('span', { class: 'muted' }, '—');
  }

  function subscriptionPage(name) {
    const path = '/v1/subscriptions/' + seg(name);
    const view = $('view');
    const stamp = updatedStamp();
    const head = section({ class: 'page-head' });
    const secretBox = el('div', { class: 'secret-box', testid: 'new-secret', hidden: true });
    const stats = section({ class: 'card' });
    const config = section({ class: 'card' });
    const attempts = section({ class: 'table-wrap' });
    const dlq = section({ class: 'table-wrap' });
    const att = { outcome: '', cursors: [], next: null }; // cursors: the 'before' of each page shown
    const dl = { pages: [], next: null, selected: new Set() };
    let sub = null;
    let timer = null;

    const outcomeSelect = el('select', { id: 'outcome-filter', testid: 'outcome-filter', 'aria-label': 'Outcome',
      onchange: () => { att.outcome = outcomeSelect.value; att.cursors = []; attempts.reset(); timer.now(); } },
    [['', 'all outcomes'], ['ack', 'ack'], ['retry', 'retry'], ['dead_letter', 'dead letter'], ['filtered', 'filtered'], ['deferred', 'deferred'], ['failed', 'failed (Pub/Sub)']]
      .map(([v, t]) => el('option', { value: v }, t)));
    const newerBtn = el('button', { type: 'button', class: 'ghost', testid: 'attempts-newest', hidden: true,
      onclick: () => { att.cursors = []; timer.now(); } }, 'Newest');
    const olderBtn = el('button', { type: 'button', class: 'ghost', testid: 'attempts-older', hidden: true,
      onclick: () => { if (att.next) { att.cursors.push(att.next); timer.now(); } } }, 'Older');

    const dlqTools = el('div', { class: 'tools' });
    const replaySel = el('button', { type: 'button', testid: 'replay-selected', id: 'replay-selected', disabled: true,
      onclick: () => replay([...dl.selected]) }, 'Replay selected');
    const replayAll = el('button', { type: 'button', testid: 'replay-all', id: 'replay-all', disabled: true,
      onclick: () => replay(null) }, 'Replay all');
    const purgeBtn = el('button', { type: 'button', class: 'danger', testid: 'purge', id: 'purge', disabled: true,
      onclick: purge }, 'Purge');
    if (can('dead_letters')) dlqTools.append(replaySel, replayAll, purgeBtn);
    const dlqOlder = el('button', { type: 'button', class: 'ghost', testid: 'dlq-more', hidden: true,
      onclick: () => { if (dl.next) { dl.pages.push(dl.next); timer.now(); } } }, 'Next page');
    const dlqFirst = el('button', { type: 'button', class: 'ghost', testid: 'dlq-first', hidden: true,
      onclick: () => { dl.pages = []; timer.now(); } }, 'First page');

    const syncSelection = () => {
      replaySel.disabled = dl.selected.size === 0;
      const boxes = [...dlq.node.querySelectorAll('tbody input[type=checkbox]')];
      const all = dlq.node.querySelector('thead input[type=checkbox]');
      if (all) all.checked = boxes.length > 0 && boxes.every((c) => c.checked);
    };

    async function action(fn, done) {
      try {
        const out = await fn();
        if (done) notify(done(out), 'ok', 'action');
      } catch (e) {
        failed(e, 'action');
      }
      attempts.reset();
      dlq.reset();
      timer.now();
    }

    function replay(ids) {
      action(() => api('POST', path + '/dead-letters/replay', { json: ids ? { ids } : {} }), (out) => {
        dl.selected.clear();
        syncSelection();
        const n = out ? out.replayed : 0;
        return `Replayed ${n} dead letter${n === 1 ? '' : 's'}.`;
      });
    }

    function purge() {
      if (!confirm(`Delete every dead letter of ${name}? This cannot be undone.`)) return;
      action(() => api('DELETE', path + '/dead-letters'), (out) => {
        dl.selected.clear();
        syncSelection();
        return `Purged ${out ? out.purged : 0} dead letters.`;
      });
    }

    // No confirm: the previous secret keeps signing for a while, so a rotation breaks nobody.
    function rotate() {
      action(() => api('POST', path + '/secret/rotate'), (out) => {
        secretBox.replaceChildren(
          el('div', {}, el('strong', {}, 'New signing secret'), ' — shown once, store it now:'),
          el('code', { class: 'secret', testid: 'new-secret-value' }, out.secret),
          out.previous_secret_until ? el('div', { class: 'muted' }, 'The previous secret also signs until ' + fmtTime(out.previous_secret_until) + '.') : null,
          el('button', { type: 'button', class: 'ghost', onclick: () => { secretBox.hidden = true; secretBox.replaceChildren(); } }, 'Done'));
        secretBox.hidden = false;
        return 'Secret rotated.';
      });
    }

    function headView(s) {
      const actions = el('div', { class: 'tools' });
      if (can('write')) {
        actions.append(
          s.paused
            ? el('button', { type: 'button', testid: 'resume', onclick: () => action(() => api('POST', path + '/resume'), () => 'Resumed.') }, 'Resume')
            : el('button', { type: 'button', testid: 'pause', onclick: () => action(() => api('POST', path + '/pause'), () => 'Paused.') }, 'Pause'),
          el('button', { type: 'button', class: 'ghost', testid: 'rotate-secret', onclick: rotate }, 'Rotate secret'));
      }
      return [
        el('div', {}, el('div', { class: 'crumbs' }, link('#/', 'Subscriptions'), ' / '),
          el('h1', { testid: 'sub-name' }, s.name, ' ', el('span', { testid: 'sub-state' }, stateBadge(s)))),
        el('div', { class: 'head-right' }, actions, stamp.node),
      ];
    }

    function dlqView(letters) {
      const manage = can('dead_letters');
      const all = el('input', { type: 'checkbox', 'aria-label': 'Select all', testid: 'dlq-select-all',
        checked: letters.length > 0 && letters.every((d) => dl.selected.has(d.id)),
        onchange: () => {
          for (const d of letters) { if (all.checked) dl.selected.add(d.id); else dl.selected.delete(d.id); }
          dlq.node.querySelectorAll('tbody input[type=checkbox]').forEach((c) => { c.checked = all.checked; });
          syncSelection();
        } });
      const head = [manage ? { class: 'check' } : null, 'Message', 'Reason', 'Last status', 'Last error',
        { text: 'Deliveries', class: 'num' }, 'Dead-lettered', 'Body'].filter(Boolean);
      if (manage) head[0] = el('th', { class: 'check' }, all);
      const rows = letters.length ? letters.map((d) => {
        const box = manage ? el('input', { type: 'checkbox', 'aria-label': 'Select ' + d.id, checked: dl.selected.has(d.id),
          onchange: () => { if (box.checked) dl.selected.add(d.id); else dl.selected.delete(d.id); syncSelection(); } }) : null;
        return el('tr', { testid: 'dlq-row-' + d.id },
          manage ? el('td', { class: 'check' }, box) : null,
          el('td', {}, msgLink(d.id)),
          el('td', {}, d.reason || ''),
          el('td', {}, statusBadge(d.last_status)),
          el('td', { class: 'error-cell', title: d.last_error || '' }, d.last_error || ''),
          el('td', { class: 'num' }, fmtNum(d.delivery_count)),
          timeCell(d.dead_lettered_at),
          el('td', { class: 'body-cell' }, bodyPreview(d, 160)));
      }) : emptyRow(head.length, 'No dead letters.');
      const t = el('table', { class: 'grid', testid: 'dead-letters' },
        el('thead', {}, el('tr', {}, head.map((h) => (h instanceof Node ? h : el('th', typeof h === 'string' ? { text: h } : h))))),
        el('tbody', {}, rows));
      return t;
    }

    function sendForm(s) {
      const body = el('textarea', { id: 'test-body', testid: 'test-body', rows: 4, spellcheck: 'false', 'aria-label': 'Message body' }, '{"hello":"world"}');
      const ctype = el('input', { id: 'test-content-type', testid: 'test-content-type', value: 'application/json', 'aria-label': 'Content-Type' });
      const result = el('div', { class: 'result', testid: 'test-result' });
      const form = el('form', { class: 'card send', onsubmit: async (ev) => {
        ev.preventDefault();
        result.replaceChildren();
        try {
          const out = await api('POST', '/v1/subjects/' + seg(s.subject) + '/messages', { raw: body.value, contentType: ctype.value || 'application/octet-stream' });
          result.replaceChildren('Published ', el('a', { href: '#/messages/' + enc(out.id), class: 'mono', testid: 'test-message-link' }, out.id));
        } catch (e) {
          failed(e, 'action');
        }
      } },
      el('h2', {}, 'Send a test message'),
      el('p', { class: 'muted' }, 'Publishes to ', el('code', {}, s.subject), ': every subscription on it receives the message.'),
      body,
      el('div', { class: 'row' }, el('label', { for: 'test-content-type' }, 'Content-Type'), ctype,
        el('button', { type: 'submit', testid: 'send-test' }, 'Send')),
      result);
      return form;
    }

    const sendSlot = el('div');
    view.replaceChildren(
      head.node,
      secretBox,
      el('div', { class: 'two' },
        el('section', {}, el('h2', {}, 'Stats'), stats.node),
        el('section', {}, el('h2', {}, 'Configuration'), config.node)),
      sendSlot,
      el('section', {}, el('div', { class: 'section-head' }, el('h2', {}, 'Recent attempts'),
        el('div', { class: 'tools' }, outcomeSelect, newerBtn, olderBtn)), attempts.node),
      el('section', {}, el('div', { class: 'section-head' }, el('h2', {}, 'Dead letters'), dlqTools), dlq.node,
        el('div', { class: 'tools pager' }, dlqFirst, dlqOlder)));

    timer = live(async (stale) => {
      let aq = '?limit=50';
      if (att.outcome) aq += '&outcome=' + enc(att.outcome);
      const before = att.cursors[att.cursors.length - 1];
      if (before) aq += '&before=' + enc(before);
      let dq = '?limit=100';
      const after = dl.pages[dl.pages.length - 1];
      if (after) dq += '&after=' + enc(after);
      const [s, a, d] = await Promise.all([
        api('GET', path),
        api('GET', path + '/attempts' + aq),
        api('GET', path + '/dead-letters' + dq),
      ]);
      if (stale()) return;
      s.rate = pushRate(s);
      if (!sub && can('publish') && !s.pattern) sendSlot.replaceChildren(sendForm(s));
      sub = s;
      head.set({ name: s.name, paused: s.paused, reason: s.paused_reason }, () => headView(s));
      stats.set({ stats: s.stats, rate: s.rate }, () => statTiles(s));
      const cfg = { ...s };
      delete cfg.stats;
      delete cfg.rate;
      config.set(cfg, configList);
      att.next = a && a.next;
      olderBtn.hidden = !att.next;
      newerBtn.hidden = att.cursors.length === 0;
      attempts.set({ a: (a && a.attempts) || [] }, (x) => attemptsTable(x.a, true));
      const letters = (d && d.dead_letters) || [];
      // A selection only holds what is still listed.
      const listed = new Set(letters.map((x) => x.id));
      for (const id of [...dl.selected]) if (!listed.has(id)) dl.selected.delete(id);
      dl.next = d && d.next;
      dlqOlder.hidden = !dl.next;
      dlqFirst.hidden = dl.pages.length === 0;
      replayAll.disabled = purgeBtn.disabled = letters.length === 0 && dl.pages.length === 0;
      dlq.set(letters, dlqView);
      syncSelection();
      stamp.touch();
    });
  }

  // ---- message page ------------------------------------------------------------------

  function messagePage(id) {
    const view = $('view');
    const stamp = updatedStamp();
    const meta = section({ class: 'card' });
    const subs = section({});
    $('message-search').value = id;
    view.replaceChildren(
      el('div', { class: 'page-head' },
        el('div', {}, el('div', { class: 'crumbs' }, 'Message'), el('h1', { class: 'mono', testid: 'message-id' }, id)),
        stamp.node),
      meta.node,
      el('h2', {}, 'Deliveries'),
      subs.node);
    live(async (stale) => {
      let m;
      try {
        m = await api('GET', '/v1/messages/' + seg(id));
      } catch (e) {
        if (e.status === 404) {
          if (stale()) return;
          meta.set('404', () => el('p', { class: 'empty-state', testid: 'message-not-found' }, 'No such message: ' + e.message));
          subs.set('404', () => []);
          stamp.touch();
          return;
        }
        throw e;
      }
      if (stale()) return;
      const { subscriptions: per, ...rest } = m;
      meta.set(rest, messageMeta);
      subs.set(per || [], (list) => (list.length ? list.map(messageSub)
        : el('p', { class: 'empty-state' }, 'No subscription on this subject.')));
      stamp.touch();
    });
  }

  function messageMeta(m) {
    const headers = Object.entries(m.headers || {});
    let body;
    if (typeof m.body === 'string') {
      body = el('pre', { class: 'body', testid: 'message-body' }, m.body);
    } else if (typeof m.body_base64 === 'string') {
      body = el('div', {}, el('p', { class: 'muted' }, 'Binary body, shown as base64:'),
        el('pre', { class: 'body', testid: 'message-body' }, m.body_base64));
    } else {
      body = el('p', { class: 'muted' }, 'No body.');
    }
    return [
      el('dl', { class: 'kv' },
        el('dt', {}, 'Subject'), el('dd', { testid: 'message-subject' }, el('code', {}, m.subject || '')),
        el('dt', {}, 'Transport'), el('dd', {}, m.transport || ''),
        el('dt', {}, 'Published'), el('dd', { title: m.published_at || '' }, fmtTime(m.published_at)),
        el('dt', {}, 'Body size'), el('dd', {}, fmtNum(m.body_size) + ' bytes')),
      el('h3', {}, 'Headers'),
      headers.length
        ? table(['Name', 'Value'], headers.map(([k, v]) => el('tr', {}, el('td', { class: 'mono' }, k), el('td', { class: 'mono' }, String(v)))), { class: 'grid compact' })
        : el('p', { class: 'muted' }, 'No headers.'),
      el('h3', {}, 'Body'),
      body,
      m.body_truncated ? el('p', { class: 'warn-text', testid: 'body-truncated' }, `Truncated: the body has ${fmtNum(m.body_size)} bytes.`) : null,
    ];
  }

  function messageSub(s) {
    return el('section', { class: 'card', testid: 'message-sub-' + s.name },
      el('div', { class: 'section-head' },
        el('h3', {}, subLink(s.name)),
        badge(s.state || '?', STATE_TONE[s.state], 'message-state-' + s.name)),
      attemptsTable(s.attempts || [], false));
  }

  // ---- start -------------------------------------------------------------------------

  function start() {
    $('signin-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const tok = $('token-input').value.trim();
      if (!tok) return;
      sessionStorage.setItem(TOKEN_KEY, tok);
      state.token = tok;
      signIn();
    });
    $('sign-out').addEventListener('click', () => signOut('Signed out.'));
    $('notice-close').addEventListener('click', () => clearNotice());
    $('search-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const id = $('message-search').value.trim();
      if (id) location.hash = '#/messages/' + enc(id);
    });
    window.addEventListener('hashchange', () => {
      if (/^#?token=/.test(location.hash)) {
        takeFragmentToken();
        state.token = sessionStorage.getItem(TOKEN_KEY);
        signIn();
        return;
      }
      route();
    });
    takeFragmentToken();
    state.token = sessionStorage.getItem(TOKEN_KEY);
    signIn();
  }

  start();
})();
