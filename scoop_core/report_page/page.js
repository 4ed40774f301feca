// Draws the report's charts as inline SVG from the JSON in #report-data.
// The figures were computed by scoop report; this only lays them out, again
// whenever the window changes width.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var end = data.end > 0 ? data.end : 1;

  function esc(text) {
    return String(text).replace(/[&<>"]/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c];
    });
  }

  function seconds(us) {
    var s = us / 1e6;
    if (s >= 3600) return Math.floor(s / 3600) + " h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + " min";
    if (s >= 60) return Math.floor(s / 60) + " min " + (s % 60).toFixed(1) + " s";
    if (s >= 1) return +s.toPrecision(3) + " s";
    if (s >= 1e-3) return +(s * 1e3).toPrecision(3) + " ms";
    return +(s * 1e6).toPrecision(3) + " µs";
  }

  function size(n) {
    var units = ["B", "KiB", "MiB", "GiB"];
    for (var i = 0; i < units.length; i++) {
      if (n < 1024 || i === units.length - 1) return i === 0 ? n + " B" : n.toFixed(1) + " " + units[i];
      n /= 1024;
    }
  }

  // Round steps (1, 2, 5 times a power of ten) for about `count` ticks over [0, top].
  function ticks(top, count) {
    var raw = top / Math.max(1, count);
    var power = Math.pow(10, Math.floor(Math.log10(raw)));
    var step = [1, 2, 5, 10].map(function (m) { return m * power; }).find(function (s) { return s >= raw; });
    var out = [];
    for (var t = 0; t <= top + step * 1e-9; t += step) out.push(t);
    return out;
  }

  // Time ticks at round steps: 1, 2, 5 times a power of ten up to ten
  // seconds, then whole quarters, halves, minutes and hours.
  var TIME_STEPS = [15e6, 30e6, 60e6, 120e6, 300e6, 600e6, 900e6, 1800e6, 3600e6, 7200e6, 10800e6, 21600e6];
  function timeTicks(top, count) {
    var raw = top / Math.max(1, count);
    var step = raw <= 10e6 ? ticks(top, count)[1] || top : TIME_STEPS.find(function (s) { return s >= raw; }) || raw;
    var out = [];
    for (var t = 0; t <= top + step * 1e-9; t += step) out.push(t);
    return { at: out, step: step };
  }

  function timeLabel(us, step) {
    if (us === 0) return "0";
    if (step >= 3600e6) return Math.round(us / 3600e6) + " h";
    if (step >= 60e6) {
      var m = Math.round(us / 60e6);
      return m >= 60 ? Math.floor(m / 60) + " h " + String(m % 60).padStart(2, "0") : m + " min";
    }
    if (step >= 15e6 && us >= 60e6) return Math.floor(us / 60e6) + ":" + String(Math.round((us % 60e6) / 1e6)).padStart(2, "0");
    var digits = function (unit) { return Math.max(0, Math.ceil(-Math.log10(step / unit) - 1e-9)); };
    if (step >= 1e3) return (us / 1e6).toFixed(digits(1e6)) + " s";
    return (us / 1e3).toFixed(digits(1e3)) + " ms";
  }

  function colour(fn) {
    return fn >= 0 ? data.functions[fn].colour : data.wait;
  }

  function fnName(fn) {
    return fn >= 0 ? data.functions[fn].name : "wait for a result";
  }

  function svg(width, height, body) {
    // Set through innerHTML, an <svg> element of an HTML page is SVG without an xmlns.
    return '<svg width="' + width + '" height="' + height + '" viewBox="0 0 ' + width + " " + height + '">' + body + "</svg>";
  }

  function legend() {
    var box = document.getElementById("legend");
    var waits = data.timeline.rows.some(function (r) { return r.bars.some(function (b) { return b[3] < 0; }); });
    var items = data.functions.map(function (f) {
      return '<span><i class="swatch" style="background:' + f.colour + '"></i><code>' + esc(f.name) + "</code></span>";
    });
    if (waits) items.push('<span><i class="swatch" style="background:' + data.wait + '"></i>waiting for a result</span>');
    box.innerHTML = items.join("");
  }

  function barTitle(bar) {
    if (bar[4] > 1) {
      return bar[4] + " futures merged, " + seconds(bar[2]) + " from " + seconds(bar[1]) + "\n" + bar[5];
    }
    var lines = [fnName(bar[3])];
    if (bar[5]) lines.push("future " + bar[5]);
    lines.push(seconds(bar[2]) + ", from " + seconds(bar[1]) + " to " + seconds(bar[1] + bar[2]));
    if (bar[3] >= 0) {
      lines.push((bar[6] > 1 ? bar[6] + " items, " : "") + "arguments " + size(bar[7]) + ", result " + size(bar[8]));
      if (bar[9] && bar[9] !== "ok") lines.push("status: " + bar[9]);
    }
    return lines.join("\n");
  }

  function drawTimeline() {
    var box = document.getElementById("timeline-chart");
    var rows = data.timeline.rows;
    if (!rows.length) { box.innerHTML = '<p class="muted">No process ran a future.</p>'; return; }
    var width = Math.max(600, box.clientWidth);
    var labelW = 200, right = 12, top = 26, bottom = 22;
    var plotW = width - labelW - right;
    var x = function (t) { return labelW + (t / end) * plotW; };
    var y = top, parts = [], layout = [];
    rows.forEach(function (row) {
      var laneH = row.lanes <= 4 ? 14 : Math.max(3, Math.floor(72 / row.lanes));
      var h = Math.max(34, row.lanes * laneH + 10);
      layout.push({ row: row, y: y, h: h, laneH: laneH });
      y += h;
    });
    var height = y + bottom;
    var step = timeTicks(end, Math.max(4, Math.floor(plotW / 110)));
    parts.push('<defs><pattern id="absent" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">' +
      '<rect width="6" height="6" fill="#fafbfc"/><line x1="0" y1="0" x2="0" y2="6" stroke="#e2e6ea" stroke-width="3"/></pattern></defs>');
    layout.forEach(function (l, i) {
      if (i % 2 === 0) parts.push('<rect class="band" x="0" y="' + l.y + '" width="' + width + '" height="' + l.h + '"/>');
    });
    step.at.forEach(function (t) {
      parts.push('<line class="grid" x1="' + x(t) + '" x2="' + x(t) + '" y1="' + (top - 4) + '" y2="' + (height - bottom) + '"/>');
      parts.push('<text x="' + x(t) + '" y="' + (top - 9) + '" text-anchor="middle">' + esc(timeLabel(t, step.step)) + "</text>");
    });
    layout.forEach(function (l) {
      var row = l.row, out = [];
      out.push('<g class="row" data-worker="' + esc(row.worker) + '" data-role="' + esc(row.role) + '">');
      var label = row.label.split(" @ ");
      out.push('<text class="row-label" x="10" y="' + (l.y + 15) + '">' + esc(label[0]) + "</text>");
      if (label[1]) out.push('<text class="row-sub" x="10" y="' + (l.y + 28) + '">' + esc(label[1]) + "</text>");
      if (row.role === "worker") {
        if (row.from > 0) out.push('<rect class="absent" x="' + x(0) + '" y="' + (l.y + 3) + '" width="' + (x(row.from) - x(0)) + '" height="' + (l.h - 6) + '"><title>not started yet</title></rect>');
        if (row.to < end) out.push('<rect class="absent" x="' + x(row.to) + '" y="' + (l.y + 3) + '" width="' + (x(end) - x(row.to)) + '" height="' + (l.h - 6) + '"><title>gone</title></rect>');
      }
      var y0 = l.y + (l.h - row.lanes * l.laneH) / 2;
      var gap = l.laneH >= 8 ? 2 : l.laneH >= 5 ? 1 : 0;
      row.bars.forEach(function (bar) {
        var bx = x(bar[1]), bw = Math.max(1, (bar[2] / end) * plotW);
        var by = y0 + bar[0] * l.laneH, bh = l.laneH - gap;
        if (bar[3] < 0) { by += bh * 0.3; bh *= 0.4; }
        out.push('<rect class="bar" x="' + bx.toFixed(1) + '" y="' + by.toFixed(1) + '" width="' + bw.toFixed(1) + '" height="' + bh.toFixed(1) +
          '" fill="' + colour(bar[3]) + '"' + (bar[4] > 1 ? ' fill-opacity="0.8"' : "") + "><title>" + esc(barTitle(bar)) + "</title></rect>");
      });
      out.push("</g>");
      parts.push(out.join(""));
    });
    parts.push('<line class="axis" x1="' + labelW + '" x2="' + labelW + '" y1="' + top + '" y2="' + (height - bottom) + '"/>');
    data.marks.forEach(function (m) {
      parts.push('<line class="mark-' + m.kind + '" x1="' + x(m.t) + '" x2="' + x(m.t) + '" y1="' + (top - 4) + '" y2="' + (height - bottom) + '"><title>' +
        esc(seconds(m.t) + ": " + m.text) + "</title></line>");
    });
    parts.push('<text x="' + (width - right) + '" y="' + (height - 6) + '" text-anchor="end">time since the run started</text>');
    box.innerHTML = svg(width, height, parts.join(""));
  }

  // A line chart of values over equal bins of the run: series [{values, colour, name, area}].
  function binChart(box, series, opts) {
    var width = Math.max(320, box.clientWidth), height = 220;
    var left = 46, right = 12, top = 30, bottom = 28;
    var plotW = width - left - right, plotH = height - top - bottom;
    var topValue = opts.top || Math.max(1, Math.max.apply(null, series.map(function (s) { return Math.max.apply(null, s.values); })));
    var yTicks = opts.yTicks || ticks(topValue, 4);
    topValue = Math.max(topValue, yTicks[yTicks.length - 1]);
    var x = function (t) { return left + (t / end) * plotW; };
    var y = function (v) { return top + plotH - (v / topValue) * plotH; };
    var parts = [];
    yTicks.forEach(function (v) {
      parts.push('<line class="grid" x1="' + left + '" x2="' + (width - right) + '" y1="' + y(v) + '" y2="' + y(v) + '"/>');
      parts.push('<text x="' + (left - 6) + '" y="' + (y(v) + 4) + '" text-anchor="end">' + esc(opts.format(v)) + "</text>");
    });
    var step = timeTicks(end, Math.max(3, Math.floor(plotW / 90)));
    step.at.forEach(function (t) {
      parts.push('<text x="' + x(t) + '" y="' + (height - 10) + '" text-anchor="middle">' + esc(timeLabel(t, step.step)) + "</text>");
    });
    series.forEach(function (s) {
      var n = s.values.length, w = end / n, d = [];
      s.values.forEach(function (v, i) {
        d.push((i === 0 ? "M" : "L") + x(i * w).toFixed(1) + "," + y(v).toFixed(1));
        d.push("L" + x((i + 1) * w).toFixed(1) + "," + y(v).toFixed(1));
      });
      if (s.area) {
        parts.push('<path d="' + d.join("") + "L" + x(end) + "," + y(0) + "L" + x(0) + "," + y(0) + 'Z" fill="' + s.colour + '" fill-opacity="0.22"/>');
      }
      parts.push('<path d="' + d.join("") + '" fill="none" stroke="' + s.colour + '" stroke-width="1.6"><title>' + esc(s.name) + "</title></path>");
    });
    if (opts.mean !== undefined) {
      parts.push('<line x1="' + left + '" x2="' + (width - right) + '" y1="' + y(opts.mean) + '" y2="' + y(opts.mean) + '" stroke="#1d2b3a" stroke-dasharray="5 4" stroke-width="1"/>');
    }
    parts.push('<line class="axis" x1="' + left + '" x2="' + (width - right) + '" y1="' + y(0) + '" y2="' + y(0) + '"/>');
    // The key, above the plot.
    var keyX = left;
    series.forEach(function (s) {
      parts.push('<rect x="' + keyX + '" y="4" width="10" height="10" fill="' + s.colour + '"/><text x="' + (keyX + 14) + '" y="13" style="fill:#1f2933">' + esc(s.name) + "</text>");
      keyX += 26 + s.name.length * 6.5;
    });
    if (opts.mean !== undefined) {
      var label = "mean " + opts.format(opts.mean);
      parts.push('<line x1="' + keyX + '" x2="' + (keyX + 16) + '" y1="9" y2="9" stroke="#1d2b3a" stroke-dasharray="4 3"/><text x="' + (keyX + 20) + '" y="13" style="fill:#1f2933">' + esc(label) + "</text>");
    }
    box.innerHTML = svg(width, height, parts.join(""));
  }

  function drawUtilisation() {
    var values = data.utilisation.map(function (v) { return 100 * v; });
    var mean = values.length ? values.reduce(function (a, b) { return a + b; }, 0) / values.length : 0;
    binChart(document.getElementById("utilisation-chart"),
      [{ values: values, colour: "#2f6fab", name: "workers busy", area: true }],
      { top: 100, yTicks: [0, 25, 50, 75, 100], mean: mean, format: function (v) { return Math.round(v) + "%"; } });
  }

  function drawQueue() {
    var series = [];
    if (data.queue.queued) series.push({ values: data.queue.queued, colour: "#f28e2b", name: "queued", area: true });
    series.push({ values: data.queue.running, colour: "#2f6fab", name: "running", area: false });
    binChart(document.getElementById("queue-chart"), series, {
      format: function (v) { return v >= 10000 ? (v / 1000).toFixed(0) + "k" : String(Math.round(v)); },
    });
  }

  function draw() {
    drawTimeline();
    drawUtilisation();
    drawQueue();
  }

  legend();
  draw();
  var lastWidth = document.body.clientWidth, pending = null;
  window.addEventListener("resize", function () {
    if (document.body.clientWidth === lastWidth) return;
    lastWidth = document.body.clientWidth;
    clearTimeout(pending);
    pending = setTimeout(draw, 150);
  });
})();
