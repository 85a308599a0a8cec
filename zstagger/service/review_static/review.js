"use strict";
// The review page: keyboard first, one item on screen and the next one already fetched.
// Untrusted text (labels, prompts, names) only ever goes through textContent.
(() => {
  const $ = (id) => document.getElementById(id);
  const KEY = "zstagger-review-key";
  let key = sessionStorage.getItem(KEY) || "";
  let current = null;      // {item, url} on screen
  const ahead = [];        // entries to show before asking for more (an undone decision puts one back)
  let nextP = null;        // the prefetched next entry (a promise)
  let selected = new Set();
  let blurred = true;
  let chain = Promise.resolve();  // decisions are sent in order (undo must follow the decision it takes back)
  // For people and tests alike: which items were shown, and key-press-to-image times (ms).
  window.zstaggerReview = { shown: [], timings: [], decided: 0, errors: [] };

  function status(text) { $("status").textContent = text; }

  async function api(method, path, body) {
    const headers = { Authorization: "Bearer " + key };
    if (body) headers["Content-Type"] = "application/json";
    const r = await fetch(path, { method, headers, body: body ? JSON.stringify(body) : undefined, cache: "no-store" });
    const type = r.headers.get("content-type") || "";
    const data = type.startsWith("application/json") ? await r.json() : null;
    if (!r.ok) throw new Error((data && data.error && data.error.message) || ("HTTP " + r.status));
    return data;
  }

  async function load(item) {
    const r = await fetch(item.image_url, { headers: { Authorization: "Bearer " + key } });
    if (!r.ok) throw new Error("image of item " + item.id + ": HTTP " + r.status);
    const url = URL.createObjectURL(await r.blob());
    const probe = new Image();
    probe.src = url;
    try { await probe.decode(); } catch (e) { /* shown as a broken image */ }
    return { item, url };
  }

  async function fetchNext() {
    const data = await api("GET", "/v1/review/next");
    return data.item ? load(data.item) : null;
  }

  function prefetch() {
    nextP = fetchNext().catch((e) => { fail(e); return null; });
  }

  function fail(e) {
    window.zstaggerReview.errors.push(String(e.message || e));
    status("error: " + (e.message || e));
  }

  function cell(row, text) { const td = document.createElement("td"); td.textContent = text; row.appendChild(td); }
  function fixed(x) { return typeof x === "number" ? x.toFixed(3) : ""; }

  function render(item) {
    $("verdict").textContent = "verdict: " + (item.verdict || "-") + "   in question: " + item.label + " (" + fixed(item.score) +
      ")   tags: " + (item.tags.join(", ") || "none") + "   [" + item.stratum + "]";
    $("caption").textContent = item.image;
    const list = $("choices");
    list.replaceChildren();
    item.choices.slice(0, 9).forEach((name, i) => {
      const li = document.createElement("li");
      li.textContent = (i + 1) + ". " + name;
      li.dataset.label = name;
      list.appendChild(li);
    });
    const body = $("trail").tBodies[0];
    body.replaceChildren();
    for (const e of item.explanation || []) {
      const row = document.createElement("tr");
      if (e.fired) row.className = "fired";
      cell(row, e.label); cell(row, fixed(e.score));
      cell(row, fixed(e.threshold) + " (" + e.threshold_from + ")");
      cell(row, e.prompt || (e.known_image ? "known image " + e.known_image.image : ""));
      cell(row, e.rival ? e.rival + " [" + e.rival_kind + "]" : ""); cell(row, fixed(e.margin));
      body.appendChild(row);
    }
    $("heat").hidden = true;
    $("heatinfo").textContent = "";
  }

  function show(entry, pressedAt) {
    if (current && current.url && !ahead.includes(current)) URL.revokeObjectURL(current.url);
    current = entry;
    selected = new Set();
    if (!entry) {
      $("image").removeAttribute("src");
      $("image").dataset.item = "";
      status("no items left");
      return;
    }
    const img = $("image");
    img.onload = () => {
      img.dataset.item = String(entry.item.id);
      window.zstaggerReview.shown.push(entry.item.id);
      if (pressedAt !== undefined) window.zstaggerReview.timings.push(performance.now() - pressedAt);
    };
    blurred = !!entry.item.blur;
    img.classList.toggle("blurred", blurred);
    render(entry.item);
    img.src = entry.url;
    status("item " + entry.item.id);
  }

  async function advance(pressedAt) {
    let entry = ahead.shift();
    if (!entry) {
      entry = await nextP;
      prefetch();
    }
    show(entry, pressedAt);
  }

  function send(path, body) {
    chain = chain.then(() => api("POST", path, body)).then((d) => { window.zstaggerReview.decided += path.endsWith("/decide") ? 1 : 0; return d; })
      .catch(fail);
    return chain;
  }

  function decide(action) {
    if (!current) return;
    const pressedAt = performance.now();
    const body = { item: current.item.id, action };
    if (action === "relabel") body.labels = [...selected];
    send("/v1/review/decide", body);
    advance(pressedAt);
  }

  function skip() {
    if (!current) return;
    const pressedAt = performance.now();
    send("/v1/review/skip", { item: current.item.id });
    advance(pressedAt);
  }

  async function undo() {
    const pressedAt = performance.now();
    await chain;
    try {
      const data = await api("POST", "/v1/review/undo");
      if (current) ahead.unshift(current);
      show(await load(data.item), pressedAt);
    } catch (e) { fail(e); }
  }

  function toggle(index) {
    if (!current) return;
    const name = current.item.choices[index];
    if (name === undefined) return;
    if (selected.has(name)) selected.delete(name); else selected.add(name);
    for (const li of $("choices").children) li.classList.toggle("on", selected.has(li.dataset.label));
  }

  async function heatmap() {
    if (!current) return;
    const item = current.item;
    $("heatinfo").textContent = "heat map: computing...";
    try {
      const h = await api("GET", item.heatmap_url);
      if (!current || current.item.id !== item.id) return;
      const grid = h.grid, rows = grid.length, cols = grid[0].length;
      const flat = grid.flat(), low = Math.min(...flat), high = Math.max(...flat);
      const canvas = $("heat"), img = $("image");
      canvas.width = cols; canvas.height = rows;
      canvas.style.width = img.clientWidth + "px"; canvas.style.height = img.clientHeight + "px";
      const ctx = canvas.getContext("2d");
      grid.forEach((row, y) => row.forEach((v, x) => {
        const level = high > low ? (v - low) / (high - low) : 0;
        ctx.fillStyle = "rgb(" + Math.round(255 * level) + ",0," + Math.round(255 * (1 - level)) + ")";
        ctx.fillRect(x, y, 1, 1);
      }));
      canvas.hidden = false;
      $("heatinfo").textContent = "heat map of " + h.label + " (" + h.method + ", " + rows + "x" + cols + ")";
    } catch (e) { fail(e); }
  }

  document.addEventListener("keydown", (event) => {
    if ($("desk").hidden || event.target === $("key") || event.ctrlKey || event.metaKey || event.altKey) return;
    const k = event.key;
    if (k === "a") decide("accept");
    else if (k === "r") decide("reject");
    else if (k === "Enter") { if (selected.size) decide("relabel"); }
    else if (k >= "1" && k <= "9") toggle(Number(k) - 1);
    else if (k === "s") skip();
    else if (k === "u") undo();
    else if (k === "b") { blurred = !blurred; $("image").classList.toggle("blurred", blurred); }
    else if (k === "h") heatmap();
    else return;
    event.preventDefault();
  });

  async function start() {
    try {
      const stats = await api("GET", "/v1/review/stats");
      $("counts").textContent = stats.pending + " pending, " + stats.decided + " decided";
    } catch (e) {
      sessionStorage.removeItem(KEY);
      $("login").hidden = false;
      fail(e);
      return;
    }
    $("login").hidden = true;
    $("desk").hidden = false;
    prefetch();
    await advance(undefined);
  }

  $("key").addEventListener("keydown", (event) => {
    if (event.key !== "Enter") return;
    key = $("key").value.trim();
    sessionStorage.setItem(KEY, key);
    start();
  });
  if (key) start();
})();
