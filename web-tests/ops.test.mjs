// The operations page in a real browser (Debian's Chromium driven by playwright-core),
// against a running shop: run by crates/shop/tests/e2e/browser.rs with, besides
// storefront.test.mjs's settings:
//   SHOP_ADMIN_EMAIL, SHOP_ADMIN_PASSWORD  the shop's administrator
//   SHOP_PLANTED      a dead letter the test parked: service:message id:product id (a
//                     product.created that, replayed, gives that product 7 units of stock)
// Every page must load without a console error, an uncaught exception or a failed request.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { launch, Watch } from "./browser.mjs";

const base = process.env.SHOP_BASE;
const [p1] = (process.env.SHOP_PRODUCTS || "").split(",");
const shots = process.env.SHOP_SCREENSHOTS || "target/web-screenshots";
const adminEmail = process.env.SHOP_ADMIN_EMAIL;
const adminPassword = process.env.SHOP_ADMIN_PASSWORD;
const [plantedService, plantedId, plantedProduct] = (process.env.SHOP_PLANTED || "").split(":");
assert.ok(base && p1 && adminEmail && adminPassword && plantedProduct,
  "SHOP_BASE, SHOP_PRODUCTS, SHOP_ADMIN_* and SHOP_PLANTED are set");
mkdirSync(shots, { recursive: true });

const SETTLE = 30_000;
let browser;
const watch = new Watch();

function clean(what) {
  watch.clean(what);
}

async function fresh() {
  const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  return { context, page: watch.page(await context.newPage()) };
}

// Waits until `fn` (in the test) returns something truthy, or fails with `what`.
async function eventually(what, fn, timeout = SETTLE) {
  const until = Date.now() + timeout;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v) return v;
    if (Date.now() > until) throw new Error(`${what}: not within ${timeout} ms; ${watch.problems.join("; ")}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

async function count(page, status) {
  const cell = page.locator(`#by-status tr[data-status="${status}"] td.num`);
  return (await cell.count()) ? Number(await cell.textContent()) : 0;
}

before(async () => {
  browser = await launch();
});

after(async () => {
  await browser?.close();
});

