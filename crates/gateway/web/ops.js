// Shop's operations page (administrators only; the gateway serves it to no one else): live
// figures, dead letters, the catalog and one order's timeline, a page per hash route, all
// from the administrators' API (/api/admin/...) with the session cookie.

import { h, money, api, showError, render, field } from "./common.js";

const EVERY_MS = 2000;
const REASONS = { out_of_stock: "out of stock", payment_failed: "payment declined", timeout: "timed out" };

let leave = []; // what to stop when the page changes (timers)

function every(fn) {
  const timer = setInterval(() => fn().catch((e) => showError(e.message)), EVERY_MS);
  leave.push(() => clearInterval(timer));
}

function note(text) {
  return h("p", { class: "muted", role: "status" }, text);
}

function fixed(n, digits = 1) {
  return n == null ? "–" : Number(n).toFixed(digits);
}

function table(head, rows, attrs = {}) {
  return h("div", { class: "scroll" }, h("table", attrs,
    h("thead", {}, h("tr", {}, head.map((c) => h("th", { class: c.endsWith(" ") ? "num" : null }, c.trim())))),
    h("tbody", {}, rows)));
}

const num = (v) => h("td", { class: "num" }, v);

// Asks to confirm in the page's dialog; resolves to whether it was confirmed.
function confirmed(text, yes = "Replay") {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-yes").textContent = yes;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "yes"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

// ---- live ----

async function live() {
  const tiles = h("ul", { class: "tiles", id: "tiles" });
  const byStatus = h("div", { id: "by-status" });
  const queues = h("div", { id: "queues" });
  const programs = h("div", { id: "programs" });
  render("Operations",
    note(`Refreshed every ${EVERY_MS / 1000} s; rates and latencies over the last 15 s.`),
    tiles, h("h2", {}, "Orders by status"), byStatus, h("h2", {}, "Queues"), queues,
    h("h2", {}, "Programs"), programs);
  const fill = async () => {
    const o = await api("GET", "/api/admin/overview");
    const w = o.sagas.window;
    const rate = (s) => (w ? fixed(w.per_second[s] ?? 0) : "–");
    const lat = (q) => (w?.latency_ms[q] != null ? `${w.latency_ms[q]} ms` : "–");
    const dead = o.queues.reduce((s, q) => s + (q.dead_letters || 0), 0);
    const tile = (label, value, id) => h("li", { class: "tile" }, label, h("span", { class: "n", id }, value));
    tiles.replaceChildren(
      tile("Confirmed / s", rate("CONFIRMED"), "rate-confirmed"),
      tile("Cancelled / s", rate("CANCELLED"), "rate-cancelled"),
      tile("Saga p50", lat("p50"), "p50"), tile("Saga p90", lat("p90"), "p90"), tile("Saga p99", lat("p99"), "p99"),
      h("li", { class: "tile" }, h("a", { href: "#/dead-letters" }, "Dead letters"), h("span", { class: "n", id: "dead-total" }, dead)));
    const counts = o.orders.by_status || {};
    byStatus.replaceChildren(o.orders.error ? note(o.orders.error)
      : table(["Status", "Orders "], Object.entries(counts).map(([s, n]) =>
        h("tr", { "data-status": s }, h("td", {}, h("span", { class: `status ${s}` }, s)), num(n)))));
    const unacked = {};
    for (const p of o.programs) unacked[p.name] = p.instances.reduce((s, i) => s + (i.in_flight || 0), 0);
    queues.replaceChildren(table(["Service", "Ready ", "Unacked ", "Consumers ", "Dead letters "],
      o.queues.map((q) => q.error
        ? h("tr", {}, h("td", {}, q.service), h("td", { colspan: "4", class: "down" }, q.error))
        : h("tr", { "data-queue": q.service }, h("td", {}, q.service), num(q.ready), num(unacked[q.service] ?? 0),
          num(q.consumers), num(q.dead_letters)))));
    programs.replaceChildren(table(["Program", "Instance", "Ready", "Outbox backlog ", "Oldest unsent ", "Memory "],
      o.programs.flatMap((p) => p.instances.map((i) => h("tr", { "data-program": p.name },
        h("td", {}, p.name), h("td", {}, i.url),
        h("td", {}, h("span", { class: i.ready ? "up" : "down", title: i.error || JSON.stringify(i.checks || {}) },
          i.ready ? "ready" : "not ready")),
        num(i.outbox_depth ?? "–"), num(i.outbox_oldest_age_seconds != null ? `${fixed(i.outbox_oldest_age_seconds)} s` : "–"),
        num(i.resident_memory_bytes ? `${fixed(i.resident_memory_bytes / 1048576, 0)} MiB` : "–"))))));
  };
  await fill();
  every(fill);
}

// ---- dead letters ----

// Replays after a confirmation; resolves to what was done (null: not confirmed).
// `id`: one message; null: every dead letter of the service.
async function replay(service, id, what) {
  if (!(await confirmed(`Send ${what} of ${service} back to its queue?`))) return null;
  const path = id ? `${encodeURIComponent(id)}/replay` : "replay";
  try {
    const r = await api("POST", `/api/admin/dead-letters/${path}?service=${encodeURIComponent(service)}`);
    return `Replayed ${r.replayed} message(s) of ${service}.`;
  } catch (e) {
    showError(`Not replayed: ${e.message}`);
    return null;
  }
}

async function deadLetters(doneText = "") {
  const d = await api("GET", "/api/admin/dead-letters?limit=100");
  const done = h("p", { id: "done", role: "status" }, doneText);
  const again = async (text) => { if (text) await deadLetters(text); };
  const perService = h("ul", { class: "tiles" }, d.services.map((s) => h("li", { class: "tile" }, s.service,
    s.error ? h("span", { class: "down" }, s.error) : h("span", { class: "n" }, s.total),
    s.total ? h("button", {
      type: "button", class: "secondary", "data-replay-all": s.service,
      onclick: async () => again(await replay(s.service, null, "every dead letter")),
    }, "Replay all") : null)));
  const rows = d.items.map((m) => h("tr", { "data-message": m.message_id },
    h("td", {}, m.service), h("td", {}, m.event_type), h("td", {}, m.reason), num(m.attempts),
    h("td", {}, m.first_death_at ? new Date(m.first_death_at).toLocaleString() : "–"),
    h("td", {}, h("div", { class: "row" },
      h("a", { href: `#/dead-letters/${m.service}/${encodeURIComponent(m.message_id)}` }, "Show"),
      h("button", {
        type: "button", class: "secondary", "data-replay": m.message_id,
        onclick: async () => again(await replay(m.service, m.message_id, `message ${m.message_id}`)),
      }, "Replay")))));
  render("Dead letters", done, perService,
    d.items.length ? table(["Service", "Type", "Reason", "Attempts ", "First dead", ""], rows, { id: "dead-letters" })
      : note("No dead letters."));
  const shown = d.items.length;
  if (shown < d.total) document.getElementById("view").append(note(`Showing ${shown} of ${d.total}.`));
}

async function deadLetter(service, id) {
  const m = await api("GET", `/api/admin/dead-letters/${encodeURIComponent(id)}?service=${encodeURIComponent(service)}`);
  let body = m.body;
  try {
    body = JSON.stringify(JSON.parse(m.body), null, 2);
  } catch {
    // not JSON: shown as it is
  }
  render(`Dead letter ${id.slice(0, 8)}`,
    h("p", { id: "done", role: "status" }),
    h("dl", {},
      h("dt", {}, "Service"), h("dd", {}, m.service), h("dt", {}, "Type"), h("dd", {}, m.event_type),
      h("dt", {}, "Reason"), h("dd", {}, m.reason), h("dt", {}, "Attempts"), h("dd", {}, m.attempts),
      h("dt", {}, "From queue"), h("dd", {}, m.source_queue)),
    h("h2", {}, "Body"), h("pre", { id: "body" }, body),
    h("div", { class: "row" },
      h("button", {
        type: "button",
        onclick: async () => {
          const text = await replay(service, id, `message ${id}`);
          if (text) document.getElementById("done").textContent = text;
        },
      }, "Replay"),
      h("a", { href: "#/dead-letters" }, "All dead letters")));
}

// ---- catalog ----

async function stockOf(id) {
  try {
    return await api("GET", `/api/inventory/${id}`);
  } catch (e) {
    if (e.status === 404) return null;
    throw e;
  }
}

function cents(text) {
  return Math.round(parseFloat(String(text).replace(",", ".")) * 100);
}

async function catalog(params) {
  const cursor = params.get("cursor");
  const page = await api("GET", `/api/products?limit=20${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
  const stock = await Promise.all(page.items.map((p) => stockOf(p.id)));
  const rows = page.items.map((p, i) => h("tr", { "data-product": p.id },
    h("td", {}, h("a", { href: `#/catalog/${p.id}` }, p.name)), h("td", {}, p.sku),
    num(money(p.price_cents, p.currency)), num(stock[i]?.available ?? "–"), num(stock[i]?.reserved ?? "–")));
  const form = h("form", {
    id: "new-product",
    onsubmit: async (ev) => {
      ev.preventDefault();
      const f = new FormData(form);
      try {
        const p = await api("POST", "/api/products", {
          sku: f.get("sku"), name: f.get("name"), description: f.get("description"),
          price_cents: cents(f.get("price")), initial_stock: parseInt(f.get("initial_stock"), 10) || 0,
        });
        location.hash = `#/catalog/${p.id}`;
      } catch (e) {
        showError(`The product was not created: ${e.message}`);
      }
    },
  }, field("sku", "SKU", "text", "off", { pattern: "[A-Za-z0-9_\\-]{1,64}" }), field("name", "Name", "text", "off"),
  h("label", { for: "description" }, "Description", h("textarea", { id: "description", name: "description", rows: "2" })),
  field("price", "Price", "text", "off", { inputmode: "decimal", pattern: "[0-9]+([.,][0-9]{1,2})?" }),
  field("initial_stock", "Initial stock", "number", "off", { min: "0", max: "1000000", value: "0" }),
  h("button", { type: "submit" }, "Create product"));
  render("Catalog",
    page.items.length ? table(["Product", "SKU", "Price ", "Available ", "Reserved "], rows, { id: "products" }) : note("No products yet."),
    page.next_cursor ? h("p", {}, h("a", { href: `#/catalog?cursor=${encodeURIComponent(page.next_cursor)}` }, "More products")) : null,
    h("h2", {}, "New product"), form);
}

