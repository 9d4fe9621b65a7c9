// The web console, driven in headless Chromium by the Rust test `console::...` (which starts
// Authio, seeds the tenants and users, keeps the tenant's API busy meanwhile, and checks what
// this script reports). Every step asserts what a person would see; any failure exits 1.
//
// Input: AUTHIO_CONSOLE_TEST (JSON): base, shots, operator/admin/viewer {email, password},
// acme/globex {slug, project}. Output: one JSON line on stdout, what the Rust side checks next.
import { chromium } from "playwright-core";
import assert from "node:assert/strict";
import path from "node:path";

const cfg = JSON.parse(process.env.AUTHIO_CONSOLE_TEST);
const base = cfg.base;
const log = (...a) => console.error("[console test]", ...a);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});

async function shot(page, name) {
  if (!name.startsWith("failure")) await checkAccessible(page);
  await page.screenshot({ path: path.join(cfg.shots, `${name}.png`), fullPage: true });
}

// A fresh browser profile per person: cookies are theirs alone.
async function signIn(who, phone = false) {
  const context = await browser.newContext(
    phone ? { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true } : { viewport: { width: 1280, height: 900 } },
  );
  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  const resp = await page.goto(`${base}/console`);
  assert.ok(resp.ok(), `the sign-in page answers (${resp.status()})`);
  assert.match(page.url(), /\/p\/[0-9a-f-]+\/signin\?/, "an anonymous visit to /console goes to the hosted sign-in");
  await page.fill("#email", who.email);
  await page.fill("#password", who.password);
  await Promise.all([page.waitForURL((u) => !u.pathname.includes("/signin")), page.click("button[type=submit]")]);
  return { context, page };
}

// What keyboard and screen-reader users need of every page: a language, one h1, a skip link
// as the first stop, every visible control labelled and every button named.
async function checkAccessible(page) {
  const problems = await page.evaluate(() => {
    const out = [];
    if (!document.documentElement.lang) out.push("no lang");
    if (document.querySelectorAll("h1").length !== 1) out.push("not exactly one h1");
    const first = document.querySelector("a, button, input, select, textarea");
    if (!first || !first.classList.contains("skip")) out.push("the skip link is not the first stop");
    for (const el of document.querySelectorAll("input:not([type=hidden]), select, textarea")) {
      if (!el.labels || el.labels.length === 0) out.push(`unlabelled ${el.outerHTML}`);
    }
    for (const b of document.querySelectorAll("button")) if (!b.textContent.trim()) out.push(`unnamed ${b.outerHTML}`);
    return out;
  });
  assert.deepEqual(problems, [], `${page.url()}: ${problems.join("; ")}`);
}

async function expectRefused(page, url, status, text) {
  const r = await page.goto(url);
  assert.equal(r.status(), status, `${url} answers ${status}`);
  if (text) assert.match(await page.textContent("main"), text);
}

