// firstcome's public campaign page (GET /c/{id}): live stock, the opening
// countdown, a claim, then the user's live status. Talks only to the public
// API on the same origin; decides nothing.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const cfg = JSON.parse($("fc-config").textContent);
  const S = JSON.parse($("fc-strings").textContent);
  const lang = document.documentElement.lang;
  const fmt = (s, v) => s.replace(/\{(\w+)\}/g, (_, k) => (k in v ? v[k] : ""));
  const base = `/v1/campaigns/${cfg.id}`;
  // The host page passes, in the fragment (never sent to a server): the
  // user's token (with a JWT key) and where a held grant is paid for (a
  // hold is confirmed by the payment service, never by the user).
  const frag = new URLSearchParams(location.hash.slice(1));
  const token = frag.get("token");
  const payUrl = ((u) => (u && /^https?:\/\//i.test(u) ? u : null))(frag.get("confirm"));
  const auth = () => (token ? { Authorization: `Bearer ${token}` } : {});
  const userKey = `firstcome.user.${cfg.id}`;
  let campaign = null, etag = null, pollDelay = 2000, stream = null;

  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = S[el.dataset.i18n];
  if (cfg.auth === "jwt") $("user-field").hidden = true;

  const duration = (secs) => {
    secs = Math.max(0, Math.round(secs));
    const h = Math.floor(secs / 3600), m = Math.floor((secs % 3600) / 60), s = secs % 60;
    const pad = (n) => String(n).padStart(2, "0");
    return h > 0 ? `${h}:${pad(m)}:${pad(s)}` : `${m}:${pad(s)}`;
  };
  const when = (iso) => new Date(iso).toLocaleString(lang);
  const showError = (text) => { $("error").textContent = text; $("error").hidden = !text; };

  // ---- the campaign, polled with its ETag (304 costs nothing), slower on errors
  async function poll() {
    try {
      const r = await fetch(base, { headers: etag ? { "If-None-Match": etag } : {} });
      if (r.status === 200) {
        etag = r.headers.get("ETag");
        campaign = await r.json();
        render();
        pollDelay = 2000;
      } else if (r.status !== 304) {
        pollDelay = Math.min(pollDelay * 2, 30000);
      }
    } catch (_) {
      pollDelay = Math.min(pollDelay * 2, 30000);
    }
    const closed = campaign && campaign.closes_at && new Date(campaign.closes_at) <= new Date();
    if (!closed) setTimeout(poll, pollDelay);
  }

  function render() {
    const c = campaign;
    document.title = c.name;
    $("name").textContent = c.name;
    const parts = [];
    if (c.opens_at) parts.push(fmt(S.window_from, { from: when(c.opens_at) }));
    if (c.closes_at) parts.push(fmt(S.window_until, { until: when(c.closes_at) }));
    $("window").textContent = parts.join(" ");
    const ul = $("pools");
    ul.replaceChildren(...c.pools.map((p) => {
      const li = document.createElement("li");
      const label = document.createElement("div");
      label.className = "label";
      const name = document.createElement("span");
      name.textContent = p.name;
      const left = document.createElement("span");
      left.className = "left";
      left.dataset.pool = p.name;
      left.textContent = p.remaining > 0 ? fmt(S.left_of, { left: p.remaining, stock: p.stock }) : S.sold_out_pool;
      label.append(name, left);
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.setAttribute("role", "progressbar");
      bar.setAttribute("aria-label", p.name);
      bar.setAttribute("aria-valuemin", "0");
      bar.setAttribute("aria-valuemax", String(p.stock));
      bar.setAttribute("aria-valuenow", String(p.remaining));
      const fill = document.createElement("span");
      fill.style.width = `${p.stock > 0 ? (100 * p.remaining) / p.stock : 0}%`;
      bar.append(fill);
      li.append(label, bar);
      return li;
    }));
    const sel = $("pool");
    if (c.pools.length > 1 && sel.options.length === 0) {
      for (const p of c.pools) sel.append(new Option(p.name, p.name));
      $("pool-field").hidden = false;
    }
    tick();
  }

  // ---- countdown to the opening (local clock; the server decides)
  function tick() {
    const c = campaign;
    const el = $("countdown");
    if (!c) return;
    const now = Date.now();
    if (c.closes_at && new Date(c.closes_at) <= now) {
      el.textContent = S.closed; el.hidden = false;
    } else if (c.opens_at && new Date(c.opens_at) > now) {
      el.textContent = fmt(S.opens_in, { t: duration((new Date(c.opens_at) - now) / 1000) });
      el.hidden = false;
    } else {
      el.textContent = S.open_now; el.hidden = false;
    }
  }
  setInterval(tick, 1000);

  // ---- the claim
  $("claim-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    showError("");
    const user = $("user").value.trim();
    if (cfg.auth === "user_id" && !user) { showError(S.need_user); $("user").focus(); return; }
    if (cfg.auth === "jwt" && !token) { showError(S.need_token); return; }
    const body = {};
    if (cfg.auth === "user_id") body.user_id = user;
    if (campaign && campaign.pools.length > 1) body.pool = $("pool").value;
    $("claim").disabled = true;
    try {
      const r = await fetch(`${base}/claims`, {
        method: "POST",
        headers: { "Content-Type": "application/json", ...auth() },
        body: JSON.stringify(body),
      });
      const a = await r.json().catch(() => ({}));
      if (r.status === 200 || r.status === 202 || (r.status === 409 && a.status)) {
        if (cfg.auth === "user_id") sessionStorage.setItem(userKey, user);
        show(a);
        if (a.status === "queued") follow(a.user_id);
        // A claim's answer does not carry the hold: its status does.
        if (a.status === "granted" && campaign && campaign.confirm_within_secs) {
          const st = await fetch(`${base}/claims/${encodeURIComponent(a.user_id)}`, { headers: auth() });
          if (st.ok) show(await st.json());
        }
      } else if (r.status === 409 && a.code === "paused") {
        showError(S.paused);
      } else if (r.status === 429 || r.status === 503) {
        const s = Number(r.headers.get("Retry-After") || 1);
        showError(fmt(S.retry, { s }));
        setTimeout(() => $("claim-form").requestSubmit(), s * 1000);
        return;
      } else {
        showError(fmt(S.error, { code: a.code || r.status }));
      }
    } catch (_) {
      showError(fmt(S.error, { code: "network" }));
    } finally {
      $("claim").disabled = false;
    }
  });

  // ---- the user's status
  function show(a) {
    const el = $("status");
    el.className = `status ${a.status}`;
    const big = document.createElement("p");
    big.className = "big";
    const rest = [];
    if (a.status === "granted") {
      big.textContent = fmt(S.granted, { pool: a.pool, slot: a.slot });
      if (a.code) {
        const p = document.createElement("p");
        const code = document.createElement("code");
        code.textContent = a.code;
        p.append(`${S.code}: `, code);
        rest.push(p);
      }
      if (a.hold === "held") {
        const p = document.createElement("p");
        p.className = "held";
        p.textContent = fmt(S.held, { t: when(a.confirm_by) });
        rest.push(p);
        if (payUrl) {
          const link = document.createElement("a");
          link.className = "button";
          link.id = "confirm";
          link.href = payUrl;
          link.textContent = S.confirm;
          rest.push(link);
        }
      } else if (a.hold === "confirmed") {
        const p = document.createElement("p");
        p.textContent = S.confirmed;
        rest.push(p);
      }
    } else if (a.status === "queued") {
      big.textContent = S.queued;
      const p = document.createElement("p");
      p.className = "position";
      p.textContent = a.position ? fmt(S.position, { n: a.position }) : S.position_unknown;
      if (a.position && a.eta_secs != null) p.textContent += ` · ${fmt(S.eta, { t: duration(a.eta_secs) })}`;
      rest.push(p);
    } else if (a.status === "rejected") {
      big.textContent = S[`rejected_${a.reason}`] || S.rejected_sold_out;
    } else if (a.status === "cancelled") {
      big.textContent = a.hold === "expired" ? S.expired : S.cancelled;
    }
    el.replaceChildren(big, ...rest);
    el.hidden = false;
    el.dataset.status = a.status;
  }

  // ---- live status: the claim's event stream (server-sent events read
  // through fetch, so a JWT can ride in the Authorization header); on a
  // broken stream, one status read, then the stream again after a pause.
  async function follow(user) {
    if (stream) stream.abort();
    const ctl = new AbortController();
    stream = ctl;
    const path = `${base}/claims/${encodeURIComponent(user)}`;
    let delay = 1000;
    while (!ctl.signal.aborted) {
      try {
        const r = await fetch(`${path}/events`, { headers: { Accept: "text/event-stream", ...auth() }, signal: ctl.signal });
        if (!r.ok || !r.body) throw new Error(String(r.status));
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value;
          let i;
          while ((i = buf.indexOf("\n\n")) >= 0) {
            const chunk = buf.slice(0, i);
            buf = buf.slice(i + 2);
            const data = chunk.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
            if (!data) continue;
            const a = JSON.parse(data);
            show(a);
            if (a.status !== "queued") { ctl.abort(); return; }
          }
        }
        delay = 1000;
      } catch (_) {
        if (ctl.signal.aborted) return;
        delay = Math.min(delay * 2, 15000);
      }
      try {
        const r = await fetch(path, { headers: auth() });
        if (r.ok) { const a = await r.json(); show(a); if (a.status !== "queued") return; }
      } catch (_) { /* the stream is tried again */ }
      await new Promise((res) => setTimeout(res, delay));
    }
  }

  // ---- back on the page: the remembered user's status
  const known = cfg.auth === "user_id" ? sessionStorage.getItem(userKey) : null;
  if (known) {
    $("user").value = known;
    fetch(`${base}/claims/${encodeURIComponent(known)}`).then(async (r) => {
      if (r.ok) { const a = await r.json(); show(a); if (a.status === "queued") follow(known); }
    }).catch(() => {});
  }
  poll();
})();
