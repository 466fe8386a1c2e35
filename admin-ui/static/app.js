// keel admin page: polls this origin's /api/v1/cluster and /api/v1/topics
// every second and re-renders in place (keyed DOM reuse, textContent only:
// no string from the API is ever parsed as HTML).
'use strict';

(function () {
  const API_CLUSTER = 'api/v1/cluster';
  const API_TOPICS = 'api/v1/topics';
  const POLL_MS = 1000;
  const FETCH_TIMEOUT_MS = 3000; // /cluster asks each peer with a 1 s deadline
  const HISTORY_WINDOW_MS = 10 * 60 * 1000;
  const DISK_LIMIT = 0.8; // the article's disk_usage threshold
  const SVG_NS = 'http://www.w3.org/2000/svg';

  const state = {
    cluster: null, clusterAt: null, clusterError: null,
    topics: null, topicsAt: null, topicsError: null,
    renderError: null,
  };

  // ---------------------------------------------------------------- helpers

  const $ = (sel, root) => (root || document).querySelector(sel);

  /** Element builder: h('td', {class: 'num'}, 'text', childNode, ...). */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v == null || v === false) continue;
        if (k === 'class') el.className = v;
        else if (k === 'text') el.textContent = String(v);
        else el.setAttribute(k, String(v));
      }
    }
    for (const c of children) {
      if (c == null) continue;
      el.append(typeof c === 'string' ? document.createTextNode(c) : c);
    }
    return el;
  }

  function svg(tag, attrs) {
    const el = document.createElementNS(SVG_NS, tag);
    if (attrs) for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    return el;
  }

  /** Set text only when it changed (keeps selections and avoids layout work). */
  function setText(el, v) {
    const s = v == null ? '' : String(v);
    if (el.textContent !== s) el.textContent = s;
  }

  function setAttr(el, k, v) {
    const s = String(v);
    if (el.getAttribute(k) !== s) el.setAttribute(k, s);
  }

  /**
   * Keyed list reconciliation: reuse the child whose data-key matches,
   * create missing ones, drop the rest, and keep the order of `items`.
   */
  function syncList(parent, items, keyOf, create, update) {
    const old = new Map();
    for (const c of Array.from(parent.children)) {
      if (c.dataset.key != null) old.set(c.dataset.key, c);
      else c.remove();
    }
    let prev = null;
    items.forEach((item, i) => {
      const key = String(keyOf(item, i));
      let el = old.get(key);
      if (el) old.delete(key);
      else {
        el = create(item);
        el.dataset.key = key;
      }
      const want = prev ? prev.nextSibling : parent.firstChild;
      if (el !== want) parent.insertBefore(el, want);
      update(el, item); // after insertion, so it can measure itself
      prev = el;
    });
    for (const el of old.values()) el.remove();
  }

  const nf = new Intl.NumberFormat('en-US');
  const isNum = (v) => typeof v === 'number' && isFinite(v);
  const DASH = '—';

  function fmtInt(v) { return isNum(v) ? nf.format(Math.round(v)) : DASH; }

  function fmtFixed(v, d) {
    return Number(v).toLocaleString('en-US', { minimumFractionDigits: d, maximumFractionDigits: d });
  }

  function fmtBytes(b) {
    if (!isNum(b)) return DASH;
    if (b < 0) return 'unlimited';
    if (b < 1024) return nf.format(Math.round(b)) + ' B';
    const units = ['KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
    let v = b / 1024, i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return fmtFixed(v, v >= 100 ? 0 : v >= 10 ? 1 : 2) + ' ' + units[i];
  }

  function fmtRate(bps) { return isNum(bps) ? fmtBytes(bps) + '/s' : DASH; }

  function fmtUs(us) {
    if (!isNum(us)) return DASH;
    if (us < 1000) return nf.format(Math.round(us)) + ' µs';
    if (us < 1e6) return fmtFixed(us / 1000, us < 1e4 ? 2 : 1) + ' ms';
    return fmtFixed(us / 1e6, 2) + ' s';
  }

  function fmtMs(ms) {
    if (!isNum(ms)) return DASH;
    if (ms < 1000) return nf.format(Math.round(ms)) + ' ms';
    if (ms < 60e3) return fmtFixed(ms / 1000, 1) + ' s';
    if (ms < 3600e3) return fmtFixed(ms / 60e3, 1) + ' min';
    if (ms < 86400e3) return fmtFixed(ms / 3600e3, 1) + ' h';
    return fmtFixed(ms / 86400e3, 1) + ' d';
  }

  function fmtDuration(ms) { // retention: whole units read better
    if (!isNum(ms)) return DASH;
    if (ms < 0) return 'unlimited';
    const units = [[86400e3, 'd'], [3600e3, 'h'], [60e3, 'min'], [1000, 's']];
    for (const [u, name] of units) if (ms >= u && ms % u === 0) return nf.format(ms / u) + ' ' + name;
    return fmtMs(ms);
  }

  function fmtPct(r) { return isNum(r) ? fmtFixed(r * 100, 1) + '%' : DASH; }

  function fmtClock(d) {
    const p = (n) => String(n).padStart(2, '0');
    return p(d.getHours()) + ':' + p(d.getMinutes()) + ':' + p(d.getSeconds());
  }

  function errText(e) {
    if (!e) return 'unknown error';
    if (e.name === 'AbortError') return 'timed out after ' + FETCH_TIMEOUT_MS / 1000 + ' s';
    return e.message || String(e);
  }

  // ---------------------------------------------------------------- fetching

  async function fetchJson(path) {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), FETCH_TIMEOUT_MS);
    try {
      const res = await fetch(path, { cache: 'no-store', signal: ctl.signal, headers: { Accept: 'application/json' } });
      if (!res.ok) {
        let detail = '';
        try {
          const body = await res.json();
          if (body && body.error) detail = ': ' + body.error;
        } catch (_) { /* not JSON */ }
        throw new Error('HTTP ' + res.status + (res.statusText ? ' ' + res.statusText : '') + detail);
      }
      return await res.json();
    } finally {
      clearTimeout(timer);
    }
  }

  async function poll() {
    const started = performance.now();
    const [c, t] = await Promise.allSettled([fetchJson(API_CLUSTER), fetchJson(API_TOPICS)]);
    const now = new Date();
    if (c.status === 'fulfilled' && c.value && Array.isArray(c.value.nodes)) {
      state.cluster = c.value; state.clusterAt = now; state.clusterError = null;
    } else {
      state.clusterError = c.status === 'rejected' ? errText(c.reason) : 'response has no "nodes" list';
    }
    if (t.status === 'fulfilled' && t.value && Array.isArray(t.value.topics)) {
      state.topics = t.value; state.topicsAt = now; state.topicsError = null;
    } else {
      state.topicsError = t.status === 'rejected' ? errText(t.reason) : 'response has no "topics" list';
    }
    render();
    setTimeout(poll, Math.max(100, POLL_MS - (performance.now() - started)));
  }

  // ---------------------------------------------------------------- render

  function render() {
    try {
      renderHeader();
      if (state.cluster) {
        renderNodes(state.cluster);
        renderAdvice(state.cluster);
        renderDetails(state.cluster);
      }
      if (state.topics) renderTopics(state.topics);
      state.renderError = null;
    } catch (e) {
      state.renderError = errText(e);
      console.error('keel admin: render failed', e);
    }
    renderBanner();
  }

  function reachableStatus(n) { return n && n.reachable && n.status ? n.status : null; }

  function leaderStatus(cluster) {
    const nodes = cluster.nodes || [];
    const byId = nodes.find((n) => n.node_id === cluster.leader_id && reachableStatus(n));
    if (byId) return byId.status;
    const any = nodes.find((n) => reachableStatus(n) && n.status.role === 'leader');
    return any ? any.status : null;
  }

  function renderHeader() {
    const c = state.cluster;
    const leaderEl = $('#leader');
    if (c) {
      leaderEl.replaceChildren();
      const ls = leaderStatus(c);
      if (c.leader_id == null) {
        leaderEl.append('leader: ', h('b', { class: 'bad', text: 'none known' }));
      } else {
        const ln = (c.nodes || []).find((n) => n.node_id === c.leader_id);
        const addr = (ls && ls.grpc_addr) || (ln && ln.addr) || '';
        leaderEl.append('leader: ', h('b', { text: 'node ' + c.leader_id }));
        if (addr) leaderEl.append(' ', h('span', { class: 'mono muted', text: addr }));
        if (ls) leaderEl.append(h('span', { class: 'muted', text: ' · term ' + fmtInt(ls.term) }));
      }
      const nodes = c.nodes || [];
      const up = nodes.filter(reachableStatus).length;
      const sum = $('#cluster-summary');
      sum.replaceChildren(nodes.length + ' nodes · ' + up + ' reachable');
      if (up < nodes.length) sum.append(' · ', h('span', { class: 'bad', text: (nodes.length - up) + ' unreachable' }));
      sum.append(' · asked node ' + c.asked_by);
    }
    const at = state.clusterAt;
    setText($('#last-refresh'), at ? fmtClock(at) : 'never');
    if (at) setAttr($('#last-refresh'), 'datetime', at.toISOString());
    updateAge();
  }

  function updateAge() {
    const at = state.clusterAt;
    const el = $('#refresh-age');
    if (!at) { setText(el, ''); return; }
    const age = Date.now() - at.getTime();
    setText(el, '(' + (age < 1500 ? 'just now' : fmtMs(Math.round(age / 1000) * 1000) + ' ago') + ')');
    el.classList.toggle('bad', !!state.clusterError);
  }

  function renderBanner() {
    const banner = $('#banner');
    const lines = [];
    const failed = [];
    if (state.clusterError) failed.push('GET /' + API_CLUSTER + ': ' + state.clusterError);
    if (state.topicsError) failed.push('GET /' + API_TOPICS + ': ' + state.topicsError);
    if (failed.length) {
      const since = state.clusterAt ? 'showing data from ' + fmtClock(state.clusterAt) : 'no data yet';
      lines.push('cannot reach ' + location.origin + ': ' + failed.join('; ') + ' — retrying every second, ' + since);
    }
    if (state.renderError) lines.push('the page could not show the last answer: ' + state.renderError);
    banner.hidden = lines.length === 0;
    setText(banner, lines.join('\n'));
    document.querySelectorAll('[data-source="cluster"]').forEach((el) =>
      el.classList.toggle('stale', !!state.clusterError));
    document.querySelectorAll('[data-source="topics"]').forEach((el) =>
      el.classList.toggle('stale', !!state.topicsError));
  }

  // ------------------------------------------------------------ nodes table

  function renderNodes(cluster) {
    const tbody = $('#nodes tbody');
    const ls = leaderStatus(cluster);
    const repl = new Map();
    if (ls && Array.isArray(ls.replication)) for (const r of ls.replication) repl.set(r.node_id, r);
    const ctx = { repl, leaderKnown: !!ls, askedBy: cluster.asked_by, leaderId: cluster.leader_id };
    const nodes = cluster.nodes || [];
    syncList(tbody, nodes, (n) => n.node_id, () => h('tr', { class: 'node' }), (tr, n) => updateNodeRow(tr, n, ctx));
    $('#nodes-empty').hidden = nodes.length > 0;
    setText($('#nodes-empty'), nodes.length ? '' : 'this node knows no members');
  }

  function makeLagCell() {
    const fill = h('div', { class: 'lagbar-fill' });
    const bar = h('div', { class: 'lagbar' }, fill);
    const num = h('span', { class: 'lag-num' });
    const sub = h('span', { class: 'lag-sub muted' });
    const td = h('td', { class: 'lag' }, h('div', { class: 'lag-line' }, bar, num, sub));
    td._r = { bar, fill, num, sub };
    return td;
  }

  function buildNodeCells(tr, down) {
    const r = {};
    r.id = h('td', { class: 'num id' });
    r.addr = h('td', { class: 'mono' });
    r.role = h('td', { class: 'role-cell' });
    tr.replaceChildren(r.id, r.addr, r.role);
    if (down) {
      r.error = h('td', { class: 'error-cell', colspan: 5 });
      tr.append(r.error);
    } else {
      r.term = h('td', { class: 'num' });
      r.last = h('td', { class: 'num' });
      r.commit = h('td', { class: 'num' });
      r.applied = h('td', { class: 'num' });
      r.durable = h('td', { class: 'num' });
      tr.append(r.term, r.last, r.commit, r.applied, r.durable);
    }
    r.lag = makeLagCell();
    tr.append(r.lag);
    tr._r = r;
  }

  function updateNodeRow(tr, n, ctx) {
    const st = reachableStatus(n);
    const role = st ? String(st.role || 'unknown') : 'unreachable';
    const shape = st ? 'up' : 'down';
    if (tr.dataset.shape !== shape) { buildNodeCells(tr, !st); tr.dataset.shape = shape; }
    setAttr(tr, 'data-node-id', n.node_id);
    setAttr(tr, 'data-role', role);
    tr.classList.toggle('unreachable', !st);
    tr.classList.toggle('is-leader', role === 'leader');
    const r = tr._r;

    // The id cell's text is just the id; the tags are CSS ::after content.
    setText(r.id, n.node_id);
    const tags = [];
    if (n.node_id === ctx.askedBy) tags.push('this');
    if (n.voter === false && role !== 'learner') tags.push('non-voter');
    if (tags.length) setAttr(r.id, 'data-tag', tags.join(' · '));
    else r.id.removeAttribute('data-tag');
    setAttr(r.id, 'title', n.node_id === ctx.askedBy ? 'this node serves the page' : '');
    setText(r.addr, (st && st.grpc_addr) || n.addr || DASH);

    // The role cell's only content is the role's text ("unreachable" when
    // down); its colour dot is a CSS ::before, not DOM text.
    setAttr(r.role, 'class', 'role-cell rc-' + role);
    setText(r.role, role);

    if (st) {
      const log = st.log || {};
      setText(r.term, fmtInt(st.term));
      setText(r.last, fmtInt(log.last_index));
      setText(r.commit, fmtInt(log.committed));
      setText(r.applied, fmtInt(log.applied));
      setText(r.durable, fmtInt(log.durable));
      setAttr(r.applied, 'title', 'applied ' + fmtInt(log.applied) + ' of ' + fmtInt(log.committed) + ' committed');
      setAttr(r.durable, 'title', 'fsynced on this node: ' + fmtInt(log.fsynced));
    } else {
      setText(r.error, n.error || (n.reachable ? 'answered without a status' : 'no answer'));
      setAttr(r.error, 'title', n.error || '');
    }
    updateLagCell(r.lag, n, role, ctx);
  }

  function lagFraction(lag) {
    // log scale: 0 → empty, 10 → 20%, 100 → 40%, … ≥ 100,000 → full
    if (!isNum(lag) || lag <= 0) return 0;
    return Math.min(1, Math.log10(1 + lag) / 5);
  }

  function updateLagCell(td, n, role, ctx) {
    const r = td._r;
    const row = ctx.repl.get(n.node_id);
    if (role === 'leader' || n.node_id === ctx.leaderId) {
      r.bar.hidden = true;
      setText(r.num, '');
      setText(r.sub, 'leader');
      return;
    }
    if (!row) {
      r.bar.hidden = true;
      setText(r.num, '');
      setText(r.sub, ctx.leaderKnown ? 'the leader reports no replication to this node' : 'unknown: no reachable leader');
      return;
    }
    const lag = row.lag_entries;
    const frac = lagFraction(lag);
    r.bar.hidden = false;
    r.fill.style.width = (frac * 100).toFixed(1) + '%';
    const ackOld = isNum(row.last_ack_ms_ago) && row.last_ack_ms_ago > 5000;
    const level = lag > 10000 || ackOld ? 'bad' : lag > 100 ? 'warn' : 'ok';
    setAttr(r.fill, 'class', 'lagbar-fill ' + level);
    setAttr(r.bar, 'title', fmtInt(lag) + ' entries behind (log scale, full at 100,000)');
    setText(r.num, fmtInt(lag) + (lag === 1 ? ' entry' : ' entries'));
    r.num.className = 'lag-num ' + (level === 'ok' ? '' : level);
    setText(r.sub, 'matched ' + fmtInt(row.matched) + ' · ack ' +
      (isNum(row.last_ack_ms_ago) ? fmtMs(row.last_ack_ms_ago) + ' ago' : 'never'));
    r.sub.classList.toggle('bad', ackOld);
  }

  // ------------------------------------------------------------ advice

  function renderAdvice(cluster) {
    const ul = $('#advice');
    const items = [];
    const down = [];
    for (const n of cluster.nodes || []) {
      const st = reachableStatus(n);
      if (!st) { down.push(n.node_id); continue; }
      (Array.isArray(st.advice) ? st.advice : []).forEach((a, i) =>
        items.push({ kind: 'advice', key: 'a:' + n.node_id + ':' + (a.rule || '') + ':' + i, node: n.node_id, a }));
    }
    if (items.length === 0) items.push({ kind: 'empty', key: 'empty' });
    if (down.length) items.push({ kind: 'down', key: 'down', ids: down });
    syncList(ul, items, (it) => it.key, createAdviceItem, updateAdviceItem);
  }

  function createAdviceItem(it) {
    if (it.kind === 'empty') {
      return h('li', { class: 'advice-empty', text: "no advice: flush times and disk usage are within the article's limits" });
    }
    if (it.kind === 'down') return h('li', { class: 'advice-note muted' });
    const li = h('li', { class: 'advice-item' });
    li._r = {
      sev: h('span', { class: 'sev' }),
      node: h('span', { class: 'advice-node' }),
      rule: h('code', { class: 'advice-rule' }),
      msg: h('div', { class: 'advice-msg' }),
      meas: h('div', { class: 'advice-meas muted' }),
    };
    li.append(h('div', { class: 'advice-head' }, li._r.sev, li._r.node, li._r.rule), li._r.msg, li._r.meas);
    return li;
  }

  function updateAdviceItem(li, it) {
    if (it.kind === 'empty') return;
    if (it.kind === 'down') {
      setText(li, 'node' + (it.ids.length > 1 ? 's ' : ' ') + it.ids.join(', ') +
        (it.ids.length > 1 ? ' are' : ' is') + ' unreachable: advice unknown');
      return;
    }
    const a = it.a, r = li._r;
    const sev = String(a.severity || 'warning');
    setText(r.sev, sev);
    setAttr(r.sev, 'class', 'sev sev-' + (sev === 'critical' || sev === 'error' ? 'bad' : sev === 'info' ? 'info' : 'warn'));
    setText(r.node, 'node ' + it.node);
    setText(r.rule, a.rule || '?');
    setText(r.msg, a.message || '');
    const hasM = isNum(a.measured) || isNum(a.threshold);
    setText(r.meas, hasM ? 'measured ' + fmtAdviceValue(a.rule, a.measured) + ' · threshold ' + fmtAdviceValue(a.rule, a.threshold) : '');
    r.meas.hidden = !hasM;
  }

  function fmtAdviceValue(rule, v) {
    if (!isNum(v)) return DASH;
    if (rule === 'slow_flush') return fmtFixed(v, 1) + ' ms';
    if (rule === 'disk_usage') return v <= 1 ? fmtPct(v) : fmtFixed(v, 1) + '%';
    if (rule === 'disk_reserve') return fmtFixed(v / 1048576, 1) + ' MiB';
    return String(v);
  }

  // ------------------------------------------------- per-node flush/storage

  function renderDetails(cluster) {
    const box = $('#node-details');
    const nodes = (cluster.nodes || []).filter(reachableStatus);
    syncList(box, nodes, (n) => n.node_id, createCard, updateCard);
    // Charts last: their width is known only once every card is in place.
    for (const card of box.children) if (card._r) drawChart(card._r, card._r.history || []);
  }

  function kv(label) {
    const v = h('span', { class: 'kv-v' });
    return [h('div', { class: 'kv' }, h('span', { class: 'kv-k', text: label }), v), v];
  }

  function createCard() {
    const r = {};
    r.title = h('span', { class: 'card-title' });
    r.role = h('span');
    r.meta = h('span', { class: 'card-meta muted' });

    const fields = [['policy', 'policy'], ['pending', 'pending'], ['fsyncs', 'fsyncs'],
      ['write', 'write rate'], ['written', 'written total'], ['age', 'last fsync']];
    const kvBox = h('div', { class: 'kvs' });
    for (const [k, label] of fields) { const [el, v] = kv(label); r[k] = v; kvBox.append(el); }

    r.lat = {};
    const latBody = h('tbody');
    for (const [k, label] of [['last_minute', 'last minute'], ['since_start', 'since start']]) {
      const cells = ['count', 'mean', 'p50', 'p99', 'max'].map(() => h('td', { class: 'num' }));
      r.lat[k] = cells;
      latBody.append(h('tr', null, h('th', { scope: 'row', text: label }), ...cells));
    }
    const latTable = h('table', { class: 'grid lat' },
      h('thead', null, h('tr', null, h('th', { text: 'fsync latency' }),
        ...['count', 'mean', 'p50', 'p99', 'max'].map((t) => h('th', { class: 'num', text: t })))),
      latBody);

    r.chart = svg('svg', { class: 'chart', height: 84, role: 'img' });
    r.chartNote = h('span', { class: 'muted' });
    const chartBox = h('div', { class: 'chart-box' },
      h('div', { class: 'chart-title' }, h('span', { text: 'fsync p99, last 10 min' }), r.chartNote), r.chart);

    r.gaugeFill = h('div', { class: 'gauge-fill' });
    r.gaugeVal = h('span', { class: 'gauge-val' });
    const gauge = h('div', { class: 'gauge', title: 'disk usage; the line marks the 80% limit' },
      r.gaugeFill,
      h('div', { class: 'gauge-mark' }, h('span', { class: 'gauge-mark-label', text: '80%' })),
      r.gaugeVal);
    r.diskText = h('div', { class: 'disk-text muted' });

    r.segBody = h('tbody');
    r.segTotal = h('td', { class: 'num' });
    r.segCount = h('td', { colspan: 3 });
    r.segCap = h('td', { class: 'num' });
    const segTable = h('table', { class: 'grid segs' },
      h('thead', null, h('tr', null,
        h('th', { text: 'segment', title: 'newest first' }), h('th', { class: 'num', text: 'first' }),
        h('th', { class: 'num', text: 'last' }), h('th', { class: 'num', text: 'bytes' }),
        h('th', { class: 'num', text: 'capacity' }), h('th', { text: '' }))),
      r.segBody,
      h('tfoot', null, h('tr', null, r.segCount, r.segTotal, r.segCap, h('td'))));

    const card = h('article', { class: 'card panel' },
      h('div', { class: 'card-head' }, r.title, r.role, r.meta),
      h('div', { class: 'card-cols' },
        h('div', { class: 'flush' }, h('h3', { text: 'Flush' }), kvBox, latTable, chartBox),
        h('div', { class: 'storage' }, h('h3', { text: 'Storage' }),
          h('div', { class: 'disk' }, gauge, r.diskText),
          h('div', { class: 'segs-scroll' }, segTable))));
    card._r = r;
    return card;
  }

  function updateCard(card, n) {
    const st = n.status, r = card._r;
    const role = String(st.role || 'unknown');
    setAttr(card, 'data-node-id', n.node_id);
    setText(r.title, 'node ' + n.node_id);
    setAttr(r.role, 'class', 'role role-' + role);
    setText(r.role, role);
    const storage = st.storage || {};
    setText(r.meta, [storage.dir, isNum(st.uptime_ms) ? 'up ' + fmtMs(st.uptime_ms) : null].filter(Boolean).join(' · '));

    // flush
    const f = st.flush || {};
    setText(r.policy, f.policy || DASH);
    const cfg = f.config && typeof f.config === 'object'
      ? Object.entries(f.config).map(([k, v]) => k + ' = ' + v).join('\n') : '';
    setAttr(r.policy, 'title', cfg);
    setText(r.pending, fmtBytes(f.pending_bytes) + ' · ' + fmtInt(f.pending_entries) + ' entries');
    setText(r.fsyncs, fmtInt(f.fsyncs));
    setText(r.write, fmtRate(f.write_bytes_per_s));
    setText(r.written, fmtBytes(f.written_bytes_total));
    setText(r.age, f.last_fsync_age_ms == null ? 'never' : fmtMs(f.last_fsync_age_ms) + ' ago');
    r.age.classList.toggle('bad', isNum(f.last_fsync_age_ms) && f.last_fsync_age_ms > 10000 && f.pending_bytes > 0);
    const us = f.fsync_us || {};
    for (const k of ['last_minute', 'since_start']) {
      const s = us[k] || {};
      const cells = r.lat[k];
      setText(cells[0], fmtInt(s.count));
      ['mean', 'p50', 'p99', 'max'].forEach((q, i) => {
        setText(cells[i + 1], fmtUs(s[q]));
        cells[i + 1].classList.toggle('bad', q === 'mean' && isNum(s[q]) && s[q] > 100000);
      });
    }
    r.history = Array.isArray(f.history) ? f.history : [];

    // storage
    const disk = storage.disk || {};
    const ratio = isNum(disk.used_ratio) ? Math.max(0, Math.min(1, disk.used_ratio)) : null;
    r.gaugeFill.style.width = ratio == null ? '0' : (ratio * 100).toFixed(1) + '%';
    // The label sits inside the fill when there is room, else just after it.
    const outside = ratio == null || ratio < 0.22;
    r.gaugeVal.classList.toggle('outside', outside);
    r.gaugeVal.style.left = outside ? 'calc(' + ((ratio || 0) * 100).toFixed(1) + '% + 6px)' : '';
    setAttr(r.gaugeFill, 'class', 'gauge-fill ' + (ratio == null ? '' : ratio > DISK_LIMIT ? 'bad' : ratio > 0.7 ? 'warn' : 'ok'));
    setText(r.gaugeVal, ratio == null ? 'disk usage unknown' : fmtPct(disk.used_ratio) + ' used');
    setText(r.diskText, fmtBytes(disk.free_bytes) + ' free of ' + fmtBytes(disk.total_bytes));

    const segs = Array.isArray(storage.segments) ? storage.segments.slice().reverse() : [];
    syncList(r.segBody, segs, (s, i) => s.file || i, createSegRow, updateSegRow);
    const cap = segs.reduce((a, s) => a + (isNum(s.capacity_bytes) ? s.capacity_bytes : 0), 0);
    setText(r.segCount, 'total: ' + segs.length + ' segment' + (segs.length === 1 ? '' : 's'));
    setAttr(r.segCount, 'title', st.log && isNum(st.log.first_index) ? 'oldest entry still stored: index ' + fmtInt(st.log.first_index) : '');
    setText(r.segTotal, fmtBytes(storage.segment_bytes_total));
    setText(r.segCap, fmtBytes(cap));
  }

  function createSegRow() {
    const tr = h('tr');
    const r = {
      file: h('td', { class: 'mono file' }), first: h('td', { class: 'num' }), last: h('td', { class: 'num' }),
      bytes: h('td', { class: 'num' }), cap: h('td', { class: 'num' }), state: h('td'),
      fill: h('div', { class: 'minibar-fill' }),
    };
    r.bytes.append(h('span'), h('div', { class: 'minibar' }, r.fill));
    tr.append(r.file, r.first, r.last, r.bytes, r.cap, r.state);
    tr._r = r;
    return tr;
  }

  function updateSegRow(tr, s) {
    const r = tr._r;
    // Leading zeros go in their own span: dimmed, and hidden in narrow cards
    // (the full name stays in the text and the tooltip).
    const file = String(s.file || DASH);
    if (r.file.title !== file) {
      const m = /^(0*)(\d.*)$/.exec(file);
      r.file.replaceChildren();
      if (m && m[1]) r.file.append(h('span', { class: 'zeros', text: m[1] }), m[2]);
      else r.file.append(file);
      r.file.title = file;
    }
    setText(r.first, fmtInt(s.first_index));
    setText(r.last, fmtInt(s.last_index));
    setText(r.bytes.firstChild, fmtBytes(s.bytes));
    const frac = isNum(s.bytes) && s.capacity_bytes > 0 ? Math.min(1, s.bytes / s.capacity_bytes) : 0;
    r.fill.style.width = (frac * 100).toFixed(1) + '%';
    setText(r.cap, fmtBytes(s.capacity_bytes));
    let tag = r.state.firstChild;
    if (!tag) { tag = h('span'); r.state.append(tag); }
    setText(tag, s.sealed ? 'sealed' : 'active');
    setAttr(tag, 'class', 'seg-state ' + (s.sealed ? 'sealed' : 'active'));
  }

  // ------------------------------------------------------------ p99 chart

  function niceMax(v) {
    if (!(v > 0)) return 1000;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }

  function drawChart(r, history) {
    const el = r.chart;
    const W = Math.max(200, Math.round(el.getBoundingClientRect().width) || 420);
    const H = 84;
    const L = 52, R = 8, T = 8, B = 18;
    setAttr(el, 'viewBox', '0 0 ' + W + ' ' + H);
    const pts = history.filter((p) => p && isNum(p.t_ms));
    el.replaceChildren();
    const pw = W - L - R, ph = H - T - B;
    el.append(svg('rect', { class: 'plot-bg', x: L, y: T, width: pw, height: ph }));
    if (pts.length === 0) {
      const t = svg('text', { class: 'axis', x: L + pw / 2, y: T + ph / 2 + 4, 'text-anchor': 'middle' });
      t.textContent = 'no history yet';
      el.append(t);
      setText(r.chartNote, '');
      return;
    }
    const tEnd = pts[pts.length - 1].t_ms;
    const tStart = tEnd - HISTORY_WINDOW_MS;
    const vals = pts.filter((p) => p.t_ms >= tStart && isNum(p.fsync_p99_us));
    const peak = vals.reduce((m, p) => Math.max(m, p.fsync_p99_us), 0);
    const yMax = niceMax(peak);
    const x = (t) => L + ((t - tStart) / HISTORY_WINDOW_MS) * pw;
    const y = (v) => T + ph - (Math.min(v, yMax) / yMax) * ph;

    // grid + labels
    for (const frac of [0.5]) {
      el.append(svg('line', { class: 'gridline', x1: L, x2: L + pw, y1: y(yMax * frac), y2: y(yMax * frac) }));
    }
    const label = (txt, xx, yy, anchor) => {
      const t = svg('text', { class: 'axis', x: xx, y: yy, 'text-anchor': anchor });
      t.textContent = txt;
      el.append(t);
    };
    label(fmtUs(yMax), L - 4, T + 8, 'end');
    label(fmtUs(yMax / 2), L - 4, y(yMax / 2) + 3, 'end');
    label('0', L - 4, T + ph, 'end');
    label('−10 min', L, H - 4, 'start');
    label('−5 min', L + pw / 2, H - 4, 'middle');
    label('latest', L + pw, H - 4, 'end');

    // line, broken where points are missing (> 2 sampling periods apart)
    let seg = [];
    const segments = [];
    let prevT = null;
    for (const p of pts) {
      if (p.t_ms < tStart) continue;
      if (!isNum(p.fsync_p99_us) || (prevT != null && p.t_ms - prevT > 12000)) {
        if (seg.length) segments.push(seg);
        seg = [];
      }
      if (isNum(p.fsync_p99_us)) seg.push(p);
      prevT = p.t_ms;
    }
    if (seg.length) segments.push(seg);
    for (const s of segments) {
      const coords = s.map((p) => x(p.t_ms).toFixed(1) + ',' + y(p.fsync_p99_us).toFixed(1));
      if (s.length > 1) {
        const area = 'M' + x(s[0].t_ms).toFixed(1) + ',' + (T + ph) + ' L' + coords.join(' L') +
          ' L' + x(s[s.length - 1].t_ms).toFixed(1) + ',' + (T + ph) + ' Z';
        el.append(svg('path', { class: 'area', d: area }));
        el.append(svg('polyline', { class: 'line', points: coords.join(' ') }));
      } else {
        el.append(svg('circle', { class: 'dot', cx: x(s[0].t_ms), cy: y(s[0].fsync_p99_us), r: 2 }));
      }
    }
    const last = vals[vals.length - 1];
    if (last) el.append(svg('circle', { class: 'dot', cx: x(last.t_ms), cy: y(last.fsync_p99_us), r: 2.5 }));
    const title = svg('title');
    title.textContent = 'fsync p99 per 5 s, ' + vals.length + ' points; peak ' + fmtUs(peak);
    el.append(title);
    setText(r.chartNote, 'peak ' + fmtUs(peak) + (last ? ' · latest ' + fmtUs(last.fsync_p99_us) : ''));
  }

  // ------------------------------------------------------------ topics

  function renderTopics(data) {
    const tbody = $('#topics tbody');
    const rows = [];
    const topics = data.topics || [];
    for (const t of topics) {
      const name = String(t.name);
      rows.push({ kind: 't', key: 't:' + name, t });
      const groupsByPart = new Map();
      for (const g of Array.isArray(t.groups) ? t.groups : []) {
        if (!groupsByPart.has(g.partition)) groupsByPart.set(g.partition, []);
        groupsByPart.get(g.partition).push(g);
      }
      const parts = (Array.isArray(t.partition_info) ? t.partition_info : []).slice()
        .sort((a, b) => a.partition - b.partition);
      const seen = new Set();
      for (const p of parts) {
        seen.add(p.partition);
        rows.push({ kind: 'p', key: 'p:' + name + ':' + p.partition, p, groups: groupsByPart.get(p.partition) || [] });
      }
      for (const [part, groups] of groupsByPart) { // groups on partitions the node did not list
        if (!seen.has(part)) rows.push({ kind: 'p', key: 'p:' + name + ':' + part, p: { partition: part }, groups });
      }
    }
    syncList(tbody, rows, (r) => r.key,
      (r) => (r.kind === 't' ? createTopicRow() : createPartRow()),
      (tr, r) => (r.kind === 't' ? updateTopicRow(tr, r.t) : updatePartRow(tr, r)));
    $('#topics-empty').hidden = topics.length > 0;
    setText($('#topics-empty'), topics.length ? '' : 'no topics');
    setText($('#topics-meta'), 'as node ' + data.node_id + ' applied them, up to index ' + fmtInt(data.applied));
  }

  function createTopicRow() {
    const name = h('span', { class: 'topic-name' });
    const meta = h('span', { class: 'topic-meta muted' });
    const tr = h('tr', { class: 'topic' }, h('td', { colspan: 6 }, name, meta));
    tr._r = { name, meta };
    return tr;
  }

  function updateTopicRow(tr, t) {
    const parts = Array.isArray(t.partition_info) ? t.partition_info : [];
    const bytes = parts.reduce((a, p) => a + (isNum(p.bytes) ? p.bytes : 0), 0);
    const lagByGroup = new Map();
    for (const g of Array.isArray(t.groups) ? t.groups : []) {
      lagByGroup.set(g.group, (lagByGroup.get(g.group) || 0) + (isNum(g.lag) ? g.lag : 0));
    }
    setText(tr._r.name, t.name);
    const bits = [
      'incarnation ' + fmtInt(t.incarnation),
      fmtInt(t.partitions) + ' partition' + (t.partitions === 1 ? '' : 's'),
      'retention ' + fmtDuration(t.retention_ms) + ' / ' + fmtBytes(t.retention_bytes),
      'max message ' + fmtBytes(t.max_message_bytes),
      fmtBytes(bytes) + ' stored',
    ];
    if (lagByGroup.size) {
      bits.push('lag: ' + Array.from(lagByGroup, ([g, l]) => g + ' ' + fmtInt(l)).join(', '));
    } else bits.push('no consumer groups');
    setText(tr._r.meta, bits.join(' · '));
  }

  function createPartRow() {
    const r = {
      part: h('td', { class: 'num' }), first: h('td', { class: 'num' }), next: h('td', { class: 'num' }),
      msgs: h('td', { class: 'num' }), bytes: h('td', { class: 'num' }), groups: h('td', { class: 'groups' }),
    };
    const tr = h('tr', { class: 'partition' }, r.part, r.first, r.next, r.msgs, r.bytes, r.groups);
    tr._r = r;
    return tr;
  }

  function updatePartRow(tr, row) {
    const p = row.p, r = tr._r;
    setText(r.part, fmtInt(p.partition));
    setText(r.first, fmtInt(p.first_offset));
    setText(r.next, fmtInt(p.next_offset));
    setText(r.msgs, isNum(p.first_offset) && isNum(p.next_offset) ? fmtInt(p.next_offset - p.first_offset) : DASH);
    setText(r.bytes, fmtBytes(p.bytes));
    const groups = row.groups.slice().sort((a, b) => String(a.group).localeCompare(String(b.group)));
    syncList(r.groups, groups, (g) => g.group, () => {
      const name = h('span', { class: 'g-name' });
      const off = h('span', { class: 'g-off muted' });
      const lag = h('span', { class: 'g-lag' });
      const chip = h('span', { class: 'chip' }, name, off, lag);
      chip._r = { name, off, lag };
      return chip;
    }, (chip, g) => {
      setText(chip._r.name, g.group);
      setText(chip._r.off, fmtInt(g.committed));
      setText(chip._r.lag, 'lag ' + fmtInt(g.lag));
      const level = !isNum(g.lag) ? '' : g.lag === 0 ? 'ok' : g.lag > 10000 ? 'bad' : 'warn';
      setAttr(chip._r.lag, 'class', 'g-lag ' + level);
    });
    if (!groups.length && !r.groups.firstChild) r.groups.append(h('span', { class: 'muted', text: DASH }));
  }

  // ------------------------------------------------------------ start

  function start() {
    setInterval(updateAge, 1000);
    window.addEventListener('resize', () => { if (state.cluster) render(); });
    poll();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
