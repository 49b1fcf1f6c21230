// OptiRoute web chat. Plain JS, no dependencies, no build step.
// Talks only to the gateway it is served from (CSP connect-src 'self').
'use strict';

(() => {
  const STATS_INTERVAL_MS = 2000;
  const CHART_WINDOWS_S = [120, 300, 600]; // the chart zooms out as history grows

  // ---------------------------------------------------------------- helpers

  const $ = (id) => document.getElementById(id);

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function num(v) {
    const n = typeof v === 'string' ? Number(v) : v;
    return typeof n === 'number' && Number.isFinite(n) ? n : null;
  }

  function fmtUsd(v) {
    const n = num(v);
    if (n === null) return '–';
    if (n === 0) return '$0';
    const a = Math.abs(n);
    if (a >= 1) return '$' + n.toFixed(2);
    if (a >= 0.01) return '$' + n.toFixed(4);
    if (a < 0.000001) return '<$0.000001';
    // Up to 6 decimals, trailing zeros trimmed.
    return '$' + n.toFixed(6).replace(/0+$/, '').replace(/\.$/, '');
  }

  function fmtMs(v) {
    const n = num(v);
    if (n === null) return '–';
    if (n >= 10000) return (n / 1000).toFixed(1) + ' s';
    if (n >= 100) return Math.round(n) + ' ms';
    if (n >= 10) return n.toFixed(1) + ' ms';
    return n.toFixed(2) + ' ms';
  }

  function fmtRate(v) {
    const n = num(v);
    if (n === null) return '–';
    return n >= 100 ? n.toFixed(0) : n >= 10 ? n.toFixed(1) : n.toFixed(2);
  }

  function fmtPct(v) {
    const n = num(v);
    if (n === null) return '–';
    return (n * 100).toFixed(n > 0 && n < 0.1 ? 1 : 0) + '%';
  }

  function fmtInt(v) {
    const n = num(v);
    return n === null ? '–' : Math.round(n).toLocaleString('en-US');
  }

  // ------------------------------------------------------- safe markdown
  //
  // The whole model text is HTML-escaped first; markdown is then applied to the
  // escaped text. Escaped text contains no '<', so every tag in the output is one
  // this renderer wrote. Attribute values we write are restricted to [\w+#.-].

  function escapeHtml(s) {
    return String(s)
      .replace(/&/g, '&amp;')
      .replace(/</g, '&lt;')
      .replace(/>/g, '&gt;')
      .replace(/"/g, '&quot;')
      .replace(/'/g, '&#39;');
  }

  // Inline markdown on already-escaped text: `code`, **bold**, __bold__, *em*, _em_.
  function renderInline(escaped) {
    const parts = escaped.split(/(`[^`\n]+`)/g);
    return parts
      .map((part, i) => {
        if (i % 2 === 1) return '<code>' + part.slice(1, -1) + '</code>';
        return part
          .replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, '<strong>$1</strong>')
          .replace(/(^|[^\w])__(?=\S)([\s\S]*?\S)__(?!\w)/g, '$1<strong>$2</strong>')
          .replace(/(^|[^*\w])\*([^\s*](?:[^*\n]*?[^\s*])?)\*(?!\*)/g, '$1<em>$2</em>')
          .replace(/(^|[^\w])_([^\s_](?:[^_\n]*?[^\s_])?)_(?!\w)/g, '$1<em>$2</em>');
      })
      .join('');
  }

  const RE_FENCE = /^\s{0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/;
  const RE_UL = /^\s{0,6}[-*+]\s+(.*)$/;
  const RE_OL = /^\s{0,6}(\d{1,9})[.)]\s+(.*)$/;
  const RE_HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
  const RE_QUOTE = /^\s{0,3}&gt;\s?(.*)$/;
  const RE_RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;

  function renderMarkdown(text) {
    const lines = escapeHtml(String(text).replace(/\r\n?/g, '\n')).split('\n');
    const out = [];
    let para = [];
    let list = null; // {type: 'ul'|'ol', start, items: []}
    let quote = [];

    const flushPara = () => {
      if (para.length) out.push('<p>' + para.map(renderInline).join('<br>') + '</p>');
      para = [];
    };
    const flushList = () => {
      if (!list) return;
      const start = list.type === 'ol' && list.start !== 1 ? ' start="' + list.start + '"' : '';
      out.push('<' + list.type + start + '>' +
        list.items.map((it) => '<li>' + renderInline(it) + '</li>').join('') +
        '</' + list.type + '>');
      list = null;
    };
    const flushQuote = () => {
      if (quote.length) out.push('<blockquote>' + quote.map(renderInline).join('<br>') + '</blockquote>');
      quote = [];
    };
    const flushAll = () => { flushPara(); flushList(); flushQuote(); };

    for (let i = 0; i < lines.length; i++) {
      const line = lines[i];
      const fence = RE_FENCE.exec(line);
      if (fence) {
        flushAll();
        const marker = fence[1];
        const lang = fence[2];
        const body = [];
        let j = i + 1;
        for (; j < lines.length; j++) {
          const l = lines[j];
          const t = l.trim();
          if (t.startsWith(marker) && t.replace(/[`~]/g, '') === '') break;
          body.push(l);
        }
        // An unclosed fence (still streaming) runs to the end of the text.
        if (j >= lines.length) while (body.length && body[body.length - 1].trim() === '') body.pop();
        i = j;
        const cls = lang ? ' class="lang-' + lang + '"' : '';
        out.push('<div class="codeblock">' +
          '<div class="codeblock-bar"><span class="codeblock-lang">' + (lang || 'text') + '</span>' +
          '<button type="button" class="copy-btn" aria-label="Copy code">Copy</button></div>' +
          '<pre><code' + cls + '>' + body.join('\n') + '</code></pre></div>');
        continue;
      }
      // A blank line ends a paragraph or quote; a list stays open so that "1. a\n\n2. b" is one list.
      if (line.trim() === '') { flushPara(); flushQuote(); continue; }
      let m;
      if ((m = RE_HEADING.exec(line))) {
        flushAll();
        const level = Math.min(6, m[1].length + 2); // h3..h6 inside a message
        out.push('<h' + level + '>' + renderInline(m[2]) + '</h' + level + '>');
        continue;
      }
      if (RE_RULE.test(line) && !list) { flushAll(); out.push('<hr>'); continue; }
      if ((m = RE_UL.exec(line)) || (m = RE_OL.exec(line))) {
        const type = m.length === 3 ? 'ol' : 'ul';
        const item = type === 'ol' ? m[2] : m[1];
        flushPara(); flushQuote();
        if (list && list.type !== type) flushList();
        if (!list) list = { type, start: type === 'ol' ? Number(m[1]) : 1, items: [] };
        list.items.push(item);
        continue;
      }
      if ((m = RE_QUOTE.exec(line))) { flushPara(); flushList(); quote.push(m[1]); continue; }
      if (list && /^\s{2,}\S/.test(line)) {
        // Continuation line of the last list item.
        list.items[list.items.length - 1] += ' ' + line.trim();
        continue;
      }
      flushList(); flushQuote();
      para.push(line);
    }
    flushAll();
    return out.join('');
  }

  // ---------------------------------------------------------- SSE parsing

  // Incremental SSE parser: feed() text, get back the data payloads of complete events.
  function createSseParser() {
    let buf = '';
    let data = [];
    return {
      feed(chunk) {
        buf += chunk;
        const events = [];
        let nl;
        while ((nl = buf.search(/\r\n|\r|\n/)) >= 0) {
          const sepLen = buf[nl] === '\r' && buf[nl + 1] === '\n' ? 2 : 1;
          if (buf[nl] === '\r' && nl + 1 === buf.length) break; // wait: may be half of \r\n
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + sepLen);
          if (line === '') {
            if (data.length) events.push(data.join('\n'));
            data = [];
          } else if (line.startsWith('data:')) {
            data.push(line.slice(5).replace(/^ /, ''));
          }
          // Comments (':'), event:, id:, retry: are ignored.
        }
        return events;
      },
      end() {
        const events = [];
        if (buf.startsWith('data:')) data.push(buf.slice(5).replace(/^ /, ''));
        buf = '';
        if (data.length) events.push(data.join('\n'));
        data = [];
        return events;
      },
    };
  }

  // ------------------------------------------------------------ chat state

  const ui = {};
  const history = []; // {role, content}
  // The gateway key, when auth is on: kept in this tab's sessionStorage only, sent as a Bearer token.
  const KEY_STORAGE = 'optiroute.apiKey';
  let keyInMemory = null; // set once the user types a key (also used when storage is off)
  function apiKey() {
    if (keyInMemory !== null) return keyInMemory;
    try { return sessionStorage.getItem(KEY_STORAGE) || ''; } catch { return ''; }
  }
  function withAuth(headers) {
    const key = apiKey();
    return key ? Object.assign({ authorization: 'Bearer ' + key }, headers) : headers;
  }
  let current = null; // {controller, msg}

  function scrollToBottom(force) {
    const box = ui.messages;
    const near = box.scrollHeight - box.scrollTop - box.clientHeight < 120;
    if (force || near) box.scrollTop = box.scrollHeight;
  }

  function hideEmpty() {
    if (ui.empty) ui.empty.hidden = true;
  }

  function addUserMessage(text) {
    hideEmpty();
    const wrap = el('article', 'msg msg-user');
    wrap.dataset.testid = 'message';
    wrap.dataset.role = 'user';
    wrap.setAttribute('aria-label', 'You');
    const body = el('div', 'msg-body msg-plain', text);
    body.dataset.testid = 'message-content';
    wrap.append(body);
    ui.messages.append(wrap);
    scrollToBottom(true);
  }

  function addAssistantMessage() {
    hideEmpty();
    const wrap = el('article', 'msg msg-assistant');
    wrap.dataset.testid = 'message';
    wrap.dataset.role = 'assistant';
    wrap.dataset.state = 'waiting';
    wrap.setAttribute('aria-label', 'Assistant');
    wrap.setAttribute('aria-busy', 'true');
    const body = el('div', 'msg-body md');
    body.dataset.testid = 'message-content';
    const typing = el('span', 'typing');
    typing.setAttribute('aria-label', 'Waiting for the first token');
    typing.append(el('i'), el('i'), el('i'));
    body.append(typing);
    const meta = el('div', 'meta');
    meta.dataset.testid = 'message-meta';
    meta.hidden = true;
    wrap.append(body, meta);
    ui.messages.append(wrap);
    scrollToBottom(true);
    return { wrap, body, meta, text: '', pending: false };
  }

  function renderBody(msg) {
    msg.pending = false;
    // Escaped-then-marked-up HTML only (see renderMarkdown).
    msg.body.innerHTML = renderMarkdown(msg.text);
    if (msg.wrap.dataset.state === 'streaming') {
      const caret = el('span', 'caret');
      caret.setAttribute('aria-hidden', 'true');
      let target = msg.body.lastElementChild || msg.body;
      if (target.classList.contains('codeblock')) target = target.querySelector('code') || target;
      else if (target.tagName === 'UL' || target.tagName === 'OL') target = target.lastElementChild || target;
      target.append(caret);
    }
    scrollToBottom(false);
  }

  function scheduleRender(msg) {
    if (msg.pending) return;
    msg.pending = true;
    // Only a still-streaming message is re-rendered from the frame callback; the final
    // render (done, stopped, error) happens synchronously when the stream ends.
    requestAnimationFrame(() => { if (msg.pending && msg.wrap.dataset.state === 'streaming') renderBody(msg); });
  }

  function showError(msg, message, detail) {
    msg.wrap.dataset.state = 'error';
    const box = el('div', 'msg-error');
    box.dataset.testid = 'message-error';
    box.setAttribute('role', 'alert');
    box.append(el('strong', null, 'Error: '), document.createTextNode(message));
    if (detail) box.append(el('span', 'msg-error-detail', ' (' + detail + ')'));
    msg.body.after(box);
    if (!msg.text) msg.body.hidden = true;
  }

  function metaItem(label, value, cls, testid) {
    const item = el('span', 'meta-item' + (cls ? ' ' + cls : ''));
    if (label) item.append(el('span', 'meta-label', label + ' '));
    item.append(el('span', 'meta-value', value));
    if (testid) item.dataset.testid = testid;
    // The trailing space separates items in copied text and for screen readers; a flex
    // container does not render it.
    const frag = document.createDocumentFragment();
    frag.append(item, ' ');
    return frag;
  }

  // info: merged header + optiroute object + usage + client timings.
  function renderMeta(msg, info) {
    const m = msg.meta;
    m.replaceChildren();
    m.hidden = false;
    const cache = info.cache || 'unknown';
    msg.wrap.dataset.cache = cache;
    m.dataset.cache = cache;

    const who = [info.provider, info.model].filter(Boolean).join(' / ') || 'unknown';
    m.append(metaItem(null, who, 'meta-who', 'meta-model'));
    if (info.deployment || info.tier) {
      const dep = [info.deployment, info.tier && info.tier !== info.deployment ? info.tier : null]
        .filter(Boolean).join(' · ');
      m.append(metaItem('via', dep, null, 'meta-deployment'));
    }
    if (info.route_reason) m.append(metaItem('why', info.route_reason, null, 'meta-reason'));
    const cacheLabel = cache === 'hit' ? 'cache hit' : cache === 'miss' ? 'cache miss'
      : cache === 'bypass' ? 'cache bypass' : 'cache ?';
    m.append(metaItem(null, cacheLabel, 'badge badge-cache-' + cache, 'meta-cache'));
    m.append(metaItem('latency', fmtMs(info.latency_ms), null, 'meta-latency'));
    m.append(metaItem('TTFT', info.ttft_ms === null || info.ttft_ms === undefined ? '–' : fmtMs(info.ttft_ms),
      null, 'meta-ttft'));
    if (info.usage) {
      const u = info.usage;
      const tok = fmtInt(u.prompt_tokens) + ' → ' + fmtInt(u.completion_tokens) +
        (info.usage_estimated ? ' (est.)' : '');
      m.append(metaItem('tokens', tok, null, 'meta-tokens'));
    } else {
      m.append(metaItem('tokens', '–', null, 'meta-tokens'));
    }
    m.append(metaItem('cost', fmtUsd(info.cost_usd), null, 'meta-cost'));
    const saved = num(info.saved_usd);
    const savedText = saved === null ? '–'
      : fmtUsd(saved) + (saved > 0 && info.saved_by ? ' by ' + info.saved_by : '');
    m.append(metaItem('saved', savedText, saved > 0 ? 'meta-saved' : null, 'meta-saved'));
    if (info.stopped) m.append(metaItem(null, 'stopped', 'badge badge-stopped', 'meta-stopped'));
    if (info.request_id) m.title = 'request ' + info.request_id;
    scrollToBottom(false);
  }

  // Gateway-reported values win; client-side measurements fill the gaps.
  function withFallbacks(info, client) {
    const out = Object.assign({}, info);
    for (const [k, v] of Object.entries(client)) {
      if (out[k] === undefined || out[k] === null) out[k] = v;
    }
    return out;
  }

  function headerInfo(res) {
    const h = (name) => res.headers.get(name);
    const info = {
      request_id: h('x-request-id'),
      provider: h('x-optiroute-provider'),
      model: h('x-optiroute-model'),
      deployment: h('x-optiroute-deployment'),
      tier: h('x-optiroute-tier'),
      route_reason: h('x-optiroute-route-reason'),
      cache: h('x-optiroute-cache'),
    };
    const cost = num(h('x-optiroute-cost-usd'));
    const saved = num(h('x-optiroute-saved-usd'));
    const latency = num(h('x-optiroute-latency-ms'));
    if (cost !== null) info.cost_usd = cost;
    if (saved !== null) info.saved_usd = saved;
    if (latency !== null) info.latency_ms = latency;
    for (const k of Object.keys(info)) if (info[k] === null) delete info[k];
    return info;
  }

  async function readError(res) {
    let message = 'HTTP ' + res.status + (res.statusText ? ' ' + res.statusText : '');
    try {
      const text = await res.text();
      try {
        const body = JSON.parse(text);
        if (body && body.error && body.error.message) message = String(body.error.message);
        else if (text) message = text.slice(0, 500);
      } catch {
        if (text) message = text.slice(0, 500);
      }
    } catch { /* keep the status line */ }
    return message;
  }

  function setBusy(busy) {
    // Keep keyboard focus on a visible control when Send and Stop swap places.
    const moveFocus = document.activeElement === (busy ? ui.send : ui.stop);
    ui.send.hidden = busy;
    ui.stop.hidden = !busy;
    ui.send.disabled = busy;
    ui.model.disabled = busy;
    document.body.classList.toggle('is-busy', busy);
    if (moveFocus) (busy ? ui.stop : ui.prompt).focus({ preventScroll: true });
  }

  async function send(text) {
    if (current) return;
    const prompt = text.trim();
    if (!prompt) return;
    addUserMessage(prompt);
    history.push({ role: 'user', content: prompt });
    const msg = addAssistantMessage();
    const controller = new AbortController();
    current = { controller, msg };
    setBusy(true);

    const model = ui.model.value || 'auto';
    const started = performance.now();
    let firstToken = null;
    let info = { model };
    let usage = null;

    try {
      const res = await fetch('/v1/chat/completions', {
        method: 'POST',
        headers: withAuth({ 'content-type': 'application/json', accept: 'text/event-stream' }),
        body: JSON.stringify({
          model,
          messages: history.slice(),
          stream: true,
          stream_options: { include_usage: true },
        }),
        signal: controller.signal,
      });
      info = Object.assign(info, headerInfo(res));
      if (!res.ok) {
        msg.body.replaceChildren();
        showError(msg, await readError(res), 'HTTP ' + res.status);
        history.pop();
        if (res.status === 401 && ui.apiKey) ui.apiKey.focus();
        return;
      }
      msg.wrap.dataset.state = 'streaming';
      const type = res.headers.get('content-type') || '';
      if (!type.includes('text/event-stream') || !res.body) {
        // A gateway may answer a stream request with plain JSON; render it anyway.
        const body = await res.json();
        const choice = body.choices && body.choices[0];
        msg.text = (choice && choice.message && choice.message.content) || '';
        usage = body.usage || null;
        if (body.optiroute) Object.assign(info, body.optiroute);
      } else {
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        const parser = createSseParser();
        let streamError = null;
        const handle = (data) => {
          if (data === '[DONE]') return;
          let chunk;
          try { chunk = JSON.parse(data); } catch { return; }
          if (chunk.error) {
            streamError = (chunk.error && chunk.error.message) || 'stream error';
            return;
          }
          if (chunk.optiroute) Object.assign(info, chunk.optiroute);
          if (chunk.usage) usage = chunk.usage;
          const choices = Array.isArray(chunk.choices) ? chunk.choices : [];
          for (const c of choices) {
            const piece = c && c.delta && typeof c.delta.content === 'string' ? c.delta.content : '';
            if (piece) {
              if (firstToken === null) firstToken = performance.now() - started;
              msg.text += piece;
              scheduleRender(msg);
            }
          }
        };
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          for (const data of parser.feed(value)) handle(data);
          if (streamError) break;
        }
        for (const data of parser.end()) handle(data);
        if (streamError) {
          reader.cancel().catch(() => {});
          msg.wrap.dataset.state = 'error';
          renderBody(msg);
          showError(msg, streamError, 'during stream');
          history.pop();
          return;
        }
      }
      msg.wrap.dataset.state = 'done';
      renderBody(msg);
      history.push({ role: 'assistant', content: msg.text });
      const total = performance.now() - started;
      renderMeta(msg, withFallbacks(info, { latency_ms: total, ttft_ms: firstToken, usage }));
    } catch (err) {
      if (controller.signal.aborted) {
        msg.wrap.dataset.state = 'stopped';
        renderBody(msg);
        if (!msg.text) msg.body.replaceChildren(el('span', 'muted', 'Stopped before the first token.'));
        if (msg.text) history.push({ role: 'assistant', content: msg.text });
        else history.pop();
        renderMeta(msg, withFallbacks(info, {
          latency_ms: performance.now() - started, ttft_ms: firstToken, usage, stopped: true,
        }));
      } else {
        const hadText = msg.wrap.dataset.state !== 'waiting';
        msg.wrap.dataset.state = 'error';
        if (hadText) renderBody(msg); else msg.body.replaceChildren();
        showError(msg, (err && err.message) || 'network error', 'request failed');
        history.pop();
      }
    } finally {
      msg.wrap.removeAttribute('aria-busy');
      current = null;
      setBusy(false);
      pollStatsSoon();
    }
  }

  function stop() {
    if (current) current.controller.abort();
  }

  function newChat() {
    stop();
    history.length = 0;
    for (const node of [...ui.messages.children]) if (node !== ui.empty) node.remove();
    ui.empty.hidden = false;
    ui.prompt.focus();
  }

  function autosize() {
    const p = ui.prompt;
    p.style.height = 'auto';
    p.style.height = Math.min(p.scrollHeight, 220) + 'px';
  }

  // ---------------------------------------------------------------- models

  async function loadModels() {
    try {
      const res = await fetch('/v1/models', { headers: withAuth({ accept: 'application/json' }) });
      if (!res.ok) return;
      const body = await res.json();
      const ids = (Array.isArray(body.data) ? body.data : [])
        .map((m) => m && m.id)
        .filter((id) => typeof id === 'string' && id);
      const unique = [...new Set(ids)];
      const ordered = ['auto', ...unique.filter((id) => id !== 'auto')];
      const previous = ui.model.value;
      ui.model.replaceChildren(...ordered.map((id) => {
        const o = el('option', null, id);
        o.value = id;
        return o;
      }));
      ui.model.value = ordered.includes(previous) ? previous : 'auto';
      ui.model.dataset.loaded = 'true';
    } catch { /* keep 'auto' */ }
  }

  // ----------------------------------------------------------------- stats

  let statsTimer = null;
  let statsInFlight = false;
  let statsAgain = false; // a poll was asked for (e.g. the key changed) while one was in flight
  let lastStats = null;

  function setStat(id, text, value) {
    const node = $(id);
    if (!node) return;
    if (node.textContent !== text) {
      node.textContent = text;
      node.classList.remove('flash');
      void node.offsetWidth; // restart the highlight animation
      node.classList.add('flash');
    }
    if (value !== undefined && value !== null) node.dataset.value = String(value);
  }

  function renderStats(s) {
    const lat = s.latency_ms || {};
    const cache = s.cache || {};
    const saved = s.saved_usd || {};
    setStat('stat-rps', fmtRate(s.requests_per_s), num(s.requests_per_s));
    const any = (num(s.requests) || 0) > 0;
    setStat('stat-p95', any ? fmtMs(lat.p95) : '–', num(lat.p95));
    setStat('stat-p99', any ? fmtMs(lat.p99) : '–', num(lat.p99));
    setStat('stat-hit-rate', fmtPct(cache.hit_rate), num(cache.hit_rate));
    setStat('stat-requests', fmtInt(s.requests), num(s.requests));
    setStat('stat-cost', fmtUsd(s.cost_usd), num(s.cost_usd));
    setStat('stat-errors', fmtInt(s.errors), num(s.errors));
    setStat('stat-saved-cache', fmtUsd(saved.cache), num(saved.cache));
    setStat('stat-saved-routing', fmtUsd(saved.routing), num(saved.routing));
    const total = num(saved.total) !== null ? num(saved.total)
      : (num(saved.cache) || 0) + (num(saved.routing) || 0);
    setStat('stat-saved-total', fmtUsd(total), total);
    $('stat-hit-rate').title = fmtInt(cache.hits) + ' hits, ' + fmtInt(cache.misses) + ' misses' +
      (cache.backend ? ' (' + cache.backend + ' cache)' : '');

    const tiers = s.tiers || {};
    const local = num(tiers.local) || 0;
    const cloud = num(tiers.cloud) || 0;
    const sum = local + cloud;
    $('split-local').style.width = sum ? (local / sum * 100) + '%' : '0%';
    $('split-cloud').style.width = sum ? (cloud / sum * 100) + '%' : '0%';
    $('split').classList.toggle('split-empty', sum === 0);
    $('split').setAttribute('aria-label', sum
      ? 'local ' + Math.round(local / sum * 100) + '%, cloud ' + Math.round(cloud / sum * 100) + '%'
      : 'No requests yet');
    setStat('split-local-n', fmtInt(local), local);
    setStat('split-cloud-n', fmtInt(cloud), cloud);

    renderDeployments(Array.isArray(s.deployments) ? s.deployments : []);
    lastStats = s;
    drawChart();
  }

  function renderDeployments(deps) {
    const rows = deps.map((d) => {
      const tr = el('tr');
      tr.dataset.testid = 'deployment-row';
      tr.dataset.name = String(d.name || '');
      const name = el('td', 'dep-name');
      name.append(el('span', null, d.name || '?'));
      const sub = [d.tier, d.model].filter(Boolean).join(' · ');
      if (sub) name.append(el('small', null, sub));
      name.title = [d.name, d.tier, d.provider, d.model].filter(Boolean).join(' · ');
      const breaker = String(d.breaker || 'unknown');
      const state = el('td');
      const badge = el('span', 'breaker breaker-' + breaker.replace(/[^a-z_]/g, ''), breaker.replace('_', '-'));
      badge.dataset.testid = 'breaker';
      state.append(badge);
      const errors = num(d.errors) || 0;
      const inFlight = num(d.in_flight) || 0;
      const req = el('td', 'num', fmtInt(d.requests));
      if (inFlight) req.append(el('small', 'dep-live', inFlight + ' live'));
      if (errors) req.append(el('small', 'dep-err', errors + ' err'));
      tr.append(name, req, el('td', 'num', fmtUsd(d.cost_usd)), state);
      return tr;
    });
    if (!rows.length) {
      const tr = el('tr');
      const td = el('td', 'muted', 'No deployments reported');
      td.colSpan = 4;
      tr.append(td);
      rows.push(tr);
    }
    $('deps-body').replaceChildren(...rows);
  }

  function cssVar(name, fallback) {
    const v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return v || fallback;
  }

  function drawChart() {
    const canvas = ui.chart;
    const rect = canvas.getBoundingClientRect();
    if (!rect.width || !rect.height) return;
    const dpr = window.devicePixelRatio || 1;
    const w = Math.round(rect.width * dpr);
    const h = Math.round(rect.height * dpr);
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
    const ctx = canvas.getContext('2d');
    if (!ctx) return;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const W = rect.width;
    const H = rect.height;
    ctx.clearRect(0, 0, W, H);

    const pts = (lastStats && Array.isArray(lastStats.history) ? lastStats.history : [])
      .map((p) => ({ t: num(p.t), r: num(p.requests) || 0, c: num(p.cost_usd) || 0 }))
      .filter((p) => p.t !== null)
      .sort((a, b) => a.t - b.t);
    const right = Math.max(Date.now() / 1000, pts.length ? pts[pts.length - 1].t + 5 : 0);
    const active = pts.filter((p) => p.r > 0 || p.c > 0);
    const span = active.length ? right - active[0].t : 0;
    const windowS = CHART_WINDOWS_S.find((w) => w >= span) || CHART_WINDOWS_S[CHART_WINDOWS_S.length - 1];
    const left = right - windowS;
    const minutes = windowS / 60;
    const title = 'Last ' + minutes + ' minutes';
    if (ui.chartTitle.textContent !== title) ui.chartTitle.textContent = title;
    const pad = { l: 4, r: 4, t: 8, b: 16 };
    const iw = W - pad.l - pad.r;
    const ih = H - pad.t - pad.b;
    const x = (t) => pad.l + ((t - left) / windowS) * iw;

    // Grid and time labels.
    ctx.strokeStyle = cssVar('--grid', '#252b36');
    ctx.lineWidth = 1;
    ctx.fillStyle = cssVar('--muted', '#8590a2');
    ctx.font = '10px system-ui, sans-serif';
    ctx.textBaseline = 'alphabetic';
    const step = minutes <= 2 ? 0.5 : minutes <= 5 ? 1 : 2;
    for (let m = 0; m <= minutes + 1e-9; m += step) {
      const gx = Math.round(x(right - m * 60)) + 0.5;
      ctx.beginPath(); ctx.moveTo(gx, pad.t); ctx.lineTo(gx, pad.t + ih); ctx.stroke();
      const label = m === 0 ? 'now' : m < 1 ? '-' + Math.round(m * 60) + 's' : '-' + m + 'm';
      ctx.textAlign = m === 0 ? 'right' : m >= minutes ? 'left' : 'center';
      ctx.fillText(label, gx, H - 3);
    }
    ctx.beginPath(); ctx.moveTo(pad.l, pad.t + ih + 0.5); ctx.lineTo(pad.l + iw, pad.t + ih + 0.5); ctx.stroke();

    const visible = pts.filter((p) => p.t >= left - 5);
    if (!visible.length) {
      ctx.textAlign = 'center';
      ctx.fillText('no traffic yet', W / 2, pad.t + ih / 2);
      return;
    }
    const maxR = Math.max(1, ...visible.map((p) => p.r));
    const maxC = Math.max(...visible.map((p) => p.c));
    const bw = Math.max(2, (5 / windowS) * iw - 1);
    ctx.fillStyle = cssVar('--accent', '#4f8cff');
    for (const p of visible) {
      const bh = (p.r / maxR) * ih;
      ctx.fillRect(Math.max(pad.l, x(p.t)), pad.t + ih - bh, bw, bh);
    }
    if (maxC > 0) {
      ctx.strokeStyle = cssVar('--warm', '#f5b84b');
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      visible.forEach((p, i) => {
        const px = Math.max(pad.l, x(p.t)) + bw / 2;
        const py = pad.t + ih - (p.c / maxC) * ih;
        if (i === 0) ctx.moveTo(px, py); else ctx.lineTo(px, py);
      });
      ctx.stroke();
      ctx.fillStyle = ctx.strokeStyle;
      for (const p of visible) {
        if (p.c <= 0) continue;
        ctx.beginPath();
        ctx.arc(Math.max(pad.l, x(p.t)) + bw / 2, pad.t + ih - (p.c / maxC) * ih, 2.2, 0, Math.PI * 2);
        ctx.fill();
      }
    }
    ctx.fillStyle = cssVar('--muted', '#8590a2');
    ctx.textAlign = 'left';
    ctx.fillText('max ' + maxR + ' req' + (maxC > 0 ? ' · ' + fmtUsd(maxC) : ''), pad.l + 2, pad.t + 9);
  }

  // kind: ok | warn | bad (a class on the dot and a data-state for tests). The text is only rewritten
  // when it changes, so screen readers do not re-announce the same status on every poll.
  function setStatus(kind, text, detail) {
    ui.status.className = 'status status-' + kind;
    ui.status.dataset.state = kind;
    if (ui.status.textContent !== text) ui.status.textContent = text;
    if (detail) ui.status.title = detail;
    else ui.status.removeAttribute('title');
  }

  // The gateway answers 401/403 on /api/stats when `[auth] protect_metrics` is on: it is up, the
  // stats just need the master key. Polling goes on, so the panel turns live once a key with access
  // is entered (the key field also polls at once).
  function setStatsDenied(res, reason) {
    let text;
    if (res.status === 403) text = 'stats need the master key';
    else if (apiKey()) text = 'stats: key not accepted';
    else text = 'stats need an API key';
    setStatus('warn', text, reason || ('HTTP ' + res.status));
  }

  async function pollStats() {
    if (statsInFlight) { statsAgain = true; return; }
    statsInFlight = true;
    statsAgain = false;
    clearTimeout(statsTimer);
    const key = apiKey();
    try {
      const res = await fetch('/api/stats', { headers: withAuth({ accept: 'application/json' }), cache: 'no-store' });
      if (key !== apiKey()) { statsAgain = true; return; } // the key changed meanwhile: ask again
      if (res.status === 401 || res.status === 403) {
        let reason = '';
        try { reason = String((await res.json())?.error?.message || ''); } catch { /* not JSON */ }
        if (key !== apiKey()) { statsAgain = true; return; }
        setStatsDenied(res, reason);
        return;
      }
      if (!res.ok) throw new Error('HTTP ' + res.status);
      const s = await res.json();
      renderStats(s);
      const up = num(s.uptime_s);
      setStatus('ok', up === null ? 'live' : 'live · up ' + fmtUptime(up));
      ui.status.dataset.updated = String(Date.now());
    } catch (err) {
      // Network failure, 5xx or a body that is not stats.
      setStatus('bad', 'offline');
    } finally {
      statsInFlight = false;
      clearTimeout(statsTimer);
      const wait = statsAgain ? 0 : (document.hidden ? STATS_INTERVAL_MS * 5 : STATS_INTERVAL_MS);
      statsTimer = setTimeout(pollStats, wait);
    }
  }

  function pollStatsSoon() {
    clearTimeout(statsTimer);
    statsTimer = setTimeout(pollStats, 150);
  }

  function fmtUptime(s) {
    if (s < 60) return Math.floor(s) + 's';
    if (s < 3600) return Math.floor(s / 60) + 'm';
    if (s < 86400) return Math.floor(s / 3600) + 'h ' + Math.floor((s % 3600) / 60) + 'm';
    return Math.floor(s / 86400) + 'd ' + Math.floor((s % 86400) / 3600) + 'h';
  }

  // ------------------------------------------------------------------ wiring

  function init() {
    ui.messages = $('messages');
    ui.empty = $('empty-state');
    ui.form = $('composer');
    ui.prompt = $('prompt');
    ui.send = $('send');
    ui.stop = $('stop');
    ui.model = $('model');
    ui.chart = $('chart');
    ui.status = $('stats-status');
    ui.chartTitle = $('chart-title');

    ui.form.addEventListener('submit', (e) => {
      e.preventDefault();
      const text = ui.prompt.value;
      if (!text.trim() || current) return;
      ui.prompt.value = '';
      autosize();
      send(text);
    });
    ui.prompt.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
        e.preventDefault();
        if (typeof ui.form.requestSubmit === 'function') ui.form.requestSubmit();
        else ui.form.dispatchEvent(new Event('submit', { cancelable: true }));
      }
    });
    ui.prompt.addEventListener('input', autosize);
    document.addEventListener('keydown', (e) => {
      if (e.key === 'Escape' && current) { e.preventDefault(); stop(); }
    });
    ui.stop.addEventListener('click', stop);
    $('new-chat').addEventListener('click', newChat);
    ui.apiKey = $('api-key');
    ui.apiKey.value = apiKey();
    ui.apiKey.addEventListener('change', () => {
      const key = ui.apiKey.value.trim();
      keyInMemory = key;
      try {
        if (key) sessionStorage.setItem(KEY_STORAGE, key);
        else sessionStorage.removeItem(KEY_STORAGE);
      } catch { /* storage off: the key lasts until the page reloads */ }
      if (!key) ui.apiKey.value = '';
      loadModels();
      pollStatsSoon();
    });
    for (const chip of document.querySelectorAll('.chip[data-prompt]')) {
      chip.addEventListener('click', () => {
        ui.prompt.value = chip.dataset.prompt || '';
        autosize();
        ui.prompt.focus();
      });
    }
    ui.messages.addEventListener('click', (e) => {
      const btn = e.target instanceof Element ? e.target.closest('.copy-btn') : null;
      if (!btn) return;
      const code = btn.closest('.codeblock')?.querySelector('code');
      if (!code || !navigator.clipboard) return;
      navigator.clipboard.writeText(code.textContent || '').then(() => {
        btn.textContent = 'Copied';
        setTimeout(() => { btn.textContent = 'Copy'; }, 1200);
      }, () => { btn.textContent = 'Copy failed'; });
    });
    window.addEventListener('resize', () => drawChart());
    document.addEventListener('visibilitychange', () => { if (!document.hidden) pollStatsSoon(); });

    loadModels();
    pollStats();
    drawChart();
    ui.prompt.focus({ preventScroll: true });
  }

  // Small, read-only hook for tests (renderer and SSE parser are pure functions).
  window.OptiRouteUI = Object.freeze({ renderMarkdown, escapeHtml, createSseParser });

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
