// tollgate web UI: the copy button and confirmations. Every page works without this file
// but the copy button, which it shows.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  // Copy buttons: <button class="copy" data-copy="ID" hidden> copies the text of #ID.
  for (const button of document.querySelectorAll("button.copy[data-copy]")) {
    const source = document.getElementById(button.dataset.copy);
    if (!source || !navigator.clipboard) continue;
    button.hidden = false;
    button.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(source.textContent.trim());
        button.textContent = "Copied";
      } catch (e) {
        button.textContent = "Copy failed: select the text";
      }
    });
  }

  // Confirmations: a form with data-confirm asks first; confirmed, it says so in a
  // `confirm` field, so the server does not ask again. Without this script the server's
  // confirmation page asks instead.
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) {
        event.preventDefault();
        return;
      }
      const confirmed = document.createElement("input");
      confirmed.type = "hidden";
      confirmed.name = "confirm";
      confirmed.value = "yes";
      form.appendChild(confirmed);
    });
  }
});
