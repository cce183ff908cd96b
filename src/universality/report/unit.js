// One universal unit's page: unit.html#<id>. The record comes from units/shard-NNN.js, loaded as a
// <script> (browsers block fetch() of local JSON on file://, not a script from the same folder).
(function () {
  "use strict";
  var config = JSON.parse(document.getElementById("unit-config").textContent);
  var root = document.getElementById("unit");
  window.UNIV_SHARDS = window.UNIV_SHARDS || {};

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    (children || []).forEach(function (c) { node.append(c instanceof Node ? c : document.createTextNode(String(c))); });
    return node;
  }
  function r(value) { return value === null || value === undefined ? "–" : value.toFixed(3); }
  function name(u) { return u.model + " / " + u.unit_set + " #" + u.unit; }

  function facts(pairs) {
    var dl = el("dl", { "class": "facts" });
    pairs.forEach(function (p) { dl.append(el("dt", {}, [p[0]]), el("dd", {}, [p[1]])); });
    return dl;
  }
  function contexts(top, shard) {
    if (!top) return el("p", { "class": "muted" }, ["No top activations were kept for this unit."]);
    var box = el("div");
    top.forEach(function (entry) {
      var context = shard.contexts[String(entry[0])];
      var line = el("div", { "class": "context" }, [el("span", { "class": "value" }, [r(entry[1])])]);
      if (!context) line.append(el("span", { "class": "muted" }, ["token " + entry[0]]));
      else context[0].forEach(function (token, i) {
        line.append(el(i === context[1] ? "mark" : "span", { "class": "token" }, [token.replace(/\n/g, "⏎")]));
      });
      box.append(line);
    });
    return box;
  }
  // Counts per bin of the shared symmetric log grid (moments/_top_activations.py), equal width per bin,
  // heights on a log scale; bin i holds edges[i-1] < x <= edges[i].
  function histogram(hist) {
    var edges = config.bin_edges;
    if (!hist || !edges.length) return el("p", { "class": "muted" }, ["No histogram was kept for this unit."]);
    var first = hist[0], counts = hist.slice(1), W = 640, H = 220, left = 50, bottom = 40;
    var width = (W - left - 10) / counts.length, top = Math.log10(Math.max.apply(null, counts) + 1);
    var bars = counts.map(function (c, i) {
      var h = (H - bottom - 10) * Math.log10(c + 1) / top;
      return '<rect x="' + (left + i * width) + '" y="' + (H - bottom - h) + '" width="' + Math.max(width - 0.5, 0.5) +
        '" height="' + h + '" fill="#4c72b0"><title>' + c + " tokens</title></rect>";
    }).join("");
    var labels = "", last = -Infinity, zero = edges.length / 2 - first;  // the middle bin (-smallest, smallest] holds 0
    var zeroX = zero >= 0 && zero < counts.length ? left + (zero + 0.5) * width : -Infinity;
    if (zeroX > 0) labels += '<text x="' + zeroX + '" y="' + (H - bottom + 16) + '" font-size="11" text-anchor="middle">0</text>';
    for (var i = 0; i <= counts.length; i++) {  // left edge of bin first + i is edges[first + i - 1]
      var edge = edges[first + i - 1], x = left + i * width;
      if (edge === undefined || Math.abs(Math.log10(Math.abs(edge)) % 1) > 1e-6 || x - last < 45 || Math.abs(x - zeroX) < 30) continue;
      labels += '<line x1="' + x + '" x2="' + x + '" y1="' + (H - bottom) + '" y2="' + (H - bottom + 4) + '" stroke="#333"/>' +
        '<text x="' + x + '" y="' + (H - bottom + 16) + '" font-size="11" text-anchor="middle">' + label(edge) + "</text>";
      last = x;
    }
    for (var power = 1; power <= Math.pow(10, Math.floor(top)); power *= 10) {  // y ticks at 1, 10, 100 ... tokens
      var y = H - bottom - (H - bottom - 10) * Math.log10(power + 1) / top;
      labels += '<line x1="' + (left - 4) + '" x2="' + left + '" y1="' + y + '" y2="' + y + '" stroke="#333"/>' +
        '<text x="' + (left - 6) + '" y="' + (y + 4) + '" font-size="10" text-anchor="end">' + power + "</text>";
    }
    var svg = '<svg class="histogram" viewBox="0 0 ' + W + " " + H + '" width="' + W + '" height="' + H + '" role="img">' +
      '<line x1="' + left + '" x2="' + (W - 10) + '" y1="' + (H - bottom) + '" y2="' + (H - bottom) + '" stroke="#333"/>' +
      bars + labels + '<text x="' + (W / 2) + '" y="' + (H - 4) + '" font-size="12" text-anchor="middle">' +
      "activation (symmetric log bins)</text>" + '<text x="12" y="' + ((H - bottom) / 2) +
      '" font-size="12" text-anchor="middle" transform="rotate(-90 12 ' + ((H - bottom) / 2) + ')">tokens (log scale)</text></svg>';
    var box = el("div");
    box.innerHTML = svg;
    return box;
  }
  function label(edge) {  // 0.01 .. 1000 as plain numbers, others as 1e-4
    var size = Math.abs(edge);
    return size >= 0.01 && size < 1e4 ? String(Number(edge.toPrecision(1))) : edge.toExponential(0).replace("e+", "e");
  }
  function link(id, text) { return el("a", { href: "unit.html#" + id }, [text]); }

  function render(id, shard) {
    var u = shard.units[id - Math.floor(id / config.shard_size) * config.shard_size];
    document.getElementById("crumb").textContent = name(u);
    document.title = name(u) + " · " + document.title.split(" · ").pop();
    var nav = el("p", { "class": "muted" }, []);
    if (id > 0) nav.append(link(id - 1, "← previous"), " ");
    nav.append("universal unit " + (id + 1) + " of " + config.units + " (by excess corr) ");
    if (id + 1 < config.units) nav.append(link(id + 1, "next →"));
    var rows = u.partners.map(function (p) {
      return el("tr", {}, [el("td", {}, [p.model]), el("td", {}, [p.id === null ? p.unit_set + " #" + p.unit : link(p.id, p.unit_set + " #" + p.unit)]),
        el("td", { "class": "num" }, [r(p.max_corr)]), el("td", { "class": "num" }, [r(p.baseline)]),
        el("td", { "class": "num" }, [r(p.excess)]), el("td", { "class": "num" }, [p.claims])]);
    });
    var table = el("div", { "class": "scroll" }, [el("table", {}, [el("thead", {}, [el("tr", {}, ["other model", "partner",
      "max corr (r)", "baseline (r)", "excess", "universal units claiming it"].map(function (h) { return el("th", {}, [h]); }))]),
      el("tbody", {}, rows)])]);
    root.replaceChildren(nav, el("h1", {}, [name(u)]),
      facts([["mean max corr", r(u.mean_max_corr)], ["mean baseline", r(u.mean_baseline)], ["excess corr", r(u.excess_corr)]]
        .concat(Object.entries(u.facts))),
      el("h2", {}, ["Partners in every other model"]), table,
      el("h2", {}, ["Activation histogram"]), histogram(u.histogram),
      el("h2", {}, ["Top-activating contexts"]), contexts(u.top, shard));
    u.partners.forEach(function (p) {
      root.append(el("div", { "class": "partner" }, [el("h3", {}, ["Partner in " + p.model + ": " + p.unit_set + " #" + p.unit +
        " (r = " + r(p.max_corr) + ")"]), facts(Object.entries(p.facts)), contexts(p.top, shard)]));
    });
  }

  function show() {
    var id = parseInt(location.hash.slice(1), 10);
    if (!(id >= 0 && id < config.units)) {
      root.replaceChildren(el("p", {}, ["No universal unit #" + location.hash.slice(1) + "; pick one in "]), el("a", { href: "report.html#universal" }, ["the report"]));
      return;
    }
    var n = Math.floor(id / config.shard_size);
    if (window.UNIV_SHARDS[n]) return render(id, window.UNIV_SHARDS[n]);
    var script = el("script", { src: "units/shard-" + String(n).padStart(3, "0") + ".js" });
    script.onload = function () { render(id, window.UNIV_SHARDS[n]); };
    script.onerror = function () { root.replaceChildren(el("p", { "class": "warn" }, ["Could not load " + script.src + "; rerun univ report."])); };
    document.body.append(script);
  }
  window.addEventListener("hashchange", show);
  show();
})();
