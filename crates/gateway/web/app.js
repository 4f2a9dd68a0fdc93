// Shop's storefront: a page per hash route, the public API underneath. The session lives in
// an HttpOnly cookie the gateway sets (POST /api/auth/session), so this code never sees the
// token; the cart lives in localStorage.

import { h, money, api, showError, render, field } from "./common.js";

const CART_KEY = "shop.cart";
const TERMINAL = ["CONFIRMED", "CANCELLED"];
const REASONS = {
  out_of_stock: "an item is out of stock",
  payment_failed: "the payment was declined",
  timeout: "it was not completed in time",
};

let me = null; // the logged-in user, or null
let leave = []; // what to stop when the page changes (timers, event streams)

// ---- helpers ----

function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

// After a login: back to a page of the storefront (`#/...`) or to another of this site's
// pages (`/ops`); nowhere else.
function leaveFor(next) {
  if (/^\/[a-z]/.test(next)) location.assign(next);
  else go(next.startsWith("#/") ? next : "#/");
}

function needUser() {
  if (me) return true;
  go(`#/login?next=${encodeURIComponent(location.hash)}`);
  return false;
}

// ---- the cart (localStorage) ----

function cart() {
  try {
    return JSON.parse(localStorage.getItem(CART_KEY)) || {};
  } catch {
    return {};
  }
}

function saveCart(c) {
  localStorage.setItem(CART_KEY, JSON.stringify(c));
  showCartCount();
}

function showCartCount() {
  const n = Object.values(cart()).reduce((s, l) => s + l.quantity, 0);
  document.getElementById("cart-count").textContent = n;
}

// ---- the session ----

async function loadMe() {
  me = (await api("GET", "/api/auth/session")).user;
  showSession();
}

function showSession() {
  document.getElementById("login-link").hidden = !!me;
  document.getElementById("logout").hidden = !me;
  const who = document.getElementById("who");
  who.hidden = !me;
  who.textContent = me ? me.email : "";
  for (const a of document.querySelectorAll("[data-needs-user]")) a.hidden = !me;
  document.getElementById("ops-link").hidden = me?.role !== "admin";
}

document.getElementById("logout").addEventListener("click", async () => {
  try {
    await api("DELETE", "/api/auth/session");
  } finally {
    me = null;
    showSession();
    go("#/login");
  }
});

// ---- pages ----

async function catalog(params) {
  const cursor = params.get("cursor");
  const page = await api("GET", `/api/products?limit=12${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
  const list = h("ul", { class: "grid" }, page.items.map((p) =>
    h("li", { class: "card" },
      h("h2", {}, h("a", { href: `#/products/${p.id}` }, p.name)),
      h("p", { class: "price" }, money(p.price_cents, p.currency)),
      h("p", { class: "muted" }, p.description))));
  const more = page.next_cursor
    ? h("p", {}, h("a", { href: `#/?cursor=${encodeURIComponent(page.next_cursor)}`, class: "button" }, "More products"))
    : null;
  render("Catalog", page.items.length ? list : h("p", {}, "No products yet."), more);
}

async function product(id) {
  const p = await api("GET", `/api/products/${id}`);
  const stock = h("p", { id: "stock", class: "muted" }, "Checking stock...");
  const qty = h("input", { id: "qty", type: "number", min: "1", max: "99", value: "1", inputmode: "numeric" });
  const add = h("button", {
    type: "submit",
  }, "Add to cart");
  const form = h("form", {
    onsubmit: (ev) => {
      ev.preventDefault();
      const n = Math.max(1, Math.min(99, parseInt(qty.value, 10) || 1));
      const c = cart();
      const line = c[p.id] || { name: p.name, price_cents: p.price_cents, currency: p.currency, quantity: 0 };
      line.quantity = Math.min(99, line.quantity + n);
      c[p.id] = line;
      saveCart(c);
      add.textContent = "Added";
      setTimeout(() => { add.textContent = "Add to cart"; }, 1200);
    },
  }, h("label", { for: "qty" }, "Quantity", qty), add);
  render(p.name,
    h("p", { class: "price" }, money(p.price_cents, p.currency)),
    h("p", {}, p.description), stock, form);
  const refresh = async () => {
    try {
      const s = await api("GET", `/api/inventory/${id}`);
      stock.textContent = s.available > 0 ? `${s.available} in stock` : "Out of stock";
    } catch (e) {
      stock.textContent = e.status === 404 ? "Stock not known yet" : "Stock unavailable";
    }
  };
  await refresh();
  const timer = setInterval(refresh, 3000);
  leave.push(() => clearInterval(timer));
}

