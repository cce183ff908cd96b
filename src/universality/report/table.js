// Sortable, filterable tables from inline JSON; plain JavaScript, no libraries, works from file://.
// Markup: <div class="datatable" data-source="ID"> and <script type="application/json" id="ID">
// holding {columns: [{key, name, kind: "num" | "text" | "link"}], rows: [[cell, ...]]}; a link cell is [text, href].
(function () {
  "use strict";
  function esc(text) {
    return String(text).replace(/[&<>"']/g, function (c) { return "&#" + c.charCodeAt(0) + ";"; });
  }
  function text(cell) { return Array.isArray(cell) ? cell[0] : cell; }
  function show(cell, column) {
    if (cell === null || cell === undefined) return "–";
    if (column.kind === "link") return cell[1] ? '<a href="' + esc(cell[1]) + '">' + esc(cell[0]) + "</a>" : esc(cell[0]);
    if (column.kind === "num" && typeof cell === "number" && !Number.isInteger(cell)) return cell.toFixed(3);
    return esc(cell);
  }
  // A term "key>0.5" / "key<0.5" / "key=3" compares a column, "key:text" looks in one column;
  // any other term must occur in some cell. Every term must hold.
  function matcher(query, columns) {
    var tests = query.trim().toLowerCase().split(/\s+/).filter(Boolean).map(function (term) {
      var m = term.match(/^([a-z_]+)([<>=:])(.+)$/);
      var i = m ? columns.findIndex(function (c) { return c.key === m[1]; }) : -1;
      if (i >= 0 && m[2] === ":") {
        return function (row) { return String(text(row[i])).toLowerCase().indexOf(m[3]) >= 0; };
      }
      if (i >= 0) {
        var limit = parseFloat(m[3]);
        return function (row) {
          var v = parseFloat(text(row[i]));
          return m[2] === ">" ? v > limit : m[2] === "<" ? v < limit : v === limit;
        };
      }
      return function (row) { return row.some(function (cell) { return String(text(cell)).toLowerCase().indexOf(term) >= 0; }); };
    });
    return function (row) { return tests.every(function (t) { return t(row); }); };
  }
  function compare(i, sign) {
    return function (a, b) {
      var x = text(a[i]), y = text(b[i]);
      if (x === null || x === undefined) return 1;  // missing values last, either direction
      if (y === null || y === undefined) return -1;
      return (typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y))) * sign;
    };
  }
  function build(box) {
    var data = JSON.parse(document.getElementById(box.dataset.source).textContent);
    var rows = data.rows.slice(), order = { index: -1, sign: 1 };
    box.innerHTML = '<input class="filter" type="search" placeholder="filter, e.g. seed-1 excess>0.6">' +
      ' <span class="muted count"></span><div class="rows"><table><thead><tr>' +
      data.columns.map(function (c, i) { return '<th class="sortable" data-i="' + i + '" title="key: ' + esc(c.key) + '">' + esc(c.name) + "</th>"; }).join("") +
      "</tr></thead><tbody></tbody></table></div>";
    var input = box.querySelector("input"), body = box.querySelector("tbody"), count = box.querySelector(".count");
    function draw() {
      var keep = rows.filter(matcher(input.value, data.columns));
      body.innerHTML = keep.map(function (row) {
        return "<tr>" + row.map(function (cell, i) {
          return '<td class="' + (data.columns[i].kind === "num" ? "num" : "") + '">' + show(cell, data.columns[i]) + "</td>";
        }).join("") + "</tr>";
      }).join("");
      count.textContent = keep.length + " of " + rows.length + " rows";
    }
    box.querySelectorAll("th").forEach(function (th) {
      th.addEventListener("click", function () {
        var i = Number(th.dataset.i);
        order = { index: i, sign: order.index === i ? -order.sign : (data.columns[i].kind === "num" ? -1 : 1) };
        rows.sort(compare(i, order.sign));
        box.querySelectorAll("th").forEach(function (h) { h.classList.remove("asc", "desc"); });
        th.classList.add(order.sign > 0 ? "asc" : "desc");
        draw();
      });
    });
    input.addEventListener("input", draw);
    draw();
  }
  document.querySelectorAll(".datatable").forEach(build);
})();
