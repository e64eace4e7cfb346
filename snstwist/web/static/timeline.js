// The timeline page, live: new posts arrive over Server-Sent Events
// (live.js) and are put at the top.  Text goes in with textContent only,
// never as markup.
"use strict";
(function () {
  const list = document.querySelector("[data-sns=posts]");
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
  window.snsLive("/live/timeline", {
    post: add,
    status: function (message) {
      status.textContent = message.text;
      status.hidden = !message.text;
    },
  });
})();
