// The console's one script: live tables and log lines over server-sent events. Tables
// receive server-rendered (escaped) rows; log lines arrive as JSON and become text nodes,
// never markup.
"use strict";

function followTable(el) {
  const source = new EventSource(el.dataset.live);
  source.addEventListener("html", (e) => { el.innerHTML = e.data; });
  source.addEventListener("end", () => source.close());
}

function followLogs(box) {
  const follow = document.getElementById("follow");
  const status = document.getElementById("log-status");
  const source = new EventSource(box.dataset.logs);
  const bottom = () => { if (!follow || follow.checked) box.scrollTop = box.scrollHeight; };
  bottom();
  source.addEventListener("line", (e) => {
    const d = JSON.parse(e.data);
    const row = document.createElement("div");
    row.className = "logline " + (d.stream === "stderr" ? "stderr" : "stdout");
    const time = document.createElement("time");
    time.textContent = d.ts;
    const text = document.createElement("span");
    text.textContent = d.line;
    row.append(time, " ", text);
    box.append(row);
    bottom();
  });
  source.addEventListener("open", () => { if (status) status.textContent = "Following new lines."; });
  source.addEventListener("end", () => {
    source.close();
    if (status) status.textContent = "Signed out: sign in again to follow.";
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-live]").forEach(followTable);
  document.querySelectorAll("[data-logs]").forEach(followLogs);
});

// Parts of a page that take longer to add up (the bill's sums over every call) load after it.
document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-fragment]").forEach(async (el) => {
    try {
      const response = await fetch(el.dataset.fragment, { credentials: "same-origin" });
      if (response.ok) el.innerHTML = await response.text();
    } catch {
      // The page was left (or the server went away) before the part came: nothing to show.
    }
  });
});