function cartPage() {
  const c = cart();
  const ids = Object.keys(c);
  if (!ids.length) {
    render("Cart", h("p", {}, "Your cart is empty. ", h("a", { href: "#/" }, "Browse the catalog.")));
    return;
  }
  const currency = c[ids[0]].currency;
  const total = ids.reduce((s, id) => s + c[id].price_cents * c[id].quantity, 0);
  const rows = ids.map((id) => {
    const l = c[id];
    const input = h("input", {
      type: "number", min: "0", max: "99", value: String(l.quantity), "aria-label": `Quantity of ${l.name}`,
      onchange: () => {
        const next = cart();
        const n = Math.max(0, Math.min(99, parseInt(input.value, 10) || 0));
        if (n === 0) delete next[id];
        else next[id].quantity = n;
        saveCart(next);
        cartPage();
      },
    });
    return h("tr", {},
      h("td", {}, h("a", { href: `#/products/${id}` }, l.name)),
      h("td", { class: "num" }, input),
      h("td", { class: "num" }, money(l.price_cents * l.quantity, l.currency)));
  });
  const card = h("select", { id: "card" },
    h("option", { value: "tok_visa" }, "Test card: approved"),
    h("option", { value: "tok_decline" }, "Test card: declined"));
  const place = h("button", { type: "submit" }, "Place order");
  const form = h("form", {
    onsubmit: async (ev) => {
      ev.preventDefault();
      if (!needUser()) return;
      place.disabled = true;
      try {
        const items = Object.entries(cart()).map(([product_id, l]) => ({ product_id, quantity: l.quantity }));
        const order = await api("POST", "/api/orders", { items, payment_token: card.value },
          { "Idempotency-Key": crypto.randomUUID() });
        saveCart({});
        go(`#/orders/${order.id}`);
      } catch (e) {
        showError(`The order was not placed: ${e.message}`);
        place.disabled = false;
      }
    },
  }, h("label", { for: "card" }, "Payment", card), place);
  render("Cart",
    h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "Product"), h("th", { class: "num" }, "Quantity"), h("th", { class: "num" }, "Amount"))),
      h("tbody", {}, rows),
      h("tfoot", {}, h("tr", {}, h("th", {}, "Total"), h("td", {}), h("th", { class: "num", id: "total" }, money(total, currency))))),
    form);
}

function statusText(status, reason) {
  return status === "CANCELLED" && reason ? `CANCELLED: ${REASONS[reason] || reason}` : status;
}

async function order(id) {
  if (!needUser()) return;
  const o = await api("GET", `/api/orders/${id}`);
  const status = h("p", {}, "Status: ", h("span", { id: "order-status", class: `status ${o.status}` }, statusText(o.status, o.cancel_reason)));
  const history = h("ol", { class: "history", id: "history" }, o.history.map((e) => h("li", {}, `${e.status} at ${new Date(e.at).toLocaleTimeString()}`)));
  render(`Order ${id.slice(0, 8)}`,
    status,
    h("p", {}, "Total: ", h("span", { class: "price" }, money(o.total_cents, o.currency))),
    h("h2", {}, "History"), history,
    h("p", {}, h("a", { href: "#/orders" }, "All orders")));
  if (TERMINAL.includes(o.status)) return;
  // Live: the order's server-sent events until a terminal status.
  const stream = new EventSource(`/api/orders/${id}/events`);
  leave.push(() => stream.close());
  stream.addEventListener("status", (ev) => {
    const e = JSON.parse(ev.data);
    const el = document.getElementById("order-status");
    if (!el) return;
    el.textContent = statusText(e.status, e.cancel_reason);
    el.className = `status ${e.status}`;
    history.append(h("li", {}, `${e.status} at ${new Date().toLocaleTimeString()}`));
    if (TERMINAL.includes(e.status)) stream.close();
  });
  stream.onerror = () => {
    // The stream ends after a terminal status; the browser would reconnect otherwise.
    if (stream.readyState === EventSource.CLOSED) return;
    const el = document.getElementById("order-status");
    if (el && TERMINAL.some((t) => el.textContent.startsWith(t))) stream.close();
  };
}

