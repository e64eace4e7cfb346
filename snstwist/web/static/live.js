// The one live connection of a page, shared by timeline.js and cluster.js:
// Server-Sent Events from a path, the page's "live" indicator kept in step
// with the connection (EventSource reconnects by itself; the indicator says
// so meanwhile), and each named event's JSON handed to its handler.
"use strict";
window.snsLive = function (path, handlers) {
  const live = document.querySelector("[data-sns=live]");
  const source = new EventSource(path);
  source.addEventListener("open", function () {
    live.textContent = "live";
    live.className = "live on";
  });
  source.addEventListener("error", function () {
    live.textContent = "reconnecting";
    live.className = "live off";
  });
  for (const name of Object.keys(handlers)) {
    source.addEventListener(name, function (e) {
      handlers[name](JSON.parse(e.data));
    });
  }
  return source;
};
