// mxguard web mail: plain JavaScript over the JSON API (/api/, doc/web.md).
// Message text is only ever put in the page with textContent; an HTML part
// is shown in a sandboxed iframe (no scripts) from /api/message.html.
"use strict";
(function () {
  let search = "", csrf = "", junk = "Junk", folder = "INBOX", page = 0, total = 0, current = null, folders = [];
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

  function showLogin() { $("app").hidden = true; $("login").hidden = false; }
  function showApp(user) { $("login").hidden = true; $("app").hidden = false; $("whoami").textContent = user; loadFolders(); }

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

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", async (ev) => {
      ev.preventDefault(); $("login-error").textContent = "";
      try {
        const j = await api("/api/login", { user: $("user").value, password: $("password").value });
        csrf = j.csrf; $("password").value = ""; showApp(j.user);
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
    api("/api/session").then((j) => { csrf = j.csrf; showApp(j.user); }).catch(() => showLogin());
  });
})();
