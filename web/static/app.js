// mxguard web mail: plain JavaScript over the JSON API (/api/, doc/web.md).
// Message text is only ever put in the page with textContent; an HTML part
// is shown in a sandboxed iframe (no scripts) from /api/message.html.
// Three views: Mail (folders), Held for you (/api/held) and, for admins,
// Admin (/api/admin/...: overview, an SVG chart drawn here, transactions,
// the quarantine). Nothing is fetched from anywhere but this server.
"use strict";
(function () {
  let search = "", csrf = "", junk = "Junk", folder = "INBOX", page = 0, total = 0, current = null, folders = [];
  let session = { user: "", admin: false, user_release: false }, qcur = null;
  const perPage = 50;
  const $ = (id) => document.getElementById(id);

  async function api(path, body) {
    const opt = { credentials: "same-origin", headers: {} };
    if (body !== undefined) {
      opt.method = "POST";
      opt.headers["Content-Type"] = "application/json";
      opt.headers["X-CSRF-Token"] = csrf;
      opt.body = JSON.stringify(body);
    }
    const r = await fetch(path, opt);
    let j = {};
    try { j = await r.json(); } catch (e) { j = {}; }
    if (r.status === 401 && path !== "/api/login") { showLogin(); throw new Error("not logged in"); }
    if (!r.ok) throw new Error(j.error || ("HTTP " + r.status));
    return j;
  }
  const q = (o) => Object.keys(o).map((k) => encodeURIComponent(k) + "=" + encodeURIComponent(o[k])).join("&");

  // back to the login form: nothing of the last user's views stays in the page
  function showLogin() {
    $("app").hidden = true; $("login").hidden = false;
    session = { user: "", admin: false, user_release: false };
    for (const t of ["messages", "held", "adm-verdicts", "adm-counters", "adm-health", "adm-rules", "tx", "q"]) $(t).tBodies[0].textContent = "";
    for (const id of ["folders", "act-move-to", "pageinfo", "adm-chart", "held-count", "held-result", "q-result", "adm-error"]) $(id).textContent = "";
    for (const id of ["search", "tx-q", "q-sender", "q-rcpt", "q-reason", "q-since", "q-to"]) $(id).value = "";
    for (const id of ["reader", "q-detail", "q-confirm", "held-confirm", "tab-admin"]) $(id).hidden = true;
    for (const id of ["r-from", "r-to", "r-subject", "r-date", "r-text", "r-attachments"]) $(id).textContent = "";
    $("r-html").removeAttribute("src");
    folder = "INBOX"; page = 0; search = ""; current = null; qcur = null;
    for (const k of Object.keys(seq)) seq[k]++;  // answers still on their way are dropped
  }
  function showApp(j) {
    session = { user: j.user, admin: j.admin === true, user_release: j.user_release === true };
    $("login").hidden = true; $("app").hidden = false; $("whoami").textContent = j.user;
    $("tab-admin").hidden = !session.admin;
    show("mail");
    loadHeld().catch(() => {});
  }

  async function loadFolders() {
    const j = await api("/api/folders");
    folders = j.folders; junk = j.junk;
    const ul = $("folders"); ul.textContent = "";
    const sel = $("act-move-to"); sel.textContent = "";
    for (const f of folders) {
      const li = document.createElement("li");
      li.textContent = f.name + (f.unread ? " (" + f.unread + ")" : "") + " / " + f.total;
      li.dataset.folder = f.name;
      if (f.name === folder) li.className = "current";
      li.addEventListener("click", () => { folder = f.name; page = 0; search = ""; $("search").value = ""; loadFolders(); });
      ul.appendChild(li);
      const o = document.createElement("option"); o.value = f.name; o.textContent = f.name; sel.appendChild(o);
    }
    loadList();
  }

  async function loadList() {
    const args = { folder: folder, page: page, per_page: perPage };
    if (search) args.q = search;
    const j = await api("/api/messages?" + q(args));
    total = j.total;
    const tb = $("messages").tBodies[0]; tb.textContent = "";
    for (const m of j.messages) {
      const tr = document.createElement("tr");
      if (!m.seen) tr.className = "unread";
      tr.dataset.uid = m.uid;
      for (const v of [(m.flagged ? "\u2691" : "") + (m.attachment ? "\u{1F4CE}" : ""), m.from, m.subject || "(no subject)",
                       new Date(m.date * 1000).toLocaleString(), Math.ceil(m.size / 1024) + " KB"]) {
        const td = document.createElement("td"); td.textContent = v; tr.appendChild(td);
      }
      tr.addEventListener("click", () => openMessage(m.uid));
      tb.appendChild(tr);
    }
    $("pageinfo").textContent = total ? (page * perPage + 1) + "\u2013" + Math.min(total, (page + 1) * perPage) + " of " + total : "empty";
    $("prev").disabled = page === 0;
    $("next").disabled = (page + 1) * perPage >= total;
  }

  async function openMessage(uid) {
    const m = await api("/api/message?" + q({ folder: folder, uid: uid }));
    current = m;
    $("reader").hidden = false;
    $("r-from").textContent = m.from; $("r-to").textContent = m.to || "";
    $("r-subject").textContent = m.subject; $("r-date").textContent = new Date(m.date * 1000).toLocaleString();
    $("r-text").textContent = m.text;
    const ul = $("r-attachments"); ul.textContent = "";
    for (const a of m.attachments || []) {
      const li = document.createElement("li"), link = document.createElement("a");
      link.href = "/api/attachment?" + q({ folder: folder, uid: uid, part: a.part });
      link.textContent = (a.name || "attachment") + " (" + a.type + ")";
      link.setAttribute("download", "");
      li.appendChild(link); ul.appendChild(li);
    }
    const f = $("r-html");
    if (m.has_html) { f.src = "/api/message.html?" + q({ folder: folder, uid: uid }); f.hidden = false; }
    else { f.removeAttribute("src"); f.hidden = true; }
    // remote images stay off (the frame's CSP) until the user asks, per message
    $("r-remote").hidden = !(m.has_html && m.remote_images);
    if (!m.seen) { await api("/api/flags", { folder: folder, uid: uid, seen: true }); m.seen = true; }
    $("act-seen").textContent = "Mark unread";
    $("act-flag").textContent = m.flagged ? "Unflag" : "Flag";
    $("act-spam").hidden = folder === junk; $("act-notspam").hidden = folder !== junk;
  }

  async function act(path, extra) {
    if (!current) return;
    await api(path, Object.assign({ folder: folder, uid: current.uid }, extra || {}));
    $("reader").hidden = true; current = null; loadFolders();
  }

  // ---- shared helpers of the held and admin views ----
  const VERDICTS = ["accept", "junk", "quarantine", "reject", "tempfail", "discard"];
  const SVGNS = "http://www.w3.org/2000/svg";
  const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "");
  const list = (a) => (Array.isArray(a) ? a.join(", ") : (a || ""));
  const score = (v) => (typeof v === "number" ? v.toFixed(1) : "");

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVGNS, tag);
    for (const k of Object.keys(attrs || {})) e.setAttribute(k, String(attrs[k]));
    if (text !== undefined) e.textContent = String(text);
    return e;
  }
  function row(tb, cells, data) {
    const tr = document.createElement("tr");
    for (const k of Object.keys(data || {})) tr.dataset[k] = data[k];
    for (const c of cells) {
      const td = document.createElement("td");
      if (c instanceof Node) td.appendChild(c); else td.textContent = c === undefined || c === null ? "" : String(c);
      tr.appendChild(td);
    }
    tb.appendChild(tr);
    return tr;
  }
  // answers can come back out of order (a search typed while a release
  // reloads the list): only the newest request of each kind is shown
  const seq = {};
  function latest(kind) { const n = (seq[kind] || 0) + 1; seq[kind] = n; return () => seq[kind] === n; }
  function say(id, text, bad) { const p = $(id); p.textContent = text; p.className = bad ? "result error" : "result ok"; }

  // an in-page confirmation (no window.confirm): box shows text, Confirm runs fn
  const pending = {};
  function confirmIn(box, text, fn) {
    const b = $(box);
    $(box + "-text").textContent = text;
    b.hidden = false;
    pending[box] = fn;
    $(box + "-yes").focus();
  }
  function wireConfirm(box) {
    $(box + "-yes").addEventListener("click", () => { const fn = pending[box]; $(box).hidden = true; pending[box] = null; if (fn) fn(); });
    $(box + "-no").addEventListener("click", () => { $(box).hidden = true; pending[box] = null; });
  }

  function show(v) {
    if (v === "admin" && !session.admin) v = "mail";

    $("mail-view").hidden = v !== "mail";
    $("held-view").hidden = v !== "held";
    $("admin-view").hidden = v !== "admin";
    for (const t of ["mail", "held", "admin"]) $("tab-" + t).classList.toggle("current", t === v);
    if (v === "mail") loadFolders();
    else if (v === "held") loadHeld().catch((e) => say("held-result", e.message, true));
    else loadAdmin();
  }

  // ---- Held for you ----
  async function loadHeld() {
    const mine = latest("held");
    const j = await api("/api/held");
    if (!mine()) return;
    const msgs = j.messages || [];
    $("held-count").textContent = msgs.length ? "(" + msgs.length + ")" : "";
    $("held-policy").textContent = j.can_release ? "You can release a message to your inbox or delete it."
      : "Ask your postmaster to release a message you want.";
    const tb = $("held").tBodies[0]; tb.textContent = "";
    for (const m of msgs) {
      const acts = el("span", "row-actions");
      if (j.can_release) {
        const rel = el("button", "held-release", "Release"), del = el("button", "held-delete", "Delete");
        rel.addEventListener("click", () => confirmIn("held-confirm", "Release \u201c" + (m.subject || m.id) + "\u201d to your inbox?", async () => {
          try {
            const r = await api("/api/held/release", { id: m.id });
            say("held-result", "Released " + r.id + " to your inbox as " + r.released_as + "." + (r.warning ? " Warning: " + r.warning : ""), !!r.warning);
          }
          catch (e) { say("held-result", "Release failed: " + e.message, true); }
          loadHeld().catch(() => {});
        }));
        del.addEventListener("click", () => confirmIn("held-confirm", "Delete \u201c" + (m.subject || m.id) + "\u201d? It cannot be released afterwards.", async () => {
          try { const r = await api("/api/held/delete", { id: m.id }); say("held-result", "Deleted " + r.id + "."); }
          catch (e) { say("held-result", "Delete failed: " + e.message, true); }
          loadHeld().catch(() => {});
        }));
        acts.appendChild(rel); acts.appendChild(document.createTextNode(" ")); acts.appendChild(del);
      }
      row(tb, [when(m.time), m.from, m.subject || "(no subject)", m.reason, score(m.score), acts], { id: m.id });
    }
    $("held-empty").hidden = msgs.length !== 0;
  }
  function wireHeld() { wireConfirm("held-confirm"); }

  // ---- Admin ----
  function loadAdmin() {
    $("adm-error").textContent = "";
    const fail = (e) => { $("adm-error").textContent = e.message; };
    loadOverview().catch(fail);
    loadTx().catch(fail);
    loadQuarantine().catch(fail);
  }

  function fmtUptime(s) {
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    return (d ? d + "d " : "") + (d || h ? h + "h " : "") + m + "m";
  }

  async function loadOverview() {
    const mine = latest("overview");
    const j = await api("/api/admin/overview");
    if (!mine()) return;
    $("adm-uptime").textContent = "up " + fmtUptime(j.uptime || 0);
    const hv = (j.hour && j.hour.verdicts) || {}, dv = (j.day && j.day.verdicts) || {};
    let tb = $("adm-verdicts").tBodies[0]; tb.textContent = "";
    for (const v of VERDICTS) row(tb, [v, hv[v] || 0, dv[v] || 0], { verdict: v }).classList.add("v-row-" + v);
    row(tb, ["total", (j.hour && j.hour.total) || 0, (j.day && j.day.total) || 0], { verdict: "total" }).classList.add("total");
    tb = $("adm-counters").tBodies[0]; tb.textContent = "";
    for (const k of Object.keys(j.counters || {})) row(tb, [k, j.counters[k]], { counter: k });
    tb = $("adm-health").tBodies[0]; tb.textContent = "";
    for (const h of j.health || []) {
      const tr = row(tb, [h.name, h.up ? "up" : "DOWN"], { stage: h.name });
      tr.classList.add(h.up ? "up" : "down");
    }
    if (!(j.health || []).length) row(tb, ["(none known)", ""]);
    tb = $("adm-rules").tBodies[0]; tb.textContent = "";
    for (const r of j.top_rules || []) row(tb, [r.rule, r.hits], { rule: r.rule });
    if (!(j.top_rules || []).length) row(tb, ["(no hits yet)", ""]);
    drawChart($("adm-chart"), j.series || {});
  }

  // a round number >= v: 1, 2, 5 times a power of ten
  function niceCeil(v) {
    if (v <= 1) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  // Stacked bars, one column per bucket of the series, one rect per verdict
  // with mail in it (data-time: the bucket's epoch, data-verdict, data-count).
  function drawChart(box, series) {
    const W = 900, H = 280, L = 48, R = 12, T = 12, B = 64;
    const step = series.step || 300, start = series.start || 0, sv = series.verdicts || {};
    let n = 0;
    for (const v of VERDICTS) n = Math.max(n, (sv[v] || []).length);
    const totals = new Array(n).fill(0), sums = {};
    for (const v of VERDICTS) { sums[v] = 0; (sv[v] || []).forEach((c, i) => { totals[i] += c; sums[v] += c; }); }
    const top = niceCeil(Math.max(1, ...totals));
    const pw = W - L - R, ph = H - T - B, bw = n ? pw / n : pw;
    const ys = (c) => (c / top) * ph;
    const s = svg("svg", { id: "chart", viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "verdicts over the last 24 hours", "data-buckets": n, "data-step": step, "data-top": top });
    s.appendChild(svg("title", {}, "Verdicts per " + Math.round(step / 60) + " minutes, last 24 hours"));
    // y axis: grid lines and labels
    const yt = top <= 5 ? top : 5;
    for (let k = 0; k <= yt; k++) {
      const val = (top / yt) * k, y = T + ph - ys(val);
      s.appendChild(svg("line", { class: "grid", x1: L, x2: W - R, y1: y, y2: y }));
      s.appendChild(svg("text", { class: "axis ylabel", x: L - 6, y: y + 4, "text-anchor": "end" }, Number.isInteger(val) ? val : val.toFixed(1)));
    }
    s.appendChild(svg("text", { class: "axis title", x: 12, y: T + ph / 2, "text-anchor": "middle", transform: "rotate(-90 12 " + (T + ph / 2) + ")" },
      "messages / " + Math.round(step / 60) + " min"));
    // bars
    const bars = svg("g", { class: "bars" });
    for (let i = 0; i < n; i++) {
      let y = T + ph;
      const t0 = start + i * step;
      for (const v of VERDICTS) {
        const c = (sv[v] || [])[i] || 0;
        if (!c) continue;
        const h = ys(c);
        y -= h;
        const r = svg("rect", { class: "bar v-" + v, x: (L + i * bw).toFixed(2), y: y.toFixed(2), width: Math.max(bw - 0.5, 1).toFixed(2), height: h.toFixed(2),
                                "data-verdict": v, "data-count": c, "data-time": t0 });
        r.appendChild(svg("title", {}, new Date(t0 * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) + " " + v + ": " + c));
        bars.appendChild(r);
      }
    }
    s.appendChild(bars);
    // x axis: a label on every third full hour (local time), else eight even ones
    s.appendChild(svg("line", { class: "axisline", x1: L, x2: W - R, y1: T + ph, y2: T + ph }));
    s.appendChild(svg("line", { class: "axisline", x1: L, x2: L, y1: T, y2: T + ph }));
    let ticks = [];
    for (let i = 0; i < n; i++) {
      const d = new Date((start + i * step) * 1000);
      if (d.getMinutes() === 0 && d.getSeconds() === 0 && d.getHours() % 3 === 0) ticks.push(i);
    }
    if (ticks.length < 2) { ticks = []; for (let i = 0; i < n; i += Math.max(1, Math.round(n / 8))) ticks.push(i); }
    for (const i of ticks) {
      const x = L + i * bw, d = new Date((start + i * step) * 1000);
      s.appendChild(svg("line", { class: "tick", x1: x, x2: x, y1: T + ph, y2: T + ph + 4 }));
      s.appendChild(svg("text", { class: "axis xlabel", x: x, y: T + ph + 16, "text-anchor": "middle" },
        d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })));
    }
    s.appendChild(svg("text", { class: "axis title", x: L + pw / 2, y: T + ph + 32, "text-anchor": "middle" }, "time (local)"));
    // legend: every verdict with its 24-hour sum
    const lg = svg("g", { class: "legend" });
    let x = L;
    for (const v of VERDICTS) {
      const g = svg("g", { class: "legend-item", "data-verdict": v, "data-sum": sums[v] });
      g.appendChild(svg("rect", { class: "v-" + v, x: x, y: H - 18, width: 12, height: 12 }));
      const label = v + " (" + sums[v] + ")";
      g.appendChild(svg("text", { class: "legend-text", x: x + 16, y: H - 8 }, label));
      lg.appendChild(g);
      x += 28 + label.length * 7;
    }
    s.appendChild(lg);
    if (!totals.some((c) => c > 0))
      s.appendChild(svg("text", { class: "axis empty", x: L + pw / 2, y: T + ph / 2, "text-anchor": "middle" }, "no mail in the last 24 hours"));
    box.textContent = "";
    box.appendChild(s);
  }

  async function loadTx() {
    const args = { limit: 100 };
    if ($("tx-q").value) args.q = $("tx-q").value;
    if ($("tx-verdict").value) args.verdict = $("tx-verdict").value;
    const mine = latest("tx");
    const j = await api("/api/admin/transactions?" + q(args));
    if (!mine()) return;
    const tb = $("tx").tBodies[0]; tb.textContent = "";
    for (const t of j.transactions || []) {
      // the class the overview counts it in: the action, deliver and tag as accept
      const cls = t.action === "deliver" || t.action === "tag" ? "accept" : t.action;
      // "to" holds the first 10 recipients; nrcpt says how many there were when more
      const to = list(t.to) + (t.nrcpt > (t.to || []).length ? " \u2026 (" + t.nrcpt + " in all)" : "");
      const tr = row(tb, [when(t.time), t.id, t.client, t.from, to, t.verdict, t.action, score(t.score), t.hits, t.result],
                     { id: t.id, verdict: t.verdict, class: cls });
      tr.classList.add("v-row-" + cls);
    }
    $("tx-count").textContent = (j.transactions || []).length + " shown";
  }

  async function loadQuarantine() {
    const args = {};
    if ($("q-sender").value.trim()) args.sender = $("q-sender").value.trim();
    if ($("q-rcpt").value.trim()) args.rcpt = $("q-rcpt").value.trim();
    if ($("q-reason").value) args.reason = $("q-reason").value;
    if ($("q-since").value) { const t = new Date($("q-since").value).getTime(); if (!isNaN(t)) args.since = Math.floor(t / 1000); }
    if ($("q-all").checked) args.all = 1;
    const mine = latest("q");
    const j = await api("/api/admin/quarantine?" + q(args));
    if (!mine()) return;
    const tb = $("q").tBodies[0]; tb.textContent = "";
    for (const m of j.messages || []) {
      const tr = row(tb, [when(m.time), m.from, list(m.rcpts), m.subject || "(no subject)", m.reason, score(m.score), m.status], { id: m.id, status: m.status });
      if (qcur && qcur.id === m.id) tr.classList.add("current");
      tr.addEventListener("click", () => openHeld(m.id).catch((e) => say("q-result", e.message, true)));
    }
    $("q-count").textContent = (j.messages || []).length + " found";
  }

  async function openHeld(id) {
    const mine = latest("qmsg");
    const m = await api("/api/admin/quarantine/message?" + q({ id: id }));
    if (!mine()) return;
    qcur = m;
    $("q-detail").hidden = false; $("q-confirm").hidden = true;
    $("qd-id").textContent = m.id; $("qd-from").textContent = m.from; $("qd-rcpts").textContent = list(m.rcpts);
    $("qd-subject").textContent = m.subject || ""; $("qd-reason").textContent = m.reason || "";
    $("qd-score").textContent = score(m.score); $("qd-hits").textContent = m.hits || "";
    $("qd-client").textContent = (m.client || "") + (m.helo ? " (HELO " + m.helo + ")" : "");
    $("qd-status").textContent = m.status; $("qd-headers").textContent = m.headers || "";
    const ul = $("qd-events"); ul.textContent = "";
    // an event starts with its epoch time: shown as a local date
    for (const ev of m.events || []) ul.appendChild(el("li", null, String(ev).replace(/^(\d{9,11}) /, (all, t) => when(Number(t)) + " ")));
    if (!(m.events || []).length) ul.appendChild(el("li", "hint", "none"));
    const gone = m.status === "deleted" || m.status === "missing";
    for (const b of ["q-release", "q-release-to", "q-delete"]) $(b).disabled = gone;
    for (const tr of $("q").tBodies[0].rows) tr.classList.toggle("current", tr.dataset.id === m.id);
  }

  async function release(to) {
    const m = qcur; if (!m) return;
    const body = { id: m.id };
    if (to) body.to = to;
    try {
      const r = await api("/api/admin/quarantine/release", body);
      // delivered, but the event could not be written: said, in red
      say("q-result", "Released " + r.id + " to " + list(r.to) + " as " + r.released_as + "." +
          (r.warning ? " Warning: " + r.warning : ""), !!r.warning);
    } catch (e) { say("q-result", "Release of " + m.id + " failed: " + e.message, true); }
    await openHeld(m.id).catch(() => {});
    loadQuarantine().catch(() => {}); loadTx().catch(() => {}); loadOverview().catch(() => {});
  }

  function wireAdmin() {
    for (const v of VERDICTS) { const o = el("option", null, v); o.value = v; $("tx-verdict").appendChild(o); }
    wireConfirm("q-confirm");
    $("adm-refresh").addEventListener("click", loadAdmin);
    $("tx-form").addEventListener("submit", (ev) => { ev.preventDefault(); loadTx().catch((e) => { $("adm-error").textContent = e.message; }); });
    $("q-form").addEventListener("submit", (ev) => { ev.preventDefault(); loadQuarantine().catch((e) => say("q-result", e.message, true)); });
    $("q-release").addEventListener("click", () => {
      if (qcur) confirmIn("q-confirm", "Release " + qcur.id + " to " + list(qcur.rcpts) + "?", () => release(null));
    });
    $("q-release-to").addEventListener("click", () => {
      if (!qcur) return;
      const to = $("q-to").value.split(/[\s,;]+/).filter((a) => a !== "");
      if (!to.length) { say("q-result", "Type the address(es) to release to.", true); return; }
      confirmIn("q-confirm", "Release " + qcur.id + " to " + to.join(", ") + " (not to its recipients)?", () => release(to));
    });
    $("q-delete").addEventListener("click", () => {
      if (!qcur) return;
      const m = qcur;
      confirmIn("q-confirm", "Delete " + m.id + " from the quarantine? It cannot be released afterwards.", async () => {
        try { const r = await api("/api/admin/quarantine/delete", { id: m.id }); say("q-result", "Deleted " + r.id + "."); }
        catch (e) { say("q-result", "Delete of " + m.id + " failed: " + e.message, true); }
        await openHeld(m.id).catch(() => { $("q-detail").hidden = true; qcur = null; });
        loadQuarantine().catch(() => {});
      });
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", async (ev) => {
      ev.preventDefault(); $("login-error").textContent = "";
      try {
        const j = await api("/api/login", { user: $("user").value, password: $("password").value });
        csrf = j.csrf; $("password").value = ""; showApp(j);
      } catch (e) { $("login-error").textContent = "Login failed: " + e.message; }
    });
    $("logout").addEventListener("click", async () => { try { await api("/api/logout", {}); } finally { csrf = ""; showLogin(); } });
    $("search-form").addEventListener("submit", (ev) => { ev.preventDefault(); search = $("search").value; page = 0; loadList(); });
    $("prev").addEventListener("click", () => { if (page > 0) { page--; loadList(); } });
    $("next").addEventListener("click", () => { page++; loadList(); });
    $("act-seen").addEventListener("click", async () => {
      if (!current) return;
      await api("/api/flags", { folder: folder, uid: current.uid, seen: false }); $("reader").hidden = true; current = null; loadFolders();
    });
    $("act-flag").addEventListener("click", async () => {
      if (!current) return;
      const j = await api("/api/flags", { folder: folder, uid: current.uid, flagged: !current.flagged });
      current.flagged = j.flagged; $("act-flag").textContent = j.flagged ? "Unflag" : "Flag"; loadList();
    });
    $("act-spam").addEventListener("click", () => act("/api/spam"));
    $("act-notspam").addEventListener("click", () => act("/api/notspam"));
    $("act-delete").addEventListener("click", () => act("/api/delete"));
    $("act-move").addEventListener("click", () => act("/api/move", { to: $("act-move-to").value }));
    $("r-remote").addEventListener("click", () => {
      if (!current) return;
      $("r-html").src = "/api/message.html?" + q({ folder: folder, uid: current.uid, remote: 1 });
      $("r-remote").hidden = true;
    });
    $("tab-mail").addEventListener("click", () => show("mail"));
    $("tab-held").addEventListener("click", () => show("held"));
    $("tab-admin").addEventListener("click", () => show("admin"));
    wireHeld();
    wireAdmin();
    api("/api/session").then((j) => { csrf = j.csrf; showApp(j); }).catch(() => showLogin());
  });
})();
