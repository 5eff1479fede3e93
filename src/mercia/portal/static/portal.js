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
