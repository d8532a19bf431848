"use strict";
// hybridllm dashboard: polls /dashboard/data once a second and draws on canvases (no library).
(function () {
  const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];
  const $ = (id) => document.getElementById(id);
  const keyInput = $("api-key");
  keyInput.value = sessionStorage.getItem("hybridllm-key") || "";
  keyInput.addEventListener("change", () => { sessionStorage.setItem("hybridllm-key", keyInput.value); poll(); });

  function headers() {
    const h = { "content-type": "application/json" };
    if (keyInput.value) h.authorization = "Bearer " + keyInput.value;
    return h;
  }

  function fmt(v, digits) { return v === null || v === undefined ? "n/a" : Number(v).toFixed(digits); }

  function frame(canvas) {
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.font = "11px system-ui, sans-serif";
    return { canvas, ctx, l: 44, r: canvas.width - 10, t: 10, b: canvas.height - 28 };
  }

  // counts: whole-number ticks (a step of at least 1, the top a multiple of it), not 0.3 of a request
  function countRange(ymax) {
    const step = Math.max(1, Math.ceil(ymax / 4));
    return step * 4;
  }

  function axes(f, xmin, xmax, ymin, ymax, xlabel, counts) {
    const { ctx, l, r, t, b } = f;
    ctx.strokeStyle = "#999"; ctx.fillStyle = "#555"; ctx.lineWidth = 1;
    ctx.beginPath(); ctx.moveTo(l, t); ctx.lineTo(l, b); ctx.lineTo(r, b); ctx.stroke();
    const ticks = [];
    for (let i = 0; i <= 4; i++) {
      const y = b - (b - t) * i / 4, v = ymin + (ymax - ymin) * i / 4;
      const label = counts || Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(1);
      ticks.push(label);
      ctx.fillText(label, 4, y + 4);
      ctx.strokeStyle = "#eee"; ctx.beginPath(); ctx.moveTo(l + 1, y); ctx.lineTo(r, y); ctx.stroke();
    }
    f.canvas.dataset.yTicks = ticks.join(",");  // what the y axis reads, for tests and the curious
    ctx.fillStyle = "#555";
    if (xlabel !== null) {
      ctx.fillText(String(xmin), l, b + 14);
      ctx.fillText(String(xmax), r - 20, b + 14);
    }
    if (xlabel) ctx.fillText(xlabel, (l + r) / 2 - ctx.measureText(xlabel).width / 2, b + 24);
    return {
      x: (v) => l + (r - l) * (v - xmin) / ((xmax - xmin) || 1),
      y: (v) => b - (b - t) * (v - ymin) / ((ymax - ymin) || 1),
    };
  }

  function legend(f, names) {
    let x = f.l + 8;
    names.forEach((n, i) => {
      f.ctx.fillStyle = COLORS[i % COLORS.length];
      f.ctx.fillRect(x, f.t + 2, 10, 10);
      f.ctx.fillStyle = "#333";
      f.ctx.fillText(n, x + 14, f.t + 11);
      x += f.ctx.measureText(n).width + 30;
    });
  }

  function drawRps(d) {
    const f = frame($("rps"));
    const series = d.rps.series, models = d.router.models, n = d.rps.window_s;
    let ymax = 1;
    models.forEach((m) => (series[m] || []).forEach((v) => { ymax = Math.max(ymax, v); }));
    const s = axes(f, -n, 0, 0, ymax * 1.1, "seconds ago");
    models.forEach((m, i) => {
      const pts = series[m] || [];
      f.ctx.strokeStyle = COLORS[i % COLORS.length]; f.ctx.lineWidth = 2; f.ctx.beginPath();
      pts.forEach((v, k) => { const x = s.x(k - n + 1), y = s.y(v); if (k) f.ctx.lineTo(x, y); else f.ctx.moveTo(x, y); });
      f.ctx.stroke();
    });
    legend(f, models);
  }

  function drawShare(d) {
    const f = frame($("share"));
    const models = d.router.models;
    const s = axes(f, 0, models.length, 0, 100, null);
    const w = (f.r - f.l) / models.length;
    models.forEach((m, i) => {
      const v = d.share[m] || 0;
      f.ctx.fillStyle = COLORS[i % COLORS.length];
      f.ctx.fillRect(f.l + i * w + w * 0.2, s.y(v), w * 0.6, f.b - s.y(v));
      f.ctx.fillStyle = "#333";
      f.ctx.fillText(m + ": " + v.toFixed(1) + "% (" + (d.by_model[m] || 0) + ")", f.l + i * w + w * 0.2, f.b + 14);
    });
  }

  function drawHist(d) {
    const f = frame($("hist"));
    const counts = d.score_histogram.counts, bins = d.score_histogram.bins;
    const s = axes(f, 0, 1, 0, countRange(Math.max(1, ...counts)), "router score", true);
    counts.forEach((c, i) => {
      f.ctx.fillStyle = "#9db7d5";
      const x0 = s.x(i / bins), x1 = s.x((i + 1) / bins);
      f.ctx.fillRect(x0 + 1, s.y(c), x1 - x0 - 2, f.b - s.y(c));
    });
    const thr = d.router.threshold;
    if (thr !== null && thr !== undefined) {
      const x = s.x(Math.min(1, thr));
      f.ctx.strokeStyle = "#d62728"; f.ctx.lineWidth = 2; f.ctx.beginPath(); f.ctx.moveTo(x, f.t); f.ctx.lineTo(x, f.b); f.ctx.stroke();
      f.ctx.fillStyle = "#d62728"; f.ctx.fillText("threshold " + thr.toFixed(3), Math.min(x + 4, f.r - 90), f.t + 12);
    }
  }

  function drawCurve(d) {
    const f = frame($("curve"));
    const pts = d.router.curve.points;
    if (!pts.length) return;
    let ymin = 0, ymax = 1;
    pts.forEach((p) => { ymin = Math.min(ymin, p[1]); ymax = Math.max(ymax, p[1]); });
    const s = axes(f, 0, 100, ymin, ymax, d.router.curve.x_label + " → quality drop %");
    f.ctx.strokeStyle = COLORS[0]; f.ctx.lineWidth = 2; f.ctx.beginPath();
    pts.slice().sort((a, b) => a[0] - b[0]).forEach((p, k) => { if (k) f.ctx.lineTo(s.x(p[0]), s.y(p[1])); else f.ctx.moveTo(s.x(p[0]), s.y(p[1])); });
    f.ctx.stroke();
    f.ctx.strokeStyle = "#aaa"; f.ctx.setLineDash([4, 4]); f.ctx.beginPath(); f.ctx.moveTo(s.x(0), s.y(0)); f.ctx.lineTo(s.x(100), s.y(0)); f.ctx.stroke(); f.ctx.setLineDash([]);
    const p = d.router.point;
    if (p) {
      f.ctx.fillStyle = "#d62728"; f.ctx.beginPath(); f.ctx.arc(s.x(p.x), s.y(p.quality_drop), 6, 0, 2 * Math.PI); f.ctx.fill();
      f.ctx.fillText(p.x.toFixed(1) + "%, drop " + p.quality_drop.toFixed(2) + "%", Math.min(s.x(p.x) + 8, f.r - 110), s.y(p.quality_drop) - 8);
    }
  }

  function fillTable(id, rows) {
    const body = $(id).querySelector("tbody");
    body.replaceChildren(...rows.map((cells) => {
      const tr = document.createElement("tr");
      cells.forEach((c) => { const td = document.createElement("td"); td.textContent = String(c); tr.appendChild(td); });
      return tr;
    }));
  }

  let presetsShown = false;
  // the key box: only where a key is asked for (the server has client keys, refused the data, or
  // refused the knob for want of the admin key); a keyless server's page has no use for it
  function askForKey() { $("key-box").hidden = false; }

  function render(d) {
    if (d.auth) askForKey();
    $("total-requests").textContent = String(d.requests);
    const all = d.router.models.map((m) => d.rps.series[m] || []);
    let last10 = 0;
    all.forEach((s) => s.slice(-11, -1).forEach((v) => { last10 += v; }));
    $("rps-now").textContent = (last10 / 10).toFixed(1);
    $("fallbacks").textContent = String(d.fallbacks);
    $("errors").textContent = String(d.errors);
    const c = d.cost;
    $("cost-saved").textContent = c.saved_ratio === null ? "n/a (no prices)" : c.saved.toFixed(4) + " (" + (100 * c.saved_ratio).toFixed(1) + "%)";
    const lq = d.live && d.live.quality_drop.since_start;
    $("live-drop").textContent = !lq ? "n/a (no shadow checks)" : fmt(lq.value, 2) + "% (" + fmt(lq.low, 1) + " … " + fmt(lq.high, 1) + "), " + d.live.pairs + " pairs";
    const sp = d.live && d.live.spend;
    const pr = d.live && d.live.spend_priced.since_start;
    $("live-spend").textContent = (!sp || sp.recent === null ? "n/a" : fmt(sp.recent, 1) + "% (last " + sp.recent_requests + "), " + fmt(sp.since_start, 1) + "% since start")
      + (pr ? "; in prices " + fmt(pr.value, 1) + "% (" + fmt(pr.low, 1) + " … " + fmt(pr.high, 1) + ")" : "");
    const he = d.hold && d.hold.estimate;
    $("hold").textContent = !d.hold ? "none" : d.hold.kind + " " + d.hold.target + "%: threshold " + fmt(d.hold.threshold, 4) + (he ? ", now " + fmt(he.value, 1) + "% (bound " + fmt(he.high, 1) + ")" : "");
    $("hold").title = d.hold ? d.hold.reason : "";
    // what plain hybrid routes at now, and who set it (a hold owns it while it runs: docs/control.md)
    $("knob-current").textContent = "now: " + (d.router.threshold === null ? d.router.reason : "threshold " + fmt(d.router.threshold, 4) + " (" + d.router.reason + ")") + ", set by " + d.router.owner;
    if (!presetsShown) {
      const share = d.router.pair ? ["hybrid-ca-20", "hybrid-ca-50"] : ["hybrid-budget-30", "hybrid-budget-60"];
      $("knob-presets").replaceChildren(...["hybrid", "hybrid-qd-0", "hybrid-qd-1", "hybrid-qd-2", "hybrid-qd-5", ...share].map((v) => { const o = document.createElement("option"); o.value = v; return o; }));
      $("knob-input").placeholder = d.router.knob;
      presetsShown = true;
    }
    fillTable("latency", d.router.models.map((m) => { const l = d.latency[m]; return [m, l ? l.n : 0, l ? fmt(l.p50_ms, 1) : "n/a", l ? fmt(l.p95_ms, 1) : "n/a"]; }));
    fillTable("statuses", Object.keys(d.by_status).sort().map((k) => [k, d.by_status[k]]));
    drawRps(d); drawShare(d); drawHist(d); drawCurve(d);
  }

  async function poll() {
    try {
      const r = await fetch("/dashboard/data", { headers: headers(), cache: "no-store" });
      if (r.status === 401) { askForKey(); $("status").textContent = "enter the proxy's API key to see the data"; return; }
      if (!r.ok) { $("status").textContent = "data: HTTP " + r.status; return; }
      const d = await r.json();
      render(d);
      $("status").textContent = "live · up " + Math.round(d.uptime_s) + " s";
    } catch (e) {
      $("status").textContent = "proxy unreachable";
    }
  }

  $("knob-apply").addEventListener("click", async () => {
    const msg = $("knob-msg");
    const name = $("knob-input").value.trim();
    if (!name) { msg.className = "error"; msg.textContent = "type a routing name, e.g. hybrid-qd-2"; return; }
    const r = await fetch("/dashboard/knob", { method: "POST", headers: headers(), body: JSON.stringify({ model: name }) });
    const body = await r.json();
    if (r.ok) { msg.className = "ok"; msg.textContent = "default knob is now " + body.knob; poll(); }
    else {
      if (r.status === 401) askForKey();
      msg.className = "error"; msg.textContent = (body.error && body.error.message) || ("HTTP " + r.status);
    }
  });

  poll();
  setInterval(poll, 1000);
})();
