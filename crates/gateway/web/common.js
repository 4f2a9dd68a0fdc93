// What the storefront (app.js) and the operations page (ops.js) share: building elements,
// money, and calls to the public API with the session cookie.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v === true) el.setAttribute(k, "");
    else if (v !== false && v != null) el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c != null) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function money(cents, currency) {
  return new Intl.NumberFormat(undefined, { style: "currency", currency }).format(cents / 100);
}

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.status = status;
  }
}

export async function api(method, path, body, headers = {}) {
  const init = { method, headers: { Accept: "application/json", ...headers }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  const text = await resp.text();
  const data = text ? JSON.parse(text) : null;
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

// Shows `message` in the page's alert box (hidden when empty).
export function showError(message) {
  const box = document.getElementById("alert");
  box.textContent = message;
  box.hidden = !message;
}

// Replaces the page's content: its title, a heading, and `children`.
export function render(title, ...children) {
  const view = document.getElementById("view");
  document.title = `${title} · Shop`;
  view.replaceChildren(h("h1", {}, title), ...children.filter((c) => c != null));
  view.focus({ preventScroll: true });
}

export function field(id, label, type, autocomplete, extra = {}) {
  return h("label", { for: id }, label, h("input", { id, name: id, type, autocomplete, required: true, ...extra }));
}
