/* pathor1 run browser: renders window.PATHOR1_BROWSE (data.js, written by `python -m evaluation.browse`).
   Plain DOM + SVG written for this page, no library: the folder must open offline from file:// and be shareable.
   Markup contract: each question is an element with data-question-id (and data-suite); each stage's answer in it
   carries data-stage. The filter state lives in the URL hash (#suite=..&c.rl=wrong&d.rl=fixed&q=..&page=2&per=50),
   so a view can be bookmarked and a test can open the page already filtered. */
"use strict";
(function () {
  const D = window.PATHOR1_BROWSE;
  const SVG_NS = "http://www.w3.org/2000/svg"; // a namespace name, never requested
  const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];
  const PER_PAGE = 50;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") node.textContent = v;
      else if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
    return node;
  }
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) node.setAttribute(k, v);
    for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
    return node;
  }
  const pct = (x) => (100 * x).toFixed(1);
  const signed = (x) => (x >= 0 ? "+" : "") + (100 * x).toFixed(1);
  const pval = (p) => (p < 0.001 ? p.toExponential(1) : p.toPrecision(2));

  if (!D) {
    document.getElementById("summary").append(el("p", { class: "error", text: "data.js is missing or failed to load." }));
    return;
  }

  // ------------------------------------------------------------------ derived data
  const stages = D.stages.map((s) => s.key);
  const lineageN = D.lineage_stages ? D.lineage_stages.length : stages.length;
  // The stage each one is compared with: the one before it in the lineage; a --compare head: the lineage's last.
  const prevOf = {};
  stages.forEach((s, i) => { if (i > 0) prevOf[s] = i < lineageN ? stages[i - 1] : stages[lineageN - 1]; });
  const Q = D.questions;
  for (const q of Q) {
    q.change = {};
    for (const s of stages) {
      const a = q.answers[s], p = q.answers[prevOf[s]];
      if (a && p) q.change[s] = a.c && !p.c ? "fixed" : !a.c && p.c ? "broken" : "same";
    }
  }
  let haystacks = null; // built on the first search only: 10 000 questions x stages of text
  function haystack(i) {
    if (!haystacks) {
      haystacks = Q.map((q) => [q.id, q.suite, q.subset, q.kind, q.question, q.answer, ...q.options,
        ...Object.values(q.answers).map((a) => a.p)].join("\n").toLowerCase());
    }
    return haystacks[i];
  }

  // ------------------------------------------------------------------ filter state <-> URL hash
  const facets = [
    { name: "suite", label: "suite", value: (q) => q.suite },
    { name: "subset", label: "subset", value: (q) => q.subset || "(none)" },
    { name: "kind", label: "kind", value: (q) => q.kind || "(none)" },
  ];
  for (const s of stages) {
    facets.push({ name: "c." + s, label: s, stage: s, value: (q) => (q.answers[s] ? (q.answers[s].c ? "correct" : "wrong") : "not evaluated") });
    if (prevOf[s]) facets.push({ name: "d." + s, label: s + " vs " + prevOf[s], stage: s, value: (q) => q.change[s] || "not compared" });
  }
  const state = { filters: {}, q: "", page: 1, per: PER_PAGE };

  function readHash() {
    const params = new URLSearchParams(location.hash.replace(/^#/, ""));
    state.filters = {};
    for (const f of facets) if (params.get(f.name)) state.filters[f.name] = params.get(f.name);
    state.q = params.get("q") || "";
    state.page = Math.max(1, parseInt(params.get("page") || "1", 10) || 1);
    const per = params.get("per");
    state.per = per === "all" ? Infinity : Math.max(1, parseInt(per || String(PER_PAGE), 10) || PER_PAGE);
  }
  function writeHash() {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(state.filters)) if (v) params.set(k, v);
    if (state.q) params.set("q", state.q);
    if (state.page > 1) params.set("page", String(state.page));
    if (state.per !== PER_PAGE) params.set("per", state.per === Infinity ? "all" : String(state.per));
    const hash = params.toString();
    history.replaceState(null, "", hash ? "#" + hash : location.pathname + location.search);
  }

  // ------------------------------------------------------------------ filtering with facet counts
  function evaluate() {
    const active = facets.filter((f) => state.filters[f.name]);
    const words = state.q.toLowerCase().split(/\s+/).filter(Boolean);
    const counts = Object.fromEntries(facets.map((f) => [f.name, new Map()]));
    const visible = [];
    Q.forEach((q, i) => {
      let fails = 0, failed = null;
      for (const f of active) if (f.value(q) !== state.filters[f.name]) { fails++; failed = f.name; }
      if (words.length) {
        const h = haystack(i);
        if (!words.every((w) => h.includes(w))) fails += 2; // text is not a facet: a miss counts nowhere
      }
      if (fails === 0) visible.push(q);
      // a facet's counts: the questions every OTHER filter lets through, so each option says what picking it gives
      for (const f of facets) {
        if (fails === 0 || (fails === 1 && failed === f.name)) {
          const v = f.value(q);
          counts[f.name].set(v, (counts[f.name].get(v) || 0) + 1);
        }
      }
    });
    return { visible, counts };
  }

  // ------------------------------------------------------------------ filter form
  const form = document.getElementById("filters");
  const selects = {};
  function buildForm() {
    const general = el("div", { class: "filter-row" });
    for (const f of facets.filter((f) => !f.stage)) {
      selects[f.name] = el("select", { name: f.name, id: "filter-" + f.name });
      general.append(el("label", { for: "filter-" + f.name }, f.label + " ", selects[f.name]));
    }
    const search = el("input", { type: "search", id: "filter-q", name: "q", placeholder: "search questions, answers, reasoning" });
    general.append(el("label", { for: "filter-q", class: "search" }, "text ", search));
    const per = el("select", { id: "filter-per", name: "per" },
      ["25", "50", "100", "250", "all"].map((v) => el("option", { value: v, text: v + " per page" })));
    general.append(per, el("button", { type: "button", id: "filter-reset", text: "clear filters" }));
    const stageRow = el("div", { class: "filter-row stages" });
    for (const s of stages) {
      const box = el("div", { class: "stage-filter" }, el("strong", { text: s }));
      for (const f of facets.filter((f) => f.stage === s)) {
        selects[f.name] = el("select", { name: f.name, id: "filter-" + f.name, "data-stage-filter": s });
        box.append(el("label", { for: "filter-" + f.name }, f.name.startsWith("c.") ? "answer " : "vs " + prevOf[s] + " ", selects[f.name]));
      }
      stageRow.append(box);
    }
    form.append(general, stageRow);
    form.addEventListener("change", (e) => {
      if (e.target === per) state.per = per.value === "all" ? Infinity : parseInt(per.value, 10);
      else if (e.target.name in selects) state.filters[e.target.name] = e.target.value;
      state.page = 1;
      update();
    });
    let timer = null;
    search.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => { state.q = search.value.trim(); state.page = 1; update(); }, 150);
    });
    form.addEventListener("submit", (e) => e.preventDefault());
    document.getElementById("filter-reset").addEventListener("click", () => {
      state.filters = {}; state.q = ""; state.page = 1; update();
    });
  }
  function fillForm(counts) {
    for (const f of facets) {
      const sel = selects[f.name];
      const seen = counts[f.name];
      const values = [...new Set([...seen.keys(), ...(state.filters[f.name] ? [state.filters[f.name]] : [])])].sort();
      const total = [...seen.values()].reduce((a, b) => a + b, 0);
      sel.replaceChildren(el("option", { value: "", text: "any (" + total + ")" }),
        ...values.map((v) => el("option", { value: v, text: v + " (" + (seen.get(v) || 0) + ")" })));
      sel.value = state.filters[f.name] || "";
    }
    document.getElementById("filter-q").value = state.q;
    const per = document.getElementById("filter-per");
    per.value = state.per === Infinity ? "all" : String(state.per);
    if (per.value === "") per.append(el("option", { value: String(state.per), text: state.per + " per page", selected: true }));
  }

  // ------------------------------------------------------------------ question cards
  function splitPrediction(text) {
    const think = /<think>([\s\S]*?)(<\/think>|$)/i.exec(text);
    const answer = /<answer>([\s\S]*?)(<\/answer>|$)/i.exec(text);
    return { reasoning: think ? think[1].trim() : null, answer: answer ? answer[1].trim() : null };
  }
  function media(q) {
    const box = el("div", { class: "media" });
    if (q.slide) box.append(slideFigure(q.slide, 160, true));
    for (const im of q.images) {
      if (im.missing) box.append(el("div", { class: "missing", text: "image not found: " + im.missing }));
      else box.append(el("img", { class: "thumb", src: im.t, "data-full": im.f, alt: "question image", loading: "lazy", tabindex: "0" }));
    }
    return box;
  }
  function slideFigure(slide, width, clickable) {
    const fig = el("figure", { class: "slide" + (clickable ? " clickable" : ""), "data-slide": "1" });
    const im = slide.image || {};
    const W = slide.width || 1, H = slide.height || 1;
    const h = Math.round(width * H / W);
    // Without a thumbnail the regions are still drawn, on a grey slide-shaped background.
    const backdrop = im.missing || !im.t ? svg("rect", { x: 0, y: 0, width: W, height: H, class: "no-thumb" })
      : svg("image", { href: clickable ? im.t : im.f, x: 0, y: 0, width: W, height: H, preserveAspectRatio: "none" });
    const s = svg("svg", { viewBox: "0 0 " + W + " " + H, width: width, height: h, class: "slide-svg", role: "img" },
      backdrop,
      slide.regions.map((r, i) => svg("rect", { x: r[0], y: r[1], width: r[2], height: r[3], class: "region", "stroke-width": Math.max(W, H) / 120 },
        svg("title", {}, "viewed region " + (i + 1) + ": x " + r[0] + ", y " + r[1] + ", " + r[2] + " x " + r[3] + " px"))));
    fig.append(s, el("figcaption", { text: slide.regions.length + " viewed region" + (slide.regions.length === 1 ? "" : "s") }));
    return fig;
  }
  function answerCell(q, s) {
    const a = q.answers[s];
    if (!a) return el("section", { class: "ans none", "data-stage": s }, el("h4", { text: s }), el("p", { class: "dim", text: "not evaluated" }));
    const change = q.change[s];
    const parts = splitPrediction(a.p);
    const badges = [el("span", { class: "badge " + (a.c ? "ok" : "bad"), text: a.c ? "correct" : "wrong" })];
    if (change === "fixed" || change === "broken") badges.push(el("span", { class: "badge " + change, text: change + " vs " + prevOf[s] }));
    if (!a.f) badges.push(el("span", { class: "badge warn", text: "format" }));
    if (a.j) badges.push(el("span", { class: "badge warn", text: "judge failed" }));
    const reasoning = parts.reasoning !== null ? parts.reasoning : (parts.answer === null ? a.p : "");
    return el("section", { class: "ans " + (a.c ? "ok" : "bad") + (change === "fixed" || change === "broken" ? " " + change : ""), "data-stage": s },
      el("h4", {}, s + " ", badges),
      el("p", { class: "extracted" }, el("span", { class: "dim", text: "answer " }),
        el("strong", { text: a.x !== null && a.x !== undefined ? a.x : "(none extracted)" }),
        q.kind === "open" ? el("span", { class: "dim", text: "  score " + a.s }) : null),
      reasoning ? el("pre", { class: "reasoning", text: reasoning }) : el("p", { class: "dim", text: "(no reasoning)" }),
      parts.answer !== null && parts.answer !== a.x ? el("p", { class: "answer-span" }, el("span", { class: "dim", text: "<answer> " }), parts.answer) : null);
  }
  function card(q) {
    const letters = "ABCDEFGHIJ";
    const goldLetter = /^[A-J]$/.test(String(q.answer).trim()) ? String(q.answer).trim() : null;
    const opts = q.options.length ? el("ol", { class: "options", type: "A" }, q.options.map((o, i) =>
      el("li", { class: letters[i] === goldLetter || o === q.answer ? "gold" : null, text: o }))) : null;
    const fixedOrBroken = stages.filter((s) => q.change[s] === "fixed" || q.change[s] === "broken")
      .map((s) => el("span", { class: "badge " + q.change[s], text: q.change[s] + " by " + s }));
    const answers = el("div", { class: "answers" }, stages.map((s) => answerCell(q, s)));
    answers.style.setProperty("--stages", String(stages.length));
    return el("article", { class: "q", "data-question-id": q.id, "data-suite": q.suite },
      el("header", {}, el("span", { class: "qid", text: q.id }),
        el("span", { class: "tag", text: q.suite }), q.subset ? el("span", { class: "tag", text: q.subset }) : null,
        el("span", { class: "tag", text: q.kind }), fixedOrBroken),
      el("div", { class: "qbody" }, media(q),
        el("div", { class: "qtext" }, el("p", { class: "question", text: q.question }), opts,
          el("p", { class: "gold-answer" }, el("span", { class: "dim", text: "gold " }), el("strong", { text: q.answer })))),
      answers);
  }

  // ------------------------------------------------------------------ pager and render
  function pager(nav, pages) {
    nav.replaceChildren();
    if (pages <= 1) return;
    const go = (p) => el("button", { type: "button", "data-page": p, class: p === state.page ? "current" : null, text: String(p),
      onclick: () => { state.page = p; update(); document.getElementById("browser").scrollIntoView(); } });
    const shown = new Set([1, pages, state.page - 2, state.page - 1, state.page, state.page + 1, state.page + 2]);
    let last = 0;
    nav.append(el("button", { type: "button", disabled: state.page === 1, text: "‹ prev", onclick: () => { state.page--; update(); } }));
    for (let p = 1; p <= pages; p++) {
      if (!shown.has(p)) continue;
      if (p > last + 1) nav.append(el("span", { class: "dim", text: "…" }));
      nav.append(go(p)); last = p;
    }
    nav.append(el("button", { type: "button", disabled: state.page === pages, text: "next ›", onclick: () => { state.page++; update(); } }));
  }
  function update() {
    writeHash();
    render();
  }
  function render() {
    const t0 = performance.now();
    const { visible, counts } = evaluate();
    fillForm(counts);
    const pages = Math.max(1, Math.ceil(visible.length / state.per));
    state.page = Math.min(state.page, pages);
    const start = state.per === Infinity ? 0 : (state.page - 1) * state.per;
    const shown = state.per === Infinity ? visible : visible.slice(start, start + state.per);
    const list = document.getElementById("questions");
    const frag = document.createDocumentFragment();
    for (const q of shown) frag.append(card(q));
    list.replaceChildren(frag);
    const count = document.getElementById("visible-count");
    count.textContent = String(visible.length);
    count.dataset.count = String(visible.length);
    document.getElementById("total-count").textContent = String(Q.length);
    document.getElementById("page-info").textContent = shown.length
      ? "(showing " + (start + 1) + "–" + (start + shown.length) + ", page " + state.page + " of " + pages + ")" : "";
    pager(document.getElementById("pager-top"), pages);
    pager(document.getElementById("pager-bottom"), pages);
    document.body.dataset.visible = String(visible.length);
    document.body.dataset.shown = String(shown.length);
    document.body.dataset.renderMs = (performance.now() - t0).toFixed(1); // filter + counts + cards, for benchmarks
  }

  // ------------------------------------------------------------------ summary
  function table(head, rows, cls) {
    return el("table", { class: cls || null }, el("thead", {}, el("tr", {}, head.map((h) => el("th", { text: h })))),
      el("tbody", {}, rows));
  }
  function ciBar(acc, lo, hi) {
    const W = 160, H = 14, x = (v) => (W * v).toFixed(1);
    return svg("svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H, class: "cibar", role: "img" },
      svg("rect", { x: 0, y: 3, width: W, height: H - 6, class: "track" }),
      svg("rect", { x: 0, y: 3, width: x(acc), height: H - 6, class: "fill" }),
      svg("line", { x1: x(lo), x2: x(hi), y1: H / 2, y2: H / 2, class: "whisker" }),
      svg("line", { x1: x(lo), x2: x(lo), y1: 1, y2: H - 1, class: "whisker" }),
      svg("line", { x1: x(hi), x2: x(hi), y1: 1, y2: H - 1, class: "whisker" }),
      svg("title", {}, pct(acc) + "% [" + pct(lo) + ", " + pct(hi) + "]"));
  }
  function lineageSection() {
    const items = D.stages.map((s, i) => el("li", { "data-lineage-stage": s.key },
      el("strong", { text: s.key }), " ", el("code", { text: s.label }),
      i >= lineageN ? el("span", { class: "badge", text: "compared" }) : null,
      el("span", { class: "dim", text: [s.kind, s.created].filter(Boolean).join(", ") ? "  " + [s.kind, s.created].filter(Boolean).join(", ") : "" }),
      Object.keys(s.settings).length ? el("div", { class: "settings" }, Object.entries(s.settings).map(([k, v]) =>
        el("span", { class: "setting" }, el("span", { class: "dim", text: k + " " }), typeof v === "object" ? JSON.stringify(v) : String(v)))) : null,
      Object.keys(s.config).length ? el("details", {}, el("summary", { text: "full config" }), el("pre", { text: JSON.stringify(s.config, null, 1) })) : null));
    return el("div", { class: "block" }, el("h3", { text: "Lineage (oldest first)" }),
      el("p", {}, el("code", { text: D.stages.slice(0, lineageN).map((s) => s.label).join(" → ") })), el("ol", { class: "lineage" }, items));
  }
  function accuracySection() {
    const blocks = [el("h3", { text: "Accuracy by stage (Wilson 95% CI)" })];
    for (const suite of D.suites) {
      const rows = D.stages.filter((s) => s.evaluations[suite]).map((s) => {
        const e = s.evaluations[suite], o = e.overall;
        return el("tr", { "data-acc-stage": s.key },
          el("td", { text: s.key }), el("td", { class: "num", text: String(o.n) }), el("td", { class: "num", text: String(o.correct) }),
          el("td", { class: "num", text: pct(o.accuracy) }), el("td", { text: "[" + pct(o.ci95[0]) + ", " + pct(o.ci95[1]) + "]" }),
          el("td", {}, ciBar(o.accuracy, o.ci95[0], o.ci95[1])), el("td", { class: "num", text: pct(o.format_rate) }),
          el("td", { class: "num", text: o.mean_tokens.toFixed(1) }), el("td", { text: e.template || "" }));
      });
      blocks.push(el("h4", { text: suite }), table(["stage", "n", "correct", "accuracy %", "95% CI", "", "format %", "mean tokens", "template"], rows, "acc"));
    }
    if (!D.suites.length) blocks.push(el("p", { class: "error", text: "No evaluation found for this lineage (run python -m evaluation.run --model REF --suite NAME)." }));
    return el("div", { class: "block" }, blocks);
  }
  function comparisonSection() {
    const rows = D.comparisons.map((c) => {
      const link = (what, n) => el("a", { href: "#suite=" + encodeURIComponent(c.suite) + "&d." + encodeURIComponent(c.after) + "=" + what,
        class: "filter-link " + what, "data-filter": "d." + c.after + "=" + what, text: String(n) });
      return el("tr", {}, el("td", { text: c.suite }), el("td", { text: c.after + " − " + c.before }),
        el("td", { class: "num", text: String(c.n) }), el("td", { class: "num", text: signed(c.difference) }),
        el("td", { text: "[" + signed(c.ci95[0]) + ", " + signed(c.ci95[1]) + "]" }), el("td", { class: "num", text: pval(c.mcnemar_p) }),
        el("td", { class: "num" }, link("fixed", c.fixed)), el("td", { class: "num" }, link("broken", c.broken)),
        el("td", { text: c.supported ? "yes" : "no" }));
    });
    return el("div", { class: "block" }, el("h3", { text: "Paired comparisons (same questions)" }),
      el("p", { class: "dim", text: "difference in accuracy points with Newcombe's paired 95% CI; exact McNemar p on the discordant pairs; fixed = wrong before, right after. Click a count to list those questions." }),
      rows.length ? table(["suite", "comparison", "n", "difference", "95% CI", "McNemar p", "fixed", "broken", "CI above 0"], rows, "cmp")
        : el("p", { class: "dim", text: "needs two evaluated stages on the same suite" }));
  }
  function rewardSection() {
    const R = D.rewards;
    const block = el("div", { class: "block" }, el("h3", { text: "RL reward curves" }));
    if (!R.series.length) {
      block.append(el("p", { class: "dim", text: "no TensorBoard scalars matching " + R.tags.join(", ") + " in this lineage's logs" }));
      return block;
    }
    const W = 720, H = 300, m = { l: 52, r: 12, t: 12, b: 38 };
    const all = R.series.flatMap((s) => s.values), steps = R.series.flatMap((s) => s.steps);
    let y0 = Math.min(...all), y1 = Math.max(...all);
    if (y0 === y1) { y0 -= 0.5; y1 += 0.5; }
    const x0 = Math.min(...steps), x1 = Math.max(x0 + 1, Math.max(...steps));
    const X = (v) => (m.l + (W - m.l - m.r) * (v - x0) / (x1 - x0)).toFixed(1);
    const Y = (v) => (m.t + (H - m.t - m.b) * (1 - (v - y0) / (y1 - y0))).toFixed(1);
    const chart = svg("svg", { viewBox: "0 0 " + W + " " + H, class: "curves", role: "img", "aria-label": "reward curves" });
    for (let k = 0; k <= 4; k++) {
      const v = y0 + (y1 - y0) * k / 4, sx = x0 + (x1 - x0) * k / 4;
      chart.append(svg("line", { x1: m.l, x2: W - m.r, y1: Y(v), y2: Y(v), class: "grid" }),
        svg("text", { x: m.l - 6, y: Y(v), class: "tick", "text-anchor": "end", "dominant-baseline": "middle" }, v.toFixed(2)),
        svg("text", { x: X(sx), y: H - m.b + 16, class: "tick", "text-anchor": "middle" }, String(Math.round(sx))));
    }
    chart.append(svg("text", { x: (m.l + W - m.r) / 2, y: H - 4, class: "axis", "text-anchor": "middle" }, "training step"),
      svg("text", { x: 12, y: (m.t + H - m.b) / 2, class: "axis", "text-anchor": "middle", transform: "rotate(-90 12 " + (m.t + H - m.b) / 2 + ")" }, "reward (batch mean)"));
    const names = R.series.map((s) => s.name);
    const legend = el("ul", { class: "legend" });
    R.series.forEach((s, i) => {
      const color = PALETTE[i % PALETTE.length];
      const pts = (vals) => s.steps.map((st, j) => X(st) + "," + Y(vals[j])).join(" ");
      chart.append(svg("polyline", { points: pts(s.values), class: "raw", stroke: color }),
        svg("polyline", { points: pts(s.smoothed), class: "smooth", stroke: color }, svg("title", {}, s.name)));
      const label = s.name + (names.filter((n) => n === s.name).length > 1 ? " (" + s.run + ")" : "");
      const weight = s.name.startsWith("total") ? "weighted sum of the rewards" : s.weight === null || s.weight === undefined ? "weight: RL default" : "weight " + s.weight;
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = color;
      legend.append(el("li", { "data-series": s.tag }, swatch, el("strong", { text: label }), el("span", { class: "dim", text: "  " + weight + "  (" + s.tag + ")" })));
    });
    const weights = Object.entries(R.weights || {}).map(([k, v]) => k + " " + (v === null ? "default" : v)).join(", ");
    block.append(chart, legend, el("p", { class: "dim", text: "bold: exponential moving average, smoothing weight " + R.smoothing +
      " (TensorBoard's, debiased); faint: raw values." + (weights ? " Reward weights of the RL config: " + weights + "." : "") }));
    return block;
  }
  function confusionSection() {
    const block = el("div", { class: "block" }, el("h3", { text: "Per-class confusion (MCQ; rows gold, columns answered)" }));
    let any = false;
    for (const suite of D.suites) {
      for (const s of D.stages) {
        for (const c of s.confusion[suite] || []) {
          any = true;
          const rows = c.classes.map((g, i) => {
            const total = c.counts[i].reduce((a, b) => a + b, 0) || 1;
            return el("tr", {}, el("th", { text: g }), c.counts[i].map((n, j) => {
              const td = el("td", { class: "num" + (c.predicted[j] === g ? " diag" : ""), text: String(n) });
              td.style.background = "rgba(" + (c.predicted[j] === g ? "44,160,44," : "214,39,40,") + (0.55 * n / total).toFixed(3) + ")";
              return td;
            }), el("td", { class: "num dim", text: pct(c.counts[i][c.predicted.indexOf(g)] / total) + "%" }));
          });
          block.append(el("details", { open: s === D.stages[D.stages.length - 1] || null, "data-confusion": suite + "/" + s.key },
            el("summary", { text: suite + " — " + s.key + " — " + c.title + " (n " + c.n + ")" }),
            table(["gold \\ answered", ...c.predicted, "recall"], rows, "confusion")));
        }
      }
    }
    if (!any) block.append(el("p", { class: "dim", text: "no MCQ predictions" }));
    return block;
  }
  function summary() {
    document.getElementById("title-ref").textContent = "— " + D.ref + (D.compare.length ? " vs " + D.compare.join(", ") : "");
    document.getElementById("generated").textContent = "generated " + D.generated + " from " + D.home + " · " +
      Q.length + " questions · " + stages.length + " stages · images: " + D.image_counts.copied + " copied, " +
      D.image_counts.inlined + " inlined, " + D.image_counts.missing + " missing";
    document.getElementById("summary").append(el("h2", { text: "Summary" }), lineageSection(), accuracySection(),
      comparisonSection(), rewardSection(), confusionSection());
  }

  // ------------------------------------------------------------------ lightbox
  const box = document.getElementById("lightbox"), boxBody = document.getElementById("lightbox-body");
  function openLightbox(content) { boxBody.replaceChildren(content); box.hidden = false; }
  document.getElementById("questions").addEventListener("click", (e) => {
    const img = e.target.closest("img.thumb");
    if (img) openLightbox(el("img", { src: img.dataset.full, alt: "full-size image" }));
    const fig = e.target.closest("figure.slide.clickable");
    if (fig) {
      const q = Q.find((q) => q.id === fig.closest("[data-question-id]").dataset.questionId && q.suite === fig.closest("[data-question-id]").dataset.suite);
      if (q && q.slide) openLightbox(slideFigure(q.slide, Math.min(1000, window.innerWidth - 80), false));
    }
  });
  document.getElementById("jump").addEventListener("click", (e) => {
    if (e.target.dataset.jump) document.getElementById(e.target.dataset.jump).scrollIntoView();
  });
  box.addEventListener("click", (e) => { if (e.target === box || e.target.id === "lightbox-close") box.hidden = true; });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") box.hidden = true; });

  // Scripts and tests learn that a new hash was rendered from data-rendered.
  // A hash change comes from a link (a fixed / broken count in the summary) or the address bar, never from the
  // form (replaceState): show the list it selected.
  window.addEventListener("hashchange", () => {
    readHash(); render(); document.body.dataset.rendered = location.hash;
    document.getElementById("browser").scrollIntoView();
  });
  readHash();
  summary();
  buildForm();
  render();
  document.body.dataset.readyMs = performance.now().toFixed(1); // since navigation start: the load time, measured
  document.body.dataset.ready = "1";
})();
