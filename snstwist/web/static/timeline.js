// The timeline page, live: new posts arrive over Server-Sent Events and are
// put at the top.  Text goes in with textContent only, never as markup.
"use strict";
(function () {
  const list = document.querySelector("[data-sns=posts]");
  const live = document.querySelector("[data-sns=live]");
  const status = document.querySelector("[data-sns=status]");
  const shown = new Set();
  for (const li of list.querySelectorAll("[data-sns=post]")) {
    shown.add(li.dataset.id);
  }
  // Oldest first in the list kept here, so the newest ends at the top.
  function add(post) {
    if (shown.has(post.id)) {
      return;
    }
    shown.add(post.id);
    const li = document.createElement("li");
    li.dataset.sns = "post";
    li.dataset.id = post.id;
    li.dataset.time = String(post.time_us);
    li.textContent = post.line;
    // Keep the list in time order even if posts arrive out of order.
    let before = list.firstElementChild;
    while (before && Number(before.dataset.time || 0) > post.time_us) {
      before = before.nextElementSibling;
    }
    list.insertBefore(li, before);
  }
  const events = new EventSource("/live/timeline");
  events.addEventListener("open", function () {
    live.textContent = "live";
    live.className = "live on";
  });
  events.addEventListener("error", function () {
    live.textContent = "reconnecting";
    live.className = "live off";
  });
  events.addEventListener("post", function (e) {
    add(JSON.parse(e.data));
  });
  events.addEventListener("status", function (e) {
    const text = JSON.parse(e.data).text;
    status.textContent = text;
    status.hidden = !text;
  });
})();
