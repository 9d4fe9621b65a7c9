// The hosted organization pages in headless Chromium, driven by the Rust test
// `invitations::hosted_...` (which seeds the project, sends the invitations through the real
// SMTP receiver and checks what this script reports):
// - a new person accepts an invitation by creating their account on the page;
// - a person with an account signs in from the invitation page and comes back to accept it
//   (the token waits in the page's cookie meanwhile);
// - a member of two organizations picks one on the picker of an OpenID sign-in, and the
//   relying party gets its code.
//
// Input: AUTHIO_HOSTED_TEST (JSON): shots, password, newcomer_link, member {email, link},
// picker {authorize_url, email, cb, pick}. Output: one JSON line on stdout.
import { chromium } from "playwright-core";
import assert from "node:assert/strict";
import path from "node:path";

const cfg = JSON.parse(process.env.AUTHIO_HOSTED_TEST);
const log = (...a) => console.error("[hosted test]", ...a);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});

async function person() {
  const context = await browser.newContext({ viewport: { width: 1000, height: 800 } });
  // The relying party's callback is not served here: answer it in the browser.
  const cb = new RegExp(`^${cfg.picker.cb.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&")}`);
  await context.route(cb, (route) => route.fulfill({ status: 200, contentType: "text/plain", body: "relying party" }));
  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  return page;
}

const shot = (page, name) => page.screenshot({ path: path.join(cfg.shots, `${name}.png`), fullPage: true });
const out = {};
try {
  // A newcomer: no account yet; the invitation page creates it and joins.
  let page = await person();
  await page.goto(cfg.newcomer_link);
  assert.equal(await page.textContent("h1"), "Join Initech");
  assert.equal(await page.inputValue("#email"), "newcomer@example.com");
  await shot(page, "invitation-newcomer");
  await page.fill("#password", cfg.password);
  await Promise.all([page.waitForLoadState(), page.click("button:has-text('Create account and accept')")]);
  assert.equal(await page.textContent("h1"), "You joined Initech");
  out.newcomer_joined = true;
  await page.context().close();

  // A member with an account: signs in from the invitation page, comes back, accepts.
  page = await person();
  await page.goto(cfg.member.link);
  assert.equal(await page.textContent("h1"), "Join Initech");
  assert.equal(await page.locator("#password").count(), 0, "no account to create: it exists");
  await Promise.all([page.waitForURL(/\/signin\?/), page.click("a:has-text('Sign in to accept')")]);
  assert.ok(!page.url().includes("token="), "the invitation token rides in no sign-in URL");
  assert.equal(await page.inputValue("#email"), cfg.member.email, "the invited address is filled in");
  await page.fill("#password", cfg.password);
  await Promise.all([page.waitForURL(/\/invitations\/accept$/), page.click("button[type=submit]")]);
  await shot(page, "invitation-signed-in");
  await Promise.all([page.waitForLoadState(), page.click("button:has-text('Accept the invitation')")]);
  assert.equal(await page.textContent("h1"), "You joined Initech");
  out.member_joined = true;
  await page.context().close();

  // The picker: a member of Initech and Hooli picks Hooli.
  page = await person();
  await page.goto(cfg.picker.authorize_url);
  assert.match(page.url(), /\/signin\?/);
  await page.fill("#email", cfg.picker.email);
  await page.fill("#password", cfg.password);
  await Promise.all([page.waitForURL(/\/organizations\/select\?/), page.click("button[type=submit]")]);
  assert.equal(await page.textContent("h1"), "Choose an organization");
  const names = (await page.locator("form button[name=organization]").allTextContents()).map((t) => t.trim()).sort();
  assert.deepEqual(names, ["Hooli", "Initech"]);
  await shot(page, "organization-picker");
  // The browser is sent to the relying party's callback (answered above, in the browser).
  const [toRp] = await Promise.all([
    page.waitForRequest((r) => r.url().startsWith(cfg.picker.cb)),
    page.click(`form button[name=organization]:has-text('${cfg.picker.pick}')`),
  ]);
  const back = new URL(toRp.url());
  assert.equal(back.searchParams.get("state"), "picker-state");
  out.code = back.searchParams.get("code");
  assert.ok(out.code, "the relying party got a code");
  console.log(JSON.stringify(out));
} catch (e) {
  log(e.stack || String(e));
  console.log(JSON.stringify(out));
  process.exitCode = 1;
} finally {
  await browser.close();
}