const out = {};
try {
  // ---- The customer's admin: credentials, then the dedicated database request. ----
  const admin = await signIn(cfg.admin);
  let page = admin.page;
  assert.match(page.url(), new RegExp(`/dashboard/${cfg.acme.slug}$`), "a member lands on their tenant");
  assert.match(await page.textContent("main"), /Projects/);
  await page.fill("main form input[name=name]", "Staging");
  await page.fill("main form input[name=slug]", "staging");
  await Promise.all([page.waitForURL(/\/p\/[0-9a-f-]+\/users$/), page.click("main form button[type=submit]")]);
  await page.goto(`${base}/dashboard/${cfg.acme.slug}`);
  assert.match(await page.textContent("table"), /Staging/);
  await shot(page, "dashboard-projects");

  await page.goto(`${base}/dashboard/${cfg.acme.slug}/p/${cfg.acme.project}/credentials`);
  await page.fill("form[action$='/credentials/m2m'] input[name=name]", "billing worker");
  await page.fill("form[action$='/credentials/m2m'] input[name=scopes]", "read:users");
  await page.click("form[action$='/credentials/m2m'] button[type=submit]");
  const secret = (await page.textContent("[data-secret]")).trim();
  assert.ok(secret.length >= 40, "the client secret is shown");
  const label = await page.textContent(".secret strong");
  out.client_id = /client id (\S+)\)/.exec(label)[1];
  out.client_secret = secret;
  assert.match(await page.textContent("table"), /billing worker/);
  await shot(page, "dashboard-m2m-secret-once");
  await page.goto(`${base}/dashboard/${cfg.acme.slug}/p/${cfg.acme.project}/credentials`);
  assert.ok(!(await page.content()).includes(secret), "the secret is never shown again");
  assert.equal(await page.locator("[data-secret]").count(), 0);

  // Users: the seeded end user is found by search and viewed.
  await page.goto(`${base}/dashboard/${cfg.acme.slug}/p/${cfg.acme.project}/users?q=${encodeURIComponent(cfg.acme.user)}`);
  await Promise.all([page.waitForURL(/\/users\/[0-9a-f-]+$/), page.click(`main a:has-text("${cfg.acme.user}")`)]);
  assert.match(await page.textContent("main"), /Sessions/);
  await shot(page, "dashboard-user");
  // Their one live session is revoked, then the user is disabled.
  const revoke = page.locator("form[action$='/revoke'] button");
  assert.equal(await revoke.count(), 1, "the end user has one live session");
  await Promise.all([page.waitForURL(/done=revoked/), revoke.click()]);
  assert.match(await page.textContent("table"), /ended/);
  assert.equal(await page.locator("form[action$='/revoke'] button").count(), 0);
  await Promise.all([page.waitForURL(/done=disabled/), page.click("button:has-text('Disable user')")]);
  assert.match(await page.textContent(".facts"), /disabled/);
  // Another user is found and deleted.
  await page.goto(`${base}/dashboard/${cfg.acme.slug}/p/${cfg.acme.project}/users?q=bulk7@acme.test`);
  await Promise.all([page.waitForURL(/\/users\/[0-9a-f-]+$/), page.click(`main a:has-text("bulk7@acme.test")`)]);
  await Promise.all([page.waitForURL(/done=deleted/), page.click("button:has-text('Delete user')")]);
  assert.match(await page.textContent("main"), /User deleted/);

  // Organizations: one made from the dashboard, and an invitation sent from its page. An admin
  // sees the impersonation form but may not use it (owners and operators only).
  await page.goto(`${base}/dashboard/${cfg.acme.slug}/p/${cfg.acme.project}/organizations`);
  await page.fill("form[method=post][action$='/organizations'] input[name=name]", "Initech");
  await page.fill("form[method=post][action$='/organizations'] input[name=slug]", "initech");
  await Promise.all([
    page.waitForURL(/\/organizations\/[0-9a-f-]+$/),
    page.click("form[method=post][action$='/organizations'] button[type=submit]"),
  ]);
  assert.match(await page.textContent("main"), /Members/);
  await page.fill("form[action$='/invite'] input[name=email]", "invitee@acme.test");
  await Promise.all([page.waitForURL(/done=invited/), page.click("form[action$='/invite'] button[type=submit]")]);
  assert.match(await page.textContent("main"), /invitee@acme\.test/);
  assert.match(await page.textContent("main"), /pending/);
  assert.equal(
    await page.locator("form[action$='/require-sso'] button").isDisabled(),
    true,
    "single sign-on cannot be required without a connection",
  );
  await shot(page, "dashboard-organization");
  await page.goto(`${base}/dashboard/${cfg.acme.slug}/p/${cfg.acme.project}/users?q=${encodeURIComponent(cfg.acme.user)}`);
  await Promise.all([page.waitForURL(/\/users\/[0-9a-f-]+$/), page.click(`main a:has-text("${cfg.acme.user}")`)]);
  assert.equal(await page.locator("form[action$='/impersonate'] button").isDisabled(), true);
  out.invited = true;

  // Webhooks: the endpoint the delivery loop disabled after failing for 3 days is pointed out;
  // one is added (its signing secret shown once), disabled, enabled again, its secret rotated
  // (the new one shown once), and a replay since a time is queued from its page.
  const hooks = `${base}/dashboard/${cfg.acme.slug}/p/${cfg.acme.project}/webhooks`;
  await page.goto(hooks);
  assert.match(
    await page.textContent("main"),
    /https:\/\/old-hooks\.acme\.test\/in was disabled after failing for 3 days \(last error: status 503\)/,
  );
  await page.fill("form[method=post][action$='/webhooks'] input[name=url]", "https://hooks.acme.test/in");
  await page.fill("form[method=post][action$='/webhooks'] input[name=types]", "user.created user.deleted");
  await page.click("form[method=post][action$='/webhooks'] button[type=submit]");
  const hookSecret = (await page.textContent("[data-secret]")).trim();
  assert.match(hookSecret, /^whsec_[A-Za-z0-9+/]{43}=$/, "the signing secret is shown");
  assert.match(await page.textContent("table"), /hooks\.acme\.test\/in\s*user\.created user\.deleted\s*active/);
  await shot(page, "dashboard-webhook-secret-once");
  await page.goto(hooks);
  assert.ok(!(await page.content()).includes(hookSecret), "the signing secret is never shown again");
  const hookRow = page.locator("tr", { hasText: "https://hooks.acme.test/in" });
  await Promise.all([page.waitForURL(/done=saved/), hookRow.locator("form[action$='/disable'] button").click()]);
  assert.match(await hookRow.textContent(), /disabled/);
  await page.goto(hooks); // (so the next wait is for the next page, not this one's ?done=saved)
  await Promise.all([page.waitForURL(/done=saved/), hookRow.locator("form[action$='/enable'] button").click()]);
  // Enabled: it can be disabled again (its state may already say it is failing: the name does
  // not resolve here, and delivery starts at once).
  assert.equal(await hookRow.locator("form[action$='/disable'] button").count(), 1);
  assert.doesNotMatch(await hookRow.textContent(), /disabled/);
  await Promise.all([page.waitForURL(/\/webhooks\/[0-9a-f-]+$/), hookRow.locator("a").click()]);
  assert.match(await page.textContent("main"), /Delivery log/);
  await page.click("form[action$='/rotate'] button");
  const rotated = (await page.textContent("[data-secret]")).trim();
  assert.match(rotated, /^whsec_/);
  assert.notEqual(rotated, hookSecret);
  out.webhook_secret = rotated;
  await Promise.all([page.waitForURL(/\/webhooks\/[0-9a-f-]+$/), page.locator("tr", { hasText: "https://hooks.acme.test/in" }).locator("a").click()]);
  await page.fill("form[action$='/replay-since'] input[name=since]", "2026-01-01T00:00");
  await Promise.all([page.waitForURL(/done=replaying/), page.click("form[action$='/replay-since'] button")]);
  assert.match(await page.textContent("main"), /Replay queued/);
  await shot(page, "dashboard-webhook");

  // Single sign-on: Globodyne's connection is listed, and the organization made to require it.
  await page.goto(`${base}/dashboard/${cfg.acme.slug}/p/${cfg.acme.project}/organizations/${cfg.acme.sso_org}`);
  assert.match(await page.textContent("main"), /Globodyne IdP \(globodyne-sso\)\s*https:\/\/idp\.globodyne\.test\s*1\s*enabled/);
  await Promise.all([page.waitForURL(/done=saved/), page.click("form[action$='/require-sso'] button")]);
  assert.match(await page.textContent(".facts"), /Single sign-on\s*required/);
  assert.equal(await page.locator("form[action$='/allow-other-sign-in'] button").count(), 1);
  await shot(page, "dashboard-organization-sso");
  out.sso_required = true;
  // A SAML connection added from the organization's page, from its identity provider's
  // metadata: what to type into the identity provider is shown; it is disabled and deleted;
  // the organization's last enabled connection cannot be turned off while SSO is required.
  await page.fill("form[action$='/saml-add'] input[name=slug]", "globodyne-saml");
  await page.fill("form[action$='/saml-add'] input[name=name]", "Globodyne SAML");
  await page.fill("form[action$='/saml-add'] input[name=metadata_xml]", cfg.acme.saml_metadata);
  await page.selectOption("form[action$='/saml-add'] select[name=preset]", "okta");
  await Promise.all([page.waitForURL(/done=saved/), page.click("form[action$='/saml-add'] button")]);
  const samlRow = page.locator("tr", { hasText: "globodyne-saml" });
  assert.match(await samlRow.textContent(), /https:\/\/idp\.globodyne\.test\/saml\s*0\s*enabled\s*SAML/);
  assert.match(await page.textContent("main"), /Single sign-on URL \(ACS\)\s*http:\/\/[^\s]+\/saml\/[0-9a-f-]+\/acs/);
  await shot(page, "dashboard-organization-saml");
  await page.goto(`${base}/dashboard/${cfg.acme.slug}/p/${cfg.acme.project}/organizations/${cfg.acme.sso_org}`);
  await Promise.all([page.waitForURL(/done=saved/), samlRow.locator("form[action$='/connection-disable'] button").click()]);
  assert.match(await samlRow.textContent(), /disabled/);
  const oidcRow = page.locator("tr", { hasText: "globodyne-sso" });
  const lastOne = await Promise.all([page.waitForNavigation(), oidcRow.locator("form[action$='/connection-disable'] button").click()]);
  assert.equal(lastOne[0].status(), 409, "the last enabled connection of an SSO-required organization stays");
  await page.goto(`${base}/dashboard/${cfg.acme.slug}/p/${cfg.acme.project}/organizations/${cfg.acme.sso_org}`);
  await Promise.all([page.waitForURL(/done=deleted/), samlRow.locator("form[action$='/connection-delete'] button").click()]);
  assert.equal(await page.locator("tr", { hasText: "globodyne-saml" }).count(), 0);
  // Directory sync: a directory added from the organization's page shows its bearer token
  // once, which works at the SCIM base URL shown; revoked, it stops; a new one is shown once.
  await page.fill("form[action$='/directory-add'] input[name=name]", "Globodyne Okta");
  await page.click("form[action$='/directory-add'] button");
  const scimToken = (await page.textContent("[data-secret]")).trim();
  assert.match(scimToken, /^scim_/);
  const dirRow = page.locator("tr", { hasText: "Globodyne Okta" });
  const scimBase = (await dirRow.locator("code").textContent()).trim();
  assert.match(scimBase, /\/scim\/v2\/[0-9a-f-]+$/);
  const scimGet = async (token) => (await fetch(`${scimBase}/Users`, { headers: { authorization: `Bearer ${token}` } })).status;
  assert.equal(await scimGet(scimToken), 200);
  await shot(page, "dashboard-directory-token-once");
  await page.goto(`${base}/dashboard/${cfg.acme.slug}/p/${cfg.acme.project}/organizations/${cfg.acme.sso_org}`);
  assert.ok(!(await page.content()).includes(scimToken), "the token is never shown again");
  await Promise.all([page.waitForURL(/done=saved/), dirRow.locator("form[action$='/directory-revoke'] button").click()]);
  assert.match(await dirRow.textContent(), /revoked/);
  assert.equal(await scimGet(scimToken), 401);
  await dirRow.locator("form[action$='/directory-rotate'] button").click();
  const rotatedScim = (await page.textContent("[data-secret]")).trim();
  assert.notEqual(rotatedScim, scimToken);
  assert.equal(await scimGet(rotatedScim), 200);
  await page.goto(`${base}/dashboard/${cfg.acme.slug}/p/${cfg.acme.project}/organizations/${cfg.acme.sso_org}`);
  await Promise.all([page.waitForURL(/done=deleted/), dirRow.locator("form[action$='/directory-delete'] button").click()]);
  assert.equal(await page.locator("tr", { hasText: "Globodyne Okta" }).count(), 0);
  assert.equal(await scimGet(rotatedScim), 401);

  await page.goto(`${base}/dashboard/${cfg.acme.slug}/p/${cfg.acme.project}/urls`);
  await page.fill("form[action$='/add-redirect-uri'] input[name=value]", "https://app.acme.test/callback");
  await Promise.all([page.waitForURL(/done=saved/), page.click("form[action$='/add-redirect-uri'] button")]);
  await page.fill("form[action$='/add-domain'] input[name=value]", "login.acme.test");
  await Promise.all([page.waitForURL(/done=saved/), page.click("form[action$='/add-domain'] button")]);
  const urlsText = await page.textContent("main");
  assert.match(urlsText, /https:\/\/app\.acme\.test\/callback/);
  assert.match(urlsText, /login\.acme\.test\s*pending\s*_authio-challenge\.login\.acme\.test TXT/);
  await page.fill("form[action$='/add-redirect-uri'] input[name=value]", "http://app.acme.test/callback");
  const refused = await Promise.all([page.waitForNavigation(), page.click("form[action$='/add-redirect-uri'] button")]);
  assert.equal(refused[0].status(), 422, "a plain-http redirect URI is refused with a 4xx page");
  await shot(page, "dashboard-refused-redirect-uri");
  await page.goto(`${base}/dashboard/${cfg.acme.slug}/p/${cfg.acme.project}/urls`);
  await shot(page, "dashboard-urls");
  await page.goto(`${base}/dashboard/${cfg.acme.slug}/p/${cfg.acme.project}/signin`);
  await page.uncheck("input[name=method][value=magic_link]");
  await Promise.all([page.waitForURL(/done=saved/), page.click("main form button[type=submit]")]);
  assert.equal(await page.locator("input[name=method][value=magic_link]").isChecked(), false);
  assert.equal(await page.locator("input[name=method][value=password]").isChecked(), true);
  await page.goto(`${base}/dashboard/${cfg.acme.slug}/p/${cfg.acme.project}/keys`);
  const currentBefore = (await page.locator("tr", { hasText: "current" }).locator("code").textContent()).trim();
  await Promise.all([page.waitForURL(/done=rotated/), page.click("button:has-text('Rotate keys')")]);
  const currentAfter = (await page.locator("tr", { hasText: "current" }).locator("code").textContent()).trim();
  assert.notEqual(currentAfter, currentBefore, "rotation made the next key current");
  assert.match(await page.locator("tr", { hasText: currentBefore }).textContent(), /retired/);
  out.rotated_to = currentAfter;
  await shot(page, "dashboard-keys-rotated");

  // Billing: Enterprise, the switch is off, flip it (the script submits on change).
  await page.goto(`${base}/billing`);
  assert.match(page.url(), new RegExp(`/dashboard/${cfg.acme.slug}/billing$`));
  assert.match(await page.textContent("main"), /Enterprise/);
  assert.match(await page.textContent("[data-state]"), /Shared database/);
  const toggle = page.locator("input[name=dedicated]");
  assert.equal(await toggle.isChecked(), false);
  await Promise.all([page.waitForURL(/done=requested/), toggle.check()]);
  assert.equal(await page.locator("input[name=dedicated]").isChecked(), true);
  assert.match(await page.textContent("[data-state]"), /Requested/);
  await shot(page, "billing-requested");

  // ---- A form posted without its CSRF token is refused (the browser's own cookies). ----
  const noCsrf = await page.request.post(`${base}/dashboard/${cfg.acme.slug}/billing/dedicated`, {
    form: { dedicated: "" },
    maxRedirects: 0,
  });
  assert.equal(noCsrf.status(), 403, "a post without the CSRF token is refused");
  const wrongCsrf = await page.request.post(`${base}/dashboard/${cfg.acme.slug}/p/${cfg.acme.project}/credentials/m2m`, {
    form: { csrf: "x".repeat(43), name: "sneaky" },
    maxRedirects: 0,
  });
  assert.equal(wrongCsrf.status(), 403, "a post with another token is refused");

  // ---- The customer cannot reach the operator console or another tenant. ----
  await expectRefused(page, `${base}/console/tenants`, 403, /operators/);
  await expectRefused(page, `${base}/console/requests`, 403);
  await expectRefused(page, `${base}/dashboard/${cfg.globex.slug}`, 404);
  await expectRefused(page, `${base}/dashboard/${cfg.globex.slug}/p/${cfg.globex.project}/users`, 404);
  await expectRefused(page, `${base}/dashboard/${cfg.acme.slug}/p/${cfg.globex.project}/users`, 404);
  await shot(page, "customer-refused-operator-console");

  // ---- A viewer looks and cannot change anything. ----
  const viewer = await signIn(cfg.viewer, true);
  const vp = viewer.page;
  await vp.goto(`${base}/dashboard/${cfg.acme.slug}/p/${cfg.acme.project}/credentials`);
  assert.match(await vp.textContent("main"), /viewer/);
  assert.ok(await vp.locator("form[action$='/credentials/m2m'] button[type=submit]").isDisabled(), "viewers see disabled forms");
  await shot(vp, "phone-viewer-credentials");
  const csrf = await vp.locator("input[name=csrf]").first().inputValue();
  const viewerPost = await vp.request.post(`${base}/dashboard/${cfg.acme.slug}/p/${cfg.acme.project}/credentials/m2m`, {
    form: { csrf, name: "viewer made this" },
    maxRedirects: 0,
  });
  assert.equal(viewerPost.status(), 403, "the server refuses a viewer's change");
  const viewerToggle = await vp.request.post(`${base}/dashboard/${cfg.acme.slug}/billing/dedicated`, {
    form: { csrf },
    maxRedirects: 0,
  });
  assert.equal(viewerToggle.status(), 403);
  await vp.goto(`${base}/dashboard/${cfg.acme.slug}/billing`);
  assert.ok(await vp.locator("input[name=dedicated]").isDisabled());
  assert.match(await vp.textContent("[data-state]"), /Requested/, "the viewer sees the request, unchanged");
  // Readable on a phone: nothing wider than the screen but the scrolling tables.
  const overflow = await vp.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `the billing page fits a phone (overflow ${overflow}px)`);
  await shot(vp, "phone-viewer-billing");

  // ---- Without JavaScript the same pages work: a Save button, a Refresh link. ----
  const plain = await browser.newContext({ javaScriptEnabled: false, storageState: await admin.context.storageState() });
  const pp = await plain.newPage();
  await pp.goto(`${base}/dashboard/${cfg.acme.slug}/billing`);
  assert.ok(await pp.locator("main form button[type=submit]", { hasText: "Save" }).isVisible(), "Save shows without script");
  assert.match(await pp.textContent("[data-state]"), /Requested/);
  assert.equal(await pp.locator(".live noscript").count(), 1);
  await plain.close();

  // ---- The operator: tenants, the request, approve, start the move, watch it. ----
  const op = await signIn(cfg.operator);
  const opp = op.page;
  assert.match(opp.url(), /\/console\/tenants$/);
  const tenantsText = await opp.textContent("main");
  for (const t of [cfg.acme.slug, cfg.globex.slug, "enterprise", "shared", "Route epoch"]) assert.match(tenantsText, new RegExp(t));
  await shot(opp, "operator-tenants");
  // Plans: the operator moves globex from Pro to Enterprise.
  await opp.goto(`${base}/console/tenants/${cfg.acme.slug}`);
  assert.match(await opp.locator("table", { hasText: "Dashboard members" }).textContent(), /viewer@acme\.test\s*viewer/);
  await opp.goto(`${base}/console/tenants/${cfg.globex.slug}`);
  await opp.selectOption("select[name=plan]", "enterprise");
  await Promise.all([opp.waitForURL(/done=plan/), opp.click("button:has-text('Change plan')")]);
  assert.match(await opp.textContent(".facts"), /Planenterprise/);
  await shot(opp, "operator-tenant-detail");
  await opp.goto(`${base}/console/hosts`);
  assert.match(await opp.textContent("main"), /test-dedicated/);
  await opp.goto(`${base}/console/requests`);
  const row = opp.locator("tr", { hasText: cfg.acme.slug });
  assert.match(await row.textContent(), /to dedicated requested/);
  await shot(opp, "operator-requests");
  // Keyboard: focus the Approve button with Tab from the host choice, press Enter.
  await row.locator("select[name=host]").focus();
  await opp.keyboard.press("Tab");
  assert.equal(await opp.evaluate(() => document.activeElement.textContent), "Approve");
  await Promise.all([opp.waitForURL(/done=approved/), opp.keyboard.press("Enter")]);
  // Provisioning runs in the background: wait until the move can start.
  const startMove = opp.locator("tr", { hasText: cfg.acme.slug }).locator("button", { hasText: "Start move" });
  for (let i = 0; i < 120 && !(await startMove.count()); i++) {
    await new Promise((r) => setTimeout(r, 500));
    await opp.reload();
  }
  assert.equal(await startMove.count(), 1, "the request reaches provisioned");
  await admin.page.goto(`${base}/dashboard/${cfg.acme.slug}/billing`);
  out.customer_saw_while_provisioned = (await admin.page.textContent("[data-state]")).trim();
  await Promise.all([opp.waitForURL(/\/console\/moves\//), startMove.click()]);
  // The live region refreshes itself until the move is done.
  const phases = new Set();
  for (let i = 0; i < 240; i++) {
    const s = (await opp.textContent("[data-state]")).trim();
    if (/^copying/.test(s) && !phases.has(s)) await shot(opp, "operator-move-copying");
    phases.add(s);
    if (/^done/.test(s)) break;
    await new Promise((r) => setTimeout(r, 250));
  }
  out.phases_seen = [...phases];
  assert.ok([...phases].some((p) => /^(copying|cutover|cleanup) /.test(p)), `a phase of the move was seen live (${[...phases]})`);
  assert.match(await opp.textContent("[data-state]"), /^done \(to dedicated\)/, `the move finished (saw ${[...phases]})`);
  assert.match(await opp.textContent(".live"), /write pause/);
  await shot(opp, "operator-move-done");
  await opp.goto(`${base}/console/tenants`);
  assert.match(await opp.locator("tr", { hasText: cfg.acme.slug }).textContent(), /dedicated/);
  await opp.goto(`${base}/console/audit?tenant=${cfg.acme.slug}`);
  assert.match(await opp.textContent("main"), /dedicated_db\.done/);
  await shot(opp, "operator-audit");

  // ---- The customer's billing says Dedicated (the open page refreshed itself). ----
  await admin.page.waitForFunction(() => /Dedicated/.test(document.querySelector("[data-state]").textContent), null, {
    timeout: 20000,
  });
  await admin.page.goto(`${base}/billing`);
  assert.equal((await admin.page.textContent("[data-state]")).trim(), "Dedicated");
  assert.equal(await admin.page.locator("input[name=dedicated]").isChecked(), true);
  await shot(admin.page, "billing-dedicated");

  // The audit page of the project has the request's story, and the export downloads it.
  await admin.page.goto(`${base}/dashboard/${cfg.acme.slug}/p/${cfg.acme.project}/audit?action=dedicated_db.requested`);
  assert.match(await admin.page.textContent("main"), /dedicated_db\.requested/);
  const exp = await admin.page.request.get(
    `${base}/dashboard/${cfg.acme.slug}/p/${cfg.acme.project}/audit/export?format=csv&action=m2m_client.created`,
  );
  assert.equal(exp.status(), 200);
  assert.match(await exp.text(), /m2m_client\.created/);
  await shot(admin.page, "dashboard-audit");

  // Signing out ends the session: the cookie no longer opens the dashboard.
  await admin.page.goto(`${base}/dashboard/${cfg.acme.slug}`);
  await Promise.all([admin.page.waitForURL(/signin/), admin.page.click("form.signout button")]);
  const after = await admin.page.request.get(`${base}/dashboard/${cfg.acme.slug}`, { maxRedirects: 0 });
  assert.equal(after.status(), 303, "signed out: back to sign-in");
  out.ok = true;
} catch (e) {
  log("FAILED:", e && e.stack ? e.stack : e);
  for (const c of browser.contexts()) {
    for (const p of c.pages()) {
      try {
        await p.screenshot({ path: path.join(cfg.shots, `failure-${Date.now()}.png`), fullPage: true });
        log("page at failure:", p.url());
      } catch {}
    }
  }
  process.exitCode = 1;
} finally {
  await browser.close();
  console.log(JSON.stringify(out));
}
