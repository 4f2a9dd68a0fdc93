// The storefront in a real browser (Debian's Chromium driven by playwright-core), against a
// running shop: run by crates/shop/tests/e2e/browser.rs, which starts the shop on the real
// servers and passes it here:
//   SHOP_BASE         the gateway, e.g. http://127.0.0.1:8080
//   SHOP_PRODUCTS     two product ids with plenty of stock, comma-separated
//   SHOP_SCARCE       a product with one unit in stock
//   SHOP_SCREENSHOTS  where to write the screenshots
//   CHROMIUM          the browser (default /usr/bin/chromium)
// Every page must load without a console error, an uncaught exception or a failed request.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { launch, Watch } from "./browser.mjs";

const base = process.env.SHOP_BASE;
const [p1, p2] = (process.env.SHOP_PRODUCTS || "").split(",");
const scarce = process.env.SHOP_SCARCE;
const shots = process.env.SHOP_SCREENSHOTS || "target/web-screenshots";
assert.ok(base && p1 && p2 && scarce, "SHOP_BASE, SHOP_PRODUCTS and SHOP_SCARCE are set");
mkdirSync(shots, { recursive: true });

const SETTLE = 30_000;
let browser;
const watch = new Watch();

function clean(what) {
  watch.clean(what);
}

async function newUser() {
  const context = await browser.newContext({ viewport: { width: 390, height: 844 } });
  return { context, page: watch.page(await context.newPage()) };
}

async function register(page) {
  const email = `web${Date.now()}${Math.floor(Math.random() * 1e6)}@shop.test`;
  await page.goto(`${base}/#/register`);
  await page.getByLabel("Name").fill("Web Tester");
  await page.getByLabel("E-mail").fill(email);
  await page.getByLabel(/^Password/).fill("correct-horse-battery");
  await page.getByRole("button", { name: "Create account" }).click();
  await page.locator("#who", { hasText: email }).waitFor();
  return email;
}

async function addToCart(page, product, quantity) {
  await page.goto(`${base}/#/products/${product}`);
  await page.locator("#stock", { hasText: /in stock|Out of stock/ }).waitFor();
  await page.getByLabel("Quantity").fill(String(quantity));
  await page.getByRole("button", { name: "Add to cart" }).click();
}

