// firstcome's operator dashboard (GET /admin): the campaign list, a
// campaign's live counts, pause/resume/close/restock, recent actions, the
// grants as CSV. Calls only the admin API on the same origin with the token
// typed in (sessionStorage, this tab only; a Bearer header, never a URL).
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const KEY = "firstcome.admin";
  let token = sessionStorage.getItem(KEY);
  let selected = null, last = null, lastMetrics = null, timer = null;

  const api = async (method, path, body) => {
    const r = await fetch(path, {
      method,
      headers: { Authorization: `Bearer ${token}`, "X-Firstcome-Actor": "dashboard",
        ...(body ? { "Content-Type": "application/json" } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    if (r.status === 401) { logout(); throw new Error("the token was refused"); }
    const v = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(v.detail || v.code || `HTTP ${r.status}`);
    return v;
  };
  const showError = (e) => { $("error").textContent = e ? String(e.message || e) : ""; $("error").hidden = !e; };
  const cell = (text) => { const td = document.createElement("td"); td.textContent = text; return td; };

  function logout() {
    sessionStorage.removeItem(KEY);
    token = null;
    clearInterval(timer);
    $("app").hidden = true;
    $("login").hidden = false;
  }

  async function list() {
    const v = await api("GET", "/v1/campaigns?limit=100");
    const tb = $("campaigns").tBodies[0];
    tb.replaceChildren(...v.campaigns.map((c) => {
      const tr = document.createElement("tr");
      tr.dataset.id = c.id;
      tr.tabIndex = 0;
      tr.setAttribute("aria-selected", String(c.id === selected));
      const closed = c.closes_at && new Date(c.closes_at) <= new Date();
      tr.append(cell(c.id), cell(c.name), cell(c.mode),
        cell(closed ? "closed" : c.paused ? "paused" : c.published ? "live" : "unpublished"));
      const pick = () => select(c.id);
      tr.addEventListener("click", pick);
      tr.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); pick(); } });
      return tr;
    }));
  }

  async function select(id) {
    selected = id;
    last = null;
    lastMetrics = null;
    for (const tr of $("campaigns").tBodies[0].rows) tr.setAttribute("aria-selected", String(Number(tr.dataset.id) === id));
    $("detail").hidden = false;
    await refresh();
  }

  // The counts read fresh (the admin bypasses the public cache); grants/s
  // from the change since the last read.
  async function refresh() {
    if (selected == null) return;
    const c = await api("GET", `/v1/campaigns/${selected}`);
    const now = Date.now();
    $("detail-h").textContent = `${c.name} (#${c.id}, ${c.mode})`;
    const closed = c.closes_at && new Date(c.closes_at) <= new Date();
    $("detail-state").textContent = closed ? "closed" : c.paused ? "paused" : "live";
    $("detail").dataset.paused = String(c.paused);
    const tb = $("pools").tBodies[0];
    tb.replaceChildren(...c.pools.map((p) => {
      const tr = document.createElement("tr");
      const prev = last && last.pools.find((q) => q.name === p.name);
      const rate = prev ? ((p.granted - prev.granted) * 1000) / (now - last.at) : 0;
      tr.append(cell(p.name), cell(p.stock), cell(p.granted), cell(p.remaining), cell(rate.toFixed(1)));
      const td = document.createElement("td");
      const input = document.createElement("input");
      input.type = "number"; input.min = "1"; input.value = p.stock;
      input.setAttribute("aria-label", `new stock of ${p.name}`);
      const b = document.createElement("button");
      b.type = "button"; b.textContent = "Set";
      b.addEventListener("click", () => act(() => api("PATCH", `/v1/campaigns/${selected}`,
        { pools: [{ name: p.name, stock: Number(input.value) }] })));
      td.append(input, " ", b);
      tr.append(td);
      return tr;
    }));
    last = { at: now, pools: c.pools };
    const live = [["queued", c.queued]];
    try {
      const m = await (await fetch("/metrics")).text();
      const g = (name) => {
        const re = new RegExp(`^${name}\\{campaign="${selected}"\\} (\\S+)$`, "m");
        const x = m.match(re);
        return x ? Number(x[1]) : null;
      };
      if (c.mode === "redis-queue") {
        const len = g("firstcome_queue_length"), wait = g("firstcome_queue_oldest_wait_seconds");
        if (len != null) live.push(["queue length", len], ["oldest wait (s)", wait.toFixed(1)]);
      }
      // This process' counters (a metric per campaign would cost every
      // claim a registry lookup): claims/s by outcome in the campaign's
      // mode, and the mean flush (redis-lua) or claim-to-durable
      // (redis-queue) lag, over the last refresh.
      const sums = {};
      for (const line of m.split("\n")) {
        let x = line.match(/^firstcome_claims_total\{(.*)\} (\S+)$/);
        if (x && x[1].includes(`mode="${c.mode}"`)) {
          const o = (x[1].match(/outcome="([^"]+)"/) || [])[1];
          sums[`claims ${o}`] = Number(x[2]);
        }
        x = line.match(/^firstcome_(flush_lag|queue_to_durable)_seconds_(sum|count) (\S+)$/);
        if (x) sums[`${x[1]} ${x[2]}`] = Number(x[3]);
      }
      if (lastMetrics) {
        const dt = (now - lastMetrics.at) / 1000;
        for (const [k, v] of Object.entries(sums)) {
          if (k.startsWith("claims ")) live.push([`${k}/s (mode ${c.mode})`, ((v - (lastMetrics.v[k] || 0)) / dt).toFixed(1)]);
        }
        const lag = (name) => {
          const n = (sums[`${name} count`] || 0) - (lastMetrics.v[`${name} count`] || 0);
          const t = (sums[`${name} sum`] || 0) - (lastMetrics.v[`${name} sum`] || 0);
          return n > 0 ? `${((1000 * t) / n).toFixed(1)} ms` : "-";
        };
        if (c.mode === "redis-lua") live.push(["flush lag (mean)", lag("flush_lag")]);
        if (c.mode === "redis-queue") live.push(["claim to durable (mean)", lag("queue_to_durable")]);
      }
      lastMetrics = { at: now, v: sums };
    } catch (_) { /* /metrics on its own listener (--ops-addr): not shown here */ }
    $("live").replaceChildren(...live.flatMap(([k, v]) => {
      const dt = document.createElement("dt"); dt.textContent = k;
      const dd = document.createElement("dd"); dd.textContent = v;
      return [dt, dd];
    }));
    const a = await api("GET", `/v1/campaigns/${selected}/actions?limit=10`);
    $("actions").replaceChildren(...a.actions.map((x) => {
      const li = document.createElement("li");
      li.textContent = `${new Date(x.at).toLocaleString()} · ${x.actor} · ${x.action} ${x.after ? JSON.stringify(x.after) : ""}`;
      return li;
    }));
  }

  async function act(f) {
    showError(null);
    try { await f(); await refresh(); await list(); } catch (e) { showError(e); }
  }

  async function exportCsv() {
    const rows = [["user_id", "pool", "slot", "code", "seq"]];
    let after = null;
    do {
      const q = after ? `?limit=10000&after=${encodeURIComponent(after)}` : "?limit=10000";
      const v = await api("GET", `/v1/campaigns/${selected}/grants${q}`);
      for (const g of v.grants) rows.push([g.user_id, g.pool, g.slot, g.code, g.seq]);
      after = v.next;
    } while (after);
    const esc = (x) => { const s = String(x ?? ""); return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s; };
    const blob = new Blob([rows.map((r) => r.map(esc).join(",")).join("\n") + "\n"], { type: "text/csv" });
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = `campaign-${selected}-grants.csv`;
    a.click();
    URL.revokeObjectURL(a.href);
  }

  $("pause").addEventListener("click", () => act(() => api("POST", `/v1/campaigns/${selected}/pause`)));
  $("resume").addEventListener("click", () => act(() => api("POST", `/v1/campaigns/${selected}/resume`)));
  $("close").addEventListener("click", () => {
    if (!confirm("Close this campaign in 5 seconds? Claims after that are refused.")) return;
    act(() => api("PATCH", `/v1/campaigns/${selected}`, { closes_at: new Date(Date.now() + 5000).toISOString() }));
  });
  $("export").addEventListener("click", () => act(exportCsv));
  $("logout").addEventListener("click", logout);
  $("login").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    token = $("token").value.trim();
    $("token").value = "";
    await start();
  });

  async function start() {
    try {
      await list();
      sessionStorage.setItem(KEY, token);
      $("login").hidden = true;
      $("app").hidden = false;
      clearInterval(timer);
      timer = setInterval(() => refresh().catch(showError), 2000);
    } catch (e) {
      logout();
      showError(e);
    }
  }
  if (token) start(); else $("login").hidden = false;
})();
