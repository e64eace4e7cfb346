// The dashboard, live: the cluster's state arrives over Server-Sent Events
// (live.js) four times a second and the table, the chart and the events are
// redrawn.  Every text goes in with textContent only, never as markup.
"use strict";
(function () {
  const $ = function (name) { return document.querySelector("[data-sns=" + name + "]"); };
  const COLUMNS = ["vm", "role", "pid", "address", "clients", "updates", "lag"];

  function cell(row, text, span) {
    const td = document.createElement("td");
    td.textContent = text;
    if (span) {
      td.colSpan = span;
    }
    row.appendChild(td);
  }

  function clock(seconds) {
    const d = new Date(seconds * 1000);
    const pad = function (n, w) { return String(n).padStart(w, "0"); };
    return pad(d.getHours(), 2) + ":" + pad(d.getMinutes(), 2) + ":" +
      pad(d.getSeconds(), 2) + "." + pad(d.getMilliseconds(), 3);
  }

  function servers(snapshot) {
    const body = $("servers");
    const rows = [];
    for (const s of snapshot.servers) {
      const tr = document.createElement("tr");
      tr.dataset.sns = "vm";
      tr.dataset.vm = s.vm;
      tr.dataset.role = s.role;
      tr.className = s.role;
      for (const key of COLUMNS) {
        cell(tr, String(s[key]));
      }
      cell(tr, s.seen.toFixed(1) + "s ago");
      rows.push(tr);
    }
    for (const vm of snapshot.down) {
      const tr = document.createElement("tr");
      tr.dataset.sns = "vm";
      tr.dataset.vm = vm;
      tr.dataset.role = "down";
      tr.className = "down";
      cell(tr, vm);
      cell(tr, "down", 7);
      rows.push(tr);
    }
    body.replaceChildren.apply(body, rows);
  }

  function events(snapshot) {
    const list = $("events");
    const items = snapshot.events.map(function (e) {
      const li = document.createElement("li");
      li.dataset.sns = "event";
      li.dataset.kind = e.kind;
      li.className = "event-" + e.kind;
      const time = document.createElement("time");
      time.textContent = clock(e.time);
      li.appendChild(time);
      li.appendChild(document.createTextNode(" " + e.text));
      return li;
    });
    list.replaceChildren.apply(list, items);
  }

  function chart(snapshot) {
    const c = snapshot.chart;
    $("posts-path").setAttribute("d", c.posts);
    $("lag-path").setAttribute("d", c.lag);
    $("posts-top").textContent = c.postsTop + " posts/s";
    $("lag-top").textContent = "lag " + c.lagTop;
    $("posts-rate").textContent = c.lastPosts === undefined ? "" : "(now " + c.lastPosts + ")";
    $("lag-now").textContent = c.lastLag === undefined ? "" : "(now " + c.lastLag + ")";
  }

  window.snsLive("/live/cluster", {cluster: function (snapshot) {
    const error = $("error");
    error.textContent = snapshot.error;
    error.hidden = !snapshot.error;
    $("router").textContent = snapshot.router ? "router " + snapshot.router : "";
    servers(snapshot);
    events(snapshot);
    chart(snapshot);
  }});
})();