async function productAdmin(id) {
  const p = await api("GET", `/api/products/${id}`);
  const stock = h("p", { id: "stock" }, "Checking stock...");
  const showStock = async () => {
    const s = await stockOf(id);
    stock.textContent = s ? `${s.available} available, ${s.reserved} reserved` : "Stock not known yet";
  };
  const done = h("p", { id: "done", role: "status" });
  const edit = h("form", {
    id: "edit-product",
    onsubmit: async (ev) => {
      ev.preventDefault();
      const f = new FormData(edit);
      try {
        await api("PATCH", `/api/products/${id}`, {
          name: f.get("name"), description: f.get("description"), price_cents: cents(f.get("price")),
        });
        done.textContent = "Saved.";
      } catch (e) {
        showError(`Not saved: ${e.message}`);
      }
    },
  }, field("name", "Name", "text", "off", { value: p.name }),
  h("label", { for: "description" }, "Description", h("textarea", { id: "description", name: "description", rows: "2" }, p.description)),
  field("price", "Price", "text", "off", { value: (p.price_cents / 100).toFixed(2), inputmode: "decimal" }),
  h("button", { type: "submit" }, "Save"));
  const adjust = h("form", {
    id: "adjust-stock",
    onsubmit: async (ev) => {
      ev.preventDefault();
      const f = new FormData(adjust);
      try {
        await api("POST", `/api/inventory/${id}/adjustments`, {
          delta: parseInt(f.get("delta"), 10), reason: f.get("reason"),
        });
        done.textContent = "Stock adjusted.";
        adjust.reset();
        await showStock();
      } catch (e) {
        showError(`Stock not adjusted: ${e.message}`);
      }
    },
  }, field("delta", "Units to add (negative: remove)", "number", "off", { step: "1" }),
  field("reason", "Reason", "text", "off", { value: "restock" }),
  h("button", { type: "submit" }, "Adjust stock"));
  render(p.name, h("p", { class: "muted" }, `${p.sku} · ${money(p.price_cents, p.currency)}`), stock, done,
    h("h2", {}, "Edit"), edit, h("h2", {}, "Stock"), adjust,
    h("p", {}, h("a", { href: "#/catalog" }, "Back to the catalog")));
  await showStock();
  every(showStock);
}