async function placeOrder(page, card) {
  await page.goto(`${base}/#/cart`);
  await page.getByLabel("Payment").selectOption(card);
  await page.getByRole("button", { name: "Place order" }).click();
  await page.waitForURL(/#\/orders\/[0-9a-f-]{36}$/);
  return page.url().split("/").pop();
}

async function statusBecomes(page, text) {
  try {
    await page.locator("#order-status", { hasText: text }).waitFor({ timeout: SETTLE });
  } catch (e) {
    const shown = await page.locator("main").textContent().catch(() => "(no page)");
    throw new Error(`the order never showed ${text}; the page shows: ${shown}; ${watch.problems.join("; ")}`);
  }
}

before(async () => {
  browser = await launch();
});

after(async () => {
  await browser?.close();
});

test("the first page loads fast, with its files cached and a strict CSP", async () => {
  watch.reset();
  const { context, page } = await newUser();
  const resp = await page.goto(`${base}/`);
  const csp = resp.headers()["content-security-policy"];
  assert.match(csp, /script-src 'self'/);
  assert.doesNotMatch(csp, /unsafe-inline/);
  await page.locator("ul.grid li").first().waitFor();
  const nav = await page.evaluate(() => performance.getEntriesByType("navigation")[0].toJSON());
  console.log(`first page: ${nav.responseEnd.toFixed(1)} ms to its HTML, ${nav.loadEventEnd.toFixed(1)} ms to load`);
  // Loaded again: the files are revalidated with their ETag and not sent again.
  const revalidated = [];
  page.on("response", (r) => { if (r.url().includes("/assets/")) revalidated.push(r.status()); });
  await page.reload();
  await page.locator("ul.grid li").first().waitFor();
  const again = await page.evaluate(() => performance.getEntriesByType("navigation")[0].toJSON());
  console.log(`again: ${again.loadEventEnd.toFixed(1)} ms to load, assets answered ${revalidated.join(", ")}`);
  assert.ok(revalidated.length >= 2 && revalidated.every((s) => s === 304), `assets revalidated: ${revalidated}`);
  await page.screenshot({ path: `${shots}/catalog.png`, fullPage: true });
  clean("catalog");
  // An inline script (as an injection would add) does not run.
  watch.allow = ["Content Security Policy", "Refused to execute inline script"];
  const ran = await page.evaluate(() => new Promise((resolve) => {
    document.addEventListener("securitypolicyviolation", () => resolve(false), { once: true });
    const s = document.createElement("script");
    s.textContent = "window.injected = true";
    document.body.append(s);
    setTimeout(() => resolve(window.injected === true), 1000);
  }));
  assert.equal(ran, false, "the CSP blocks an inline script");
  watch.allow = [];
  await context.close();
});

test("a shopper registers, fills a cart and sees orders confirm and cancel live", async () => {
  watch.reset();
  const { context, page } = await newUser();
  await register(page);

  await addToCart(page, p1, 1);
  await page.screenshot({ path: `${shots}/product.png`, fullPage: true });
  await addToCart(page, p2, 2);
  assert.equal(await page.locator("#cart-count").textContent(), "3");
  await page.goto(`${base}/#/cart`);
  await page.locator("#total").waitFor();
  await page.screenshot({ path: `${shots}/cart.png`, fullPage: true });

  // Approved: first on its way (the payment provider answers after 1.5 s here), then
  // CONFIRMED on the same page, told by the order's event stream, without a reload.
  const confirmed = await placeOrder(page, "tok_visa");
  assert.match(await page.locator("#order-status").textContent(), /^(PENDING|AWAITING_PAYMENT)$/);
  await page.evaluate(() => { window.samePage = true; });
  await statusBecomes(page, "CONFIRMED");
  assert.equal(await page.evaluate(() => window.samePage), true, "no reload");
  await page.screenshot({ path: `${shots}/order-confirmed.png`, fullPage: true });
  assert.equal(await page.locator("#cart-count").textContent(), "0", "the cart is emptied");

  // Declined.
  await addToCart(page, p1, 1);
  await placeOrder(page, "tok_decline");
  await statusBecomes(page, "CANCELLED: the payment was declined");

  // Out of stock: two of the product that has one.
  await addToCart(page, scarce, 2);
  await placeOrder(page, "tok_visa");
  await statusBecomes(page, "CANCELLED: an item is out of stock");
  await page.screenshot({ path: `${shots}/order-cancelled.png`, fullPage: true });

  // The history lists all three, the confirmed one with its status.
  await page.goto(`${base}/#/orders`);
  await page.locator("tbody tr").nth(2).waitFor();
  assert.equal(await page.locator("tbody tr").count(), 3);
  assert.match(await page.locator(`a[href="#/orders/${confirmed}"]`).locator("xpath=../..").textContent(), /CONFIRMED/);
  await page.screenshot({ path: `${shots}/orders.png`, fullPage: true });

  // The notifications arrive (by event, a moment later).
  await page.goto(`${base}/#/notifications`);
  await page.locator("main li").first().waitFor({ timeout: SETTLE });
  clean("ordering");

  // Logged out: the pages that need a user send to the login.
  await page.getByRole("button", { name: "Log out" }).click();
  await page.waitForURL(/#\/login$/);
  await page.goto(`${base}/#/orders`);
  await page.waitForURL(/#\/login\?next=/);
  await page.screenshot({ path: `${shots}/login.png`, fullPage: true });
  clean("after logout");
  await context.close();
});

test("the session cookie is HttpOnly and refused to another site's requests", async () => {
  watch.reset();
  const { context, page } = await newUser();
  await register(page);
  const cookies = await context.cookies(base);
  const session = cookies.find((c) => c.name === "shop_session");
  assert.ok(session, "a session cookie");
  assert.equal(session.httpOnly, true);
  assert.equal(session.sameSite, "Strict");
  assert.equal(await page.evaluate(() => document.cookie.includes("shop_session")), false,
    "the page's script cannot read it");
  // A request with the cookie but another Origin (as a forged cross-site form would send,
  // if SameSite did not stop it first) changes nothing.
  const forged = await context.request.post(`${base}/api/orders`, {
    headers: { Origin: "https://evil.test", "Content-Type": "application/json" },
    data: { items: [{ product_id: p1, quantity: 1 }], payment_token: "tok_visa" },
  });
  assert.equal(forged.status(), 403);
  assert.match(forged.headers()["content-type"], /application\/problem\+json/);
  const mine = await context.request.get(`${base}/api/orders`);
  assert.equal(mine.status(), 200, "the cookie authenticates a read");
  assert.equal((await mine.json()).items.length, 0, "the forged order was not placed");
  clean("cookie");
  await context.close();
});
