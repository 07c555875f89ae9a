// headwater UI: a little vanilla JavaScript over the JSON API. No framework, no CDN.
"use strict";
(function () {
  const csrf = (document.querySelector('meta[name="hw-csrf"]') || {}).content || "";

  async function api(method, url, body, headers) {
    const init = {method, headers: Object.assign({"X-Headwater-CSRF": csrf}, headers || {}),
                  credentials: "same-origin"};
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(url, init);
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    return {ok: response.ok, status: response.status, data, headers: response.headers};
  }

  function detail(result) {
    const d = result.data && result.data.detail;
    if (typeof d === "string") return d;
    if (Array.isArray(d)) return d.map((e) => (e.loc || []).join(".") + ": " + e.msg).join("; ");
    return "the server answered " + result.status;
  }

  function flash(message, kind) {
    const box = document.getElementById("flash");
    if (!box) return;
    box.textContent = message;
    box.className = "callout " + (kind || "err");
    box.hidden = false;
  }

  // ---------------------------------------------------------------- buttons that POST
  document.addEventListener("click", async (event) => {
    const button = event.target.closest("[data-post]");
    if (!button) return;
    event.preventDefault();
    button.disabled = true;
    const result = await api("POST", button.dataset.post);
    if (!result.ok) {
      button.disabled = false;
      flash(detail(result));
      return;
    }
    if (button.hasAttribute("data-follow") && result.data && result.data.run_id) {
      window.location.href = "/runs/" + encodeURIComponent(result.data.run_id);
    } else {
      window.location.reload();
    }
  });

  // ---------------------------------------------------------------- run now
  const runNow = document.getElementById("run-now");
  if (runNow) {
    runNow.addEventListener("submit", async (event) => {
      event.preventDefault();
      const params = {};
      runNow.querySelectorAll("[data-param]").forEach((input) => { params[input.name] = input.value; });
      const error = runNow.querySelector("[data-error]");
      const result = await api("POST", "/api/pipelines/" + encodeURIComponent(runNow.dataset.pipeline) + "/runs", {params});
      if (!result.ok) {
        error.textContent = detail(result);
        error.hidden = false;
        return;
      }
      window.location.href = "/runs/" + encodeURIComponent(result.data.run_id);
    });
  }

  // ---------------------------------------------------------------- a run, live
  const run = document.getElementById("run");
  if (run && run.dataset.finished === "false" && window.EventSource) {
    const log = document.getElementById("log");
    const url = "/api/runs/" + encodeURIComponent(run.dataset.run) + "/events?after=" + run.dataset.lastLog;
    const source = new EventSource(url);
    let shown = run.dataset.state;
    let steps = null;
    source.addEventListener("log", (event) => {
      const line = JSON.parse(event.data);
      const span = document.createElement("span");
      span.className = "lv-" + line.level;
      span.textContent = line.ts.replace("T", " ").slice(0, 19) + " " + line.level.toUpperCase() +
        " [" + (line.step_id || "-") + "] " + line.message + "\n";
      log.appendChild(span);
      log.scrollTop = log.scrollHeight;
    });
    source.addEventListener("run", (event) => {
      const doc = JSON.parse(event.data);
      const now = JSON.stringify(doc.steps.map((s) => [s.id, s.status]));
      if (steps === null) { steps = now; }
      if (doc.status !== shown || now !== steps) {
        source.close();
        window.location.reload();  // the page shows the new state (steps, bars, rows)
      }
    });
    source.addEventListener("end", () => { source.close(); window.location.reload(); });
    source.onerror = () => {
      const live = document.getElementById("live");
      if (live) live.textContent = "Live updates stopped; reload the page.";
    };
  }

  // ---------------------------------------------------------------- graphs: pan and zoom
  document.querySelectorAll("[data-graph] svg").forEach((svg) => {
    const box = svg.viewBox.baseVal;
    const full = {x: box.x, y: box.y, w: box.width, h: box.height};
    let drag = null;
    svg.addEventListener("wheel", (event) => {
      event.preventDefault();
      const k = event.deltaY > 0 ? 1.15 : 1 / 1.15;
      const r = svg.getBoundingClientRect();
      const px = box.x + (event.clientX - r.left) / r.width * box.width;
      const py = box.y + (event.clientY - r.top) / r.height * box.height;
      box.width = Math.min(Math.max(box.width * k, 50), full.w * 4);
      box.height = box.width * full.h / full.w;
      box.x = px - (event.clientX - r.left) / r.width * box.width;
      box.y = py - (event.clientY - r.top) / r.height * box.height;
    }, {passive: false});
    svg.addEventListener("pointerdown", (event) => {
      if (event.target.closest("a")) return;
      drag = {x: event.clientX, y: event.clientY, bx: box.x, by: box.y};
    });
    window.addEventListener("pointerup", () => { drag = null; });
    svg.addEventListener("pointermove", (event) => {
      if (!drag) return;
      const r = svg.getBoundingClientRect();
      box.x = drag.bx - (event.clientX - drag.x) / r.width * box.width;
      box.y = drag.by - (event.clientY - drag.y) / r.height * box.height;
    });
  });

  // ---------------------------------------------------------------- the builder
  const form = document.getElementById("builder");
  if (form) builder(form);

  function builder(form) {
    const name = form.getAttribute("data-name");  // not form.dataset: an input is named "dataset"
    const field = (n) => form.elements[n];
    let doc = null;
    let version = null;
    let checked = false;

    if (name) {
      api("GET", "/api/pipelines/" + encodeURIComponent(name) + "/definition").then((result) => {
        if (!result.ok) { flash(detail(result)); return; }
        doc = result.data;
        version = (result.headers.get("ETag") || "").replace(/"/g, "");
        fill(doc);
      });
    }
    form.addEventListener("input", () => { checked = false; document.getElementById("save").disabled = true; });

    const find = (steps, test) => steps.find(test) || null;
    const list = (text) => text.split(",").map((s) => s.trim()).filter(Boolean);

    function fill(d) {
      const steps = d.steps || [];
      const src = find(steps, (s) => s.source && s.source.type === "files");
      const sql = find(steps, (s) => typeof s.sql === "string");
      const val = find(steps, (s) => s.validate);
      const pub = find(steps, (s) => s.publish);
      field("description").value = d.description || "";
      if (src) {
        field("path").value = src.source.path || "";
        field("format").value = src.source.format || "";
        field("bad_rows").value = src.source.bad_rows || "fail";
        field("incremental").checked = !!src.source.incremental;
        field("connection").value = src.source.connection || "";
      }
      if (sql) field("sql").value = sql.sql;
      if (val) {
        const cols = val.validate.columns || {};
        field("not_null").value = Object.keys(cols).filter((c) => cols[c] && cols[c].nullable === false).join(", ");
      }
      if (pub) {
        field("dataset").value = pub.publish.dataset || "";
        field("mode").value = pub.publish.mode || "append";
        const key = pub.publish.key;
        field("key").value = Array.isArray(key) ? key.join(", ") : (key || "");
        field("split_by").value = (pub.publish.split && pub.publish.split.by) || "";
      }
      for (const t of d.triggers || []) {
        if (t.schedule) field("cron").value = t.schedule.cron || "";
        if (t.interval !== undefined) field("interval").value = t.interval;
        if (t.files) { field("watch").value = t.files.path || ""; field("pattern").value = t.files.pattern || ""; }
        if (t.code_change) field("code_change").checked = true;
      }
    }

    function setOrDrop(obj, key, value, fallback) {
      // empty: the key goes; a default the file does not state is not written
      if (value === "" || value === null || value === undefined || value === false) { delete obj[key]; return; }
      if (value === fallback && obj[key] === undefined) return;
      obj[key] = value;
    }

    function build() {
      const d = doc ? JSON.parse(JSON.stringify(doc)) : {name: "", steps: []};
      d.name = field("name").value.trim();
      setOrDrop(d, "description", field("description").value.trim());
      const steps = d.steps || (d.steps = []);
      // source
      let src = find(steps, (s) => s.source && s.source.type === "files");
      if (!src) { src = {id: "raw", source: {type: "files", path: ""}}; steps.unshift(src); }
      const s = src.source;
      s.path = field("path").value.trim();
      setOrDrop(s, "format", field("format").value);
      setOrDrop(s, "bad_rows", field("bad_rows").value, "fail");
      setOrDrop(s, "incremental", field("incremental").checked, false);
      setOrDrop(s, "connection", field("connection").value);
      let last = src.id;
      // sql
      let sql = find(steps, (x) => typeof x.sql === "string");
      const sqlText = field("sql").value.trim();
      if (sqlText) {
        if (!sql) {
          sql = {id: "clean", sql: ""};
          steps.splice(steps.indexOf(src) + 1, 0, sql);
          repoint(steps, src.id, sql.id, sql);
        }
        sql.sql = sqlText;
        last = sql.id;
      } else if (sql) {
        steps.splice(steps.indexOf(sql), 1);
        repoint(steps, sql.id, src.id, null);
      }
      // validate
      const notNull = list(field("not_null").value);
      let val = find(steps, (x) => x.validate);
      if (notNull.length) {
        if (!val) {
          val = {id: "checked", validate: {input: last, columns: {}, on_error: "quarantine"}};
          const pubAt = steps.findIndex((x) => x.publish);
          steps.splice(pubAt < 0 ? steps.length : pubAt, 0, val);
          repoint(steps, last, val.id, val);
        }
        const cols = val.validate.columns || (val.validate.columns = {});
        for (const c of notNull) cols[c] = Object.assign({}, cols[c] || {}, {nullable: false});
        last = val.id;
      } else if (val) {
        last = val.id;
      }
      // publish
      let pub = find(steps, (x) => x.publish);
      if (!pub) { pub = {id: "publish", publish: {input: last, dataset: ""}}; steps.push(pub); }
      pub.publish.dataset = field("dataset").value.trim();
      setOrDrop(pub.publish, "mode", field("mode").value, "append");
      const key = list(field("key").value);
      if (key.length) pub.publish.key = key.length === 1 && typeof pub.publish.key === "string" ? key[0] : key;
      else delete pub.publish.key;
      const by = field("split_by").value.trim();
      if (by) pub.publish.split = Object.assign({}, pub.publish.split || {}, {by});
      else delete pub.publish.split;
      d.triggers = triggers(d.triggers || []);
      if (!d.triggers.length) delete d.triggers;
      return d;
    }

    function repoint(steps, from, to, skip) {
      // the steps that read `from` read `to` instead (a step was added or removed between)
      for (const x of steps) {
        if (x === skip) continue;
        for (const k of Object.keys(x)) {
          if (x[k] && typeof x[k] === "object" && x[k].input === from) x[k].input = to;
        }
      }
    }

    function triggers(old) {
      const out = [];
      const cron = field("cron").value.trim();
      const every = field("interval").value.trim();
      const watch = field("watch").value.trim();
      const pattern = field("pattern").value.trim();
      const code = field("code_change").checked;
      const done = {};
      for (const t of old) {
        if (t.schedule) { if (cron) { t.schedule.cron = cron; out.push(t); } done.schedule = true; }
        else if (t.interval !== undefined) { if (every) { t.interval = every; out.push(t); } done.interval = true; }
        else if (t.files) { if (watch) { t.files.path = watch; setOrDrop(t.files, "pattern", pattern); out.push(t); } done.files = true; }
        else if (t.code_change !== undefined) { if (code) out.push(t); done.code = true; }
        else out.push(t);
      }
      if (cron && !done.schedule) out.push({schedule: {cron}});
      if (every && !done.interval) out.push({interval: every});
      if (watch && !done.files) out.push({files: pattern ? {path: watch, pattern} : {path: watch}});
      if (code && !done.code) out.push({code_change: true});
      return out;
    }

    function clearErrors() {
      form.querySelectorAll(".field-error").forEach((e) => { e.hidden = true; e.textContent = ""; });
      form.querySelectorAll("[aria-invalid]").forEach((e) => e.removeAttribute("aria-invalid"));
      const box = document.getElementById("builder-errors");
      box.hidden = true;
      box.textContent = "";
    }

    function showProblems(result) {
      clearErrors();
      const box = document.getElementById("builder-errors");
      const problems = (result.data && result.data.problems) || [];
      const lines = [];
      for (const p of problems) {
        const where = (p.file ? p.file + (p.line ? ":" + p.line : "") + ": " : "") + (p.key ? p.key + ": " : "");
        lines.push(where + p.message);
        const key = (p.key || "").replace(/^(steps|triggers)\[\d+\]\./, "");
        let target = null;
        form.querySelectorAll("[data-for]").forEach((e) => {
          if (key === e.dataset.for || key.startsWith(e.dataset.for + ".")) {
            if (!target || e.dataset.for.length > target.dataset.for.length) target = e;
          }
        });
        if (target) {
          target.textContent = (target.textContent ? target.textContent + " " : "") + p.message;
          target.hidden = false;
          const input = form.querySelector('[data-key^="' + target.dataset.for + '"]');
          if (input) input.setAttribute("aria-invalid", "true");
        }
      }
      if (!lines.length) lines.push(detail(result));
      const ul = document.createElement("ul");
      for (const line of lines) { const li = document.createElement("li"); li.textContent = line; ul.appendChild(li); }
      box.appendChild(ul);
      box.hidden = false;
    }

    async function send(dryRun) {
      const d = build();
      const url = (name ? "/api/pipelines/" + encodeURIComponent(name) + "/definition" : "/api/pipelines") +
        (dryRun ? "?dry_run=true" : "");
      const headers = version ? {"If-Match": '"' + version + '"'} : {};
      return api(name ? "PUT" : "POST", url, d, headers);
    }

    document.getElementById("show-yaml").addEventListener("click", async () => {
      const result = await send(true);
      if (!result.ok) { showProblems(result); document.getElementById("yaml-out").hidden = true; return; }
      clearErrors();
      document.getElementById("yaml-out").hidden = false;
      document.getElementById("yaml-file").textContent = result.data.file;
      document.getElementById("yaml-text").textContent = result.data.yaml;
      const diff = document.getElementById("yaml-diff");
      diff.textContent = result.data.diff;
      document.getElementById("diff-wrap").hidden = !name || !result.data.diff;
      checked = true;
      document.getElementById("save").disabled = false;
    });

    document.getElementById("save").addEventListener("click", async () => {
      if (!checked) return;
      const result = await send(false);
      if (!result.ok) { showProblems(result); return; }
      window.location.href = "/pipelines/" + encodeURIComponent(result.data.name);
    });

    document.getElementById("preview-source").addEventListener("click", async () => {
      const out = document.getElementById("source-preview");
      out.textContent = "Reading…";
      const spec = {path: field("path").value.trim()};
      if (field("format").value) spec.format = field("format").value;
      if (field("connection").value) spec.connection = field("connection").value;
      const result = await api("POST", "/api/sources/preview", spec);
      out.textContent = "";
      if (!result.ok) {
        const p = document.createElement("p");
        p.className = "field-error";
        p.textContent = detail(result);
        out.appendChild(p);
        return;
      }
      const note = document.createElement("p");
      note.className = "sub";
      note.textContent = result.data.files.length + " file(s): " + result.data.files.slice(0, 5).join(", ");
      out.appendChild(note);
      out.appendChild(table(result.data.columns, result.data.rows));
    });

    function table(columns, rows) {
      const wrap = document.createElement("div");
      wrap.className = "scroll";
      const t = document.createElement("table");
      t.className = "data";
      const head = t.createTHead().insertRow();
      for (const c of columns) { const th = document.createElement("th"); th.textContent = c; head.appendChild(th); }
      const body = t.createTBody();
      for (const row of rows) {
        const tr = body.insertRow();
        for (const v of row) tr.insertCell().textContent = v === null ? "" : String(v);
      }
      wrap.appendChild(t);
      return wrap;
    }
  }
})();