// ---- one order's timeline ----

async function timeline(id) {
  const t = await api("GET", `/api/admin/orders/${encodeURIComponent(id)}/timeline`);
  const at = (when) => `+${new Date(when) - new Date(t.placed_at)} ms`;
  const status = t.status === "CANCELLED" && t.cancel_reason ? `CANCELLED (${REASONS[t.cancel_reason] || t.cancel_reason})` : t.status;
  const rows = t.events.map((e) => h("tr", { "data-event": e.event_type },
    num(at(e.written_at)), h("td", {}, e.event_type), h("td", {}, e.published_by),
    num(e.sent_at ? at(e.sent_at) : "unsent"),
    h("td", {}, [...e.handled_by.map(([s, when]) => `${s} ${at(when)}`), ...e.waiting_for.map((s) => `${s} waiting`)].join(", ") || "–")));
  render(`Order ${t.order_id.slice(0, 8)}`,
    h("p", {}, "Status: ", h("span", { id: "timeline-status", class: `status ${t.status}` }, status)),
    h("p", { class: "muted" }, `Placed ${new Date(t.placed_at).toLocaleString()}; trace ${t.trace_id || "– (not traced)"}`),
    h("h2", {}, "Status history"),
    h("ol", { class: "history" }, t.history.map(([s, when]) => h("li", {}, `${s} ${at(when)}`))),
    h("h2", {}, "Events"),
    table(["After ", "Event", "Written by", "Confirmed ", "Handled by"], rows, { id: "events" }),
    h("h2", {}, "Dead letters"),
    t.dead_letters == null ? note("Not checked: a service could not be asked.")
      : t.dead_letters.length ? h("ul", {}, t.dead_letters.map((d) => h("li", {}, `${d.service} ${d.event_type} after ${d.attempts} attempt(s): ${d.reason}`)))
        : note("None."));
  if (!["CONFIRMED", "CANCELLED"].includes(t.status)) every(async () => {
    if (location.hash.includes(id)) route();
  });
}

