() => {
  // A loading sign over the 3D viewer while it fetches and parses the point cloud: the viewer
  // itself shows an empty canvas for seconds. Babylon.js loads the .ply with XMLHttpRequest
  // (or fetch); a request for a .ply file shows the sign, its end (plus two frames for the
  // parse and first draw) hides it.
  let pending = 0;
  const sign = () => {
    const host = document.querySelector("#point-cloud");
    if (!host) return null;
    let el = host.querySelector(".cloud-loading");
    if (!el) {
      el = document.createElement("div");
      el.className = "cloud-loading";
      el.textContent = "Loading the point cloud…";
      host.appendChild(el);
    }
    return el;
  };
  const show = () => { pending += 1; const el = sign(); if (el) el.style.display = "flex"; };
  const hide = () => {
    setTimeout(() => requestAnimationFrame(() => requestAnimationFrame(() => {
      pending = Math.max(0, pending - 1);
      const el = sign();
      if (el && pending === 0) el.style.display = "none";
    })), 150);
  };
  const isCloud = (url) => typeof url === "string" && /\.ply(\?|$)/i.test(url);
  const open = XMLHttpRequest.prototype.open;
  XMLHttpRequest.prototype.open = function (method, url, ...rest) {
    this._isCloud = isCloud(String(url));
    return open.call(this, method, url, ...rest);
  };
  const xhrSend = XMLHttpRequest.prototype.send;
  XMLHttpRequest.prototype.send = function (...args) {
    if (this._isCloud) { show(); this.addEventListener("loadend", hide, { once: true }); }
    return xhrSend.apply(this, args);
  };
  const fetch0 = window.fetch;
  window.fetch = function (input, init) {
    const url = typeof input === "string" ? input : (input && input.url) || "";
    if (!isCloud(url)) return fetch0.call(this, input, init);
    show();
    return fetch0.call(this, input, init).then(
      (r) => { r.clone().arrayBuffer().finally(hide); return r; },
      (e) => { hide(); throw e; });
  };
  const el = sign();
  if (el) el.style.display = "none";

  // The measure tool. Clicks are kept here, in the browser, in the order they happen, and
  // markers and the line are drawn at once over the picture; each click sends the whole list
  // (at most two points; a third click starts a new pair) to the server through the hidden
  // #measure-clicks box, so a quick second click can never be lost or paired wrongly.
  const MARKER = "rgb(230, 30, 120)";
  let measure = { src: "", points: [] };
  const measureImg = () => document.querySelector("#measure-image img");
  const contentBox = (img) => {
    // where the picture is drawn inside the <img> box (object-fit: contain / scale-down)
    const r = img.getBoundingClientRect();
    const scale = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight, 
                           getComputedStyle(img).objectFit === "scale-down" ? 1 : Infinity);
    const w = img.naturalWidth * scale, h = img.naturalHeight * scale;
    return { left: r.left + (r.width - w) / 2, top: r.top + (r.height - h) / 2, scale };
  };
  const overlay = () => {
    const host = document.querySelector("#measure-image");
    if (!host) return null;
    let svg = host.querySelector("svg.measure-marks");
    if (!svg) {
      svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
      svg.setAttribute("class", "measure-marks");
      host.appendChild(svg);
    }
    return svg;
  };
  const draw = () => {
    const svg = overlay();
    if (!svg) return;
    const img = measureImg();
    if (!img || !img.naturalWidth || measure.points.length === 0) { svg.innerHTML = ""; return; }
    const host = svg.parentElement.getBoundingClientRect();
    const box = contentBox(img);
    const at = ([x, y]) => [box.left - host.left + x * box.scale, box.top - host.top + y * box.scale];
    const marks = measure.points.map(at);
    let html = "";
    if (marks.length === 2) {
      const [[x1, y1], [x2, y2]] = marks;
      html += `<line x1="${x1}" y1="${y1}" x2="${x2}" y2="${y2}" stroke="white" stroke-width="5"/>`;
      html += `<line x1="${x1}" y1="${y1}" x2="${x2}" y2="${y2}" stroke="${MARKER}" stroke-width="3"/>`;
    }
    marks.forEach(([x, y], i) => {
      html += `<circle cx="${x}" cy="${y}" r="7" fill="${MARKER}" stroke="white" stroke-width="2"/>`;
      html += `<text x="${x + 10}" y="${y - 9}" fill="white" stroke="black" stroke-width="3" paint-order="stroke" ` +
              `font-size="14" font-weight="700">${i + 1}</text>`;
    });
    svg.innerHTML = html;
  };
  // The hidden #measure-send button's click event (app.py) reads the list through this function
  // (its `js` step), so every request carries every click of the pair, in order.
  window.metric3dMeasureClicks = () => JSON.stringify({ points: measure.points });
  const sendClicks = () => {
    const button = document.querySelector("#measure-send");
    if (button) button.click();
  };
  document.addEventListener("click", (event) => {
    // by position, not by target: Gradio wraps the picture in a button and frames
    const img = measureImg();
    if (!img || !img.naturalWidth || !(event.target instanceof Element) || !event.target.closest("#measure-image")) return;
    if (img.currentSrc !== measure.src) measure = { src: img.currentSrc, points: [] };
    const box = contentBox(img);
    const x = (event.clientX - box.left) / box.scale, y = (event.clientY - box.top) / box.scale;
    if (x < 0 || y < 0 || x > img.naturalWidth || y > img.naturalHeight) return;
    measure.points = measure.points.length >= 2 ? [[x, y]] : [...measure.points, [x, y]];
    draw();
    sendClicks();
  }, true);
  // A new picture (a new result or photo) starts a new pair; layout changes move the marks.
  new MutationObserver(() => {
    const img = measureImg();
    const src = img ? img.currentSrc || img.src : "";
    if (src !== measure.src && measure.points.length) { measure = { src, points: [] }; }
    requestAnimationFrame(draw);
  }).observe(document.body, { subtree: true, childList: true, attributes: true, attributeFilter: ["src"] });
  window.addEventListener("resize", () => requestAnimationFrame(draw));
}

