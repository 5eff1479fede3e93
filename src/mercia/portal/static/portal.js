// Mercia portal: the one small script (served locally). Pages work without it.
"use strict";
document.addEventListener("submit", (e) => {
  const form = e.target;
  const question = form instanceof HTMLFormElement ? form.dataset.confirm : undefined;
  if (question && !window.confirm(question)) e.preventDefault();
});
document.addEventListener("click", (e) => {
  const button = e.target instanceof Element ? e.target.closest("button[data-copy]") : null;
  if (!button || !navigator.clipboard) return;
  const source = document.getElementById(button.dataset.copy);
  if (source) navigator.clipboard.writeText(source.textContent.trim()).then(() => { button.textContent = "Copied"; });
});
// A table wider than the window scrolls inside its region: make that region reachable by keyboard.
function markScrollable() {
  for (const wrap of document.querySelectorAll(".table-wrap")) {
    if (wrap.scrollWidth > wrap.clientWidth + 1) wrap.setAttribute("tabindex", "0");
    else wrap.removeAttribute("tabindex");
  }
}
window.addEventListener("load", markScrollable);
window.addEventListener("resize", markScrollable);
// Cohorts page: a file chosen fills the definition box; with "Ask again as I edit" on, the form is sent
// (action=count) a moment after the last change and the result replaces the one on the page. Only a
// definition that changed is sent again (the hub refuses a repeated question after a few tries).
for (const el of document.querySelectorAll(".live-field")) el.hidden = false;
document.addEventListener("change", (e) => {
  const input = e.target;
  if (!(input instanceof HTMLInputElement) || input.type !== "file" || !input.dataset.fills) return;
  const file = input.files && input.files[0];
  const target = document.getElementById(input.dataset.fills);
  if (!file || !target) return;
  file.text().then((text) => {
    target.value = text;
    input.value = ""; // the box now holds the text: edits to it are what is sent
    target.dispatchEvent(new Event("input", { bubbles: true }));
  });
});
const liveTimers = new WeakMap();
const lastAsked = new WeakMap();
function askLive(form) {
  const data = new FormData(form);
  for (const [k, v] of [...data.entries()]) if (v instanceof File) data.delete(k);
  const body = new URLSearchParams(data);
  body.set("action", "count");
  const key = body.toString();
  if (lastAsked.get(form) === key) return;
  lastAsked.set(form, key);
  const result = document.getElementById("cohort-result");
  if (result) result.setAttribute("aria-busy", "true");
  // form.action would be the buttons named "action": read the attribute
  fetch(form.getAttribute("action"), { method: "POST", body, credentials: "same-origin" })
    .then((r) => r.text())
    .then((html) => {
      const fresh = new DOMParser().parseFromString(html, "text/html");
      const next = fresh.getElementById("cohort-result");
      const problem = fresh.querySelector("main .problem");
      if (!result) return;
      result.replaceChildren(...(next ? next.childNodes : []));
      if (problem) result.prepend(problem);
    })
    .finally(() => { if (result) result.removeAttribute("aria-busy"); });
}
function onEdit(e) {
  const form = e.target instanceof Element ? e.target.closest("form[data-live]") : null;
  const live = form ? form.querySelector("input.live") : null;
  if (!form || !live || !live.checked) return;
  clearTimeout(liveTimers.get(form));
  liveTimers.set(form, setTimeout(() => askLive(form), 1200));
}
document.addEventListener("input", onEdit);
document.addEventListener("change", onEdit);
// Studies: a plot's legend buttons show or hide a series; a study's status refreshes while it is open.
document.addEventListener("click", (e) => {
  const button = e.target instanceof Element ? e.target.closest("button[data-toggles]") : null;
  if (!button) return;
  const on = button.getAttribute("aria-pressed") !== "true";
  button.setAttribute("aria-pressed", on ? "true" : "false");
  for (const g of document.querySelectorAll(`g[data-series="${CSS.escape(button.dataset.toggles)}"]`)) {
    g.classList.toggle("off", !on);
  }
});
const statusBox = document.getElementById("site-status");
if (statusBox && statusBox.dataset.refresh) {
  const every = Math.max(2, Number(statusBox.dataset.refresh)) * 1000;
  const refresh = () => {
    fetch(window.location.pathname, { credentials: "same-origin" })
      .then((r) => r.text())
      .then((html) => {
        const fresh = new DOMParser().parseFromString(html, "text/html").getElementById("site-status");
        if (!fresh) return;
        if (!fresh.dataset.refresh) { window.location.reload(); return; }
        statusBox.replaceChildren(...fresh.childNodes);
        setTimeout(refresh, every);
      })
      .catch(() => setTimeout(refresh, every * 2));
  };
  setTimeout(refresh, every);
}
