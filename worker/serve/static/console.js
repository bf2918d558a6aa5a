// The console's few behaviours; every page works without it, only slower to use.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  dropzone();
  uploadPaths();
  labelKeys();
  bulkSelection();
  trainingLog();
});

// Invoke: dropping a file on the form classifies it at once; choosing one does too.
function dropzone() {
  const form = document.querySelector("[data-dropzone]");
  if (!form) return;
  const input = form.querySelector("input[type=file]");
  const zone = form.querySelector(".drop");
  input.addEventListener("change", () => { if (input.files.length) form.submit(); });
  ["dragenter", "dragover"].forEach((type) => zone.addEventListener(type, (event) => {
    event.preventDefault(); zone.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((type) => zone.addEventListener(type, () => zone.classList.remove("over")));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer.files.length) { input.files = event.dataTransfer.files; form.submit(); }
  });
}

// Folder uploads: send each file's path inside the folder, which carries its label
// ("real/x.jpg"), in a "paths" field, in the order the files are sent.
function uploadPaths() {
  const form = document.querySelector("[data-upload]");
  if (!form) return;
  form.addEventListener("submit", () => {
    form.querySelectorAll("input[name=paths]").forEach((old) => old.remove());
    form.querySelectorAll("input[type=file]").forEach((input) => {
      for (const file of input.files) {
        const path = document.createElement("input");
        path.type = "hidden"; path.name = "paths";
        path.value = file.webkitRelativePath || file.name;
        form.appendChild(path);
      }
    });
    const note = form.querySelector("[data-progress]");
    if (note) note.textContent = "uploading…";
  });
}

// Label: a label's letter or digit labels the image; space skips it.
function labelKeys() {
  const labeler = document.querySelector("[data-labeler]");
  if (!labeler) return;
  const buttons = labeler.querySelectorAll("button[data-keys]");
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.target.closest("input, select, textarea")) return;
    const key = event.key.toLowerCase();
    if (key === " ") {
      event.preventDefault();
      labeler.querySelector("[data-skip]").click();
      return;
    }
    for (const button of buttons) {
      if (button.dataset.keys.includes(key)) { event.preventDefault(); button.click(); return; }
    }
  });
}

function bulkSelection() {
  const form = document.querySelector("[data-bulk]");
  if (!form) return;
  const boxes = form.querySelectorAll("input[name=key]");
  const count = form.querySelector("[data-selected]");
  const update = () => {
    count.textContent = `${[...boxes].filter((b) => b.checked).length} selected`;
  };
  boxes.forEach((box) => box.addEventListener("change", update));
  form.querySelector("[data-select-all]").addEventListener("click", () => {
    const all = [...boxes].every((b) => b.checked);
    boxes.forEach((b) => { b.checked = !all; });
    update();
  });
}

// Train: progress lines arrive as server-sent events; when the run ends the page
// reloads to show its result.
function trainingLog() {
  const log = document.querySelector("#log[data-events]");
  if (!log || log.dataset.running !== "yes") return;
  const shown = log.textContent.split("\n").filter((line) => line.trim()).length;
  const source = new EventSource(`${log.dataset.events}?since=${shown}`);
  const bar = document.querySelector("#elapsed");
  source.onmessage = (message) => {
    const event = JSON.parse(message.data);
    log.textContent += `[${event.t.toFixed(1).padStart(6)} s] ${event.message}\n`;
    log.scrollTop = log.scrollHeight;
    if (bar) bar.value = Math.min(event.t, Number(log.dataset.budget));
  };
  source.addEventListener("done", () => { source.close(); window.location.reload(); });
}