async function orders() {
  if (!needUser()) return;
  const page = await api("GET", "/api/orders");
  if (!page.items.length) {
    render("Orders", h("p", {}, "No orders yet."));
    return;
  }
  render("Orders", h("table", {},
    h("thead", {}, h("tr", {}, h("th", {}, "Order"), h("th", {}, "Placed"), h("th", {}, "Status"), h("th", { class: "num" }, "Total"))),
    h("tbody", {}, page.items.map((o) => h("tr", {},
      h("td", {}, h("a", { href: `#/orders/${o.id}` }, o.id.slice(0, 8))),
      h("td", {}, new Date(o.created_at).toLocaleString()),
      h("td", {}, h("span", { class: `status ${o.status}` }, statusText(o.status, o.cancel_reason))),
      h("td", { class: "num" }, money(o.total_cents, o.currency)))))));
}

async function notifications() {
  if (!needUser()) return;
  const list = await api("GET", "/api/notifications");
  render("Notifications", list.items.length
    ? h("ul", {}, list.items.map((n) => h("li", { class: "card" }, h("strong", {}, n.subject), h("p", {}, n.body))))
    : h("p", {}, "No notifications yet."));
}

function login(params) {
  const next = params.get("next") || "#/";
  const form = h("form", {
    onsubmit: async (ev) => {
      ev.preventDefault();
      const f = new FormData(form);
      try {
        const s = await api("POST", "/api/auth/session", { email: f.get("email"), password: f.get("password") });
        me = s.user;
        showSession();
        leaveFor(next);
      } catch (e) {
        showError(e.status === 401 ? "Wrong e-mail or password." : e.message);
      }
    },
  }, field("email", "E-mail", "email", "username"), field("password", "Password", "password", "current-password"),
  h("button", { type: "submit" }, "Log in"));
  render("Log in", form, h("p", {}, "New here? ", h("a", { href: `#/register?next=${encodeURIComponent(next)}` }, "Create an account")));
}

function register(params) {
  const next = params.get("next") || "#/";
  const form = h("form", {
    onsubmit: async (ev) => {
      ev.preventDefault();
      const f = new FormData(form);
      const creds = { email: f.get("email"), password: f.get("password") };
      try {
        await api("POST", "/api/auth/register", { ...creds, name: f.get("name") });
        const s = await api("POST", "/api/auth/session", creds);
        me = s.user;
        showSession();
        leaveFor(next);
      } catch (e) {
        showError(e.message);
      }
    },
  }, field("name", "Name", "text", "name"), field("email", "E-mail", "email", "username"),
  field("password", "Password (at least 8 characters)", "password", "new-password"),
  h("button", { type: "submit" }, "Create account"));
  render("Create an account", form);
}

// ---- routing ----

async function route() {
  for (const stop of leave) stop();
  leave = [];
  showError("");
  const [path, query] = (location.hash.slice(1) || "/").split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean);
  try {
    if (parts.length === 0) await catalog(params);
    else if (parts[0] === "products" && parts[1]) await product(parts[1]);
    else if (parts[0] === "cart") cartPage();
    else if (parts[0] === "orders" && parts[1]) await order(parts[1]);
    else if (parts[0] === "orders") await orders();
    else if (parts[0] === "notifications") await notifications();
    else if (parts[0] === "login") login(params);
    else if (parts[0] === "register") register(params);
    else render("Not found", h("p", {}, h("a", { href: "#/" }, "Back to the catalog")));
  } catch (e) {
    if (e.status === 401) {
      me = null;
      showSession();
      go(`#/login?next=${encodeURIComponent(location.hash)}`);
      return;
    }
    render("Something went wrong", h("p", {}, e.message));
  }
}

window.addEventListener("hashchange", route);
showCartCount();
await loadMe().catch(() => {});
await route();
