// Live updates: every few seconds, fetch this page again and swap its <main> in, unless the
// reader is working inside it (focus or a selection) or the tab is hidden. Without
// JavaScript the page is the same, only static.
(() => {
  const main = document.getElementById("main");
  const seconds = Number(main && main.dataset.live);
  if (!main || !seconds) return;
  let busy = false;
  const reading = () =>
    (main.contains(document.activeElement) && document.activeElement !== main) ||
    String(window.getSelection() || "").length > 0;
  async function refresh() {
    if (busy || document.hidden || reading()) return;
    busy = true;
    try {
      const r = await fetch(location.href, { credentials: "same-origin", headers: { "X-Skiff-Live": "1" } });
      if (r.status === 401) { location.reload(); return; }
      if (!r.ok) return;
      const next = new DOMParser().parseFromString(await r.text(), "text/html").getElementById("main");
      if (next && !reading()) main.innerHTML = next.innerHTML;
    } catch (_) {
      // The daemon restarting: try again at the next tick.
    } finally {
      busy = false;
    }
  }
  setInterval(refresh, seconds * 1000);
})();
