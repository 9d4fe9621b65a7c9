// Single sign-on from the hosted sign-in page in headless Chromium, driven by the Rust test
// `upstream::single_sign_on_from_the_hosted_page_in_a_real_browser` (which runs the upstream
// OpenID Provider, sets up the organization and checks what this script reports): the person
// types a work address, is sent through the organization's provider and comes back to the
// app with a code.
//
// Input: AUTHIO_SSO_TEST (JSON): shots, signin_url, email, app_callback. Output: one JSON line.
import { chromium } from "playwright-core";
import assert from "node:assert/strict";
import path from "node:path";

const cfg = JSON.parse(process.env.AUTHIO_SSO_TEST);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
const out = {};
try {
  const context = await browser.newContext({ viewport: { width: 1000, height: 800 } });
  const escaped = cfg.app_callback.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
  await context.route(new RegExp(`^${escaped}`), (r) => r.fulfill({ status: 200, contentType: "text/plain", body: "app" }));
  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  await page.goto(cfg.signin_url);
  await page.fill("#email-sso", cfg.email);
  await page.screenshot({ path: path.join(cfg.shots, "hosted-sso.png"), fullPage: true });
  const [toApp] = await Promise.all([
    page.waitForRequest((r) => r.url().startsWith(cfg.app_callback)),
    page.click("button:has-text('Continue with single sign-on')"),
  ]);
  const back = new URL(toApp.url());
  assert.equal(back.searchParams.get("state"), "xyz");
  out.code = back.searchParams.get("code");
  assert.ok(out.code, "the app got a code");
  console.log(JSON.stringify(out));
} catch (e) {
  console.error("[sso test]", e.stack || String(e));
  console.log(JSON.stringify(out));
  process.exitCode = 1;
} finally {
  await browser.close();
}
