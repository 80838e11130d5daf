/* FedTune dashboard: polls the page's live JSON (the federations list, or one federation)
   and redraws in place, without a reload. Plain DOM and uPlot; every text goes through
   textContent, never innerHTML. */
(function () {
  "use strict";

  var root = document.getElementById("federation") || document.getElementById("federations-page");
  if (!root) return;
  var IS_LIST = root.id === "federations-page";
  if (!IS_LIST && typeof uPlot === "undefined") return;

  var LIVE_URL = root.dataset.live;
  var POLL_MS = parseInt(root.dataset.pollMs, 10) || 2000;
  var PALETTE = ["#0f766e", "#b45309", "#7c3aed", "#db2777", "#0891b2", "#65a30d", "#dc2626", "#4b5563"];
  var MEAN = "#2563eb";

  var charts = {};
  var deadline = { left: null, at: 0 };
  var phaseDeadline = { left: null, at: 0 };  // a secure round's phase

  function $(id) { return document.getElementById(id); }

  function text(id, value) {
    var el = $(id);
    if (el && el.textContent !== String(value)) el.textContent = String(value);
  }

  function badge(el, value) {
    el.textContent = value;
    el.className = "badge " + value;
  }

  function fmtBytes(n) {
    if (n === null || n === undefined) return "–";
    var units = ["B", "KiB", "MiB", "GiB", "TiB"];
    var v = n;
    for (var i = 0; i < units.length; i++) {
      if (v < 1024 || i === units.length - 1) {
        return i === 0 ? Math.floor(v) + " B" : v.toFixed(1) + " " + units[i];
      }
      v /= 1024;
    }
    return String(n);
  }

  function fmtSeconds(s) {
    if (s === null || s === undefined) return "–";
    if (s < 10) return Number(s.toPrecision(3)) + " s";
    var w = Math.floor(s);
    if (w < 60) return w + " s";
    var pad = function (x) { return (x < 10 ? "0" : "") + x; };
    if (w < 3600) return Math.floor(w / 60) + " min " + pad(w % 60) + " s";
    return Math.floor(w / 3600) + " h " + pad(Math.floor((w % 3600) / 60)) + " min";
  }

  function fmtMetric(v) { return v === null || v === undefined ? "–" : v.toFixed(4); }

  function fmtUtc(iso) {
    if (!iso) return "–";
    return new Date(iso).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }

  function cell(tr, value, cls) {
    var td = document.createElement("td");
    if (cls) td.className = cls;
    if (value instanceof Node) td.appendChild(value); else td.textContent = value;
    tr.appendChild(td);
  }

  function badgeEl(value) {
    var span = document.createElement("span");
    badge(span, value);
    return span;
  }

  function fillTable(id, rows, build) {
    var tbody = $(id).tBodies[0];
    var fresh = document.createElement("tbody");
    rows.forEach(function (row) {
      var tr = document.createElement("tr");
      build(tr, row);
      fresh.appendChild(tr);
    });
    tbody.parentNode.replaceChild(fresh, tbody);
  }

  function renderStats(view) {
    var r = view.round;
    badge($("fed-status"), view.status);
    text("round-number", r.number);
    text("round-total", r.total);
    badge($("round-status"), r.status);
    text("received", r.received);
    text("quorum", r.quorum);
    text("min-updates", r.min_updates);
    var bar = $("quorum-progress");
    bar.max = r.quorum;
    bar.value = r.received;
    text("deadline-at", fmtUtc(r.deadline_at));
    text("epsilon", fmtMetric(view.epsilon));
    var s = view.secure;
    if ($("secure-card")) {  // a federation with secure aggregation
      text("secure-phase", s ? s.phase : "–");
      text("secure-answered", s ? String(s.answered) : "–");
      text("secure-expected", s ? String(s.expected) : "–");
      text("secure-attempt", s ? String(s.attempt) : "–");
      text("secure-event", s && s.events.length ? s.events[s.events.length - 1] : "");
    }
    var at = performance.now();
    deadline = { left: r.seconds_left, at: at };
    phaseDeadline = { left: s ? s.seconds_left : null, at: at };
    tick();
  }

  function countdown(id, d) {
    if (!$(id)) return;
    if (d.left === null) { text(id, "–"); return; }
    text(id, fmtSeconds(Math.max(0, d.left - (performance.now() - d.at) / 1000)));
  }

  function tick() {
    countdown("deadline", deadline);
    countdown("secure-left", phaseDeadline);
  }

  function renderTables(view) {
    fillTable("history", view.history.slice().reverse(), function (tr, h) {
      cell(tr, String(h.round), "num");
      cell(tr, badgeEl(h.status));
      cell(tr, String(h.participants), "num");
      cell(tr, h.closed_by || "–");
      cell(tr, fmtSeconds(h.aggregation_seconds), "num");
      cell(tr, fmtBytes(h.bytes_in), "num");
      cell(tr, fmtBytes(h.bytes_out), "num");
      cell(tr, fmtMetric(h.metrics.val_accuracy), "num");
      cell(tr, fmtMetric(h.metrics.train_loss), "num");
      if (view.max_epsilon !== null) cell(tr, fmtMetric(h.epsilon), "num");  // private only
    });
    fillTable("organisations", view.organisations, function (tr, o) {
      var name = document.createElement("span");
      name.textContent = o.label;
      if (o.revoked) {
        var wrap = document.createElement("span");
        wrap.appendChild(name);
        wrap.appendChild(document.createTextNode(" "));
        wrap.appendChild(badgeEl("revoked"));
        name = wrap;
      }
      cell(tr, name);
      cell(tr, String(o.updates), "num");
      cell(tr, fmtUtc(o.last_seen));
    });
  }

  function organisationNames(view) {
    var names = {};
    view.history.forEach(function (h) {
      Object.keys(h.by_organisation).forEach(function (n) { names[n] = true; });
    });
    return Object.keys(names).sort();
  }

  /* One metric per round: the example-weighted mean (bold, with points) and each organisation. */
  function metricPlot(view, key, orgs, range) {
    var rows = view.history.filter(function (h) { return h.participants > 0; });
    var data = [rows.map(function (h) { return h.round; })];
    data.push(rows.map(function (h) { return key in h.metrics ? h.metrics[key] : null; }));
    orgs.forEach(function (name) {
      data.push(rows.map(function (h) {
        var m = h.by_organisation[name];
        return m && key in m ? m[key] : null;
      }));
    });
    var series = [{ label: "round" }, {
      label: "mean", stroke: MEAN, width: 2.5, points: { show: true, size: 7, fill: MEAN },
      value: function (u, v) { return fmtMetric(v); },
    }];
    orgs.forEach(function (name, i) {
      series.push({
        label: name, stroke: PALETTE[i % PALETTE.length], width: 1.25, dash: [5, 4],
        points: { show: true, size: 4 }, value: function (u, v) { return fmtMetric(v); },
      });
    });
    return {
      data: data, series: series, range: range,
      axis: function (u, ticks) { return ticks.map(function (t) { return Number(t.toFixed(4)); }); },
    };
  }

  function bytesPlot(view) {
    var rows = view.history;
    var data = [
      rows.map(function (h) { return h.round; }),
      rows.map(function (h) { return h.bytes_in; }),
      rows.map(function (h) { return h.bytes_out; }),
    ];
    var fmt = function (u, v) { return fmtBytes(v); };
    var series = [{ label: "round" },
      { label: "in (updates)", stroke: MEAN, width: 2, fill: "rgba(37,99,235,0.12)", points: { show: true, size: 5 }, value: fmt },
      { label: "out (states, base)", stroke: "#b45309", width: 2, points: { show: true, size: 5 }, value: fmt }];
    return { data: data, series: series, axis: function (u, ticks) { return ticks.map(fmtBytes); } };
  }

  function draw(id, plot) {
    var el = $(id);
    var key = plot.series.map(function (s) { return s.label; }).join("\u0000");
    var chart = charts[id];
    if (chart && chart.key === key) {
      chart.plot.setData(plot.data);
      return;
    }
    if (chart) chart.plot.destroy();
    var opts = {
      width: Math.max(el.clientWidth, 300),
      height: 220,
      scales: plot.range ? { x: { time: false }, y: { range: plot.range } } : { x: { time: false } },
      series: plot.series,
      axes: [
        { label: "round", incrs: [1, 2, 5, 10, 20, 50, 100], values: function (u, t) { return t.map(String); } },
        { size: 84, values: plot.axis },
      ],
      legend: { live: false },
      cursor: { drag: { x: false, y: false } },
    };
    charts[id] = { key: key, plot: new uPlot(opts, plot.data, el) };
  }

  function renderCharts(view) {
    var orgs = organisationNames(view);
    draw("chart-accuracy", metricPlot(view, "val_accuracy", orgs, [0, 1]));
    draw("chart-loss", metricPlot(view, "train_loss", orgs, null));
    draw("chart-bytes", bytesPlot(view));
  }

  function renderList(rows) {
    if (rows.length === 0) {
      fillTable("federations", [null], function (tr) {
        cell(tr, "No federation yet. The admin creates one with POST /v1/federations.");
        tr.firstChild.colSpan = 7;
      });
      return;
    }
    fillTable("federations", rows, function (tr, f) {
      var link = document.createElement("a");
      link.href = "/dashboard/federations/" + encodeURIComponent(f.id);
      link.textContent = f.name;
      cell(tr, link);
      cell(tr, f.id, "mono");
      cell(tr, badgeEl(f.status));
      cell(tr, f.current_round + " / " + f.total_rounds, "num");
      cell(tr, f.family + " · " + f.arch);
      cell(tr, f.method);
      cell(tr, fmtUtc(f.created_at));
    });
  }

  function render(view) {
    if (IS_LIST) { renderList(view); return; }
    renderStats(view);
    renderTables(view);
    renderCharts(view);
  }

  function indicate(ok) {
    var el = $("live-indicator");
    el.className = ok ? "live" : "live stale";
    el.textContent = ok
      ? "live · updated " + new Date().toLocaleTimeString()
      : "connection lost · retrying";
  }

  function poll() {
    fetch(LIVE_URL, { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (resp) {
        if (resp.status === 401) {  /* the page's own answer says why: signed out or refused */
          window.location.assign(window.location.pathname);
          return null;
        }
        if (!resp.ok) throw new Error("HTTP " + resp.status);
        return resp.json();
      })
      .then(function (view) {
        if (view === null) return;
        render(view);
        indicate(true);
        setTimeout(poll, POLL_MS);
      })
      .catch(function () {
        indicate(false);
        setTimeout(poll, POLL_MS);
      });
  }

  window.addEventListener("resize", function () {
    Object.keys(charts).forEach(function (id) {
      var el = $(id);
      charts[id].plot.setSize({ width: Math.max(el.clientWidth, 300), height: 220 });
    });
  });
  if (!IS_LIST) setInterval(tick, 1000);
  poll();
  root.dataset.dashboard = "ready";
})();