test("the operations page is for administrators only", async () => {
  watch.reset();
  const { context, page } = await fresh();
  // No session: sent to log in, to come back.
  await page.goto(`${base}/ops`);
  await page.waitForURL(/\/#\/login\?next=%2Fops$/);
  // A shopper: no link to it, and a 403 page.
  const email = `ops${Date.now()}${Math.floor(Math.random() * 1e6)}@shop.test`;
  await page.goto(`${base}/#/register`);
  await page.getByLabel("Name").fill("Not An Admin");
  await page.getByLabel("E-mail").fill(email);
  await page.getByLabel(/^Password/).fill("correct-horse-battery");
  await page.getByRole("button", { name: "Create account" }).click();
  await page.locator("#who", { hasText: email }).waitFor();
  // Back on the catalog, loaded (leaving while it loads would abort its requests).
  await page.locator("ul.grid li").first().waitFor();
  assert.equal(await page.locator("#ops-link").isVisible(), false, "no Operations link for a shopper");
  watch.allow = ["403 /ops", "403 /api/admin/overview"];
  const resp = await page.goto(`${base}/ops`);
  assert.equal(resp.status(), 403);
  await page.getByRole("heading", { name: "Administrators only" }).waitFor();
  // Nor the API behind it.
  const api = await context.request.get(`${base}/api/admin/overview`);
  assert.equal(api.status(), 403);
  assert.match(api.headers()["content-type"], /application\/problem\+json/);
  watch.allow = [];
  clean("a shopper");
  await context.close();
});

test("the administrator watches orders move, manages the catalog and replays a dead letter", async () => {
  watch.reset();
  const { context, page } = await fresh();
  // Logged in from the page that asked for it, and back there.
  await page.goto(`${base}/ops`);
  await page.waitForURL(/#\/login/);
  await page.getByLabel("E-mail").fill(adminEmail);
  await page.getByLabel("Password").fill(adminPassword);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.waitForURL(`${base}/ops`);
  await page.locator("#by-status table, #by-status p").first().waitFor();
  await page.locator('#programs tr[data-program="orders"] .up').first().waitFor();

  // Orders placed elsewhere (by the API, with this session) move the live counts.
  const before = await count(page, "CONFIRMED");
  const placed = [];
  for (let i = 0; i < 3; i += 1) {
    const r = await context.request.post(`${base}/api/orders`, {
      headers: { Origin: base, "Content-Type": "application/json" },
      data: { items: [{ product_id: p1, quantity: 1 }], payment_token: "tok_visa" },
    });
    assert.equal(r.status(), 202, await r.text());
    placed.push((await r.json()).id);
  }
  await eventually("the confirmed count moves by 3", async () => (await count(page, "CONFIRMED")) >= before + 3);
  await eventually("a rate of confirmed sagas shows", async () =>
    Number(await page.locator("#rate-confirmed").textContent()) > 0);
  assert.match(await page.locator("#p99").textContent(), /^\d+ ms$/);
  await page.screenshot({ path: `${shots}/ops-live.png`, fullPage: true });

  // One order's timeline: every step, each handled.
  await page.getByLabel("Order id").fill(placed[0]);
  await page.getByRole("button", { name: "Timeline" }).click();
  await page.locator("#timeline-status", { hasText: "CONFIRMED" }).waitFor();
  await page.locator('#events tr[data-event="order.confirmed"]').waitFor();
  assert.ok(await page.locator('#events tr[data-event="payment.succeeded"]').count());
  await page.screenshot({ path: `${shots}/ops-timeline.png`, fullPage: true });

  // The catalog: a new product, its stock arriving by event, adjusted, its price edited.
  await page.goto(`${base}/ops#/catalog`);
  const sku = `OPS-${Date.now()}`;
  await page.getByLabel("SKU").fill(sku);
  await page.getByLabel("Name").fill("Operations mug");
  await page.getByLabel("Price").fill("9.50");
  await page.getByLabel("Initial stock").fill("5");
  await page.getByRole("button", { name: "Create product" }).click();
  await page.waitForURL(/#\/catalog\/[0-9a-f-]{36}$/);
  // Inventory learns of the product by event; until then its stock is not known (a 404).
  watch.allow = ["404 /api/inventory/" + page.url().split("/").pop()];
  await page.locator("#stock", { hasText: "5 available" }).waitFor({ timeout: SETTLE });
  watch.allow = [];
  await page.getByLabel(/^Units to add/).fill("3");
  await page.getByRole("button", { name: "Adjust stock" }).click();
  await page.locator("#stock", { hasText: "8 available" }).waitFor();
  await page.getByLabel("Price").fill("11.00");
  await page.getByRole("button", { name: "Save" }).click();
  await page.locator("#done", { hasText: "Saved." }).waitFor();
  const product = await (await context.request.get(`${base}/api/products/${page.url().split("/").pop()}`)).json();
  assert.equal(product.price_cents, 1100);
  await page.goto(`${base}/ops#/catalog`);
  await page.locator("#products tbody tr").first().waitFor();
  await page.screenshot({ path: `${shots}/ops-catalog.png`, fullPage: true });

  // The planted dead letter: listed, its body shown, replayed after a confirmation, handled.
  await page.goto(`${base}/ops#/dead-letters`);
  const row = page.locator(`#dead-letters tr[data-message="${plantedId}"]`);
  await row.waitFor();
  assert.match(await row.textContent(), /product\.created.*planted by the browser test/);
  await page.screenshot({ path: `${shots}/ops-dead-letters.png`, fullPage: true });
  await row.getByRole("link", { name: "Show" }).click();
  await page.locator("#body", { hasText: plantedProduct }).waitFor();
  await page.goBack();
  await row.waitFor();
  // Cancelled first: nothing happens.
  await row.getByRole("button", { name: "Replay" }).click();
  await page.getByRole("dialog").getByRole("button", { name: "Cancel" }).click();
  await row.waitFor();
  await row.getByRole("button", { name: "Replay" }).click();
  await page.getByRole("dialog").getByRole("button", { name: "Replay" }).click();
  await page.locator("#done", { hasText: `Replayed 1 message(s) of ${plantedService}` }).waitFor();
  await eventually("the dead letter is gone", async () => (await row.count()) === 0);
  const stock = await eventually("inventory handled the replayed event", async () => {
    const r = await context.request.get(`${base}/api/inventory/${plantedProduct}`);
    return r.ok() ? r.json() : null;
  });
  assert.equal(stock.available, 7);
  clean("operations");
  await context.close();
});
