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