// ---- routing ----

async function route() {
  for (const stop of leave) stop();
  leave = [];
  showError("");
  const [path, query] = (location.hash.slice(1) || "/").split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  try {
    if (parts.length === 0) await live();
    else if (parts[0] === "dead-letters" && parts[2]) await deadLetter(parts[1], parts[2]);
    else if (parts[0] === "dead-letters") await deadLetters();
    else if (parts[0] === "catalog" && parts[1]) await productAdmin(parts[1]);
    else if (parts[0] === "catalog") await catalog(params);
    else if (parts[0] === "orders" && parts[1]) await timeline(parts[1]);
    else render("Not found", h("p", {}, h("a", { href: "#/" }, "Back to the live figures")));
  } catch (e) {
    if (e.status === 401 || e.status === 403) {
      location.assign(`/#/login?next=${encodeURIComponent("/ops")}`);
      return;
    }
    render("Something went wrong", h("p", {}, e.message));
  }
}

document.getElementById("logout").addEventListener("click", async () => {
  try {
    await api("DELETE", "/api/auth/session");
  } finally {
    location.assign("/");
  }
});
document.getElementById("find-order").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const id = document.getElementById("order-id").value.trim();
  if (id) location.hash = `#/orders/${encodeURIComponent(id)}`;
});
window.addEventListener("hashchange", route);
api("GET", "/api/auth/session").then((s) => {
  document.getElementById("who").textContent = s.user?.email || "";
}).catch(() => {});
await route();
