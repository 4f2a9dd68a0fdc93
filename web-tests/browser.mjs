// What the browser tests share: Debian's Chromium launched by playwright-core (never a
// browser of its own), and a watch on every page for console errors, uncaught exceptions,
// failed requests and error answers that a step did not provoke on purpose.

import assert from "node:assert/strict";
import { chromium } from "playwright-core";

export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
}

// The problems seen on watched pages. `allow` lists what a step provokes on purpose:
// fragments of console messages, and answers as "STATUS /path".
export class Watch {
  constructor() {
    this.problems = [];
    this.allow = [];
  }

  reset() {
    this.problems = [];
    this.allow = [];
  }

  page(page) {
    // Chrome logs an error answer as "...responded with a status of 404...", without its path.
    const allowed = (text) => this.allow.some((a) =>
      (/^\d{3} \//.test(a) ? text.includes(`status of ${a.slice(0, 3)}`) : text.includes(a)));
    page.on("console", (m) => {
      if (m.type() === "error" && !allowed(m.text())) this.problems.push(`console: ${m.text()}`);
    });
    page.on("pageerror", (e) => this.problems.push(`uncaught: ${e.message}`));
    page.on("requestfailed", (r) => {
      // An event stream closed by the page when its order ended is not a failure.
      if (!r.url().endsWith("/events")) this.problems.push(`failed: ${r.method()} ${r.url()} ${r.failure()?.errorText}`);
    });
    page.on("response", (r) => {
      const what = `${r.status()} ${new URL(r.url()).pathname}`;
      if (r.status() >= 400 && !this.allow.includes(what)) this.problems.push(`HTTP ${what}`);
    });
    return page;
  }

  clean(what) {
    assert.deepEqual(this.problems, [], `${what}: no console error and no failed request`);
  }
}
